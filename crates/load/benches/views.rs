//! The loader's hot paths: open (header validation, no data read), typed views, row slices.

use criterion::{criterion_group, criterion_main, Criterion};
use mmtensor::Store;
use mmtensor_format::Dtype;
use mmtensor_testsupport::TestStore;
use std::hint::black_box;

fn views(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.mmt");
    let zeros = vec![0u8; 256 * 1024 * 4];
    (0..100)
        .fold(TestStore::new(), |s, i| {
            s.tensor(
                &format!("layer.{i}"),
                Dtype::F32,
                &[256, 1024],
                zeros.clone(),
            )
        })
        .write(&path)
        .unwrap();

    let mut g = c.benchmark_group("loader");
    g.bench_function("Store::open, 100 tensors, 100 MiB", |b| {
        // SAFETY: the benchmark owns the file and never modifies it while mapped.
        b.iter(|| unsafe { Store::open(black_box(&path)) }.unwrap())
    });
    // SAFETY: as above.
    let store = unsafe { Store::open(&path) }.unwrap();
    g.bench_function("tensor(name) + as_slice::<f32>", |b| {
        b.iter(|| {
            black_box(
                store
                    .tensor(black_box("layer.57"))
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .len(),
            )
        })
    });
    let t = store.tensor("layer.57").unwrap();
    g.bench_function("rows(64..128) + as_slice::<f32>", |b| {
        b.iter(|| {
            black_box(
                t.rows(black_box(64..128))
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .len(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, views);
criterion_main!(benches);
