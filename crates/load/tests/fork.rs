//! Every public parallel operation runs in mmtensor's per-process pool (`mmtensor::pool`), never
//! in rayon's global one: a child forked after its parent used the global pool (a fork-started
//! PyTorch DataLoader worker whose parent gathered, or used tokenizers or polars) inherits that
//! pool without its threads, and parallel work queued there would wait forever.
//!
//! One test in this file: `fork` copies only the calling thread, so the child must not depend on
//! any other test's threads.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mmtensor::order::Shuffle;
use mmtensor::{Dataset, Dtype, Loader, LoaderOptions, Store};
use mmtensor_convert::sample::{SampleStore, SampleTensor};
use mmtensor_convert::{convert_dataset, ConvertOptions, Input, NoProgress};
use mmtensor_format::npy;
use rayon::prelude::*;

/// Rows of every tensor: more than the 65,536 indices from which a gather sorts in parallel.
const ROWS: u64 = 200_000;
/// Seconds the child may take before it counts as hung. The work takes well under a second; this
/// only bounds how long a regression takes to fail.
const WATCHDOG_S: u32 = 60;

/// `x` F32 [ROWS, 4] (16-byte rows: the copies run in parallel too) and `y` U8 [ROWS] (one-byte
/// rows: only the sort is big enough for the pool).
fn store(dir: &Path) -> PathBuf {
    let sample = SampleStore {
        alignment: 64,
        block_size: 4096,
        metadata: vec![],
        tensors: vec![
            SampleTensor::pattern("x", Dtype::F32, &[ROWS, 4], 1),
            SampleTensor::pattern("y", Dtype::U8, &[ROWS], 2),
        ],
    };
    let path = dir.join("s.mmt");
    sample.write(&path).unwrap();
    path
}

/// A dataset of ROWS rows in four shards: `x` U16 [ROWS, 3], `y` I64 [ROWS] (rows of 14 bytes).
fn dataset(dir: &Path) -> PathBuf {
    let mut x = npy::encode_header(Dtype::U16, &[ROWS, 3]);
    x.extend((0..ROWS * 3).flat_map(|i| (i as u16).to_le_bytes()));
    let mut y = npy::encode_header(Dtype::I64, &[ROWS]);
    y.extend((0..ROWS).flat_map(|r| (r as i64).to_le_bytes()));
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    std::fs::write(&xp, x).unwrap();
    std::fs::write(&yp, y).unwrap();
    let inputs = [
        Input::parse(&format!("x={}", xp.display())).unwrap(),
        Input::parse(&format!("y={}", yp.display())).unwrap(),
    ];
    let out = dir.join("ds");
    convert_dataset(
        &inputs,
        &out,
        &ConvertOptions::default(),
        ROWS / 4 * 14,
        &NoProgress,
        &AtomicBool::new(false),
    )
    .unwrap();
    out
}

/// Every row once, shuffled (a fixed LCG-driven Fisher-Yates), then some repeats.
fn shuffled() -> Vec<u64> {
    let mut v: Vec<u64> = (0..ROWS).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..v.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (state >> 33) as usize % (i + 1));
    }
    v.extend_from_slice(&[7, 7, ROWS - 1]);
    v
}

/// Every parallel operation of the crate's public API, each big enough to take its parallel
/// path, returning what it computed. `step` is told the name of each before it starts.
fn work(store: &Store, ds: &Dataset, indices: &[u64], step: &mut dyn FnMut(&str)) -> Vec<Vec<u8>> {
    let mut results = Vec::new();
    let x = store.tensor("x").unwrap();
    let y = store.tensor("y").unwrap();

    step("Tensor::take_into (16-byte rows)");
    let mut out = vec![0u8; indices.len() * 16];
    x.take_into(indices, &mut out).unwrap();
    results.push(out);

    step("Tensor::take (1-byte rows)");
    results.push(y.take::<u8>(indices).unwrap());

    step("OwnedTensor::take_bytes");
    results.push(
        store
            .tensor_owned("x")
            .unwrap()
            .take_bytes(indices)
            .unwrap(),
    );

    step("Tensor::take_into_as (16-byte rows cast to 32)");
    let mut out = vec![0u8; indices.len() * 32];
    x.take_into_as(indices, &mut out, Dtype::F64).unwrap();
    results.push(out);

    step("Column::take_into_as `x` across shards, cast");
    let mut out = vec![0u8; indices.len() * 24];
    ds.column("x")
        .unwrap()
        .take_into_as(indices, &mut out, Dtype::I64)
        .unwrap();
    results.push(out);

    for name in ["x", "y"] {
        step(&format!("Column::take_into `{name}` across shards"));
        let col = ds.column(name).unwrap();
        let mut out = vec![0u8; indices.len() * col.row_bytes() as usize];
        col.take_into(indices, &mut out).unwrap();
        results.push(out);
    }

    // Batches bigger than the parallel sort's threshold, gathered by the loader's worker thread
    // (prefetch 2) and by the calling thread (prefetch 0).
    for prefetch in [2, 0] {
        let options = LoaderOptions {
            shuffle: Shuffle::Full,
            seed: 5,
            prefetch,
            ..LoaderOptions::new(ROWS / 2 + 1)
        };
        step(&format!("Loader over a store, prefetch {prefetch}"));
        let mut loader = Loader::new(store, options.clone()).unwrap();
        for batch in loader.iter().unwrap() {
            let batch = batch.unwrap();
            results.extend(batch.columns().map(|c| c.bytes().to_vec()));
        }
        step(&format!("Loader over a dataset, prefetch {prefetch}"));
        let mut loader = Loader::from_dataset(ds, options).unwrap();
        for batch in loader.iter().unwrap() {
            let batch = batch.unwrap();
            results.extend(batch.columns().map(|c| c.bytes().to_vec()));
        }
    }

    step("Store::verify");
    store.verify().unwrap();
    step("Tensor::verify");
    x.rows(1000..ROWS - 1000).unwrap().verify().unwrap();
    step("Dataset::verify");
    ds.verify().unwrap();

    step("pool::install");
    let sum = mmtensor::pool::install(|| {
        #[allow(clippy::disallowed_methods)] // Inside `pool::install`: what it is for.
        let sum = (0..ROWS).into_par_iter().sum::<u64>();
        sum
    });
    results.push(sum.to_le_bytes().to_vec());
    results
}

#[test]
fn regression_parallel_work_in_a_forked_child_never_waits_for_the_global_pool() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the test owns the files and never modifies them while they are mapped.
    let store = unsafe { Store::open(store(dir.path())) }.unwrap();
    // SAFETY: as above.
    let ds = unsafe { Dataset::open(dataset(dir.path())) }.unwrap();
    let indices = shuffled();

    // The parent uses rayon's global pool, as another library in the process would, so that its
    // threads exist; then runs everything once, so that the child inherits mmtensor's pool too.
    #[allow(clippy::disallowed_methods)] // The global pool, on purpose: this poisons it.
    let sum = (0..1_000_000u64).into_par_iter().sum::<u64>();
    assert_eq!(sum, 999_999 * 1_000_000 / 2);
    let expected = work(&store, &ds, &indices, &mut |_| {});

    let steps = dir.path().join("steps");
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
            let got = work(&store, &ds, &indices, &mut |name| log(name));
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
