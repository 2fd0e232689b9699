//! Sharded datasets: a folder of `.mmt` shards and a manifest (`docs/FORMAT.md`, "Dataset
//! manifest"), written by [`convert_dataset`] and extended by [`append`].
//!
//! Every planned tensor is a *column*; all columns share their first dimension, and shards are cut
//! at row boundaries of all of them together. Each column is streamed by its own reader thread
//! (the same part streams `convert` uses: byte swaps, Fortran reorder, zip members) into a
//! one-chunk channel; the writer takes as many bytes of each column as the current shard holds,
//! so any input streams once, in order, whatever the shard size. Each shard is written through
//! a [`StoreWriter`] (temporary file, fsync, rename); the manifest is written last through an
//! [`AtomicFile`].

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};

use mmtensor_format::{Column, LayoutBuilder, Manifest, Shard, MANIFEST_FILE};

use crate::convert::{emit, plan, Plan, PlannedTensor, COPY_CHUNK_SIZE};
use crate::source::Location;
use crate::{AtomicFile, ConvertOptions, Error, Input, Progress, Result, StoreWriter};

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
    /// Shards this call wrote (the last ones of the manifest).
    pub shards_written: usize,
    /// Rows this call wrote.
    pub rows_written: u64,
    /// Input data bytes read.
    pub input_bytes: u64,
    /// Bytes of the shard files written.
    pub bytes_written: u64,
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
    let per_shard = rows_per_shard(&columns.columns, columns.rows, shard_size)?;
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
    let written = write_shards(
        &plan,
        &tensors,
        &columns,
        per_shard,
        dir,
        &HashSet::new(),
        0,
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

/// Appends the rows of `inputs` to the dataset in `dir`: new shards, then the new manifest by an
/// atomic rename.
///
/// The inputs must give exactly the dataset's columns (names, dtypes after any cast, row shapes;
/// in any order): anything else is refused with [`Error::SchemaMismatch`] before a byte is
/// written. New shards are cut at `shard_size` data bytes as [`convert_dataset`] cuts them
/// (`None`: the dataset's own shard size, that of its largest shard, so that appended shards
/// match the others; all new rows in one shard when the dataset has no rows yet) and take the
/// next free names `shard-NNNNN.mmt`. No listed shard is
/// ever modified, so a reader holding the previous manifest keeps working, and an error or a kill
/// at any point leaves the previous dataset valid.
///
/// One writer at a time: `append` and [`convert_dataset`] hold an exclusive advisory lock
/// (`flock`) on the dataset folder for their whole run, and a second writer gets
/// [`Error::DatasetBusy`] at once instead of replacing the first one's manifest. (On file systems
/// without `flock`, and off Unix, there is no lock: run one writer at a time.)
///
/// # Errors
/// As [`convert_dataset`]; [`Error::Load`] when the current manifest cannot be read or is
/// invalid; [`Error::SchemaMismatch`]; [`Error::DatasetBusy`].
pub fn append(
    dir: impl AsRef<Path>,
    inputs: &[Input],
    options: &ConvertOptions,
    shard_size: Option<u64>,
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
    let per_shard = match shard_size {
        Some(size) => rows_per_shard(&ordered.columns, ordered.rows, size)?,
        // As many rows as the largest shard holds: the shard size the dataset was written with
        // (rounded down to whole rows), so appended shards match the others.
        None => match old.shards().iter().map(|s| s.rows()).max() {
            Some(rows) if rows > 0 => rows,
            _ => ordered.rows.max(1),
        },
    };
    let taken: HashSet<String> = old
        .shards()
        .iter()
        .map(|s| s.file().to_ascii_lowercase())
        .collect();
    let written = write_shards(
        &plan,
        &tensors,
        &ordered,
        per_shard,
        dir,
        &taken,
        old.shards().len(),
        options,
        progress,
        cancel,
    )?;
    let manifest = old
        .with_shards(written.shards.clone())
        .map_err(|source| Error::Format {
            path: dir.join(MANIFEST_FILE),
            source,
        })?;
    finish(dir, manifest, &plan, written, progress, cancel)
}

/// An exclusive advisory lock on a dataset folder (`flock` on the folder itself, so no lock file
/// is left behind), held for a whole write and released when dropped, or by the kernel when the
/// process dies.
struct WriteLock {
    _dir: Option<std::fs::File>,
}

impl WriteLock {
    #[cfg(unix)]
    fn take(dir: &Path) -> Result<WriteLock> {
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
    fn take(_dir: &Path) -> Result<WriteLock> {
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
struct Columns {
    columns: Vec<Column>,
    rows: u64,
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
fn rows_per_shard(columns: &[Column], rows: u64, shard_size: u64) -> Result<u64> {
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

struct Written {
    shards: Vec<Shard>,
    rows: u64,
    bytes: u64,
}

/// One column's reader thread, seen from the writer: chunks as they arrive and the part each
/// came from.
struct Feed {
    rx: Receiver<Result<(usize, Vec<u8>)>>,
    chunk: Vec<u8>,
    pos: usize,
    part: usize,
    /// Elements delivered so far, of the column and of the current part (for error messages).
    done_elems: u64,
    part_elems: u64,
}

#[allow(clippy::too_many_arguments)]
fn write_shards(
    plan: &Plan,
    tensors: &[&PlannedTensor],
    columns: &Columns,
    per_shard: u64,
    dir: &Path,
    taken: &HashSet<String>,
    first_index: usize,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Written> {
    let cancelled = || Error::Cancelled {
        path: dir.to_path_buf(),
    };
    progress.start(plan);
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
        for &t in tensors {
            let (tx, rx) = sync_channel::<Result<(usize, Vec<u8>)>>(1);
            let chunk = options.chunk_size.clamp(1 << 12, COPY_CHUNK_SIZE);
            scope.spawn(move || {
                let mut buf = Vec::new();
                for (i, part) in t.parts.iter().enumerate() {
                    let r = part.stream(&t.name, chunk, &mut buf, dir, &mut |bytes: &[u8]| {
                        tx.send(Ok((i, bytes.to_vec())))
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
                part: 0,
                done_elems: 0,
                part_elems: 0,
            });
        }
        let mut shards = Vec::new();
        let mut bytes = 0u64;
        let mut index = first_index;
        let mut row = 0u64;
        let mut cast_buf = Vec::new();
        while row < columns.rows {
            let rows = per_shard.min(columns.rows - row);
            let file = loop {
                let name = format!("shard-{index:05}.mmt");
                index += 1;
                if !taken.contains(&name) {
                    break name;
                }
            };
            let target = dir.join(&file);
            let fmt = |source| Error::Format {
                path: target.clone(),
                source,
            };
            let mut builder = LayoutBuilder::new();
            builder.alignment(options.alignment).map_err(fmt)?;
            builder.block_size(options.block_size).map_err(fmt)?;
            for (k, v) in plan.metadata() {
                builder.metadata(k, v).map_err(fmt)?;
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
                let es = t.source_dtype.size() as u64;
                let row_in = columns.columns[c].row_bytes() / t.dtype.size() as u64 * es;
                let mut need = rows * row_in;
                progress.tensor(c, t);
                writer.begin_tensor(&t.name)?;
                while need > 0 {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(cancelled());
                    }
                    if feed.pos == feed.chunk.len() {
                        match feed.rx.recv() {
                            Ok(Ok((part, chunk))) => {
                                if part != feed.part {
                                    feed.part_elems = 0;
                                }
                                feed.part = part;
                                feed.chunk = chunk;
                                feed.pos = 0;
                            }
                            Ok(Err(e)) => return Err(e),
                            // A reader stops early only after sending its error; a stream that
                            // ended short all the same is refused by the writer's byte count.
                            Err(_) => {
                                return Err(Error::TooFewBytes {
                                    tensor: t.name.clone(),
                                    expected: rows * columns.columns[c].row_bytes(),
                                    given: 0,
                                })
                            }
                        }
                        continue;
                    }
                    let n = (feed.chunk.len() - feed.pos)
                        .min(usize::try_from(need).unwrap_or(usize::MAX));
                    let piece = &feed.chunk[feed.pos..feed.pos + n];
                    emit(
                        &mut writer,
                        t,
                        &t.parts[feed.part],
                        options,
                        (feed.done_elems, feed.part_elems),
                        piece,
                        &mut cast_buf,
                    )?;
                    feed.pos += n;
                    feed.done_elems += n as u64 / es;
                    feed.part_elems += n as u64 / es;
                    need -= n as u64;
                    progress.advance(n as u64);
                }
                writer.end_tensor()?;
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            if row + rows == columns.rows {
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

/// Writes `manifest` into `dir` atomically, the last step of every dataset write.
fn finish(
    dir: &Path,
    manifest: Manifest,
    plan: &Plan,
    written: Written,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<DatasetSummary> {
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled {
            path: dir.to_path_buf(),
        });
    }
    progress.finish();
    write_manifest(dir, &manifest)?;
    Ok(DatasetSummary {
        dir: dir.to_path_buf(),
        shards_written: written.shards.len(),
        manifest,
        rows_written: written.rows,
        input_bytes: plan.input_bytes(),
        bytes_written: written.bytes,
    })
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
