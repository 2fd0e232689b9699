//! `mmt append`: the rows of inputs added to a dataset, its last shard filled first.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use mmtensor_convert::{ConvertOptions, Fill, Input};

use crate::write::{ctrl_c_cancels, write_dataset};

/// Runs `mmt append`: adds the rows of `inputs` to the dataset in `dir`, in shards of at most
/// `shard_size` data bytes (default: the dataset's own), then says what it wrote unless `quiet`.
pub(crate) fn run(
    dir: &Path,
    inputs: &[Input],
    options: &ConvertOptions,
    shard_size: Option<u64>,
    fill: Fill,
    quiet: bool,
) -> Result<ExitCode> {
    let cancel = ctrl_c_cancels()?;
    write_dataset(quiet, false, &cancel, |progress| {
        mmtensor_convert::append_with(dir, inputs, options, shard_size, fill, progress, &cancel)
    })
}
