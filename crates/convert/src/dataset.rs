//! Sharded datasets: a folder of `.mmt` shards and a manifest (`docs/FORMAT.md`, "Dataset
//! manifest"), written by [`convert_dataset`] and extended by [`append`] (`compact.rs` rewrites
//! small shards in place and prunes unlisted ones).
//!
//! Every planned tensor is a *column*; all columns share their first dimension, and shards are cut
//! at row boundaries of all of them together. Each column is streamed by its own reader thread
//! (the same part streams `convert` uses: byte swaps, Fortran reorder, zip members) into a
//! one-chunk channel; the writer takes as many bytes of each column as the current shard holds,
//! so any input streams once, in order, whatever the shard size. An append that fills the
//! dataset's last shard streams that shard's rows first (a [`Carry`]), then the inputs'. Each shard
//! is written through a [`StoreWriter`] (temporary file, fsync, rename) under a name no manifest of
//! the folder has listed ([`Names`]); the manifest is written last through an [`AtomicFile`].

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};

use mmtensor_format::{Column, Dtype, FileLayout, LayoutBuilder, Manifest, Shard, MANIFEST_FILE};

use crate::convert::{emit, plan, Plan, PlannedTensor, COPY_CHUNK_SIZE};
use crate::mmt::listed_shard;
use crate::source::{Location, Part};
use crate::{AtomicFile, ConvertOptions, Error, Input, Progress, Result, StoreWriter};

/// The metadata key under which every shard records the shard size (data bytes) it was cut at,
/// when provenance is recorded: the dataset's own shard size for a later append or compaction.
pub(crate) const SHARD_SIZE_KEY: &str = "source.shard_size";

/// The metadata key under which a shard that replaced others records them: a JSON array of
/// `{"file": NAME, "rows": N}`, the replaced shards whose rows it holds again, in order.
pub(crate) const REPLACED_KEY: &str = "source.replaced";

/// Most columns a sharded write takes: each has a reader thread and about three chunk buffers
/// (1 MiB each) in flight, so this bounds memory at about 768 MiB and threads at 256.
pub const MAX_COLUMNS: usize = 256;

/// What a finished [`convert_dataset`] or [`append`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatasetSummary {
    /// The dataset folder.
    pub dir: PathBuf,
    /// The manifest now in place.
    pub manifest: Manifest,
    /// Shards this call wrote: the last ones of the manifest after [`convert_dataset`] and
    /// [`append`]; after [`crate::compact`], wherever the runs they replace were.
    pub shards_written: usize,
    /// Rows this call added to the dataset (0 for [`crate::compact`]).
    pub rows_written: u64,
    /// Rows already in the dataset that this call copied into new shards: the old last shard's
    /// rows when [`append`] filled it, every row of the shards [`crate::compact`] merged.
    pub rows_rewritten: u64,
    /// Shard files this call took out of the manifest (their rows are in new shards). They stay on
    /// disk, unlisted and unchanged, for readers that hold the previous manifest;
    /// [`crate::prune`] deletes them.
    pub replaced: Vec<String>,
    /// Input data bytes read.
    pub input_bytes: u64,
    /// Bytes of the shard files written.
    pub bytes_written: u64,
}

/// Where [`append_with`] puts the new rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fill {
    /// Fill the dataset's last shard first, when it holds fewer rows than a shard of the shard
    /// size: a new shard, under a new name, holds its rows followed by new rows up to the size and
    /// takes its place in the manifest; the old file stays on disk, unlisted (see [`append`]).
    #[default]
    LastShard,
    /// Only add shards: every listed shard stays in the manifest (what `append` did before it
    /// could fill). Cheaper for frequent small appends to large shards, which fill would copy
    /// again each time; [`crate::compact`] merges the small shards later.
    Never,
}

/// Converts `inputs` into a new dataset folder `dir`: shards of at most about `shard_size` data
/// bytes each (whole rows of every column; at least one row), then the manifest.
///
/// `dir` is created if missing; one that already holds a manifest is refused
/// ([`Error::DatasetExists`]: use [`append`]). Shards are named `shard-00000.mmt`, `shard-00001.mmt`,
/// ... A dataset of zero rows has no shard. Nothing is a dataset until the manifest is renamed into
/// place, last: an error, a cancellation or a kill before that leaves no manifest (and, at most,
/// complete shard files that no manifest lists, which the next write to `dir` replaces).
///
/// # Errors
/// As [`crate::plan`] and [`crate::write_plan`]; [`Error::NotAColumn`] (a scalar tensor, or row
/// counts that differ, or more than [`MAX_COLUMNS`] tensors), [`Error::ShardSize`] (`shard_size`
/// is smaller than one row of all columns together), [`Error::DatasetExists`],
/// [`Error::DatasetBusy`] (another writer holds the folder's lock; see [`append`]).
pub fn convert_dataset(
    inputs: &[Input],
    dir: impl AsRef<Path>,
    options: &ConvertOptions,
    shard_size: u64,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let dir = dir.as_ref();
    let plan = plan(inputs, options)?;
    let columns = columns_of(&plan)?;
    let cut = Cut {
        rows: rows_per_shard(&columns.columns, columns.rows, shard_size)?,
        bytes: shard_size,
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        return Err(Error::DatasetExists {
            path: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(Error::io("cannot create the folder", dir))?;
    let _lock = WriteLock::take(dir)?;
    // Looked at again under the lock: another writer may have finished in between.
    if manifest_path.exists() {
        return Err(Error::DatasetExists {
            path: dir.to_path_buf(),
        });
    }
    let tensors: Vec<&PlannedTensor> = plan.tensors().iter().collect();
    progress.start(&plan);
    let written = write_shards(
        &plan,
        &tensors,
        &columns,
        cut,
        dir,
        &mut Names::default(),
        None,
        options,
        progress,
        cancel,
    )?;
    let manifest =
        Manifest::new(columns.columns, written.shards.clone()).map_err(|source| Error::Format {
            path: manifest_path.clone(),
            source,
        })?;
    finish(dir, manifest, &plan, written, progress, cancel)
}

/// Appends the rows of `inputs` to the dataset in `dir`, filling its last shard first: new
/// shards, then the new manifest by an atomic rename. [`append_with`] with [`Fill::LastShard`].
///
/// The inputs must give exactly the dataset's columns (names, dtypes after any cast, row shapes;
/// in any order): anything else is refused with [`Error::SchemaMismatch`] before a byte is
/// written. Rows are cut into shards of `shard_size` data bytes as [`convert_dataset`] cuts them
/// (`None`: the dataset's own shard size, the one its last shard records under
/// `source.shard_size`, else as many rows as its largest shard; all new rows in one shard when
/// the dataset has no rows yet).
///
/// When the last shard holds fewer rows than that, the first new shard holds its rows followed by
/// new rows up to the size, and replaces it in the manifest; so repeated small appends leave full
/// shards and one partial last shard, not a shard per append. New shards take names
/// `shard-NNNNN.mmt` above every name the manifest lists, so a name, once listed, never holds
/// other bytes. No listed shard is ever modified or deleted: a reader holding the previous
/// manifest keeps reading its rows (the replaced last shard among them), and an error or a kill
/// at any point leaves the previous dataset valid. The replaced shard stays on disk, unlisted,
/// until [`crate::prune`] deletes it (run it when no reader holds an older manifest); it is in
/// [`DatasetSummary::replaced`].
///
/// One writer at a time: every dataset write ([`convert_dataset`], `append`, [`crate::compact`],
/// [`crate::prune`]) holds an exclusive advisory lock (`flock`) on the dataset folder for its
/// whole run, and a second writer gets [`Error::DatasetBusy`] at once instead of replacing the
/// first one's manifest. (On file systems without `flock`, and off Unix, there is no lock: run
/// one writer at a time.)
///
/// # Errors
/// As [`convert_dataset`]; [`Error::Load`] when the current manifest cannot be read or is
/// invalid; [`Error::SchemaMismatch`]; [`Error::DatasetBusy`]; when the last shard is read (to
/// fill it, or for its recorded shard size) and differs from the manifest or is corrupt,
/// [`Error::UnsupportedInput`] or [`Error::InputChecksum`] naming it (nothing is written:
/// [`Fill::Never`] with a `shard_size` does not read it).
pub fn append(
    dir: impl AsRef<Path>,
    inputs: &[Input],
    options: &ConvertOptions,
    shard_size: Option<u64>,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    append_with(
        dir,
        inputs,
        options,
        shard_size,
        Fill::LastShard,
        progress,
        cancel,
    )
}

/// [`append`], with the choice of whether to fill the last shard ([`Fill`]).
///
/// # Errors
/// As [`append`].
pub fn append_with(
    dir: impl AsRef<Path>,
    inputs: &[Input],
    options: &ConvertOptions,
    shard_size: Option<u64>,
    fill: Fill,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    let dir = dir.as_ref();
    // Held until the new manifest is in place, so the manifest read here is the one replaced.
    let _lock = WriteLock::take(dir)?;
    let old = read_manifest(dir)?;
    let plan = plan(inputs, options)?;
    let columns = columns_of(&plan)?;
    let mismatch = |reason: String| Error::SchemaMismatch {
        path: dir.to_path_buf(),
        reason,
    };
    let mut tensors = Vec::with_capacity(old.columns().len());
    for c in old.columns() {
        let Some(i) = columns.columns.iter().position(|n| n.name() == c.name()) else {
            return Err(mismatch(format!("column `{}` is missing", c.name())));
        };
        let found = &columns.columns[i];
        if found.dtype() != c.dtype() || found.row_shape() != c.row_shape() {
            return Err(mismatch(format!(
                "column `{}` is {} with rows of shape {:?} in the dataset, but {} with rows of shape {:?} in the inputs",
                c.name(),
                c.dtype(),
                c.row_shape(),
                found.dtype(),
                found.row_shape()
            )));
        }
        tensors.push(&plan.tensors()[i]);
    }
    if let Some(extra) = columns
        .columns
        .iter()
        .find(|n| old.column(n.name()).is_none())
    {
        return Err(mismatch(format!(
            "the inputs give `{}`, which is not a column of the dataset",
            extra.name()
        )));
    }
    let ordered = Columns {
        columns: old.columns().to_vec(),
        rows: columns.rows,
    };
    let last = old.shards().last();
    // The last shard is read when it may be filled, or for the shard size it records; it is
    // checked against the manifest as it is read, and its blocks as they stream.
    let reads_last = fill == Fill::LastShard && ordered.rows > 0 || shard_size.is_none();
    let listed = match last {
        Some(shard) if reads_last => Some(listed_shard(
            dir,
            shard,
            old.columns(),
            &ConvertOptions::default(),
        )?),
        _ => None,
    };
    let cut = match shard_size {
        Some(size) => Cut {
            rows: rows_per_shard(&ordered.columns, ordered.rows, size)?,
            bytes: size,
        },
        None => usual_cut(&old, listed.as_ref().map(|l| &l.layout), ordered.rows),
    };
    let carry = match (last, listed) {
        (Some(shard), Some(listed))
            if fill == Fill::LastShard && ordered.rows > 0 && shard.rows() < cut.rows =>
        {
            Some(Carry {
                path: dir.join(shard.file()),
                shard: shard.clone(),
                parts: listed.parts,
            })
        }
        _ => None,
    };
    progress.start(&plan);
    if let Some(c) = &carry {
        progress.carried(c.parts.iter().fold(0u64, |a, p| a.saturating_add(p.len)));
    }
    let written = write_shards(
        &plan,
        &tensors,
        &ordered,
        cut,
        dir,
        &mut Names::after(&old),
        carry.as_ref(),
        options,
        progress,
        cancel,
    )?;
    let kept = old.shards().len() - usize::from(carry.is_some());
    let shards: Vec<Shard> = old.shards()[..kept]
        .iter()
        .chain(&written.shards)
        .cloned()
        .collect();
    let manifest =
        Manifest::new(old.columns().to_vec(), shards).map_err(|source| Error::Format {
            path: dir.join(MANIFEST_FILE),
            source,
        })?;
    let mut summary = finish(dir, manifest, &plan, written, progress, cancel)?;
    if let Some(c) = carry {
        summary.rows_rewritten = c.shard.rows();
        summary.replaced = vec![c.shard.file().to_owned()];
    }
    Ok(summary)
}

/// An exclusive advisory lock on a dataset folder (`flock` on the folder itself, so no lock file
/// is left behind), held for a whole write and released when dropped, or by the kernel when the
/// process dies.
pub(crate) struct WriteLock {
    _dir: Option<std::fs::File>,
}

impl WriteLock {
    #[cfg(unix)]
    pub(crate) fn take(dir: &Path) -> Result<WriteLock> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(dir).map_err(Error::io("cannot open", dir))?;
        // SAFETY: flock only reads its integer arguments; the descriptor is open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => {
                    return Err(Error::DatasetBusy {
                        path: dir.to_path_buf(),
                    })
                }
                // A file system without locks: go on unlocked, as documented.
                Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {}
                _ => return Err(Error::io("cannot lock", dir)(err)),
            }
        }
        Ok(WriteLock { _dir: Some(file) })
    }

    #[cfg(not(unix))]
    pub(crate) fn take(_dir: &Path) -> Result<WriteLock> {
        Ok(WriteLock { _dir: None })
    }
}

/// Reads and validates the manifest of the dataset in `dir`: the loader's
/// `mmtensor::Dataset::read_manifest` (plain reads; a manifest over the cap is refused from its
/// length, before it is read), so reader and writer refuse the same manifests.
///
/// # Errors
/// [`Error::Load`] holding the loader's error (no manifest, or an invalid one, with the format
/// crate's exact error).
pub fn read_manifest(dir: impl AsRef<Path>) -> Result<Manifest> {
    mmtensor::Dataset::read_manifest(dir).map_err(Error::Load)
}

/// The columns of a plan, in plan order, and their shared row count.
pub(crate) struct Columns {
    pub(crate) columns: Vec<Column>,
    pub(crate) rows: u64,
}

fn columns_of(plan: &Plan) -> Result<Columns> {
    let tensors = plan.tensors();
    if tensors.len() > MAX_COLUMNS {
        return Err(Error::NotAColumn {
            tensor: tensors[MAX_COLUMNS].name().to_owned(),
            reason: format!("a dataset is written with at most {MAX_COLUMNS} columns"),
        });
    }
    let mut columns = Vec::with_capacity(tensors.len());
    let mut rows: Option<(u64, &str)> = None;
    for t in tensors {
        let Some((&n, row_shape)) = t.shape().split_first() else {
            return Err(Error::NotAColumn {
                tensor: t.name().to_owned(),
                reason: "it is a 0-dimensional scalar, and every tensor of a dataset is a column of rows".into(),
            });
        };
        match rows {
            Some((r, first)) if r != n => {
                return Err(Error::NotAColumn {
                    tensor: t.name().to_owned(),
                    reason: format!(
                        "it has {n} rows but `{first}` has {r}: the columns of a dataset share their first dimension"
                    ),
                })
            }
            Some(_) => {}
            None => rows = Some((n, t.name())),
        }
        let column = Column::new(t.name(), t.dtype(), row_shape.to_vec()).map_err(|source| {
            Error::Format {
                path: PathBuf::from(t.source()),
                source,
            }
        })?;
        columns.push(column);
    }
    Ok(Columns {
        columns,
        rows: rows.map_or(0, |(r, _)| r),
    })
}

/// Rows per shard for `shard_size` data bytes: as many whole rows of all columns as fit.
pub(crate) fn rows_per_shard(columns: &[Column], rows: u64, shard_size: u64) -> Result<u64> {
    let row_bytes = columns
        .iter()
        .try_fold(0u64, |a, c| a.checked_add(c.row_bytes()));
    match row_bytes {
        // Rows of zero bytes: any number fits.
        Some(0) => Ok(rows.max(1)),
        Some(b) if shard_size >= b => Ok(shard_size / b),
        _ => Err(Error::ShardSize {
            size: shard_size,
            row_bytes: row_bytes.unwrap_or(u64::MAX),
        }),
    }
}

/// Where shards are cut: `rows` rows a shard, and the shard size in data bytes that gave them,
/// recorded in each shard (`source.shard_size`) when provenance is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cut {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

/// The dataset's own cut, for a write given no shard size: the shard size its last shard records
/// (`last`, that shard's header), else as many rows as its largest shard holds, else (no rows
/// yet) `rows`, the new rows, in one shard.
pub(crate) fn usual_cut(manifest: &Manifest, last: Option<&FileLayout>, rows: u64) -> Cut {
    let columns = manifest.columns();
    let row_bytes = columns
        .iter()
        .fold(0u64, |a, c| a.saturating_add(c.row_bytes()));
    let recorded = last
        .and_then(|l| l.header().metadata.get(SHARD_SIZE_KEY))
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(|size| Some((rows_per_shard(columns, rows, size).ok()?, size)));
    if let Some((rows, bytes)) = recorded {
        return Cut { rows, bytes };
    }
    // As many rows as the largest shard holds: the shard size the dataset was written with
    // (rounded down to whole rows), so new shards match the others.
    let rows = match manifest.shards().iter().map(|s| s.rows()).max() {
        Some(r) if r > 0 => r,
        _ => rows.max(1),
    };
    Cut {
        rows,
        bytes: rows.saturating_mul(row_bytes),
    }
}

/// The names new shards take: `shard-NNNNN.mmt`, counting up from above the highest such name a
/// manifest lists (a name, once listed, is never given to other bytes, even after the shard it
/// named was replaced), skipping any listed name.
#[derive(Default)]
pub(crate) struct Names {
    next: u64,
    taken: HashSet<String>,
}

impl Names {
    /// Names for new shards of the dataset `manifest` describes. Every write that takes a shard
    /// out of a manifest writes its replacement under a higher name in the same manifest, so the
    /// highest listed name only grows, and no name above it was ever listed: files under such
    /// names are a killed writer's leftovers, which a new shard may replace.
    pub(crate) fn after(manifest: &Manifest) -> Names {
        let above = manifest
            .shards()
            .iter()
            .filter_map(|s| shard_index(s.file()))
            .map(|i| i.saturating_add(1))
            .max()
            .unwrap_or(0);
        Names {
            next: above.max(manifest.shards().len() as u64),
            taken: manifest
                .shards()
                .iter()
                .map(|s| s.file().to_ascii_lowercase())
                .collect(),
        }
    }

    fn take(&mut self) -> String {
        loop {
            let name = format!("shard-{:05}.mmt", self.next);
            self.next += 1;
            if !self.taken.contains(&name) {
                return name;
            }
        }
    }
}

/// `N` for a name `shard-N.mmt` that a dataset writer makes (digits only, `N` below 10^12),
/// else `None`. The cap keeps the count of [`Names`] far from overflowing whatever a hand-made
/// manifest lists; a larger number is an ordinary name, skipped if it comes up.
pub(crate) fn shard_index(file: &str) -> Option<u64> {
    let digits = file.strip_prefix("shard-")?.strip_suffix(".mmt")?;
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The rows of the dataset's last shard that an append copies into its first new shard, ahead of
/// the new rows: one part per column, in column order, already in the column's dtype.
pub(crate) struct Carry {
    path: PathBuf,
    shard: Shard,
    parts: Vec<Part>,
}

pub(crate) struct Written {
    pub(crate) shards: Vec<Shard>,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

/// Where a chunk of a column's stream comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The carried rows of the old last shard, stored as the column is.
    Carry,
    /// Part `i` of the planned tensor.
    Part(usize),
}

/// One column's reader thread, seen from the writer: chunks as they arrive and the part each
/// came from.
struct Feed {
    rx: Receiver<Result<(Origin, Vec<u8>)>>,
    chunk: Vec<u8>,
    pos: usize,
    from: Origin,
    part: usize,
    /// Elements delivered so far, of the column's inputs and of the current part, and of the
    /// carried rows (for error messages).
    done_elems: u64,
    part_elems: u64,
    carry_elems: u64,
}

/// Writes `carry`'s rows (if any), then the rows of `tensors`, into new shards of `cut.rows` rows
/// in `dir`, named by `names`; each shard is committed (renamed into place) as it is finished.
/// The caller has called [`Progress::start`] (and [`Progress::carried`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_shards(
    plan: &Plan,
    tensors: &[&PlannedTensor],
    columns: &Columns,
    cut: Cut,
    dir: &Path,
    names: &mut Names,
    carry: Option<&Carry>,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Written> {
    let cancelled = || Error::Cancelled {
        path: dir.to_path_buf(),
    };
    let carried_rows = carry.map_or(0, |c| c.shard.rows());
    let total = carried_rows
        .checked_add(columns.rows)
        .ok_or_else(|| Error::Format {
            path: dir.join(MANIFEST_FILE),
            source: mmtensor_format::Error::RowCountOverflow {
                shard: carry.map_or_else(String::new, |c| c.shard.file().to_owned()),
            },
        })?;
    let mut metadata: BTreeMap<String, String> = plan.metadata().clone();
    if options.record_sources {
        metadata.insert(SHARD_SIZE_KEY.to_owned(), cut.bytes.to_string());
    }
    let unproven = tensors.iter().any(|t| {
        t.parts
            .iter()
            .any(|p| matches!(p.location, Location::Member { .. }))
    });
    std::thread::scope(|scope| {
        // The receivers live inside this closure: when it returns early (an error, a
        // cancellation) they are dropped before the scope joins the readers, so a reader blocked
        // on a full channel wakes up, fails its send and exits instead of deadlocking the join.
        let mut feeds = Vec::with_capacity(tensors.len());
        for (c, &t) in tensors.iter().enumerate() {
            let (tx, rx) = sync_channel::<Result<(Origin, Vec<u8>)>>(1);
            let chunk = options.chunk_size.clamp(1 << 12, COPY_CHUNK_SIZE);
            let carried = carry.map(|carry| &carry.parts[c]);
            scope.spawn(move || {
                let mut buf = Vec::new();
                let sources = carried.map(|p| (Origin::Carry, p)).into_iter().chain(
                    t.parts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (Origin::Part(i), p)),
                );
                for (from, part) in sources {
                    let r = part.stream(&t.name, chunk, &mut buf, dir, &mut |bytes: &[u8]| {
                        tx.send(Ok((from, bytes.to_vec())))
                            .map_err(|_| Error::Cancelled {
                                path: dir.to_path_buf(),
                            })
                    });
                    if let Err(e) = r {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            });
            feeds.push(Feed {
                rx,
                chunk: Vec::new(),
                pos: 0,
                from: Origin::Part(0),
                part: 0,
                done_elems: 0,
                part_elems: 0,
                carry_elems: 0,
            });
        }
        let mut shards = Vec::new();
        let mut bytes = 0u64;
        let mut row = 0u64;
        let mut cast_buf = Vec::new();
        while row < total {
            let rows = cut.rows.min(total - row);
            // The carried rows come first: they fill the first shard (or the first few, when a
            // smaller shard size than the carried shard's rows was asked for).
            let carried = carried_rows.saturating_sub(row).min(rows);
            let file = names.take();
            let target = dir.join(&file);
            let fmt = |source| Error::Format {
                path: target.clone(),
                source,
            };
            let mut builder = LayoutBuilder::new();
            builder.alignment(options.alignment).map_err(fmt)?;
            builder.block_size(options.block_size).map_err(fmt)?;
            for (k, v) in &metadata {
                builder.metadata(k, v).map_err(fmt)?;
            }
            if let (Some(c), true) = (carry, carried > 0 && options.record_sources) {
                let replaced =
                    serde_json::json!([{"file": c.shard.file(), "rows": c.shard.rows()}]);
                builder
                    .metadata(REPLACED_KEY, replaced.to_string())
                    .map_err(fmt)?;
            }
            for c in &columns.columns {
                builder
                    .tensor(c.name(), c.dtype(), &c.shape(rows))
                    .map_err(fmt)?;
            }
            let layout = builder.build().map_err(fmt)?;
            let file_len = layout.file_len();
            let mut writer = if unproven {
                StoreWriter::create_unreserved(&target, layout)?
            } else {
                StoreWriter::create(&target, layout)?
            };
            for (c, (t, feed)) in tensors.iter().zip(&mut feeds).enumerate() {
                let column = &columns.columns[c];
                let es = t.source_dtype.size() as u64;
                let row_in = column.row_bytes() / t.dtype.size() as u64 * es;
                progress.tensor(c, t);
                writer.begin_tensor(&t.name)?;
                // The carried rows' bytes (stored as the column is), then the inputs'.
                let phases = [
                    (true, carried * column.row_bytes()),
                    (false, (rows - carried) * row_in),
                ];
                for (from_carry, mut need) in phases {
                    while need > 0 {
                        if cancel.load(Ordering::Relaxed) {
                            return Err(cancelled());
                        }
                        if feed.pos == feed.chunk.len() {
                            match feed.rx.recv() {
                                Ok(Ok((from, chunk))) => {
                                    if let Origin::Part(part) = from {
                                        if part != feed.part {
                                            feed.part_elems = 0;
                                        }
                                        feed.part = part;
                                    }
                                    feed.from = from;
                                    feed.chunk = chunk;
                                    feed.pos = 0;
                                }
                                Ok(Err(e)) => return Err(e),
                                // A reader stops early only after sending its error; a stream
                                // that ended short all the same is refused by the writer's byte
                                // count.
                                Err(_) => {
                                    return Err(Error::TooFewBytes {
                                        tensor: t.name.clone(),
                                        expected: rows * column.row_bytes(),
                                        given: 0,
                                    })
                                }
                            }
                            continue;
                        }
                        // The carried part is exactly `carried_rows` rows long (its shape was
                        // checked against the manifest), so the phases meet chunk boundaries.
                        debug_assert_eq!(from_carry, feed.from == Origin::Carry);
                        let n = (feed.chunk.len() - feed.pos)
                            .min(usize::try_from(need).unwrap_or(usize::MAX));
                        let piece = &feed.chunk[feed.pos..feed.pos + n];
                        if from_carry {
                            // Written as stored; its blocks were checked against their
                            // checksums as they streamed. A BOOL byte is still checked.
                            if let (Some(c), Dtype::Bool) = (carry, column.dtype()) {
                                if let Some(i) = piece.iter().position(|&b| b > 1) {
                                    return Err(Error::InvalidBool {
                                        path: c.path.clone(),
                                        member: None,
                                        tensor: t.name.clone(),
                                        index: feed.carry_elems + i as u64,
                                        offset: None,
                                        value: piece[i],
                                    });
                                }
                            }
                            writer.write_chunk(piece)?;
                            feed.carry_elems += n as u64 / t.dtype.size() as u64;
                        } else {
                            emit(
                                &mut writer,
                                t,
                                &t.parts[feed.part],
                                options,
                                (feed.done_elems, feed.part_elems),
                                piece,
                                &mut cast_buf,
                            )?;
                            feed.done_elems += n as u64 / es;
                            feed.part_elems += n as u64 / es;
                        }
                        feed.pos += n;
                        need -= n as u64;
                        progress.advance(n as u64);
                    }
                }
                writer.end_tensor()?;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            if row + rows == total {
                // Before the last shard is committed: a reader may still fail after its last
                // chunk (a zip member's CRC is checked at its end).
                drain(tensors, &mut feeds)?;
            }
            let (tmp, header_checksum) = writer.finish_uncommitted()?;
            match tmp.commit() {
                // The folder's fsync is tried again when the manifest is committed, and that
                // one's failure is reported.
                Ok(_) | Err(Error::NotDurable { .. }) => {}
                Err(e) => return Err(e),
            }
            shards.push(Shard::new(file, file_len, header_checksum, rows).map_err(fmt)?);
            bytes += file_len;
            row += rows;
        }
        // With no rows there was no last shard: the readers' verdicts are still to be heard.
        drain(tensors, &mut feeds)?;
        Ok(Written {
            shards,
            rows: columns.rows,
            bytes,
        })
    })
}

/// Waits for every column's reader to finish after its last needed byte, and returns the first
/// error one sent: an error found after the last chunk (a zip member's CRC, checked when the
/// member is read to its end) would otherwise go unheard. Bytes beyond the plan are an error too.
fn drain(tensors: &[&PlannedTensor], feeds: &mut [Feed]) -> Result<()> {
    for (t, feed) in tensors.iter().zip(feeds) {
        let mut extra = feed.chunk.len() - feed.pos;
        loop {
            match feed.rx.recv() {
                Ok(Ok((_, chunk))) => extra += chunk.len(),
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        feed.pos = feed.chunk.len();
        if extra > 0 {
            return Err(Error::TooManyBytes {
                tensor: t.name.clone(),
                expected: t.input_bytes,
                given: t.input_bytes.saturating_add(extra as u64),
            });
        }
    }
    Ok(())
}

/// Writes `manifest` into `dir` atomically, the last step of [`convert_dataset`] and [`append`],
/// and sums up the write.
fn finish(
    dir: &Path,
    manifest: Manifest,
    plan: &Plan,
    written: Written,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    finish_manifest(dir, &manifest, progress, cancel)?;
    Ok(DatasetSummary {
        dir: dir.to_path_buf(),
        shards_written: written.shards.len(),
        manifest,
        rows_written: written.rows,
        rows_rewritten: 0,
        replaced: Vec::new(),
        input_bytes: plan.input_bytes(),
        bytes_written: written.bytes,
    })
}

/// The last step of every dataset write: unless cancelled, `manifest` replaces the folder's
/// manifest atomically. Until then no reader sees anything of the write.
pub(crate) fn finish_manifest(
    dir: &Path,
    manifest: &Manifest,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled {
            path: dir.to_path_buf(),
        });
    }
    progress.finish();
    write_manifest(dir, manifest)?;
    Ok(())
}

/// Replaces the manifest of the dataset in `dir` by `manifest`, atomically (temporary file, fsync,
/// rename, folder fsync).
///
/// # Errors
/// [`Error::Io`]; [`Error::NotDurable`] when only the folder's fsync failed (the new manifest is in
/// place).
pub fn write_manifest(dir: impl AsRef<Path>, manifest: &Manifest) -> Result<PathBuf> {
    let target = dir.as_ref().join(MANIFEST_FILE);
    let tmp = AtomicFile::create(&target)?;
    tmp.file()
        .write_all(&manifest.encode())
        .map_err(Error::io("cannot write to", tmp.temp_path()))?;
    tmp.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmtensor_format::Dtype;

    #[test]
    fn rows_per_shard_cuts_whole_rows() {
        let cols = [
            Column::new("x", Dtype::F32, vec![3]).unwrap(),
            Column::new("y", Dtype::I64, vec![]).unwrap(),
        ];
        assert_eq!(rows_per_shard(&cols, 100, 20).unwrap(), 1);
        assert_eq!(rows_per_shard(&cols, 100, 39).unwrap(), 1);
        assert_eq!(rows_per_shard(&cols, 100, 40).unwrap(), 2);
        assert!(matches!(
            rows_per_shard(&cols, 100, 19),
            Err(Error::ShardSize {
                size: 19,
                row_bytes: 20
            })
        ));
        let empty = [Column::new("e", Dtype::F32, vec![0]).unwrap()];
        assert_eq!(rows_per_shard(&empty, 7, 1).unwrap(), 7);
        assert_eq!(rows_per_shard(&empty, 0, 1).unwrap(), 1);
    }
}
