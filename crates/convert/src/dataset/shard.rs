//! One shard being written ([`ShardFile`]): every column at once, each at its own place in the
//! file, so rows can arrive in batches of all columns (a Python pipeline's) as well as column by
//! column (a conversion's reader threads), and each byte is written once.
//!
//! A shard is laid out for a capacity of rows before its first byte. Each column's bytes go
//! straight to that column's place (positioned writes, coalesced in a small buffer per column)
//! while a block hasher per column checksums them. A shard that ends with fewer rows than its
//! capacity (the last one of a stream whose length nobody knew) is laid out again for the rows it
//! holds: its columns move down in the same file, the gaps between them are zeroed, and the file
//! is cut to its length; the checksums do not change, since blocks count from each tensor's start.

use std::fs::File;
use std::path::Path;

use mmtensor_format::{BlockHasher, ColumnSpec, Layout, LayoutBuilder};

use crate::source::pread_exact;
use crate::writer::{pwrite_all, start_writeback, write_tail, ZEROS};
use crate::{AtomicFile, Error, Result};

/// Bytes a column's writes are coalesced into before they go to the file; a larger write goes
/// straight through. At [`MAX_COLUMNS`](crate::MAX_COLUMNS) columns, 32 MiB in all.
const COALESCE: usize = 128 << 10;
/// Written bytes the shard lets accumulate before it starts their writeback.
const WRITEBACK_STEP: u64 = 32 << 20;
/// Bytes moved at a time when a short shard is laid out again.
const MOVE_CHUNK: usize = 1 << 20;

/// How every shard of one write is laid out: alignment, block size and metadata (the options'),
/// and the tensors, one per column.
#[derive(Clone, Debug)]
pub(super) struct Template {
    pub(super) builder: LayoutBuilder,
}

/// How much a shard holds: rows of every column, and for each ragged column (in column order)
/// the items of its values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Capacity {
    pub(super) rows: u64,
    pub(super) values: Vec<u64>,
}

impl Template {
    /// The layout of a shard of `columns` holding `cap`, with `extra` metadata entries: one
    /// tensor per fixed column, two (values, then offsets) per ragged one.
    pub(super) fn layout(
        &self,
        columns: &[ColumnSpec],
        cap: &Capacity,
        extra: &[(String, String)],
        path: &Path,
    ) -> Result<Layout> {
        let fmt = |source| Error::Format {
            path: path.to_path_buf(),
            source,
        };
        let mut builder = self.builder.clone();
        for (k, v) in extra {
            builder.metadata(k, v).map_err(fmt)?;
        }
        let mut values = cap.values.iter();
        for c in columns {
            if c.is_ragged() {
                let items = values.next().copied().unwrap_or(0);
                builder
                    .ragged(c.name(), c.dtype(), &c.shape(items), cap.rows)
                    .map_err(fmt)?;
            } else {
                builder
                    .tensor(c.name(), c.dtype(), &c.shape(cap.rows))
                    .map_err(fmt)?;
            }
        }
        builder.build().map_err(fmt)
    }
}

/// Bytes of each tensor (slot) of a shard of `columns` holding `cap`, in file order.
pub(super) fn slot_bytes(columns: &[ColumnSpec], cap: &Capacity) -> Vec<u64> {
    let mut values = cap.values.iter();
    let mut out = Vec::with_capacity(columns.len() + cap.values.len());
    for c in columns {
        if c.is_ragged() {
            out.push(values.next().copied().unwrap_or(0) * c.row_bytes());
            out.push((cap.rows + 1) * 8);
        } else {
            out.push(cap.rows * c.row_bytes());
        }
    }
    out
}

/// One tensor (slot) of an open shard: bytes given, their checksums, and the bytes not yet
/// written.
struct ColumnState {
    given: u64,
    hasher: BlockHasher,
    pending: Vec<u8>,
    /// Absolute file offset of `pending`'s first byte.
    pending_at: u64,
}

/// A shard being written under a temporary name beside its target (`AtomicFile`), every column at
/// once. Dropped without [`ShardFile::finish`], its temporary file is removed.
pub(super) struct ShardFile {
    tmp: AtomicFile,
    template: Template,
    layout: Layout,
    extra: Vec<(String, String)>,
    capacity: Capacity,
    columns: Vec<ColumnState>,
    written: u64,
    written_back: u64,
}

impl ShardFile {
    /// A new shard at `target` with room for `capacity` of `columns`.
    pub(super) fn create(
        target: &Path,
        template: &Template,
        columns: &[ColumnSpec],
        capacity: Capacity,
        extra: Vec<(String, String)>,
    ) -> Result<ShardFile> {
        let layout = template.layout(columns, &capacity, &extra, target)?;
        let tmp = AtomicFile::create(target)?;
        let block_size = layout.header().block_size.get();
        let columns = (0..layout.header().tensors.len())
            .map(|i| ColumnState {
                given: 0,
                hasher: BlockHasher::new(block_size),
                pending: Vec::new(),
                pending_at: layout.tensor_start(i).unwrap_or(0),
            })
            .collect();
        Ok(ShardFile {
            tmp,
            template: template.clone(),
            layout,
            extra,
            capacity,
            columns,
            written: 0,
            written_back: 0,
        })
    }

    /// What the shard was laid out for.
    pub(super) fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Bytes given to slot (tensor) `c` so far.
    pub(super) fn given(&self, c: usize) -> u64 {
        self.columns[c].given
    }

    /// Appends `bytes` to slot (tensor) `c`. The caller keeps within the slot's capacity.
    pub(super) fn put(&mut self, c: usize, bytes: &[u8]) -> Result<()> {
        let state = &mut self.columns[c];
        state.hasher.update(bytes);
        state.given += bytes.len() as u64;
        if state.pending.len() + bytes.len() <= COALESCE {
            if state.pending.capacity() == 0 {
                state.pending.reserve_exact(COALESCE);
            }
            state.pending.extend_from_slice(bytes);
            if state.pending.len() == COALESCE {
                self.flush(c)?;
            }
            return Ok(());
        }
        self.flush(c)?;
        let state = &mut self.columns[c];
        pwrite_all(self.tmp.file(), bytes, state.pending_at)
            .map_err(Error::io("cannot write to", self.tmp.temp_path()))?;
        state.pending_at += bytes.len() as u64;
        self.wrote(bytes.len() as u64);
        Ok(())
    }

    fn flush(&mut self, c: usize) -> Result<()> {
        let state = &mut self.columns[c];
        if state.pending.is_empty() {
            return Ok(());
        }
        pwrite_all(self.tmp.file(), &state.pending, state.pending_at)
            .map_err(Error::io("cannot write to", self.tmp.temp_path()))?;
        let n = state.pending.len() as u64;
        state.pending_at += n;
        state.pending.clear();
        self.wrote(n);
        Ok(())
    }

    fn wrote(&mut self, n: u64) {
        self.written += n;
        if self.written - self.written_back >= WRITEBACK_STEP {
            start_writeback(self.tmp.file(), 0, 0);
            self.written_back = self.written;
        }
    }

    /// Completes the shard holding `held` of `columns` (every slot must hold exactly that):
    /// laid out again when that is less than its capacity, then its checksum table and header,
    /// then renamed into place. Returns the file's length and its header checksum.
    pub(super) fn finish(mut self, columns: &[ColumnSpec], held: &Capacity) -> Result<(u64, u64)> {
        let expected = slot_bytes(columns, held);
        for (c, &want) in expected.iter().enumerate() {
            self.flush(c)?;
            if self.columns[c].given != want {
                return Err(Error::TooFewBytes {
                    tensor: self.layout.header().tensors[c].name.clone(),
                    expected: want,
                    given: self.columns[c].given,
                });
            }
        }
        let target = self.tmp.target().to_path_buf();
        let layout = if *held != self.capacity {
            self.relayout(columns, held, &target)?
        } else {
            self.layout.clone()
        };
        let checksums: Vec<u64> = self
            .columns
            .into_iter()
            .flat_map(|c| c.hasher.finish())
            .collect();
        let header_checksum =
            write_tail(self.tmp.file(), self.tmp.temp_path(), &layout, &checksums)?;
        let file_len = layout.file_len();
        match self.tmp.commit() {
            // The folder's fsync is tried again when the manifest is committed, and that one's
            // failure is reported.
            Ok(_) | Err(Error::NotDurable { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok((file_len, header_checksum))
    }

    /// Lays the shard out for what it holds: moves each tensor down to its new place (front to
    /// back, so a move never overwrites bytes still to be moved), zeroes the gaps, cuts the file.
    fn relayout(&self, columns: &[ColumnSpec], held: &Capacity, target: &Path) -> Result<Layout> {
        let file: &File = self.tmp.file();
        let path = self.tmp.temp_path();
        let io = |op| Error::io(op, path);
        let short = self.template.layout(columns, held, &self.extra, target)?;
        let mut buf = vec![0u8; MOVE_CHUNK];
        let tensors = &short.header().tensors;
        for (i, t) in tensors.iter().enumerate() {
            let from = self.layout.tensor_start(i).expect("the same tensors");
            let to = short.tensor_start(i).expect("the same tensors");
            // A layout for fewer rows never places a tensor later (the header only shrinks, each
            // earlier tensor too); were it to, moving front to back would overwrite bytes still to
            // be moved, so it is refused rather than risked.
            if to > from {
                return Err(Error::io("cannot lay out again", path)(
                    std::io::Error::other(format!(
                        "tensor `{}` would move from byte {from} up to {to}",
                        t.name
                    )),
                ));
            }
            if to != from {
                let mut done = 0u64;
                while done < t.length {
                    let n = (t.length - done).min(MOVE_CHUNK as u64) as usize;
                    pread_exact(file, &mut buf[..n], from + done).map_err(io("cannot read"))?;
                    pwrite_all(file, &buf[..n], to + done).map_err(io("cannot write to"))?;
                    done += n as u64;
                }
            }
        }
        // Zeros from the end of each tensor to the start of the next (or of the table), and
        // below the first: what moved away may have left bytes there.
        let mut gaps = Vec::with_capacity(tensors.len() + 1);
        let mut end = short.data_start();
        for (i, t) in tensors.iter().enumerate() {
            let start = short.tensor_start(i).expect("the same tensors");
            gaps.push(end..start);
            end = start + t.length;
        }
        gaps.push(end..short.checksum_table_start());
        for gap in gaps {
            let mut at = gap.start;
            while at < gap.end {
                let n = (gap.end - at).min(ZEROS.len() as u64) as usize;
                pwrite_all(file, &ZEROS[..n], at).map_err(io("cannot write to"))?;
                at += n as u64;
            }
        }
        file.set_len(short.checksum_table_start())
            .map_err(io("cannot truncate"))?;
        Ok(short)
    }
}
