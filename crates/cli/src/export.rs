//! `mmt export`: a store's tensors back out as `.npy` files or one `.safetensors` file, through
//! `mmtensor_convert::export` (which writes every file through a temporary file and a rename).

use std::path::Path;

use anyhow::Result;
use mmtensor_convert::export::{export, ExportFormat};

use crate::human;

/// What to export to.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// A folder holding NAME.npy per tensor.
    Npy,
    /// One .safetensors file.
    Safetensors,
    /// A ragged column as a Megatron-LM indexed dataset: OUTPUT.bin + OUTPUT.idx.
    Megatron,
}

/// Exports `store` (with `Megatron`, its ragged `column`; the store may be a dataset folder) to
/// `output`.
pub fn run(store_path: &Path, kind: Kind, output: &Path, column: &str, quiet: bool) -> Result<()> {
    let format = match kind {
        Kind::Npy => ExportFormat::Npy,
        Kind::Safetensors => ExportFormat::Safetensors,
        Kind::Megatron => return megatron(store_path, column, output, quiet),
    };
    crate::info::read_layout(store_path)?;
    let store = crate::open::open_mapped(store_path)?;
    let done = match export(&store, format, output) {
        Ok(done) => Some(done),
        Err(e @ mmtensor_convert::Error::NotDurable { .. }) => {
            // The export is complete and in place; only its durability is unconfirmed.
            eprintln!("warning: {e}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    if let (false, Some(done)) = (quiet, done) {
        eprintln!(
            "exported {} tensor{} ({}) to {}",
            done.tensors,
            if done.tensors == 1 { "" } else { "s" },
            human::bytes(done.bytes),
            output.display()
        );
    }
    Ok(())
}

/// Writes ragged `column` of the store or dataset at `source` as `output.bin` + `output.idx`.
fn megatron(source: &Path, column: &str, output: &Path, quiet: bool) -> Result<()> {
    let done = mmtensor_convert::tokens::export_megatron(source, column, output)?;
    if !quiet {
        eprintln!(
            "exported `{column}`: {} sequences, {} tokens, to {} and {}",
            done.sequences,
            done.tokens,
            done.bin.display(),
            done.idx.display()
        );
    }
    Ok(())
}
