//! Prefetch threads are bounded process-wide: `for k in store: store.prefetch(k)` over many tensors
//! must not start a thread per call (it used to start up to four per call, unbounded).
//!
//! Its own test binary, so that no other test's prefetch threads are counted.

use std::io::Write;

use mmtensor::Store;

/// The cap `Prefetch::start` keeps the live workers under (`MAX_LIVE_WORKERS` in `hints.rs`).
const CAP: usize = 16;

/// The number of threads of this process (the `Threads:` line of /proc/self/status: one small
/// read, cheap enough to sample after every start).
fn threads() -> usize {
    let status =
        std::fs::read_to_string("/proc/self/status").expect("/proc/self/status is readable");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

#[test]
#[cfg(target_os = "linux")]
fn prefetch_threads_are_capped_process_wide() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    // F32 [1024, 16384]: 64 MiB, 64 KiB a row, written so the file has real pages to read.
    let (rows, cols) = (1024u64, 16384u64);
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..(rows * cols * 4) >> 20 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    // SAFETY: the test owns the file and does not change it while it is open.
    let store = unsafe { Store::open(&path) }.unwrap();
    let x = store.tensor("x").unwrap();

    let base = threads();
    let mut handles = Vec::new();
    let mut most = 0;
    for i in 0..1000 {
        // The whole tensor each time: up to four 16 MiB windows, so workers have work to do.
        handles.push(x.prefetch());
        let live = mmtensor::live_prefetch_workers();
        assert!(
            live <= CAP,
            "{live} live prefetch workers after {} starts",
            i + 1
        );
        most = most.max(threads().saturating_sub(base));
    }
    // The OS may still be tearing down a thread whose worker has ended (and freed its place), so
    // the thread count can briefly pass the cap by a few; without the cap it passes it within a
    // few starts and keeps growing.
    assert!(most <= 2 * CAP, "{most} threads alive at once");
    for h in handles {
        h.wait().unwrap();
    }
    assert_eq!(mmtensor::live_prefetch_workers(), 0);
}
