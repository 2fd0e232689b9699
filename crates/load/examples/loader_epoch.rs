//! Times one loader epoch over a store or a sharded dataset folder: `cargo run --release -p
//! mmtensor --example loader_epoch -- PATH BATCH SHUFFLE PREFETCH [EPOCHS]` (SHUFFLE: none, full or
//! block; EPOCHS: 1 unless given). Prints each epoch's batches per second: the first epoch of a
//! process maps every page it touches, later ones find the page tables filled.

use std::time::Instant;

use mmtensor::order::Shuffle;
use mmtensor::{Dataset, Loader, LoaderOptions, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if !(5..=6).contains(&args.len()) {
        return Err("usage: loader_epoch STORE BATCH none|full|block PREFETCH [EPOCHS]".into());
    }
    let epochs: u64 = args.get(5).map_or(Ok(1), |e| e.parse())?;
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
    for epoch in 0..epochs {
        loader.set_epoch(epoch);
        let start = Instant::now();
        let mut n = 0usize;
        for batch in loader.iter()? {
            std::hint::black_box(batch?);
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "epoch {epoch}: {n} batches in {secs:.3} s: {:.0} batches/s",
            n as f64 / secs
        );
    }
    Ok(())
}
