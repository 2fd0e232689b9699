//! The conversion pipeline into a dataset's shards ([`stream_columns`]), which
//! [`crate::convert_dataset`], [`crate::append`] (through [`DatasetWriter`](crate::DatasetWriter))
//! and [`crate::compact`] share, and what a write did ([`DatasetSummary`]).
//!
//! Each column is streamed by its own reader thread (the same part streams `convert` uses: byte
//! swaps, Fortran reorder, zip members) into a one-chunk channel; the pipeline takes as many bytes
//! of each column as the current shard holds, so any input streams once, in order, whatever the
//! shard size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};

use mmtensor_format::Manifest;

use crate::convert::emit;
use crate::dataset::sink::Shards;
use crate::options::COPY_CHUNK_SIZE;
use crate::plan::PlannedTensor;
use crate::{ConvertOptions, Error, Progress, Result};

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

/// One column's reader thread, seen from the writer: chunks as they arrive and the part each
/// came from.
struct Feed {
    rx: Receiver<Result<(usize, Vec<u8>)>>,
    chunk: Vec<u8>,
    pos: usize,
    part: usize,
    /// Elements delivered so far, of the column's inputs and of the current part (for error
    /// messages).
    done_elems: u64,
    part_elems: u64,
}

/// Streams the rows of `tensors` (one per column of `shards`, in its order; all `rows` rows long)
/// into `shards`: each column read by its own thread into a one-chunk channel, cast as planned,
/// and handed over shard by shard, column by column, so any input streams once, in order,
/// whatever the shard size. The caller has called [`Progress::start`].
pub(super) fn stream_columns(
    tensors: &[&PlannedTensor],
    rows: u64,
    shards: &mut Shards,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
    dir: &Path,
) -> Result<()> {
    let cancelled = || Error::Cancelled {
        path: dir.to_path_buf(),
    };
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
        let mut row = 0u64;
        let mut cast_buf = Vec::new();
        while row < rows {
            let n_rows = shards.room()?.min(rows - row);
            for (c, (t, feed)) in tensors.iter().zip(&mut feeds).enumerate() {
                let row_bytes = shards.columns()[c].row_bytes();
                let es = t.source_dtype.size() as u64;
                let row_in = row_bytes / t.dtype.size() as u64 * es;
                progress.tensor(c, t);
                let mut need = n_rows * row_in;
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
                            // ended short all the same is refused by the shard's byte count.
                            Err(_) => {
                                return Err(Error::TooFewBytes {
                                    tensor: t.name.clone(),
                                    expected: n_rows * row_bytes,
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
                        &mut |b: &[u8]| shards.put(c, b),
                        t,
                        &t.parts[feed.part],
                        options,
                        (feed.done_elems, feed.part_elems),
                        piece,
                        &mut cast_buf,
                    )?;
                    feed.done_elems += n as u64 / es;
                    feed.part_elems += n as u64 / es;
                    feed.pos += n;
                    need -= n as u64;
                    progress.advance(n as u64);
                }
            }
            if cancel.load(Ordering::Relaxed) {
                return Err(cancelled());
            }
            if row + n_rows == rows {
                // Before the last shard is committed: a reader may still fail after its last
                // chunk (a zip member's CRC is checked at its end).
                drain(tensors, &mut feeds)?;
            }
            shards.end_rows(n_rows)?;
            row += n_rows;
        }
        // With no rows there was no last shard: the readers' verdicts are still to be heard.
        drain(tensors, &mut feeds)
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
