//! The gather a training loader does every step: 1024 random rows of 4 KiB (a 4 MiB batch) out of
//! a 64 MiB tensor whose pages are resident, by `take_into` against a per-row copy loop on one
//! thread, in the caller's order and in file order (which isolates what sorting costs or saves in
//! a warm cache). All write into a reused buffer, so none pays for allocation.

use criterion::{criterion_group, criterion_main, Criterion};
use mmtensor::Store;
use mmtensor_format::Dtype;
use mmtensor_testsupport::TestStore;
use std::hint::black_box;

const ROWS: u64 = 16384;
const ROW_BYTES: usize = 4096;
const BATCH: usize = 1024;

fn take(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("take.mmt");
    let bytes: Vec<u8> = (0..ROWS as usize * ROW_BYTES).map(|i| i as u8).collect();
    TestStore::new()
        .tensor("x", Dtype::F32, &[ROWS, ROW_BYTES as u64 / 4], bytes)
        .write(&path)
        .unwrap();
    // SAFETY: the benchmark owns the file and never modifies it while mapped.
    let store = unsafe { Store::open(&path) }.unwrap();
    let x = store.tensor("x").unwrap();
    // Warm the page cache and the mapping, so both sides measure copying rather than faults.
    x.prefetch().wait().unwrap();
    // A fixed pseudo-random batch (an LCG), distinct rows as a shuffled epoch gives.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut seen = std::collections::HashSet::new();
    let mut indices = Vec::with_capacity(BATCH);
    while indices.len() < BATCH {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let i = (state >> 33) % ROWS;
        if seen.insert(i) {
            indices.push(i);
        }
    }
    let mut out = vec![0u8; BATCH * ROW_BYTES];

    let mut g = c.benchmark_group("take 1024 random rows of 4 KiB");
    g.throughput(criterion::Throughput::Bytes(out.len() as u64));
    g.bench_function("per-row copy loop", |b| {
        let all = x.bytes().unwrap();
        b.iter(|| {
            for (k, &i) in black_box(&indices).iter().enumerate() {
                let src = i as usize * ROW_BYTES;
                out[k * ROW_BYTES..(k + 1) * ROW_BYTES].copy_from_slice(&all[src..src + ROW_BYTES]);
            }
            black_box(&out);
        })
    });
    g.bench_function("per-row copy loop, rows sorted into file order", |b| {
        let all = x.bytes().unwrap();
        let mut order: Vec<(u64, usize)> = indices.iter().copied().zip(0..).collect();
        order.sort_unstable();
        b.iter(|| {
            for &(i, k) in black_box(&order).iter() {
                let src = i as usize * ROW_BYTES;
                out[k * ROW_BYTES..(k + 1) * ROW_BYTES].copy_from_slice(&all[src..src + ROW_BYTES]);
            }
            black_box(&out);
        })
    });
    g.bench_function("Tensor::take_into", |b| {
        b.iter(|| {
            x.take_into(black_box(&indices), &mut out).unwrap();
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, take);
criterion_main!(benches);
