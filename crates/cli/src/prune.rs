//! `mmt prune`, and the files of a dataset folder its manifest does not list (which `verify` and
//! the writing commands count, and `prune` deletes).

use std::collections::HashSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::human;

/// `mmt prune DIR`: deletes (or lists) the unlisted shard files and writers' leftovers.
pub(crate) fn run(dir: &Path, dry_run: bool, quiet: bool) -> Result<ExitCode> {
    let pruned = mmtensor_convert::prune(dir, dry_run)?;
    if !quiet {
        let verb = if dry_run { "would delete" } else { "deleted" };
        for (name, _) in &pruned.removed {
            if dry_run {
                println!("{}", dir.join(name).display());
            }
        }
        eprintln!(
            "{}: {verb} {} file{} ({})",
            dir.display(),
            pruned.removed.len(),
            if pruned.removed.len() == 1 { "" } else { "s" },
            human::bytes(pruned.bytes)
        );
        if !pruned.kept.is_empty() {
            eprintln!(
                "note: left {}: .mmt files the manifest does not list, under names no dataset writer makes",
                pruned.kept.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shard files (`*.mmt`) and a writer's hidden partial files (`.*.partial`) in the dataset folder
/// that `manifest` does not list, sorted by name.
pub(crate) fn unlisted_files(
    dir: &Path,
    manifest: &mmtensor_format::Manifest,
) -> Result<Vec<String>> {
    let listed: HashSet<&str> = manifest.shards().iter().map(|s| s.file()).collect();
    let mut stray = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let shard = name.ends_with(".mmt") && !listed.contains(name.as_str());
        let partial = name.starts_with('.') && name.ends_with(".partial");
        if shard || partial {
            stray.push(name);
        }
    }
    stray.sort();
    Ok(stray)
}
