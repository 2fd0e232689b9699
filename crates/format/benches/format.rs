//! Hot paths of the format crate: block checksums (run over every byte by the writer and by
//! `verify`) and header parsing (run by every open).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmtensor_format::{block_checksums, BlockHasher, Dtype, FileLayout, LayoutBuilder};
use std::hint::black_box;

fn checksums(c: &mut Criterion) {
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i * 2_654_435_761) as u8)
        .collect();
    let mut g = c.benchmark_group("block_checksum");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("whole buffer, 1 MiB blocks", |b| {
        b.iter(|| block_checksums(black_box(&data), 1 << 20))
    });
    for chunk in [64 << 10, 8 << 20] {
        g.bench_with_input(
            BenchmarkId::new("streamed, 1 MiB blocks, chunk", chunk),
            &chunk,
            |b, &chunk| {
                b.iter(|| {
                    let mut h = BlockHasher::new(1 << 20);
                    for c in data.chunks(chunk) {
                        h.update(c);
                    }
                    h.finish()
                })
            },
        );
    }
    g.finish();
}

fn header(c: &mut Criterion) {
    let mut g = c.benchmark_group("open_header");
    // 100,000 is the "many small tensors" case of issue 10 (the example `open_many` adds heap).
    for n in [10usize, 1000, 10_000, 100_000] {
        let mut b = LayoutBuilder::new();
        for i in 0..n {
            b.tensor(&format!("layer.{i}.weight"), Dtype::BF16, &[64, 64])
                .unwrap();
        }
        let layout = b.build().unwrap();
        let prefix = layout.encode_head(0);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(
            BenchmarkId::new("FileLayout::parse, tensors", n),
            &prefix,
            |bench, prefix| {
                bench.iter(|| FileLayout::parse(black_box(prefix), layout.file_len()).unwrap())
            },
        );
    }
    g.finish();
}

criterion_group!(benches, checksums, header);
criterion_main!(benches);
