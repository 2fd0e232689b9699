//! Parse time and heap of `FileLayout::parse` + one lookup on a store of many small tensors.
//!
//! ```text
//! cargo run --release -p mmtensor-format --example open_many [TENSORS] [METADATA_PER_TENSOR]
//! ```
//!
//! Builds the header of a store of `TENSORS` (default 100,000) 2-D BF16 tensors named
//! `layer.N.weight`, with `METADATA_PER_TENSOR` (default 0; the converter wrote 2) metadata entries
//! per tensor, then parses it 21 times and prints the median time, the heap that the parsed layout
//! keeps, and the peak heap during the parse, counted by a global allocator.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use mmtensor_format::{Dtype, FileLayout, LayoutBuilder};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, new: usize) -> *mut u8 {
        if new >= l.size() {
            let live = LIVE.fetch_add(new - l.size(), Relaxed) + new - l.size();
            PEAK.fetch_max(live, Relaxed);
        } else {
            LIVE.fetch_sub(l.size() - new, Relaxed);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(100_000);
    let meta = args.next().unwrap_or(0);
    let mut b = LayoutBuilder::new();
    b.alignment(64).unwrap();
    for i in 0..n {
        let name = format!("layer.{i}.weight");
        b.tensor(&name, Dtype::BF16, &[64, 32 + (i % 7) as u64])
            .unwrap();
        for m in 0..meta {
            b.metadata(
                format!("source.tensor.{name}.{m}"),
                format!("model-{:05}-of-00042.safetensors:{name}", i % 42),
            )
            .unwrap();
        }
    }
    let layout = b.build().unwrap();
    let head = layout.encode_head(0);
    let file_len = layout.file_len();
    drop(b);
    let probe = format!("layer.{}.weight", n / 2);

    let mut times = Vec::new();
    let (mut kept, mut peak) = (0, 0);
    for _ in 0..21 {
        let before = LIVE.load(Relaxed);
        PEAK.store(before, Relaxed);
        let t = Instant::now();
        let parsed = FileLayout::parse(black_box(&head), file_len).unwrap();
        let found = parsed.tensor(&probe).map(|t| t.length);
        times.push(t.elapsed());
        black_box(found.unwrap());
        kept = LIVE.load(Relaxed) - before;
        peak = PEAK.load(Relaxed) - before;
        drop(parsed);
    }
    times.sort();
    println!(
        "{n} tensors, {} metadata entries, header {:.1} MiB: parse + lookup median {:.1} ms \
         (min {:.1}), heap kept {:.1} MiB, peak {:.1} MiB",
        n * meta,
        mib(head.len()),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        mib(kept),
        mib(peak),
    );
}
