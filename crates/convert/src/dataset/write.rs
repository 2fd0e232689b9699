//! Writing a dataset's shards, the pipeline [`crate::convert_dataset`], [`crate::append`] and
//! [`crate::compact`] share ([`write_shards`]), and what a write did ([`DatasetSummary`]).
//!
//! Each column is streamed by its own reader thread (the same part streams `convert` uses: byte
//! swaps, Fortran reorder, zip members) into a one-chunk channel; the writer takes as many bytes
//! of each column as the current shard holds, so any input streams once, in order, whatever the
//! shard size. An append that fills the dataset's last shard streams that shard's rows first (a
//! [`Carry`]), then the inputs'. Each shard is written through a [`StoreWriter`] (temporary file,
//! fsync, rename) under a name no manifest of the folder has listed ([`Names`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};

use mmtensor_format::{Dtype, Manifest, Shard, MANIFEST_FILE};

use crate::convert::emit;
use crate::dataset::cut::{Columns, Cut, SHARD_SIZE_KEY};
use crate::dataset::manifest::finish_manifest;
use crate::dataset::names::Names;
use crate::options::COPY_CHUNK_SIZE;
use crate::plan::{Plan, PlannedTensor};
use crate::source::Part;
use crate::{ConvertOptions, Error, Progress, Result, StoreWriter};

/// The metadata key under which a shard that replaced others records them: a JSON array of
/// `{"file": NAME, "rows": N}`, the replaced shards whose rows it holds again, in order.
pub(super) const REPLACED_KEY: &str = "source.replaced";

/// What a finished [`convert_dataset`](crate::convert_dataset) or [`append`](crate::append) did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DatasetSummary {
    /// The dataset folder.
    pub dir: PathBuf,
    /// The manifest now in place.
    pub manifest: Manifest,
    /// Shards this call wrote: the last ones of the manifest after
    /// [`convert_dataset`](crate::convert_dataset) and [`append`](crate::append); after
    /// [`crate::compact`], wherever the runs they replace were.
    pub shards_written: usize,
    /// Rows this call added to the dataset (0 for [`crate::compact`]).
    pub rows_written: u64,
    /// Rows already in the dataset that this call copied into new shards: the old last shard's rows
    /// when [`append`](crate::append) filled it, every row of the shards [`crate::compact`] merged.
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

/// The rows of the dataset's last shard that an append copies into its first new shard, ahead of
/// the new rows: one part per column, in column order, already in the column's dtype.
pub(super) struct Carry {
    /// The shard's file.
    pub(super) path: PathBuf,
    /// Its manifest entry.
    pub(super) shard: Shard,
    /// Its tensors, checked against the manifest, as parts.
    pub(super) parts: Vec<Part>,
}

/// What [`write_shards`] wrote: the new shards, the rows they hold (the carried ones aside), and
/// their bytes.
pub(super) struct Written {
    pub(super) shards: Vec<Shard>,
    pub(super) rows: u64,
    pub(super) bytes: u64,
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
pub(super) fn write_shards(
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
    let carried_rows = carry.map_or(0, |c| c.shard.num_rows());
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
    let unproven = tensors.iter().any(|t| t.has_claimed_size());
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
            let mut builder = options.layout(&metadata).map_err(fmt)?;
            if let (Some(c), true) = (carry, carried > 0 && options.record_sources) {
                let replaced =
                    serde_json::json!([{"file": c.shard.file(), "rows": c.shard.num_rows()}]);
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

/// Writes `manifest` into `dir` atomically, the last step of
/// [`convert_dataset`](crate::convert_dataset) and [`append`](crate::append), and sums up the
/// write.
pub(super) fn finish(
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
