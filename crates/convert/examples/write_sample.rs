//! Writes the built-in sample stores (the golden fixtures) into a folder and prints their layout.
//!
//! `cargo run -p mmtensor-convert --example write_sample -- OUT_DIR`

use std::path::PathBuf;

use mmtensor_format::FileLayout;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "sample-out".into()),
    );
    std::fs::create_dir_all(&dir)?;
    for (name, store) in mmtensor_convert::sample::golden_stores() {
        let path = dir.join(name);
        store.write(&path)?;
        let bytes = std::fs::read(&path)?;
        let layout = FileLayout::parse(&bytes, bytes.len() as u64)?;
        println!(
            "{} ({} bytes, alignment {})",
            path.display(),
            bytes.len(),
            layout.header().alignment
        );
        for t in &layout.header().tensors {
            let r = layout.tensor_range(t);
            println!(
                "  {:<14} {:<8} {:?} at bytes {}..{}",
                t.name, t.dtype, t.shape, r.start, r.end
            );
        }
    }
    Ok(())
}
