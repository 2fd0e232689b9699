//! The converter's parallel kernels (byte swaps and casts, called directly and through `convert`)
//! run in mmtensor's per-process pool, never in rayon's global one: a child forked after its
//! parent used the global pool inherits that pool without its threads, and parallel work queued
//! there would wait forever.
//!
//! One test in this file: `fork` copies only the calling thread, so the child must not depend on
//! any other test's threads.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mmtensor::{Dtype, Store};
use mmtensor_convert::transform::{cast, swap_bytes};
use mmtensor_convert::{convert, ConvertOptions, Input, NoProgress};
use mmtensor_format::npy;
use rayon::prelude::*;

/// Elements of every input: many of the kernels' 65,536-element tasks.
const ELEMS: u64 = 1 << 20;
/// Seconds the child may take before it counts as hung. The work takes about a second; this only
/// bounds how long a regression takes to fail.
const WATCHDOG_S: u32 = 60;

/// A big-endian `.npy` file of `ELEMS` elements of `dtype` (the `<` of its descr made `>`), each
/// element's little-endian bytes from `elem`.
fn big_endian_npy(path: &Path, dtype: Dtype, elem: impl Fn(u64) -> Vec<u8>) -> Input {
    let mut bytes = npy::encode_header(dtype, &[ELEMS]);
    let descr = dtype.numpy_descr().as_bytes();
    let at = bytes
        .windows(descr.len())
        .position(|w| w == descr)
        .expect("the header holds the descr");
    bytes[at] = b'>';
    bytes.extend((0..ELEMS).flat_map(|i| elem(i).into_iter().rev()));
    std::fs::write(path, bytes).unwrap();
    Input::parse(&format!(
        "{}={}",
        path.file_stem().unwrap().to_str().unwrap(),
        path.display()
    ))
    .unwrap()
}

/// `f` F32 and `i` I64, both big-endian.
fn inputs(dir: &Path) -> Vec<Input> {
    vec![
        big_endian_npy(&dir.join("f.npy"), Dtype::F32, |i| {
            (i as f32 * 0.37 - 1000.0).to_le_bytes().to_vec()
        }),
        big_endian_npy(&dir.join("i.npy"), Dtype::I64, |i| {
            (i as i64 - 500_000).to_le_bytes().to_vec()
        }),
    ]
}

/// Every parallel kernel, directly and through `convert` (byte swap, then a cast, of each input),
/// on inputs big enough to split into many tasks; returns what it computed. `step` is told the
/// name of each before it starts; `tag` names the output store.
fn work(dir: &Path, inputs: &[Input], tag: &str, step: &mut dyn FnMut(&str)) -> Vec<Vec<u8>> {
    let mut results = Vec::new();
    let floats: Vec<u8> = (0..ELEMS)
        .flat_map(|i| (i as f32 * 1.5).to_le_bytes())
        .collect();
    let ints: Vec<u8> = (0..ELEMS)
        .flat_map(|i| (i as i64 - 7).to_le_bytes())
        .collect();

    for unit in [2, 4, 8, 16] {
        step(&format!("swap_bytes, {unit}-byte units"));
        let mut bytes = floats.clone();
        swap_bytes(&mut bytes, unit);
        results.push(bytes);
    }
    for to in [Dtype::F16, Dtype::BF16, Dtype::F64] {
        step(&format!("cast F32 -> {to}"));
        let mut out = vec![0u8; ELEMS as usize * to.size()];
        cast(&floats, Dtype::F32, &mut out, to).unwrap();
        results.push(out);
    }
    step("cast I64 -> I32 (checked narrowing)");
    let mut out = vec![0u8; ELEMS as usize * 4];
    cast(&ints, Dtype::I64, &mut out, Dtype::I32).unwrap();
    results.push(out);

    step("convert big-endian F32 to F16 and I64 to I32");
    let mut options = ConvertOptions::default();
    options.dtype.add("f=f16").unwrap();
    options.dtype.add("i=i32").unwrap();
    let path = dir.join(format!("out-{tag}.mmt"));
    convert(
        inputs,
        &path,
        &options,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    let store = Store::read(&path).unwrap();
    for name in ["f", "i"] {
        results.push(store.tensor(name).unwrap().bytes().unwrap().to_vec());
    }
    results
}

#[test]
fn regression_kernels_in_a_forked_child_never_wait_for_the_global_pool() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = inputs(dir.path());

    // The parent uses rayon's global pool, as another library in the process would, so that its
    // threads exist; then runs everything once, so that the child inherits mmtensor's pool too.
    #[allow(clippy::disallowed_methods)] // The global pool, on purpose: this poisons it.
    let sum = (0..1_000_000u64).into_par_iter().sum::<u64>();
    assert_eq!(sum, 999_999 * 1_000_000 / 2);
    let expected = work(dir.path(), &inputs, "parent", &mut |_| {});

    let steps: PathBuf = dir.path().join("steps");
    // SAFETY: the child only runs Rust code of this process and leaves with `_exit`; the watchdog
    // (default action: terminate) bounds how long it can wait.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: alarm only sets a timer.
        unsafe { libc::alarm(WATCHDOG_S) };
        let log = |line: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&steps)
                .unwrap();
            writeln!(f, "{line}").unwrap();
        };
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let got = work(dir.path(), &inputs, "child", &mut |name| log(name));
            assert!(
                got == expected,
                "the child's results differ from the parent's"
            );
        }));
        let code = match run {
            Ok(()) => 0,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                log(&format!("panicked: {message}"));
                1
            }
        };
        // SAFETY: leaves the child at once, without running the parent's exit handlers or the
        // test harness.
        unsafe { libc::_exit(code) };
    }

    let mut status = 0;
    // SAFETY: waits for our own child, writing into a local.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    let log = std::fs::read_to_string(&steps).unwrap_or_default();
    let last = log.lines().last().unwrap_or("(none)");
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGALRM {
        panic!(
            "the forked child hung for {WATCHDOG_S} s (killed by its watchdog) in `{last}`: \
             parallel work reached rayon's global pool, whose threads fork did not copy"
        );
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child failed (wait status {status:#x}); last step: `{last}`"
    );
}
