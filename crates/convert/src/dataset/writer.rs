//! [`DatasetWriter`]: rows streamed into a dataset, from any source, in batches of any size; the
//! one sink of every write that adds rows ([`crate::convert_dataset`], [`crate::append`], a
//! Python pipeline's `DatasetWriter`, one writer of many with [`crate::commit`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use mmtensor_format::{ColumnSpec, Dtype, Manifest, Shard, MANIFEST_FILE};

use crate::dataset::cut::{
    check_count, columns_of, rows_per_shard, usual_cut, Cut, SHARD_SIZE_KEY,
};
use crate::dataset::lock::WriteLock;
use crate::dataset::manifest::{finish_manifest, read_manifest};
use crate::dataset::names::Names;
use crate::dataset::parts::{PartMarker, PART_DIR};
use crate::dataset::shard::Template;
use crate::dataset::sink::Shards;
use crate::dataset::write::{stream_columns, DatasetSummary};
use crate::plan::{Plan, PlannedTensor};
use crate::readers::mmt::listed_shard;
use crate::source::Part;
#[cfg(doc)]
use crate::MAX_COLUMNS;
use crate::{ConvertOptions, DtypeRules, Error, Fill, NoProgress, Progress, Result};

/// The shard size of a [`DatasetWriter`] given none, for a dataset that has no shard size of its
/// own yet: 256 MiB of data per shard (large enough that opening and mapping shards costs nothing
/// next to reading them, small enough to fetch one from object storage in a few seconds).
pub const DEFAULT_SHARD_SIZE: u64 = 256 << 20;

/// The metadata key under which a shard that replaced others records them: a JSON array of
/// `{"file": NAME, "rows": N}`, the replaced shards whose rows it holds again, in order.
pub(super) const REPLACED_KEY: &str = "source.replaced";

/// What the writer adds its shards to.
enum Kind {
    /// A new dataset: its manifest is created by [`DatasetWriter::finish`].
    Create,
    /// Rows after those of `old`, the manifest replaced by [`DatasetWriter::finish`].
    Append { old: Manifest },
    /// One part of a write by many writers: [`DatasetWriter::finish`] writes a part record, and
    /// [`crate::commit`] lists the parts' shards in a manifest.
    Part { marker: PartMarker },
    /// Shards staged for another place (object storage): [`DatasetWriter::finish`] returns the new
    /// manifest (`old`'s shards followed by the new ones) and writes none.
    Staged { old: Option<Manifest> },
}

/// The old last shard an append fills: its rows are written ahead of the new ones, once the first
/// new row arrives.
struct Carry {
    path: PathBuf,
    shard: Shard,
    parts: Vec<Part>,
}

/// Streams rows into a dataset: batches of any number of rows, each column's bytes in the
/// column's dtype (little-endian, C order); shards are cut at row boundaries every `shard_size`
/// data bytes and committed (renamed into place) as each fills; memory stays bounded by a small
/// buffer per column, however many rows arrive. Nothing becomes visible to readers until
/// [`DatasetWriter::finish`] writes the manifest (or, for one part of many, the part record), and
/// then atomically: a writer dropped without `finish` (an error, a panic, an exception in a Python
/// `with` block) deletes the shards it wrote and leaves the dataset exactly as it was; a killed
/// one leaves at most shard files no manifest lists, which [`crate::prune`] deletes.
///
/// Three ways to open one: [`DatasetWriter::create`] (a new dataset), [`DatasetWriter::append`]
/// (rows after a dataset's own, checked against its columns, filling its last shard first as
/// [`crate::append`] does), [`DatasetWriter::part`] (one of many writers at once; see
/// [`crate::commit`]). `create` and `append` hold the folder's write lock until the writer is
/// finished or dropped.
///
/// ```
/// use mmtensor_convert::{ConvertOptions, DatasetWriter};
/// use mmtensor_format::{ColumnSpec, Dtype};
///
/// let dir = tempfile::tempdir()?;
/// let columns = vec![ColumnSpec::new("x", Dtype::F32, vec![2])?, ColumnSpec::new("y", Dtype::U8, vec![])?];
/// let mut w = DatasetWriter::create(dir.path().join("train"), columns, 1 << 20, &ConvertOptions::default())?;
/// for batch in 0..3u8 {
///     let x: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
///     w.write_rows(2, &[&x, &[batch, batch]])?;
/// }
/// let summary = w.finish()?;
/// assert_eq!(summary.manifest.num_rows(), 6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DatasetWriter {
    dir: PathBuf,
    kind: Kind,
    shards: Shards,
    carry: Option<Carry>,
    /// The shard the carry replaced, once its rows are written.
    replaced: Option<Shard>,
    rows: u64,
    poisoned: bool,
    finished: bool,
    _lock: Option<WriteLock>,
}

impl std::fmt::Debug for DatasetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatasetWriter")
            .field("dir", &self.dir)
            .field("columns", &self.shards.columns())
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// The layout template of a write's shards: the options' alignment and block size, `metadata`,
/// and the shard size it was cut at when provenance is recorded.
pub(super) fn template(
    options: &ConvertOptions,
    metadata: &BTreeMap<String, String>,
    cut: Cut,
    dir: &Path,
) -> Result<Template> {
    let mut metadata = metadata.clone();
    if options.record_sources {
        metadata.insert(SHARD_SIZE_KEY.to_owned(), cut.bytes.to_string());
    }
    let builder = options.layout(&metadata).map_err(|source| Error::Format {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(Template { builder })
}

/// `columns` checked as a dataset's: at least one, at most [`MAX_COLUMNS`], distinct names.
fn check_columns(dir: &Path, columns: &[ColumnSpec]) -> Result<()> {
    check_count(columns.iter().map(|c| c.name()))?;
    Manifest::new(columns.to_vec(), Vec::new())
        .map(drop)
        .map_err(|source| Error::Format {
            path: dir.join(MANIFEST_FILE),
            source,
        })
}

/// The cut of a new write of `columns` at `shard_size`, or (none given) at
/// [`DEFAULT_SHARD_SIZE`], or, with `rows` known, all rows in one shard when they fit in it.
fn cut_of(columns: &[ColumnSpec], shard_size: u64, rows: Option<u64>) -> Result<Cut> {
    let rows = rows_per_shard(columns, rows.unwrap_or(1 << 40), shard_size)?;
    Ok(Cut {
        rows,
        bytes: shard_size,
    })
}

impl DatasetWriter {
    /// A writer of `kind` into `dir`, nothing written yet.
    fn assemble(
        dir: &Path,
        kind: Kind,
        shards: Shards,
        carry: Option<Carry>,
        lock: Option<WriteLock>,
    ) -> DatasetWriter {
        DatasetWriter {
            dir: dir.to_path_buf(),
            kind,
            shards,
            carry,
            replaced: None,
            rows: 0,
            poisoned: false,
            finished: false,
            _lock: lock,
        }
    }

    /// A writer of a new dataset in the folder `dir` (created if missing) with `columns`, cut into
    /// shards of at most `shard_size` data bytes (whole rows; at least one). Shards are named
    /// `shard-00000.mmt`, ...; the manifest is written by [`DatasetWriter::finish`].
    ///
    /// # Errors
    /// [`Error::DatasetExists`] (the folder holds a manifest: use [`DatasetWriter::append`]),
    /// [`Error::DatasetBusy`], [`Error::ShardSize`], [`Error::NotAColumn`] (too many columns),
    /// [`Error::Format`] (no columns, a name twice, a bad name), [`Error::Io`].
    pub fn create(
        dir: impl AsRef<Path>,
        columns: Vec<ColumnSpec>,
        shard_size: u64,
        options: &ConvertOptions,
    ) -> Result<DatasetWriter> {
        Self::create_with(
            dir.as_ref(),
            columns,
            shard_size,
            None,
            &options.metadata,
            options,
        )
    }

    /// [`DatasetWriter::create`] for `rows` rows known in advance (shards laid out for exactly
    /// their rows), with the shards' metadata.
    pub(crate) fn create_with(
        dir: &Path,
        columns: Vec<ColumnSpec>,
        shard_size: u64,
        rows: Option<u64>,
        metadata: &BTreeMap<String, String>,
        options: &ConvertOptions,
    ) -> Result<DatasetWriter> {
        check_columns(dir, &columns)?;
        let cut = cut_of(&columns, shard_size, rows)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            return Err(Error::DatasetExists {
                path: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(Error::io("cannot create the folder", dir))?;
        let lock = WriteLock::take(dir)?;
        // Looked at again under the lock: another writer may have finished in between.
        if manifest_path.exists() {
            return Err(Error::DatasetExists {
                path: dir.to_path_buf(),
            });
        }
        let template = template(options, metadata, cut, dir)?;
        let mut shards = Shards::new(dir, columns, template, cut, Names::default());
        if let Some(rows) = rows {
            shards.expect(rows);
        }
        Ok(DatasetWriter::assemble(
            dir,
            Kind::Create,
            shards,
            None,
            Some(lock),
        ))
    }

    /// A writer of rows after those of the dataset in `dir`, with its columns
    /// ([`DatasetWriter::columns`]), cut as [`crate::append`] cuts them: at `shard_size` data
    /// bytes, or (`None`) the dataset's own shard size, and filling its last shard first with
    /// [`Fill::LastShard`]. No listed shard is modified; the old last shard, when filled, stays on
    /// disk unlisted until [`crate::prune`].
    ///
    /// # Errors
    /// As [`crate::append`] before it reads its inputs.
    pub fn append(
        dir: impl AsRef<Path>,
        shard_size: Option<u64>,
        fill: Fill,
        options: &ConvertOptions,
    ) -> Result<DatasetWriter> {
        Self::append_with(
            dir.as_ref(),
            shard_size,
            fill,
            None,
            &options.metadata,
            options,
        )
    }

    /// [`DatasetWriter::append`] for `rows` new rows known in advance, with the shards' metadata.
    pub(crate) fn append_with(
        dir: &Path,
        shard_size: Option<u64>,
        fill: Fill,
        rows: Option<u64>,
        metadata: &BTreeMap<String, String>,
        options: &ConvertOptions,
    ) -> Result<DatasetWriter> {
        // Held until the new manifest is in place, so the manifest read here is the one replaced.
        let lock = WriteLock::take(dir)?;
        let old = read_manifest(dir)?;
        let columns = old.columns().to_vec();
        let last = old.shards().last();
        // A dataset with a ragged column only gains shards: its last shard is not filled (its
        // rows would have to be carried with their lengths).
        let fill = if columns.iter().any(ColumnSpec::is_ragged) {
            Fill::Never
        } else {
            fill
        };
        // The last shard is read when it may be filled, or for the shard size it records; it is
        // checked against the manifest as it is read, and its blocks as they stream.
        let adds = rows != Some(0);
        let reads_last = fill == Fill::LastShard && adds || shard_size.is_none();
        let listed = match last {
            Some(shard) if reads_last => {
                Some(listed_shard(dir, shard, &columns, &DtypeRules::default())?)
            }
            _ => None,
        };
        let cut = match shard_size {
            Some(size) => cut_of(&columns, size, rows)?,
            None => usual_cut(&old, listed.as_ref().map(|l| &l.layout), rows),
        };
        let carry = match (last, listed) {
            (Some(shard), Some(listed))
                if fill == Fill::LastShard && adds && shard.num_rows() < cut.rows =>
            {
                Some(Carry {
                    path: dir.join(shard.file()),
                    shard: shard.clone(),
                    parts: listed.parts,
                })
            }
            _ => None,
        };
        let template = template(options, metadata, cut, dir)?;
        let mut shards = Shards::new(dir, columns, template, cut, Names::after(&old));
        if let Some(rows) = rows {
            shards.expect(rows + carry.as_ref().map_or(0, |c| c.shard.num_rows()));
        }
        Ok(DatasetWriter::assemble(
            dir,
            Kind::Append { old },
            shards,
            carry,
            Some(lock),
        ))
    }

    /// A writer of part `id` of a write by many writers into the dataset folder `dir`, each
    /// process or machine with its own id: it writes its own shards (named
    /// `part-ID-NONCE-NNNNN.mmt`, never a name another writer takes) and, at
    /// [`DatasetWriter::finish`], a part record in `dir/_parts/`; [`crate::commit`] then lists
    /// every part's shards in the manifest, in the order of their ids. Until the commit, readers
    /// see nothing of it.
    ///
    /// `columns`: the dataset's (when it has a manifest, they must be its own; `None` takes them
    /// from it). `shard_size`: `None` is the dataset's own, else [`DEFAULT_SHARD_SIZE`]. A part
    /// writer does not take the folder's write lock (many write at once): while it writes, it
    /// holds a lock on its own marker file, `_parts/ID.writing`, which tells [`crate::commit`]
    /// that it is still at work; a writer that died leaves its marker unlocked, and `commit`
    /// names it. Opening part `id` again (a retried task) replaces the earlier attempt.
    ///
    /// # Errors
    /// [`Error::SchemaMismatch`] (columns that are not the dataset's), [`Error::Part`] (no columns
    /// and no dataset; part `id` is being written by a live writer now), as
    /// [`DatasetWriter::create`].
    pub fn part(
        dir: impl AsRef<Path>,
        id: u64,
        columns: Option<Vec<ColumnSpec>>,
        shard_size: Option<u64>,
        options: &ConvertOptions,
    ) -> Result<DatasetWriter> {
        let dir = dir.as_ref();
        let existing = if dir.join(MANIFEST_FILE).exists() {
            Some(read_manifest(dir)?)
        } else {
            None
        };
        let columns = match (columns, &existing) {
            (Some(given), Some(old)) => {
                if let Some(reason) = schema_difference(old.columns(), &given, "in the writer", false) {
                    return Err(Error::SchemaMismatch {
                        path: dir.to_path_buf(),
                        reason,
                    });
                }
                old.columns().to_vec()
            }
            (Some(given), None) => given,
            (None, Some(old)) => old.columns().to_vec(),
            (None, None) => {
                return Err(Error::Part {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "part {id}: the folder holds no dataset yet, so the part writer needs its columns"
                    ),
                })
            }
        };
        check_columns(dir, &columns)?;
        let cut = match (shard_size, &existing) {
            (Some(size), _) => cut_of(&columns, size, None)?,
            (None, Some(old)) => {
                let last = match old.shards().last() {
                    Some(shard) => {
                        Some(listed_shard(dir, shard, &columns, &DtypeRules::default())?.layout)
                    }
                    None => None,
                };
                usual_cut(old, last.as_ref(), None)
            }
            (None, None) => cut_of(&columns, DEFAULT_SHARD_SIZE, None)?,
        };
        std::fs::create_dir_all(dir.join(PART_DIR))
            .map_err(Error::io("cannot create the folder", dir.join(PART_DIR)))?;
        let marker = PartMarker::take(dir, id)?;
        let names = Names::for_part(id, marker.nonce());
        let template = template(options, &options.metadata, cut, dir)?;
        Ok(DatasetWriter::assemble(
            dir,
            Kind::Part { marker },
            Shards::new(dir, columns, template, cut, names),
            None,
            None,
        ))
    }

    /// A writer that stages shards in the local folder `stage` for a dataset kept elsewhere (object
    /// storage): rows after those of `old` (its manifest, if the dataset exists; its columns must
    /// then be `columns`), never filling its last shard, cut at `shard_size` (`None`: as many rows
    /// as `old`'s largest shard, else [`DEFAULT_SHARD_SIZE`]). Shards are named
    /// `shard-NNNNN-NONCE.mmt`, NONCE 16 hex digits new for every writer, so that two writers
    /// appending to one dataset at once never write one name. [`DatasetWriter::on_shard`] is where
    /// each finished shard goes; [`DatasetWriter::finish`] writes no manifest but returns it, for
    /// the caller to put in place (conditionally). The folder's lock is not taken: `stage` is the
    /// caller's own.
    ///
    /// # Errors
    /// [`Error::SchemaMismatch`] (`columns` that are not `old`'s), as [`DatasetWriter::create`].
    pub fn staged(
        stage: impl AsRef<Path>,
        old: Option<Manifest>,
        columns: Vec<ColumnSpec>,
        shard_size: Option<u64>,
        options: &ConvertOptions,
    ) -> Result<DatasetWriter> {
        let dir = stage.as_ref();
        check_columns(dir, &columns)?;
        if let Some(old) = &old {
            if let Some(reason) = schema_difference(old.columns(), &columns, "here", false) {
                return Err(Error::SchemaMismatch {
                    path: dir.to_path_buf(),
                    reason,
                });
            }
        }
        let columns = old.as_ref().map_or(columns, |m| m.columns().to_vec());
        let cut = match (shard_size, &old) {
            (Some(size), _) => cut_of(&columns, size, None)?,
            (None, Some(old)) => usual_cut(old, None, None),
            (None, None) => cut_of(&columns, DEFAULT_SHARD_SIZE, None)?,
        };
        std::fs::create_dir_all(dir).map_err(Error::io("cannot create the folder", dir))?;
        let names = match &old {
            Some(m) => Names::after(m),
            None => Names::default(),
        }
        .with_nonce(&crate::dataset::parts::nonce());
        let template = template(options, &options.metadata, cut, dir)?;
        Ok(DatasetWriter::assemble(
            dir,
            Kind::Staged { old },
            Shards::new(dir, columns, template, cut, names),
            None,
            None,
        ))
    }

    /// Hands each shard, once complete and renamed into place, to `hook` (its path and manifest
    /// entry), before the next one is begun: an uploader sends it on (and may delete the local
    /// file). An error from the hook fails the write that finished the shard.
    pub fn on_shard(
        &mut self,
        hook: impl FnMut(&Path, &Shard) -> Result<()> + Send + Sync + 'static,
    ) {
        self.shards.on_shard(Box::new(hook));
    }

    /// The columns a [`Plan`] gives as a dataset's (every planned tensor a column of rows, sharing
    /// their first dimension), and their row count.
    ///
    /// # Errors
    /// [`Error::NotAColumn`]: a scalar tensor, row counts that differ, more than
    /// [`MAX_COLUMNS`] tensors.
    pub fn columns_of(plan: &Plan) -> Result<(Vec<ColumnSpec>, u64)> {
        let c = columns_of(plan)?;
        Ok((c.columns, c.rows))
    }

    /// Streams the rows of a checked `plan` (its tensors must be the writer's columns, in any
    /// order, by name, dtype and row shape), as `convert --shard-size` and `append` do: each column
    /// read by its own thread, cast as planned, and cut into shards.
    ///
    /// # Errors
    /// [`Error::SchemaMismatch`]; as [`crate::write_plan`]; [`Error::Cancelled`].
    pub fn write_plan(
        &mut self,
        plan: &Plan,
        options: &ConvertOptions,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<()> {
        let given = columns_of(plan)?;
        if let Some(reason) =
            schema_difference(self.columns(), &given.columns, "in the inputs", false)
        {
            return Err(Error::SchemaMismatch {
                path: self.dir.clone(),
                reason,
            });
        }
        // The inputs' tensors in the writer's column order.
        let tensors: Vec<&PlannedTensor> = self
            .columns()
            .iter()
            .map(|c| {
                let i = given
                    .columns
                    .iter()
                    .position(|n| n.name() == c.name())
                    .expect("the schemas match");
                &plan.tensors()[i]
            })
            .collect();
        progress.start(plan);
        progress.carried(self.carried_bytes());
        self.write_planned(&tensors, given.rows, options, progress, cancel)
    }

    /// The dataset folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The columns every batch gives, in order.
    pub fn columns(&self) -> &[ColumnSpec] {
        self.shards.columns()
    }

    /// Rows written so far (the carried rows of a filled last shard aside).
    pub fn rows_written(&self) -> u64 {
        self.rows
    }

    /// Rows each shard holds (the last one may hold fewer).
    pub fn rows_per_shard(&self) -> u64 {
        self.shards.rows_per_shard()
    }

    /// Writes `rows` rows: `columns[c]` holds column `c`'s bytes for them (its dtype,
    /// little-endian, C order: `rows` x the column's row bytes). Whole shards are committed as they
    /// fill. BOOL columns must hold only the bytes 0 and 1.
    ///
    /// # Errors
    /// [`Error::Batch`] (a column missing or extra, a length that is not `rows` rows, a BOOL byte
    /// other than 0 and 1), before any byte of the batch is written; [`Error::Io`] and the
    /// format's errors while writing; [`Error::Poisoned`] after any earlier error (drop the writer:
    /// nothing becomes visible).
    pub fn write_rows(&mut self, rows: u64, columns: &[&[u8]]) -> Result<()> {
        let batch: Vec<ColumnBatch<'_>> = columns.iter().map(|c| ColumnBatch::Fixed(c)).collect();
        self.write_batch(rows, &batch)
    }

    /// Writes `rows` rows of every column, fixed-shape and ragged alike: `columns[c]` is column
    /// `c`'s [`ColumnBatch`]. Whole shards are committed as they fill: a shard ends at its rows
    /// or when a ragged column's next row would take its items past the shard size (a row longer
    /// than that gets a shard of its own).
    ///
    /// # Errors
    /// As [`DatasetWriter::write_rows`]; [`Error::Batch`] also for a ragged column given as
    /// fixed or the reverse, lengths that are not one per row, or values that are not the
    /// lengths' items.
    pub fn write_batch(&mut self, rows: u64, columns: &[ColumnBatch<'_>]) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned {
                path: self.dir.clone(),
            });
        }
        self.check_batch(rows, columns)?;
        let result = self.write_checked(rows, columns);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn check_batch(&self, rows: u64, columns: &[ColumnBatch<'_>]) -> Result<()> {
        let specs = self.shards.columns();
        let batch = |column: &str, reason: String| Error::Batch {
            column: column.to_owned(),
            reason,
        };
        if columns.len() != specs.len() {
            let names: Vec<&str> = specs.iter().map(|c| c.name()).collect();
            return Err(batch(
                specs.get(columns.len()).map_or("", |c| c.name()),
                format!(
                    "the batch gives {} columns, but the dataset has {}: {}",
                    columns.len(),
                    specs.len(),
                    names.join(", ")
                ),
            ));
        }
        for (spec, given) in specs.iter().zip(columns) {
            let bytes = match (given, spec.is_ragged()) {
                (ColumnBatch::Fixed(bytes), false) => *bytes,
                (ColumnBatch::Ragged { values, lengths }, true) => {
                    if lengths.len() as u64 != rows {
                        return Err(batch(
                            spec.name(),
                            format!("{} row lengths given for {rows} rows", lengths.len()),
                        ));
                    }
                    let items = lengths.iter().try_fold(0u64, |a, &l| a.checked_add(l));
                    let expected = items.and_then(|i| i.checked_mul(spec.row_bytes()));
                    if expected != Some(values.len() as u64) {
                        return Err(batch(
                            spec.name(),
                            format!(
                                "{} bytes of values given for rows of {} items in all, of {} with items of shape {:?} ({} bytes each)",
                                values.len(),
                                items.map_or("more than 2^64".into(), |i| i.to_string()),
                                spec.dtype(),
                                spec.row_shape(),
                                spec.row_bytes()
                            ),
                        ));
                    }
                    values
                }
                (ColumnBatch::Fixed(_), true) => {
                    return Err(batch(
                        spec.name(),
                        "the column is ragged: give its values and each row's length".into(),
                    ))
                }
                (ColumnBatch::Ragged { .. }, false) => {
                    return Err(batch(
                        spec.name(),
                        format!(
                            "the column has fixed rows of shape {:?}, not ragged ones",
                            spec.row_shape()
                        ),
                    ))
                }
            };
            if spec.is_ragged() {
                if spec.dtype() == Dtype::Bool {
                    check_bools(spec.name(), bytes)?;
                }
                continue;
            }
            let expected = rows.checked_mul(spec.row_bytes());
            if expected != Some(bytes.len() as u64) {
                return Err(batch(
                    spec.name(),
                    format!(
                        "{} bytes given for {rows} rows of {} with rows of shape {:?} ({} bytes each)",
                        bytes.len(),
                        spec.dtype(),
                        spec.row_shape(),
                        spec.row_bytes()
                    ),
                ));
            }
            if spec.dtype() == Dtype::Bool {
                check_bools(spec.name(), bytes)?;
            }
        }
        Ok(())
    }

    fn write_checked(&mut self, rows: u64, columns: &[ColumnBatch<'_>]) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        self.begin()?;
        // Per ragged column: the item each row of the batch starts at (rows + 1 entries).
        let starts: Vec<Option<Vec<u64>>> = columns
            .iter()
            .map(|c| match c {
                ColumnBatch::Ragged { lengths, .. } => {
                    let mut s = Vec::with_capacity(lengths.len() + 1);
                    s.push(0u64);
                    for &l in *lengths {
                        s.push(s.last().copied().unwrap_or(0) + l);
                    }
                    Some(s)
                }
                ColumnBatch::Fixed(_) => None,
            })
            .collect();
        let mut done = 0u64;
        while done < rows {
            let mut n = self.shards.room()?.min(rows - done);
            // As many rows as every ragged column's items have room for.
            for (c, s) in starts.iter().enumerate() {
                if let Some(s) = s {
                    let room = self.shards.room_values(c);
                    let base = s[done as usize];
                    let fit = s[done as usize..=(done + n) as usize]
                        .partition_point(|&e| e - base <= room)
                        as u64;
                    n = n.min(fit.saturating_sub(1));
                }
            }
            if n == 0 {
                if self.shards.open_rows() > 0 {
                    self.shards.close()?;
                } else {
                    // One row longer than a shard's room: a shard sized for it.
                    let need: Vec<u64> = starts
                        .iter()
                        .flatten()
                        .map(|s| s[done as usize + 1] - s[done as usize])
                        .collect();
                    self.shards.widen(&need)?;
                }
                continue;
            }
            for (c, column) in columns.iter().enumerate() {
                match column {
                    ColumnBatch::Fixed(bytes) => {
                        let row_bytes = self.shards.columns()[c].row_bytes() as usize;
                        let from = done as usize * row_bytes;
                        self.shards
                            .put(c, &bytes[from..from + n as usize * row_bytes])?;
                    }
                    ColumnBatch::Ragged { values, lengths } => {
                        let s = starts[c].as_ref().expect("ragged");
                        let item = self.shards.columns()[c].row_bytes() as usize;
                        let (a, b) = (s[done as usize] as usize, s[(done + n) as usize] as usize);
                        self.shards.put_values(c, &values[a * item..b * item])?;
                        self.shards
                            .put_lengths(c, &lengths[done as usize..(done + n) as usize])?;
                    }
                }
            }
            self.shards.end_rows(n)?;
            done += n;
        }
        self.rows += rows;
        Ok(())
    }

    /// Before the first new row: the carried rows of the old last shard, when an append fills it.
    fn begin(&mut self) -> Result<()> {
        let Some(carry) = self.carry.take() else {
            return Ok(());
        };
        let replaced =
            serde_json::json!([{"file": carry.shard.file(), "rows": carry.shard.num_rows()}]);
        self.shards
            .first_shard_metadata(vec![(REPLACED_KEY.to_owned(), replaced.to_string())]);
        self.shards.room()?;
        let mut buf = Vec::new();
        for (c, part) in carry.parts.iter().enumerate() {
            let column = self.shards.columns()[c].clone();
            let mut index = 0u64;
            let shards = &mut self.shards;
            part.stream(
                column.name(),
                crate::options::COPY_CHUNK_SIZE,
                &mut buf,
                &self.dir,
                &mut |bytes: &[u8]| {
                    // Written as stored; its blocks were checked against their checksums as they
                    // streamed. A BOOL byte is still checked.
                    if column.dtype() == Dtype::Bool {
                        if let Some(i) = bytes.iter().position(|&b| b > 1) {
                            return Err(Error::InvalidBool {
                                path: carry.path.clone(),
                                member: None,
                                tensor: column.name().to_owned(),
                                index: index + i as u64,
                                offset: None,
                                value: bytes[i],
                            });
                        }
                    }
                    index += bytes.len() as u64 / column.dtype().size() as u64;
                    shards.put(c, bytes)
                },
            )?;
        }
        self.shards.end_rows(carry.shard.num_rows())?;
        self.replaced = Some(carry.shard);
        Ok(())
    }

    /// Streams the planned `tensors` (one per column, in column order, all `rows` rows) in, as
    /// [`crate::convert_dataset`] and [`crate::append`] do.
    fn write_planned(
        &mut self,
        tensors: &[&PlannedTensor],
        rows: u64,
        options: &ConvertOptions,
        progress: &dyn Progress,
        cancel: &AtomicBool,
    ) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned {
                path: self.dir.clone(),
            });
        }
        let result = (|| {
            if rows > 0 {
                self.begin()?;
            }
            stream_columns(
                tensors,
                rows,
                &mut self.shards,
                options,
                progress,
                cancel,
                &self.dir,
            )
        })();
        match result {
            Ok(()) => {
                self.rows += rows;
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    /// Rows the old last shard gives the first new shard (0 when none is filled).
    fn carried_bytes(&self) -> u64 {
        self.carry.as_ref().map_or(0, |c| {
            c.parts.iter().fold(0u64, |a, p| a.saturating_add(p.len))
        })
    }

    /// Commits the last shard, then makes every row visible at once: the new manifest (a new
    /// dataset, or the old one's shards followed by the new ones) replaces the folder's by an
    /// atomic rename; for a part writer, its part record is written instead, for
    /// [`crate::commit`].
    ///
    /// # Errors
    /// [`Error::Poisoned`] after an earlier error; [`Error::Io`]; [`Error::NotDurable`] when only
    /// the folder's fsync failed (the manifest is in place).
    pub fn finish(self) -> Result<DatasetSummary> {
        self.finish_with(&NoProgress, &AtomicBool::new(false), 0)
    }

    /// [`DatasetWriter::finish`] with a progress report and a last cancellation check.
    pub(crate) fn finish_with(
        mut self,
        progress: &dyn Progress,
        cancel: &AtomicBool,
        input_bytes: u64,
    ) -> Result<DatasetSummary> {
        if self.poisoned {
            return Err(Error::Poisoned {
                path: self.dir.clone(),
            });
        }
        let columns = self.shards.columns().to_vec();
        if let Err(e) = self.shards.close() {
            self.poisoned = true;
            return Err(e);
        }
        let written = self.shards.done.clone();
        let bytes = self.shards.bytes;
        let fmt = |source| Error::Format {
            path: self.dir.join(MANIFEST_FILE),
            source,
        };
        let manifest = match &self.kind {
            Kind::Create | Kind::Part { .. } => {
                Manifest::new(columns, written.clone()).map_err(fmt)?
            }
            Kind::Append { old } => {
                let kept = old.shards().len() - usize::from(self.replaced.is_some());
                let shards: Vec<Shard> = old.shards()[..kept]
                    .iter()
                    .chain(&written)
                    .cloned()
                    .collect();
                Manifest::new(columns, shards).map_err(fmt)?
            }
            Kind::Staged { old } => {
                let shards: Vec<Shard> = old
                    .iter()
                    .flat_map(|m| m.shards())
                    .chain(&written)
                    .cloned()
                    .collect();
                Manifest::new(columns, shards).map_err(fmt)?
            }
        };
        let committed = match &self.kind {
            Kind::Part { marker } => marker.finish(&manifest, cancel),
            Kind::Staged { .. } => Ok(()),
            _ => finish_manifest(&self.dir, &manifest, progress, cancel),
        };
        match committed {
            Ok(()) => self.finished = true,
            // In place, only perhaps not durable: the shards are listed now, never to be removed.
            Err(e @ Error::NotDurable { .. }) => {
                self.finished = true;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        Ok(DatasetSummary {
            dir: self.dir.clone(),
            shards_written: written.len(),
            manifest,
            rows_written: self.rows,
            rows_rewritten: self.replaced.as_ref().map_or(0, |s| s.num_rows()),
            replaced: self.replaced.iter().map(|s| s.file().to_owned()).collect(),
            input_bytes,
            bytes_written: bytes,
        })
    }

    /// Gives the write up: deletes the shards it wrote (no manifest or part record lists them) and,
    /// for a part writer, its marker. The dataset is exactly as it was. Dropping an unfinished
    /// writer does the same.
    pub fn abort(self) {}
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.shards.remove_written();
            if let Kind::Part { marker } = &self.kind {
                marker.abandon();
            }
        }
    }
}

/// Why the columns `given` (found `there`: "in the inputs") are not the dataset's `own` (names,
/// dtypes, row shapes; and their order, when `ordered`), or `None` when they are.
pub(crate) fn schema_difference(
    own: &[ColumnSpec],
    given: &[ColumnSpec],
    there: &str,
    ordered: bool,
) -> Option<String> {
    for c in own {
        let Some(found) = given.iter().find(|g| g.name() == c.name()) else {
            return Some(format!("column `{}` is missing", c.name()));
        };
        if found.is_ragged() != c.is_ragged() {
            let kind = |r: bool| if r { "ragged" } else { "fixed-shape" };
            return Some(format!(
                "column `{}` is {} in the dataset, but {} {there}{}",
                c.name(),
                kind(c.is_ragged()),
                kind(found.is_ragged()),
                if c.is_ragged() {
                    " (append token files with `mmt append DIR FILE --raw-dtype/--eot` or a .idx, rows with a DatasetWriter)"
                } else {
                    ""
                }
            ));
        }
        if found.dtype() != c.dtype() || found.row_shape() != c.row_shape() {
            return Some(format!(
                "column `{}` is {} with rows of shape {:?} in the dataset, but {} with rows of shape {:?} {there}",
                c.name(),
                c.dtype(),
                c.row_shape(),
                found.dtype(),
                found.row_shape()
            ));
        }
    }
    if let Some(extra) = given
        .iter()
        .find(|g| !own.iter().any(|c| c.name() == g.name()))
    {
        return Some(format!(
            "`{}`, which is not a column of the dataset, is given {there}",
            extra.name()
        ));
    }
    if ordered && own.iter().zip(given).any(|(a, b)| a.name() != b.name()) {
        let names: Vec<&str> = own.iter().map(|c| c.name()).collect();
        return Some(format!(
            "the columns are in another order {there}: the dataset's is {}",
            names.join(", ")
        ));
    }
    None
}

/// One column's part of a batch given to [`DatasetWriter::write_batch`].
#[derive(Clone, Copy, Debug)]
pub enum ColumnBatch<'a> {
    /// A fixed-shape column: `rows` × its row bytes, in its dtype, little-endian, C order.
    Fixed(&'a [u8]),
    /// A ragged column: each row's length in items, and the rows' items back to back (in the
    /// column's dtype, little-endian, C order: the lengths' sum × the item bytes).
    Ragged {
        /// The rows' items, back to back.
        values: &'a [u8],
        /// Each row's length, in items.
        lengths: &'a [u64],
    },
}

/// [`Error::Batch`] for the first byte of a BOOL column that is not 0 or 1.
fn check_bools(column: &str, bytes: &[u8]) -> Result<()> {
    match bytes.iter().position(|&b| b > 1) {
        Some(i) => Err(Error::Batch {
            column: column.to_owned(),
            reason: format!(
                "element {i} of the batch (C order) is the byte {}, but a bool must be 0 or 1",
                bytes[i]
            ),
        }),
        None => Ok(()),
    }
}
