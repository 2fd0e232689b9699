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

impl Template {
    /// The layout of a shard of `rows` rows of `columns`, with `extra` metadata entries.
    pub(super) fn layout(
        &self,
        columns: &[ColumnSpec],
        rows: u64,
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
        for c in columns {
            builder
                .tensor(c.name(), c.dtype(), &c.shape(rows))
                .map_err(fmt)?;
        }
        builder.build().map_err(fmt)
    }
}

/// One column of an open shard: bytes given, their checksums, and the bytes not yet written.
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
    capacity: u64,
    columns: Vec<ColumnState>,
    written: u64,
    written_back: u64,
}

impl ShardFile {
    /// A new shard at `target` with room for `capacity` rows of `columns`.
    pub(super) fn create(
        target: &Path,
        template: &Template,
        columns: &[ColumnSpec],
        capacity: u64,
        extra: Vec<(String, String)>,
    ) -> Result<ShardFile> {
        let layout = template.layout(columns, capacity, &extra, target)?;
        let tmp = AtomicFile::create(target)?;
        let block_size = layout.header().block_size.get();
        let columns = (0..columns.len())
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

    /// Rows the shard was laid out for.
    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes given to column `c` so far.
    pub(super) fn given(&self, c: usize) -> u64 {
        self.columns[c].given
    }

    /// Appends `bytes` to column `c`. The caller keeps within the column's capacity.
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

    /// Completes the shard with `rows` rows of `columns` (every column must hold exactly that
    /// many): laid out again when that is fewer than its capacity, then its checksum table and
    /// header, then renamed into place. Returns the file's length and its header checksum.
    pub(super) fn finish(mut self, columns: &[ColumnSpec], rows: u64) -> Result<(u64, u64)> {
        for (c, column) in columns.iter().enumerate() {
            self.flush(c)?;
            let expected = rows * column.row_bytes();
            if self.columns[c].given != expected {
                return Err(Error::TooFewBytes {
                    tensor: column.name().to_owned(),
                    expected,
                    given: self.columns[c].given,
                });
            }
        }
        let target = self.tmp.target().to_path_buf();
        let layout = if rows < self.capacity {
            self.relayout(columns, rows, &target)?
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

    /// Lays the shard out for `rows` rows: moves each column down to its new place (front to
    /// back, so a move never overwrites bytes still to be moved), zeroes the gaps, cuts the file.
    fn relayout(&self, columns: &[ColumnSpec], rows: u64, target: &Path) -> Result<Layout> {
        let file: &File = self.tmp.file();
        let path = self.tmp.temp_path();
        let io = |op| Error::io(op, path);
        let short = self.template.layout(columns, rows, &self.extra, target)?;
        let mut buf = vec![0u8; MOVE_CHUNK];
        let tensors = &short.header().tensors;
        for (i, t) in tensors.iter().enumerate() {
            let from = self.layout.tensor_start(i).expect("one tensor per column");
            let to = short.tensor_start(i).expect("one tensor per column");
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
            let start = short.tensor_start(i).expect("one tensor per column");
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
