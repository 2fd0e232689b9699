//! Cast and reorder kernels: what a casting or transposing conversion spends its CPU on.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmtensor_convert::transform::{cast, swap_bytes, FortranToC, ReadAt};
use mmtensor_format::Dtype;
use std::hint::black_box;

/// A file read with positioned reads.
struct Pread(std::fs::File);

impl ReadAt for Pread {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
}

fn casts(c: &mut Criterion) {
    let n = 4 << 20; // elements per call: a few chunks' worth
    let f64s: Vec<u8> = (0..n)
        .flat_map(|i| (i as f64 * 0.001 - 7.0).to_le_bytes())
        .collect();
    let f32s: Vec<u8> = (0..n)
        .flat_map(|i| (i as f32 * 0.001 - 7.0).to_le_bytes())
        .collect();
    let i64s: Vec<u8> = (0..n)
        .flat_map(|i| ((i % 100) as i64).to_le_bytes())
        .collect();
    let mut g = c.benchmark_group("cast");
    for (src, from, to) in [
        (&f64s, Dtype::F64, Dtype::BF16),
        (&f64s, Dtype::F64, Dtype::F32),
        (&f32s, Dtype::F32, Dtype::F16),
        (&f32s, Dtype::F32, Dtype::BF16),
        (&i64s, Dtype::I64, Dtype::I8),
    ] {
        let mut dst = vec![0u8; n * to.size()];
        g.throughput(Throughput::Bytes(src.len() as u64));
        g.bench_function(
            BenchmarkId::new("input bytes", format!("{from}->{to}")),
            |b| b.iter(|| cast(black_box(src), from, &mut dst, to).unwrap()),
        );
    }
    g.finish();

    let mut g = c.benchmark_group("reorder");
    let mut buf = f64s.clone();
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("swap_bytes f64", |b| {
        b.iter(|| swap_bytes(black_box(&mut buf), 8))
    });
    // A Fortran-order 2048 x 2048 f64 matrix reordered to C order in 8 MiB chunks.
    let shape = [2048u64, 2048];
    let src: Vec<u8> = f64s[..2048 * 2048 * 8].to_vec();
    g.throughput(Throughput::Bytes(src.len() as u64));
    g.bench_function("Fortran to C, 2048x2048 f64, 8 MiB chunks", |b| {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        b.iter(|| {
            let mut t = FortranToC::new(&shape, Dtype::F64, 8 << 20);
            while !t.is_done() {
                t.next_chunk(black_box(&src[..]), &mut scratch, &mut out)
                    .unwrap();
            }
        })
    });
    // The same, read from a file (in the page cache) with positioned reads, as the converter does.
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &src).unwrap();
    let file = Pread(file);
    g.bench_function(
        "Fortran to C from a file, 2048x2048 f64, 8 MiB chunks",
        |b| {
            let (mut out, mut scratch) = (Vec::new(), Vec::new());
            b.iter(|| {
                let mut t = FortranToC::new(&shape, Dtype::F64, 8 << 20);
                while !t.is_done() {
                    t.next_chunk(black_box(&file), &mut scratch, &mut out)
                        .unwrap();
                }
            })
        },
    );
    g.finish();
}

criterion_group!(benches, casts);
criterion_main!(benches);
