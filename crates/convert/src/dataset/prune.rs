//! Deleting what no manifest needs any more: [`prune`] removes the shard files a dataset's manifest
//! does not list and the temporary files of killed writers, and nothing else.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use mmtensor_format::MANIFEST_FILE;

use crate::dataset::lock::WriteLock;
use crate::dataset::manifest::read_manifest;
use crate::dataset::names::{part_of, shard_index};
use crate::dataset::parts::{part_files, PART_DIR};
use crate::{AtomicFile, Error, Result};

/// What [`prune`] found and deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// The dataset folder.
    pub dir: PathBuf,
    /// The files deleted (or, for a dry run, that would be), with their sizes, sorted by name:
    /// shard files the manifest does not list, and hidden temporary files of killed writers.
    pub removed: Vec<(String, u64)>,
    /// Their bytes in all.
    pub bytes: u64,
    /// Unlisted `.mmt` files under names no dataset writer makes: left alone.
    pub kept: Vec<String>,
}

/// Deletes from the dataset folder `dir` what no manifest needs any more: the shard files
/// (`shard-NNNNN.mmt`) its manifest does not list (shards replaced by [`crate::append`]'s fill or
/// [`crate::compact`], and complete shards of a killed writer), and the hidden temporary files
/// (`.shard-NNNNN.mmt.XXXXXX.partial`, `.manifest.mmtm.XXXXXX.partial`) killed writers left.
/// Other files, and unlisted `.mmt` files under other names, are left alone (and reported in
/// [`Pruned::kept`]). With `dry_run`, only says what it would delete.
///
/// Holds the folder's write lock, so no writer is between writing a shard and listing it. It
/// cannot know about readers: a process that read an older manifest and has not yet opened
/// (mapped) every shard it lists will fail to find a deleted one. Run it when no reader holds an
/// older manifest, for example between training jobs. (A reader that has opened the dataset keeps
/// reading: deleting a file does not take it from those who have it open.)
///
/// # Errors
/// [`Error::Load`] when the manifest cannot be read or is invalid (nothing is deleted: what is
/// listed cannot be known); [`Error::DatasetBusy`]; [`Error::Io`] naming the file that could not
/// be listed or deleted (the files before it are deleted).
pub fn prune(dir: impl AsRef<Path>, dry_run: bool) -> Result<Pruned> {
    let dir = dir.as_ref();
    let _lock = WriteLock::take(dir)?;
    let manifest = read_manifest(dir)?;
    let listed: HashSet<String> = manifest
        .shards()
        .iter()
        .map(|s| s.file().to_ascii_lowercase())
        .collect();
    // Part writers write without the folder's lock: what their records list and what live ones
    // write stays; dead writers' markers go.
    let parts = part_files(dir)?;
    let live = &parts.live_nonces;
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for marker in &parts.dead_markers {
        let len = std::fs::metadata(marker).map_or(0, |m| m.len());
        let name = marker
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        removed.push((format!("{PART_DIR}/{name}"), len));
    }
    let entries = std::fs::read_dir(dir).map_err(Error::io("cannot list", dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("cannot list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if listed.contains(&name.to_ascii_lowercase()) {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(Error::io("cannot stat", &path))?;
        if !meta.is_file() {
            continue;
        }
        let shard = shard_index(&name).is_some();
        let lost_part = part_of(&name).is_some_and(|(_, nonce)| !live.contains(nonce))
            && !parts.recorded.contains(&name.to_ascii_lowercase());
        if shard || lost_part || is_writer_temp(dir, &name, live) {
            removed.push((name, meta.len()));
        } else if name.to_ascii_lowercase().ends_with(".mmt") {
            kept.push(name);
        }
    }
    removed.sort();
    kept.sort();
    if !dry_run {
        for (name, _) in &removed {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Gone already: what was asked.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot delete", &path)(e)),
            }
        }
        // Empty once no part is left: a folder nothing else uses (fails harmlessly otherwise).
        let _ = std::fs::remove_dir(dir.join(PART_DIR));
        if !removed.is_empty() {
            // Best effort: a deletion lost to a power cut leaves an unlisted file, which the
            // next prune deletes.
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
    }
    Ok(Pruned {
        dir: dir.to_path_buf(),
        bytes: removed.iter().map(|(_, b)| b).sum(),
        removed,
        kept,
    })
}

/// Whether `name` is the hidden temporary file of a dataset writer in `dir`: of a shard
/// (`.shard-N.mmt.XXXXXX.partial`), of the manifest, or of a part writer's shard when that writer
/// is not one of the `live` (by nonce).
fn is_writer_temp(dir: &Path, name: &str, live: &HashSet<String>) -> bool {
    let Some(target) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(".partial"))
        .and_then(|n| n.rsplit_once('.'))
        .map(|(target, _)| target)
    else {
        return false;
    };
    let ours = target == MANIFEST_FILE
        || shard_index(target).is_some()
        || part_of(target).is_some_and(|(_, nonce)| !live.contains(nonce));
    ours && AtomicFile::is_temp_of(&dir.join(target), name.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_temps_are_recognised_and_nothing_else() {
        let d = Path::new("ds");
        let none = HashSet::new();
        assert!(is_writer_temp(d, ".shard-00003.mmt.a1B2c3.partial", &none));
        assert!(is_writer_temp(d, ".manifest.mmtm.Zz9xY0.partial", &none));
        assert!(!is_writer_temp(d, ".notes.txt.a1B2c3.partial", &none));
        assert!(!is_writer_temp(d, ".shard-00003.mmt.partial", &none));
        assert!(!is_writer_temp(d, "shard-00003.mmt", &none));
        let part = ".part-00002-0123456789abcdef-00000.mmt.a1B2c3.partial";
        assert!(is_writer_temp(d, part, &none));
        let live = HashSet::from(["0123456789abcdef".to_owned()]);
        assert!(!is_writer_temp(d, part, &live));
    }
}
