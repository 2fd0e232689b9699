//! `mmt compact`: runs of small shards of a dataset merged into full ones, in place.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::write::{ctrl_c_cancels, write_dataset};

/// Runs `mmt compact` on the dataset in `dir`, merging into shards of at most `shard_size` data
/// bytes (default: the dataset's own), then says what it did unless `quiet`.
pub(crate) fn run(dir: &Path, shard_size: Option<u64>, quiet: bool) -> Result<ExitCode> {
    let cancel = ctrl_c_cancels()?;
    write_dataset(quiet, true, &cancel, |progress| {
        mmtensor_convert::compact(dir, shard_size, progress, &cancel)
    })
}
