//! `mmt commit`: the rows of every finished part of a write by many writers made visible at once.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::human;

/// Runs `mmt commit` on the dataset folder `dir`; `parts`: the write was made of parts
/// `0..parts`, every one of which must have finished.
pub(crate) fn run(dir: &Path, parts: Option<u64>, quiet: bool) -> Result<ExitCode> {
    let summary = mmtensor_convert::commit(dir, parts)?;
    if !quiet {
        let m = &summary.manifest;
        eprintln!(
            "committed {}: {} shards of the finished parts ({} rows, {}) listed in the manifest; the dataset has {} shards, {} rows",
            dir.display(),
            summary.shards_written,
            summary.rows_written,
            human::bytes(summary.bytes_written),
            m.shards().len(),
            m.num_rows()
        );
    }
    Ok(ExitCode::SUCCESS)
}
