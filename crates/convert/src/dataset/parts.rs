//! Many writers, one dataset: each part writer ([`DatasetWriter::part`](crate::DatasetWriter::part))
//! writes its own shards and then a part record; [`commit`] lists every part's shards in the
//! manifest at once, in the order of the parts' ids (docs/FORMAT.md, "Many writers").
//!
//! Files under `DIR/_parts/`:
//! - `part-ID.writing`, the marker of a writer at work: it holds an exclusive `flock` on it while
//!   it writes (a live writer), and the file names the writer's nonce. A marker nobody holds
//!   belongs to a writer that died or gave up.
//! - `part-ID.mmtm`, the record of a finished part: a manifest (same encoding, same checks) of the
//!   dataset's columns and the part's shards, written atomically before the marker is removed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use mmtensor_format::{Manifest, Shard, MANIFEST_FILE};

use crate::dataset::lock::{try_lock, WriteLock};
use crate::dataset::manifest::{read_manifest, write_manifest};
use crate::dataset::write::DatasetSummary;
use crate::dataset::writer::schema_difference;
use crate::{AtomicFile, Error, Result};

/// The folder of part markers and records inside a dataset folder.
pub(crate) const PART_DIR: &str = "_parts";
const MARKER_SUFFIX: &str = ".writing";
const RECORD_SUFFIX: &str = ".mmtm";

fn marker_name(id: u64) -> String {
    format!("part-{id:05}{MARKER_SUFFIX}")
}

fn record_name(id: u64) -> String {
    format!("part-{id:05}{RECORD_SUFFIX}")
}

/// `(id, true)` for a record's file name, `(id, false)` for a marker's.
fn parse_name(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix("part-")?;
    let (digits, record) = if let Some(d) = rest.strip_suffix(RECORD_SUFFIX) {
        (d, true)
    } else {
        (rest.strip_suffix(MARKER_SUFFIX)?, false)
    };
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, record))
}

/// A random 16-hex-digit nonce: which attempt at a part wrote a shard.
pub(super) fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:016x}", h.finish())
}

/// The marker of a part writer at work, locked while it lives.
pub(crate) struct PartMarker {
    dir: PathBuf,
    id: u64,
    path: PathBuf,
    nonce: String,
    _file: File,
}

impl PartMarker {
    /// Takes part `id` of the dataset in `dir`: creates (or takes over a dead writer's) marker and
    /// locks it.
    ///
    /// # Errors
    /// [`Error::Part`] when a live writer holds part `id`; [`Error::Io`].
    pub(crate) fn take(dir: &Path, id: u64) -> Result<PartMarker> {
        let path = dir.join(PART_DIR).join(marker_name(id));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io("cannot create", &path))?;
        if !try_lock(&file, &path)? {
            return Err(Error::Part {
                path: dir.to_path_buf(),
                reason: format!(
                    "part {id} is being written by another writer now (it holds {})",
                    path.display()
                ),
            });
        }
        let nonce = nonce();
        let note = serde_json::json!({"nonce": nonce, "pid": std::process::id()}).to_string();
        file.set_len(0)
            .and_then(|_| file.write_all(note.as_bytes()))
            .map_err(Error::io("cannot write to", &path))?;
        Ok(PartMarker {
            dir: dir.to_path_buf(),
            id,
            path,
            nonce,
            _file: file,
        })
    }

    /// The nonce this writer's shard names carry.
    pub(crate) fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Writes the part's record (`manifest`: the columns and this part's shards) atomically, then
    /// removes the marker.
    pub(crate) fn finish(&self, manifest: &Manifest, cancel: &AtomicBool) -> Result<()> {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled {
                path: self.dir.clone(),
            });
        }
        let target = self.dir.join(PART_DIR).join(record_name(self.id));
        let tmp = AtomicFile::create(&target)?;
        tmp.file()
            .write_all(&manifest.encode())
            .map_err(Error::io("cannot write to", tmp.temp_path()))?;
        let committed = tmp.commit();
        if matches!(committed, Ok(_) | Err(Error::NotDurable { .. })) {
            // A marker left behind beside a record is a finished part all the same (see
            // `commit`): its removal failing is no failure of the part.
            let _ = std::fs::remove_file(&self.path);
        }
        committed.map(drop)
    }

    /// Removes the marker of a writer that gives up (its shards are removed by the writer).
    pub(crate) fn abandon(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `_parts/` holds: finished parts' records, and markers by state.
#[derive(Default)]
struct Found {
    records: BTreeMap<u64, PathBuf>,
    /// Markers a live writer holds.
    live: BTreeSet<u64>,
    /// Markers nobody holds, with their paths.
    dead: BTreeMap<u64, PathBuf>,
    /// The nonces of live writers (their shards are not to be pruned).
    live_nonces: HashSet<String>,
}

fn survey(dir: &Path) -> Result<Found> {
    let parts = dir.join(PART_DIR);
    let mut found = Found::default();
    let entries = match std::fs::read_dir(&parts) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io("cannot list", &parts)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("cannot list", &parts))?;
        let Some((id, record)) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        let path = entry.path();
        if record {
            found.records.insert(id, path);
            continue;
        }
        let file = File::open(&path).map_err(Error::io("cannot open", &path))?;
        if try_lock(&file, &path)? {
            found.dead.insert(id, path);
        } else {
            found.live.insert(id);
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some(n) = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("nonce")?.as_str().map(str::to_owned))
                {
                    found.live_nonces.insert(n);
                }
            }
        }
    }
    Ok(found)
}

fn ids(ids: impl IntoIterator<Item = u64>) -> String {
    ids.into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes the rows of every finished part of the dataset in `dir` visible at once: their shards
/// follow the dataset's own (if it has a manifest yet) in the order of the parts' ids, whoever
/// finished first, and the new manifest replaces the old by one atomic rename; then the part
/// records are removed. `expect`: the parts the write was made of, ids `0..expect`; every one must
/// have finished.
///
/// Nothing is committed (the dataset stays exactly as it was) when a part is still being written,
/// when a part's writer died or gave up before it finished, when an expected part is missing or
/// an unexpected one is there, when a part's columns are not the dataset's (or the other parts'),
/// or when a shard a record lists is missing or of another length: the error names the parts and
/// files. A commit interrupted after the manifest was written and before the records were removed
/// is finished by the next one (a record whose shards the manifest lists is only removed). Holds
/// the folder's write lock.
///
/// # Errors
/// [`Error::Part`], [`Error::SchemaMismatch`], [`Error::DatasetBusy`], [`Error::Load`] (the
/// current manifest or a part record cannot be read), [`Error::Io`].
pub fn commit(dir: impl AsRef<Path>, expect: Option<u64>) -> Result<DatasetSummary> {
    let dir = dir.as_ref();
    let part_error = |reason: String| Error::Part {
        path: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(part_error("there is no such folder".into()));
    }
    let _lock = WriteLock::take(dir)?;
    let found = survey(dir)?;
    // A dead marker beside a record: the writer died (or failed to remove it) after its record was
    // written, so the part is finished.
    let dead: Vec<u64> = found
        .dead
        .keys()
        .copied()
        .filter(|id| !found.records.contains_key(id))
        .collect();
    if !found.live.is_empty() || !dead.is_empty() {
        let mut why = Vec::new();
        if !found.live.is_empty() {
            why.push(format!(
                "part(s) {} are still being written",
                ids(found.live.iter().copied())
            ));
        }
        if !dead.is_empty() {
            why.push(format!(
                "part(s) {} stopped before they finished (the writer died or gave up): write them again, then commit",
                ids(dead.iter().copied())
            ));
        }
        return Err(part_error(format!(
            "{}; nothing was committed",
            why.join("; ")
        )));
    }
    if let Some(n) = expect {
        let missing: Vec<u64> = (0..n).filter(|i| !found.records.contains_key(i)).collect();
        let extra: Vec<u64> = found.records.keys().copied().filter(|&i| i >= n).collect();
        if !missing.is_empty() || !extra.is_empty() {
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!(
                    "part(s) {} of the {n} expected are missing",
                    ids(missing)
                ));
            }
            if !extra.is_empty() {
                why.push(format!(
                    "part(s) {} are beyond the {n} expected",
                    ids(extra)
                ));
            }
            return Err(part_error(format!(
                "{}; nothing was committed",
                why.join("; ")
            )));
        }
    }
    let old = if dir.join(MANIFEST_FILE).exists() {
        Some(read_manifest(dir)?)
    } else {
        None
    };
    if found.records.is_empty() {
        return Err(part_error(format!(
            "there is no finished part to commit (no record in {})",
            dir.join(PART_DIR).display()
        )));
    }
    let listed: HashSet<String> = old
        .iter()
        .flat_map(|m| m.shards())
        .map(|s| s.file().to_ascii_lowercase())
        .collect();
    let mut columns = old.as_ref().map(|m| m.columns().to_vec());
    let mut shards: Vec<Shard> = old.as_ref().map_or_else(Vec::new, |m| m.shards().to_vec());
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let mut added = 0usize;
    for (&id, path) in &found.records {
        let text = std::fs::read(path).map_err(Error::io("cannot read", path))?;
        let record = Manifest::parse(&text).map_err(|source| Error::Format {
            path: path.clone(),
            source,
        })?;
        match &columns {
            Some(own) => {
                if let Some(reason) = schema_difference(own, record.columns(), "in this part", true)
                {
                    return Err(Error::SchemaMismatch {
                        path: path.clone(),
                        reason: format!("part {id}: {reason}"),
                    });
                }
            }
            None => columns = Some(record.columns().to_vec()),
        }
        // Already listed: a commit that stopped before removing this record.
        if record
            .shards()
            .first()
            .is_some_and(|s| listed.contains(&s.file().to_ascii_lowercase()))
        {
            continue;
        }
        for shard in record.shards() {
            let file = dir.join(shard.file());
            let len = std::fs::metadata(&file).map(|m| m.len()).map_err(|e| {
                part_error(format!(
                    "part {id} lists {}, which cannot be read ({e}): was the part written on another machine, to a folder this one does not share? nothing was committed",
                    file.display()
                ))
            })?;
            if len != shard.length() {
                return Err(part_error(format!(
                    "part {id} lists {} of {} bytes, but the file holds {len}; nothing was committed",
                    file.display(),
                    shard.length()
                )));
            }
            rows = rows.saturating_add(shard.num_rows());
            bytes = bytes.saturating_add(shard.length());
            added += 1;
        }
        shards.extend(record.shards().iter().cloned());
    }
    let columns = columns.expect("a record was read");
    let manifest = Manifest::new(columns, shards).map_err(|source| Error::Format {
        path: dir.join(MANIFEST_FILE),
        source,
    })?;
    let unchanged = old.as_ref() == Some(&manifest);
    if !unchanged {
        match write_manifest(dir, &manifest) {
            Ok(_) | Err(Error::NotDurable { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    for path in found.records.values().chain(found.dead.values()) {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_dir(dir.join(PART_DIR));
    Ok(DatasetSummary {
        dir: dir.to_path_buf(),
        manifest,
        shards_written: added,
        rows_written: rows,
        rows_rewritten: 0,
        replaced: Vec::new(),
        input_bytes: 0,
        bytes_written: bytes,
    })
}

/// What [`crate::prune`] must keep of the part writers' files: the shards finished records list
/// and the nonces of live writers; and the markers of dead writers without a record, which it
/// removes.
pub(super) struct PartFiles {
    pub(super) recorded: HashSet<String>,
    pub(super) live_nonces: HashSet<String>,
    pub(super) dead_markers: Vec<PathBuf>,
}

pub(super) fn part_files(dir: &Path) -> Result<PartFiles> {
    let found = survey(dir)?;
    let mut recorded = HashSet::new();
    for path in found.records.values() {
        let text = std::fs::read(path).map_err(Error::io("cannot read", path))?;
        let record = Manifest::parse(&text).map_err(|source| Error::Format {
            path: path.clone(),
            source,
        })?;
        recorded.extend(
            record
                .shards()
                .iter()
                .map(|s| s.file().to_ascii_lowercase()),
        );
    }
    let dead_markers = found
        .dead
        .iter()
        .filter(|(id, _)| !found.records.contains_key(id))
        .map(|(_, p)| p.clone())
        .collect();
    Ok(PartFiles {
        recorded,
        live_nonces: found.live_nonces,
        dead_markers,
    })
}
