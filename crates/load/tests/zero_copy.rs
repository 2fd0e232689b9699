//! Zero copy, proven: a view's slice lies inside a file mapping of the store, and opening and viewing
//! a 256 MiB tensor grows the process's anonymous memory by less than a small constant.
//!
//! This file holds one test so that no other test allocates in the process while it measures.

use mmtensor::Store;
use mmtensor_format::Dtype;
use mmtensor_testsupport::{f32_bytes, mapped_file_at, rss_anon, TestStore};

const ROWS: u64 = 64 * 1024;
const COLS: u64 = 1024;
/// 64 Ki rows of 1 Ki f32: 256 MiB.
const BYTES: u64 = ROWS * COLS * 4;

/// The anonymous RSS of this process; /proc giving nothing fails the test instead of skipping it.
fn rss() -> u64 {
    rss_anon().expect("the zero-copy proof needs RssAnon from /proc/self/status")
}

#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "measures through Linux's /proc")]
fn opening_and_viewing_a_large_tensor_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.mmt");
    // x holds f32 0, 1, ..., 2^18 - 1, repeated: 1 MiB chunks streamed, never 256 MiB in memory.
    let chunk = f32_bytes((0..1u32 << 18).map(|i| i as f32));
    let chunks = BYTES / chunk.len() as u64;
    let y: Vec<u8> = (0..ROWS as i64).flat_map(i64::to_le_bytes).collect();
    TestStore::new()
        .tensor_chunks(
            "x",
            Dtype::F32,
            &[ROWS, COLS],
            std::iter::repeat_n(chunk, chunks as usize),
        )
        .tensor("y", Dtype::I64, &[ROWS], y)
        .write(&path)
        .unwrap();

    let before = rss();
    // SAFETY: the test owns the file and does not change it while the store is open.
    let store = unsafe { Store::open(&path) }.unwrap();
    let x = store.tensor("x").unwrap();
    let xs: &[f32] = x.as_slice().unwrap();
    let batch: &[f32] = x.rows(ROWS / 2..ROWS).unwrap().as_slice().unwrap();
    let after = rss();
    assert_eq!(xs.len() as u64, ROWS * COLS);
    assert_eq!(batch.len() as u64, ROWS / 2 * COLS);

    // The slices point into a mapping of the store's file, not into the heap.
    let canonical = path.canonicalize().unwrap();
    for addr in [
        xs.as_ptr() as usize,
        xs.as_ptr_range().end as usize - 1,
        batch.as_ptr() as usize,
    ] {
        let file = mapped_file_at(addr).expect("the view's address in /proc/self/maps");
        assert_eq!(
            file.as_deref(),
            Some(canonical.to_str().unwrap()),
            "address {addr:#x}"
        );
    }
    assert_eq!(batch.as_ptr(), xs[(ROWS / 2 * COLS) as usize..].as_ptr());

    // Nothing proportional to the data was allocated or read (256 MiB would be 262,144 KiB).
    let grown = after.saturating_sub(before);
    assert!(grown < 1 << 20, "anonymous RSS grew by {grown} bytes");

    // Now touch the data: it reads back right, and still costs no anonymous memory (the pages are
    // the page cache's, counted in RssFile).
    let before = rss();
    assert_eq!(xs[12345], 12345.0);
    let sum: f64 = batch.iter().step_by(4096).map(|&v| v as f64).sum();
    assert!(sum > 0.0);
    let y: &[i64] = store.tensor("y").unwrap().as_slice().unwrap();
    assert_eq!(y[ROWS as usize - 1], ROWS as i64 - 1);
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 1 << 20,
        "anonymous RSS grew by {grown} bytes while reading"
    );
}
