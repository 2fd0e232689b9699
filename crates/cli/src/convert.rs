//! `mmt convert`: inputs into one `.mmt` store, or with `--shard-size` into a sharded dataset.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use mmtensor_convert::{ConvertOptions, Input};

use crate::human;
use crate::write::{ctrl_c_cancels, with_progress, write_dataset};

/// Runs `mmt convert`: plans and writes `inputs` to `output` (a dataset folder of shards of at most
/// `shard_size` data bytes, when given), then says what it wrote unless `quiet`.
pub(crate) fn run(
    inputs: &[Input],
    output: &Path,
    shard_size: Option<u64>,
    options: &ConvertOptions,
    quiet: bool,
) -> Result<ExitCode> {
    let cancel = ctrl_c_cancels()?;
    if let Some(size) = shard_size {
        return write_dataset(quiet, false, &cancel, |progress| {
            mmtensor_convert::convert_dataset(inputs, output, options, size, progress, &cancel)
        });
    }
    let plan = mmtensor_convert::plan(inputs, options)?;
    if !quiet {
        note_stale_partials(output);
    }
    let Some(summary) = with_progress(quiet, &cancel, |progress| {
        mmtensor_convert::write_plan(&plan, output, options, progress, &cancel)
    })?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    if !quiet {
        eprintln!(
            "wrote {}: {} tensor{}, {} read, {} written",
            summary.path.display(),
            summary.tensors,
            if summary.tensors == 1 { "" } else { "s" },
            human::bytes(summary.input_bytes),
            human::bytes(summary.file_len)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Mentions the hidden temporary files (`.NAME.XXXXXX.partial`) that killed conversions to the same
/// output left behind. They are never deleted here: another `mmt convert` to the same name may be
/// writing one right now, and removing it would make that conversion fail at its final rename.
fn note_stale_partials(output: &Path) {
    if output.file_name().is_none() {
        return;
    }
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let ours = mmtensor_convert::AtomicFile::is_temp_of(output, &entry.file_name());
        if ours {
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "note: {} ({}) was left by an interrupted conversion to {}; delete it unless another `mmt convert` is writing {} now",
                dir.join(&file).display(),
                human::bytes(size),
                output.display(),
                output.display()
            );
        }
    }
}
