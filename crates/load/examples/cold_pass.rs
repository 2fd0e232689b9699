//! A full pass over a tensor on a cold page cache: plain `read()`, a page-fault-driven pass over the
//! mapping, the same with `Advice::Sequential`, a pass behind `Tensor::prefetch`, and (when a Python
//! with NumPy is found) NumPy's `np.load(mmap_mode="r")` pass over the same bytes saved as `.npy`.
//!
//! ```sh
//! cargo run --release -p mmtensor --example cold_pass -- DIR [GIB] [ROUNDS]
//! ```
//!
//! It writes `DIR/cold.mmt` (and `DIR/cold.npy`) of GIB GiB (default 4), evicts them from the page
//! cache with `posix_fadvise(DONTNEED)` before every run, alternates the methods over ROUNDS rounds
//! (default 3), prints medians with the ratio to `read()` from the same run, and deletes the files.
//! Every pass sums the data as u64 words, so each one reads every byte. Linux only.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mmtensor::{Advice, Store};
use mmtensor_format::Dtype;
use mmtensor_testsupport::{evict, f32_bytes, median, TestStore};

type Error = Box<dyn std::error::Error>;

const COLS: u64 = 1024;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or("usage: cold_pass DIR [GIB] [ROUNDS]")?);
    let gib: u64 = args.next().map_or(Ok(4), |s| s.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let bytes = gib << 30;
    let rows = bytes / (COLS * 4);
    let mmt = dir.join("cold.mmt");
    let npy = dir.join("cold.npy");
    let python = python_with_numpy();

    eprintln!("writing {gib} GiB to {} ...", mmt.display());
    write_store(&mmt, rows)?;
    if python.is_some() {
        write_npy(&npy, rows)?;
    }

    let mut methods: Vec<&str> = vec!["read", "mmap", "mmap+sequential", "prefetch"];
    if python.is_some() {
        methods.push("numpy");
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    let mut check = None;
    for round in 0..rounds {
        for k in 0..methods.len() {
            // Rotate the order each round so no method always runs right after another.
            let m = (k + round) % methods.len();
            evict(&mmt)?;
            if python.is_some() {
                evict(&npy)?;
            }
            std::thread::sleep(Duration::from_millis(300));
            let (secs, sum) = match methods[m] {
                "numpy" => numpy_pass(python.as_deref().unwrap_or(Path::new("python3")), &npy)?,
                method => rust_pass(method, &mmt)?,
            };
            if let Some(sum) = sum {
                assert_eq!(
                    *check.get_or_insert(sum),
                    sum,
                    "{} read different bytes",
                    methods[m]
                );
            }
            eprintln!("round {round}: {:<16} {secs:.3} s", methods[m]);
            times[m].push(secs);
        }
    }
    let _ = std::fs::remove_file(&mmt);
    let _ = std::fs::remove_file(&npy);

    let medians: Vec<f64> = times
        .iter()
        .map(|t| median(t).ok_or("no rounds were run"))
        .collect::<Result<_, _>>()?;
    println!("cold full pass over {gib} GiB, median of {rounds} rounds:");
    println!("| method | median s | MiB/s | vs read() |");
    println!("|---|---|---|---|");
    for (m, &t) in methods.iter().zip(&medians) {
        println!(
            "| {m} | {t:.3} | {:.0} | {:.2}x |",
            bytes as f64 / t / (1 << 20) as f64,
            medians[0] / t
        );
    }
    Ok(())
}

fn write_store(path: &Path, rows: u64) -> Result<(), Error> {
    TestStore::new()
        .tensor_chunks("x", Dtype::F32, &[rows, COLS], chunks(rows))
        .write(path)?;
    Ok(())
}

fn write_npy(path: &Path, rows: u64) -> Result<(), Error> {
    let mut f = std::io::BufWriter::new(File::create(path)?);
    f.write_all(&mmtensor_format::npy::encode_header(
        Dtype::F32,
        &[rows, COLS],
    ))?;
    for c in chunks(rows) {
        f.write_all(&c)?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// The tensor's bytes (f32 values 0, 1, 2, ...) in 8 MiB chunks, made as they are consumed.
fn chunks(rows: u64) -> impl Iterator<Item = Vec<u8>> {
    let per_chunk = (8 << 20) / (COLS * 4);
    (0..rows).step_by(per_chunk as usize).map(move |row| {
        let n = per_chunk.min(rows - row);
        f32_bytes((row * COLS..(row + n) * COLS).map(|i| i as f32))
    })
}

fn sum_words(bytes: &[u8]) -> u64 {
    // The tensor and every read buffer here are 8-aligned multiples of 8 bytes.
    let words: &[u64] = bytemuck::cast_slice(bytes);
    words.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

/// Times one pass; returns seconds and the sum of the tensor's words.
fn rust_pass(method: &str, path: &Path) -> Result<(f64, Option<u64>), Error> {
    let t = Instant::now();
    // SAFETY: this program owns the file and does not change it while it is mapped.
    let store = unsafe { Store::open(path)? };
    let x = store.tensor("x")?;
    let sum = match method {
        "read" => {
            let range = x.byte_range();
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(range.start))?;
            let mut f = f.take(range.end - range.start);
            let mut buf = vec![0u64; 1 << 20];
            let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
            let mut sum = 0u64;
            loop {
                let n = fill(&mut f, buf)?;
                if n == 0 {
                    break sum;
                }
                sum = sum.wrapping_add(sum_words(&buf[..n]));
            }
        }
        "mmap" => sum_words(x.bytes()?),
        "mmap+sequential" => {
            x.advise(Advice::Sequential)?;
            sum_words(x.bytes()?)
        }
        "prefetch" => {
            let _running = x.prefetch();
            sum_words(x.bytes()?)
        }
        other => return Err(format!("unknown method {other}").into()),
    };
    Ok((t.elapsed().as_secs_f64(), Some(sum)))
}

/// Reads until `buf` is full or the input ends, so every chunk but the last is whole words.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn numpy_pass(python: &Path, npy: &Path) -> Result<(f64, Option<u64>), Error> {
    let script = "import sys, time, numpy as np
t = time.perf_counter()
a = np.load(sys.argv[1], mmap_mode='r')
s = int(a.reshape(-1).view(np.uint64).sum(dtype=np.uint64))
print(time.perf_counter() - t, s)";
    let out = Command::new(python)
        .args(["-c", script])
        .arg(npy)
        .output()?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    let text = String::from_utf8(out.stdout)?;
    let mut fields = text.split_whitespace();
    let secs: f64 = fields.next().ok_or("no time from python")?.parse()?;
    let sum: u64 = fields.next().ok_or("no sum from python")?.parse()?;
    Ok((secs, Some(sum)))
}

fn python_with_numpy() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    std::env::var_os("MMT_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("python3")])
        .find(|p| {
            Command::new(p)
                .args(["-c", "import numpy"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}
