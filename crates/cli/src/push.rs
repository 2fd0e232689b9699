//! `mmt push`, and the object-storage side of `mmt convert -o URL` and `mmt append URL`: rows cut
//! into shards locally, each uploaded as it is complete, the manifest put last and conditionally
//! (`mmtensor_remote`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use mmtensor_convert::{ConvertOptions, DatasetWriter, Input};
use mmtensor_remote::{CacheOptions, RemoteDatasetWriter};

use crate::human;
use crate::write::{ctrl_c_cancels, write_dataset};

/// `path` as an object-storage URL (`s3://...`), if it is one.
pub(crate) fn url_of(path: &Path) -> Option<&str> {
    path.to_str().filter(|p| p.contains("://"))
}

/// `mmt push DIR URL`: the dataset folder uploaded, then its manifest put conditionally.
pub(crate) fn run(dir: &Path, url: &str, quiet: bool) -> Result<ExitCode> {
    let pushed = mmtensor_remote::push(dir, url, &CacheOptions::default())?;
    if !quiet {
        eprintln!(
            "pushed {} to {}: {} shard{} uploaded ({}), {} already there; the dataset has {} shards, {} rows",
            dir.display(),
            pushed.url,
            pushed.uploaded,
            if pushed.uploaded == 1 { "" } else { "s" },
            human::bytes(pushed.bytes),
            pushed.skipped,
            pushed.manifest.shards().len(),
            pushed.manifest.num_rows()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mmt convert INPUTS -o URL --shard-size SIZE`: a new dataset in object storage.
pub(crate) fn convert(
    inputs: &[Input],
    url: &str,
    shard_size: Option<u64>,
    options: &ConvertOptions,
    quiet: bool,
) -> Result<ExitCode> {
    let Some(size) = shard_size else {
        bail!(
            "{url}: an output in object storage is a sharded dataset: give --shard-size (e.g. 256MiB)"
        );
    };
    let plan = mmtensor_convert::plan(inputs, options)?;
    let (columns, _) = DatasetWriter::columns_of(&plan)?;
    let writer =
        RemoteDatasetWriter::create(url, columns, Some(size), options, &CacheOptions::default())?;
    write_plan(writer, &plan, options, quiet)
}

/// `mmt append URL INPUTS`: rows after those of a dataset in object storage (new shards only).
pub(crate) fn append(
    url: &str,
    inputs: &[Input],
    options: &ConvertOptions,
    shard_size: Option<u64>,
    quiet: bool,
) -> Result<ExitCode> {
    let plan = mmtensor_convert::plan(inputs, options)?;
    let writer = RemoteDatasetWriter::append(url, shard_size, options, &CacheOptions::default())?;
    write_plan(writer, &plan, options, quiet)
}

/// Streams `plan` through `writer` with the progress bar, then puts the manifest.
fn write_plan(
    mut writer: RemoteDatasetWriter,
    plan: &mmtensor_convert::Plan,
    options: &ConvertOptions,
    quiet: bool,
) -> Result<ExitCode> {
    let cancel = ctrl_c_cancels()?;
    write_dataset(quiet, false, &cancel, |progress| {
        writer
            .writer()
            .write_plan(plan, options, progress, &cancel)?;
        writer.finish()
    })
}
