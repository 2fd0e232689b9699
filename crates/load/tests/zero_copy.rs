//! Zero copy, proven: a view's slice lies inside a file mapping of the store, and opening and viewing
//! a 256 MiB tensor grows the process's anonymous memory by less than a small constant.
//!
//! This file holds one test so that no other test allocates in the process while it measures.

use mmtensor::Store;
use mmtensor_format::{Dtype, LayoutBuilder};

const ROWS: u64 = 64 * 1024;
const COLS: u64 = 1024;
/// 64 Ki rows of 1 Ki f32: 256 MiB.
const BYTES: u64 = ROWS * COLS * 4;

/// Anonymous resident memory of this process, in bytes (`RssAnon` in /proc/self/status).
fn rss_anon() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The path of the file mapped at `addr`, from /proc/self/maps.
fn mapped_file_at(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (lo, hi) = fields.next()?.split_once('-')?;
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).ok()?,
            usize::from_str_radix(hi, 16).ok()?,
        );
        (lo..hi)
            .contains(&addr)
            .then(|| fields.nth(4).unwrap_or("").to_owned())
    })
}

#[test]
fn opening_and_viewing_a_large_tensor_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.mmt");
    let mut plan = LayoutBuilder::new();
    plan.tensor("x", Dtype::F32, &[ROWS, COLS]).unwrap();
    plan.tensor("y", Dtype::I64, &[ROWS]).unwrap();
    let mut w = mmtensor_convert::StoreWriter::create(&path, plan.build().unwrap()).unwrap();
    {
        let chunk: Vec<u8> = (0..1u32 << 18)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        w.begin_tensor("x").unwrap();
        for _ in 0..BYTES / chunk.len() as u64 {
            w.write_chunk(&chunk).unwrap();
        }
        w.end_tensor().unwrap();
        let y: Vec<u8> = (0..ROWS as i64).flat_map(i64::to_le_bytes).collect();
        w.write_tensor("y", &y).unwrap();
    }
    w.finish().unwrap();

    let before = rss_anon();
    // SAFETY: the test owns the file and does not change it while the store is open.
    let store = unsafe { Store::open(&path) }.unwrap();
    let x = store.tensor("x").unwrap();
    let xs: &[f32] = x.as_slice().unwrap();
    let batch: &[f32] = x.rows(ROWS / 2..ROWS).unwrap().as_slice().unwrap();
    let after = rss_anon();
    assert_eq!(xs.len() as u64, ROWS * COLS);
    assert_eq!(batch.len() as u64, ROWS / 2 * COLS);

    // The slices point into a mapping of the store's file, not into the heap.
    let canonical = path.canonicalize().unwrap();
    for addr in [
        xs.as_ptr() as usize,
        xs.as_ptr_range().end as usize - 1,
        batch.as_ptr() as usize,
    ] {
        if let Some(file) = mapped_file_at(addr) {
            assert_eq!(file, canonical.to_str().unwrap(), "address {addr:#x}");
        }
    }
    assert_eq!(batch.as_ptr(), xs[(ROWS / 2 * COLS) as usize..].as_ptr());

    // Nothing proportional to the data was allocated or read (256 MiB would be 262,144 KiB).
    if let (Some(before), Some(after)) = (before, after) {
        let grown = after.saturating_sub(before);
        assert!(grown < 1 << 20, "anonymous RSS grew by {grown} bytes");
    }

    // Now touch the data: it reads back right, and still costs no anonymous memory (the pages are
    // the page cache's, counted in RssFile).
    let before = rss_anon();
    assert_eq!(xs[12345], 12345.0);
    let sum: f64 = batch.iter().step_by(4096).map(|&v| v as f64).sum();
    assert!(sum > 0.0);
    let y: &[i64] = store.tensor("y").unwrap().as_slice().unwrap();
    assert_eq!(y[ROWS as usize - 1], ROWS as i64 - 1);
    if let (Some(before), Some(after)) = (before, rss_anon()) {
        let grown = after.saturating_sub(before);
        assert!(
            grown < 1 << 20,
            "anonymous RSS grew by {grown} bytes while reading"
        );
    }
}
