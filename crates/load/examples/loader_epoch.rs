//! Times one loader epoch over a store or a sharded dataset folder: `cargo run --release -p
//! mmtensor --example loader_epoch -- PATH BATCH SHUFFLE PREFETCH` (SHUFFLE: none, full or block).
//! Prints batches per second.

use std::time::Instant;

use mmtensor::order::Shuffle;
use mmtensor::{Dataset, Loader, LoaderOptions, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err("usage: loader_epoch STORE BATCH none|full|block PREFETCH".into());
    }
    let shuffle = match args[3].as_str() {
        "none" => Shuffle::None,
        "full" => Shuffle::Full,
        "block" => Shuffle::DEFAULT_BLOCK,
        other => return Err(format!("unknown shuffle {other}").into()),
    };
    let options = LoaderOptions {
        shuffle,
        prefetch: args[4].parse()?,
        ..LoaderOptions::new(args[2].parse()?)
    };
    let mut loader = if std::path::Path::new(&args[1]).is_dir() {
        // SAFETY: a benchmark over files nobody modifies while it runs.
        let dataset = unsafe { Dataset::open(&args[1])? };
        Loader::from_dataset(&dataset, options)?
    } else {
        // SAFETY: as above.
        let store = unsafe { Store::open(&args[1])? };
        Loader::new(&store, options)?
    };
    let start = Instant::now();
    let mut n = 0usize;
    for batch in loader.iter()? {
        std::hint::black_box(batch?);
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} batches in {:.3} s: {:.0} batches/s",
        n,
        secs,
        n as f64 / secs
    );
    Ok(())
}
