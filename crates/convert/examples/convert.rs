//! Minimal driver for measuring conversions: `convert OUT.mmt INPUT... [--dtype RULE]...`;
//! `MMT_CHUNK=BYTES` sets `ConvertOptions::chunk_size`.
//!
//! ```text
//! cargo run --release -p mmtensor-convert --example convert -- out.mmt big.npy --dtype bf16
//! ```

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use mmtensor_convert::{convert, ConvertOptions, Input, NoProgress};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: convert OUT.mmt INPUT... [--dtype RULE]")?;
    let mut options = ConvertOptions::default();
    if let Some(c) = std::env::var_os("MMT_CHUNK") {
        options.chunk_size = c.to_str().ok_or("MMT_CHUNK is not UTF-8")?.parse()?;
    }
    let mut inputs = Vec::new();
    while let Some(a) = args.next() {
        if a == "--dtype" {
            options
                .dtype
                .add(&args.next().ok_or("--dtype needs a value")?)?;
        } else {
            inputs.push(Input::parse(&a)?);
        }
    }
    let t = Instant::now();
    let s = convert(
        &inputs,
        &out,
        &options,
        &NoProgress,
        &AtomicBool::new(false),
    )?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{} tensors, {} input bytes in {secs:.3} s ({:.0} MiB/s)",
        s.tensors,
        s.input_bytes,
        s.input_bytes as f64 / secs / (1 << 20) as f64
    );
    Ok(())
}
