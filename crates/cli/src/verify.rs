//! `mmt verify`: every block checksum of a store (or of part of one tensor), or of every shard of a
//! dataset folder against its manifest; exit code 3 on corruption.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::info;
use crate::open::{open_dataset_mapped, open_mapped};
use crate::prune::unlisted_files;

/// Exit code when `verify` finds corrupted data.
const EXIT_CORRUPT: u8 = 3;

/// Runs `mmt verify` on the store or dataset folder `file`: all of it, or with `tensor` one tensor,
/// or with `rows` (`START..END`) that tensor's blocks behind those rows.
pub(crate) fn run(
    file: &Path,
    tensor: Option<&str>,
    rows: Option<&str>,
    quiet: bool,
) -> Result<ExitCode> {
    // A file:// URL names a local path: verify it there.
    if let Some(path) = file.to_str().and_then(|f| f.strip_prefix("file://")) {
        return run(Path::new(path), tensor, rows, quiet);
    }
    if let Some(url) = file.to_str().filter(|f| f.contains("://")) {
        anyhow::bail!(
            "{url}: mmt verify checks local files; a dataset in object storage is checked block by \
             block as it is fetched (mmtensor.open_dataset, mmtensor_remote::Cache::fetch), so a \
             corrupt shard never reaches a cache. To check the bucket's copy, download it (for \
             example `aws s3 sync`) and verify the folder"
        );
    }
    if file.is_dir() {
        if tensor.is_some() {
            anyhow::bail!("--tensor and --rows apply to one store; give a shard's path to check part of a dataset");
        }
        return verify_dataset(file, quiet);
    }
    // Only .mmt files carry checksums; read the header first so other files get a clear error.
    info::read_layout(file)?;
    let store = open_mapped(file)?;
    let result = match (tensor, rows) {
        (None, _) => store.verify(),
        (Some(name), None) => store.tensor(name).and_then(|t| t.verify()),
        (Some(name), Some(range)) => {
            let (start, end) = parse_rows(range)?;
            store
                .tensor(name)
                .and_then(|t| t.rows(start..end))
                .and_then(|t| t.verify())
        }
    };
    match result {
        Ok(()) => {
            if !quiet {
                let what = match (tensor, rows) {
                    (None, _) => format!("{} tensors", store.names().len()),
                    (Some(t), None) => format!("tensor `{t}`"),
                    (Some(t), Some(r)) => format!("rows {r} of tensor `{t}`"),
                };
                println!("{}: ok ({what}, every checksum matches)", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => failed(
            e,
            "the file is corrupted; convert it again from its sources",
        ),
    }
}

/// `mmt verify DIR`: opens the dataset (which checks every shard's length, header checksum and
/// tensors against the manifest) and verifies every shard's blocks; notes files the manifest does
/// not list.
fn verify_dataset(dir: &Path, quiet: bool) -> Result<ExitCode> {
    let ds = open_dataset_mapped(dir)?;
    match ds.verify() {
        Ok(()) => {
            if !quiet {
                println!(
                    "{}: ok ({} shard{}, {} rows, every shard matches the manifest and every checksum matches)",
                    dir.display(),
                    ds.shards().len(),
                    if ds.shards().len() == 1 { "" } else { "s" },
                    ds.num_rows()
                );
                let stray = unlisted_files(dir, ds.manifest())?;
                if !stray.is_empty() {
                    eprintln!(
                        "note: {} file{} in {} {} not part of the dataset: {}",
                        stray.len(),
                        if stray.len() == 1 { "" } else { "s" },
                        dir.display(),
                        if stray.len() == 1 { "is" } else { "are" },
                        stray.join(", ")
                    );
                    eprintln!(
                        "hint: shards that an append or a compaction replaced, and what an interrupted \
                         write leaves; `mmt prune {}` deletes them once no reader holds an older manifest",
                        dir.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => failed(
            e,
            "the shard is corrupted; convert its rows again from their sources",
        ),
    }
}

/// How a failed verification ends: corruption is reported here, with `hint`, as exit code 3; any
/// other error goes up to `main`.
fn failed(e: mmtensor::Error, hint: &str) -> Result<ExitCode> {
    if !e.is_corruption() {
        return Err(e.into());
    }
    eprintln!("error: {e}");
    eprintln!("hint: {hint}");
    Ok(ExitCode::from(EXIT_CORRUPT))
}

fn parse_rows(text: &str) -> Result<(u64, u64)> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--rows {text:?}: expected START..END"))?;
    let a = a
        .trim()
        .parse()
        .with_context(|| format!("--rows {text:?}: START is not a row number"))?;
    let b = b
        .trim()
        .parse()
        .with_context(|| format!("--rows {text:?}: END is not a row number"))?;
    Ok((a, b))
}
