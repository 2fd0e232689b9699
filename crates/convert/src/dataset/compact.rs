//! A dataset rewritten in place: [`compact`] merges runs of small shards into full ones under new
//! names and replaces the manifest.
//!
//! It follows the rules every dataset write does (`docs/FORMAT.md`, "Writing and appending"): the
//! folder's write lock for the whole run, new shards renamed into place before the manifest, no
//! listed shard modified or deleted. A compaction therefore leaves the shards it replaced on disk,
//! unlisted, for the readers that still hold the previous manifest; only [`crate::prune`], which
//! the user runs when no such reader is left, deletes them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use mmtensor_format::{Manifest, Shard, MANIFEST_FILE};

use crate::dataset::cut::{rows_per_shard, usual_cut, Cut, SHARD_SIZE_KEY};
use crate::dataset::lock::WriteLock;
use crate::dataset::manifest::{finish_manifest, read_manifest};
use crate::dataset::names::Names;
use crate::dataset::sink::Shards;
use crate::dataset::write::{stream_columns, DatasetSummary};
use crate::dataset::writer::{template, REPLACED_KEY};
use crate::plan::{planned, Plan, PlannedTensor};
use crate::readers::mmt::{listed_shard, ListedShard};
use crate::{ConvertOptions, DtypeRules, Error, Progress, Result};

/// Merges runs of small shards of the dataset in `dir` into full ones, in place: each run of
/// consecutive shards holding fewer rows than a shard of `shard_size` data bytes (`None`: the
/// dataset's own shard size, as [`crate::append`] takes it) is rewritten as full shards and one
/// partial, when that makes fewer shards. Rows keep their order and their indices; shards that
/// are already full, and runs that would not shrink, are left as they are (a compaction only
/// merges: to cut every shard again, convert the folder into a new one).
///
/// New shards take names above every listed one, are renamed into place, then the new manifest
/// replaces the old by an atomic rename; the shards it replaced stay on disk, unlisted and
/// unchanged, so a reader holding the previous manifest keeps reading them, and a kill at any point
/// leaves the previous dataset valid. [`crate::prune`] deletes them. Each new shard takes the
/// alignment and block size of its run's first shard and the metadata entries every shard of the
/// run shares, and records the shards it replaced (`source.replaced`) and the shard size
/// (`source.shard_size`). Every block read is checked against its checksum. A dataset with nothing
/// to merge is left alone (no shard written, the manifest unchanged). Holds the folder's write
/// lock, as [`crate::append`] does.
///
/// Whole shards per rank (`mmtensor::order::shard_ranks`) are assigned anew from the first
/// rewritten shard on: ranks that cache their shards fetch the new ones.
///
/// # Errors
/// [`Error::Load`] when the manifest cannot be read or is invalid; [`Error::ShardSize`];
/// [`Error::DatasetBusy`]; [`Error::UnsupportedInput`] naming a shard that differs from the
/// manifest; [`Error::InputChecksum`] naming a corrupt block (nothing is listed that was not
/// before); [`Error::Io`]; [`Error::Cancelled`].
pub fn compact(
    dir: impl AsRef<Path>,
    shard_size: Option<u64>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let dir = dir.as_ref();
    let _lock = WriteLock::take(dir)?;
    let old = read_manifest(dir)?;
    let columns = old.columns();
    if let Some(c) = columns.iter().find(|c| c.is_ragged()) {
        return Err(Error::NotAColumn {
            tensor: c.name().to_owned(),
            reason: "compact does not rewrite datasets with ragged columns yet; their shards stay as they are".into(),
        });
    }
    let defaults = DtypeRules::default();
    let cut = match shard_size {
        Some(size) => Cut {
            rows: rows_per_shard(columns, old.num_rows(), size)?,
            bytes: size,
        },
        None => {
            let last = old
                .shards()
                .last()
                .map(|s| listed_shard(dir, s, columns, &defaults))
                .transpose()?;
            usual_cut(&old, last.as_ref().map(|l| &l.layout), Some(old.num_rows()))
        }
    };
    let runs = runs_to_merge(old.shards(), cut.rows);
    if runs.is_empty() {
        return Ok(DatasetSummary {
            dir: dir.to_path_buf(),
            manifest: old,
            shards_written: 0,
            rows_written: 0,
            rows_rewritten: 0,
            replaced: Vec::new(),
            input_bytes: 0,
            bytes_written: 0,
        });
    }
    // Every shard to merge is read and checked against the manifest before anything is written.
    let mut listed: Vec<Vec<ListedShard>> = Vec::with_capacity(runs.len());
    for run in &runs {
        let shards = &old.shards()[run.clone()];
        listed.push(
            shards
                .iter()
                .map(|s| listed_shard(dir, s, columns, &defaults))
                .collect::<Result<_>>()?,
        );
    }
    let total_bytes = listed
        .iter()
        .flatten()
        .flat_map(|l| &l.parts)
        .fold(0u64, |a, p| a.saturating_add(p.len));
    progress.start(&Plan::of_tensors(Vec::new(), BTreeMap::new()));
    progress.carried(total_bytes);
    let mut names = Names::after(&old);
    let mut shards: Vec<Shard> = Vec::with_capacity(old.shards().len());
    let mut next = 0;
    let (mut shards_written, mut rows_rewritten, mut bytes_written) = (0, 0, 0);
    let mut replaced = Vec::new();
    for (run, listed) in runs.iter().zip(listed) {
        shards.extend_from_slice(&old.shards()[next..run.start]);
        let run_shards = &old.shards()[run.clone()];
        let rows: u64 = run_shards.iter().map(|s| s.num_rows()).sum();
        let options = run_options(run_shards, &listed);
        let mut parts = vec![Vec::new(); columns.len()];
        for (shard, l) in run_shards.iter().zip(listed) {
            for (column, part) in parts.iter_mut().zip(l.parts) {
                // Empty shards add nothing; the first part stays, for the column's dtype.
                if shard.num_rows() > 0 || column.is_empty() {
                    column.push(part);
                }
            }
        }
        let tensors = columns
            .iter()
            .zip(parts)
            .map(|(c, parts)| {
                let source = format!("{}:{}", dir.display(), c.name());
                planned(c.name().to_owned(), parts, source)
            })
            .collect::<Result<Vec<PlannedTensor>>>()?;
        let refs: Vec<&PlannedTensor> = tensors.iter().collect();
        let template = template(&options, &options.metadata, cut, dir)?;
        let mut sink = Shards::new(dir, columns.to_vec(), template, cut, names);
        sink.expect(rows);
        stream_columns(&refs, rows, &mut sink, &options, progress, cancel, dir)?;
        sink.close()?;
        let written = sink.into_written();
        names = written.names;
        shards_written += written.shards.len();
        rows_rewritten += rows;
        bytes_written += written.bytes;
        shards.extend(written.shards);
        replaced.extend(run_shards.iter().map(|s| s.file().to_owned()));
        next = run.end;
    }
    shards.extend_from_slice(&old.shards()[next..]);
    let manifest = Manifest::new(columns.to_vec(), shards).map_err(|source| Error::Format {
        path: dir.join(MANIFEST_FILE),
        source,
    })?;
    finish_manifest(dir, &manifest, progress, cancel)?;
    Ok(DatasetSummary {
        dir: dir.to_path_buf(),
        manifest,
        shards_written,
        rows_written: 0,
        rows_rewritten,
        replaced,
        input_bytes: 0,
        bytes_written,
    })
}

/// The runs of consecutive shards of fewer than `rows` rows each that merging makes fewer (at
/// least two shards, holding rows, that fit in fewer shards of `rows` rows).
fn runs_to_merge(shards: &[Shard], rows: u64) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < shards.len() {
        if shards[i].num_rows() >= rows {
            i += 1;
            continue;
        }
        let start = i;
        let mut sum = 0u64;
        while i < shards.len() && shards[i].num_rows() < rows {
            sum = sum.saturating_add(shards[i].num_rows());
            i += 1;
        }
        let merged = sum.div_ceil(rows.max(1));
        if sum > 0 && merged < (i - start) as u64 {
            runs.push(start..i);
        }
    }
    runs
}

/// How a run's new shards are written: the alignment and block size of its first shard, the
/// metadata entries every shard of the run holds alike, and provenance: the converter and the
/// replaced shards.
fn run_options(run: &[Shard], listed: &[ListedShard]) -> ConvertOptions {
    let mut options = ConvertOptions::default();
    if let Some(first) = listed.first() {
        let header = first.layout.header();
        options.alignment = header.alignment.get();
        options.block_size = header.block_size.get();
        let mut shared: BTreeMap<String, String> = header.metadata.clone();
        // Keys the format reserves (a later version's) are not a writer's to copy.
        shared.retain(|k, _| mmtensor_format::check_metadata_key(k).is_ok());
        for l in &listed[1..] {
            let m = &l.layout.header().metadata;
            shared.retain(|k, v| m.get(k) == Some(v));
        }
        // Set again below, for the new shards.
        shared.remove(SHARD_SIZE_KEY);
        shared.remove(REPLACED_KEY);
        options.metadata = shared;
    }
    options.metadata.insert(
        "source.converter".to_owned(),
        concat!("mmtensor-convert ", env!("CARGO_PKG_VERSION")).to_owned(),
    );
    let replaced: Vec<serde_json::Value> = run
        .iter()
        .map(|s| serde_json::json!({"file": s.file(), "rows": s.num_rows()}))
        .collect();
    options.metadata.insert(
        REPLACED_KEY.to_owned(),
        serde_json::Value::Array(replaced).to_string(),
    );
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(rows: &[u64]) -> Vec<Shard> {
        rows.iter()
            .enumerate()
            .map(|(i, &r)| Shard::new(format!("shard-{i:05}.mmt"), 100, 0, r).unwrap())
            .collect()
    }

    #[test]
    fn runs_merge_only_small_shards_that_make_fewer() {
        let runs = |rows: &[u64]| -> Vec<(usize, usize)> {
            runs_to_merge(&shards(rows), 10)
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect()
        };
        assert_eq!(runs(&[10, 3, 4, 10, 2]), [(1, 3)]);
        assert_eq!(
            runs(&[3, 4, 10, 2, 2, 12, 1, 1, 1]),
            [(0, 2), (3, 5), (6, 9)]
        );
        // A lone small shard, or small shards that fill as many full ones: nothing to do.
        assert!(runs(&[10, 3, 10, 9]).is_empty());
        assert!(runs(&[9, 9]).is_empty());
        assert_eq!(runs(&[5, 5, 5, 5, 5]), [(0, 5)]);
        // Empty shards are merged away with their run; a run of empty shards alone is left.
        assert_eq!(runs(&[0, 4, 0]), [(0, 3)]);
        assert!(runs(&[10, 0, 0]).is_empty());
        assert!(runs(&[]).is_empty());
    }
}
