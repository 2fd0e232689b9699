//! Sequence windows: a ragged column's concatenated stream (documents back to back, as GPT
//! pretraining packs them) cut into windows of `seq_len + 1` items, each window a row of the
//! loader's order. `docs/LOADER.md` ("Sequence windows") is the spec.
//!
//! Packed windows: window `w` is items `w·L .. w·L + L + 1` of the stream (`L` = `seq_len`), so
//! consecutive windows share one item (the last target of one is the first input of the next)
//! and every item but the stream's tail of fewer than `L` items is in exactly one window as an
//! input, as in Megatron's GPT sample index. Within documents: each document (row) of `d` items
//! gives `floor((d - 1) / L)` windows at its start + `k·L`, in row order; no window crosses a row
//! boundary.
//!
//! The windows are then the rows of the loader's [`OrderSpec`](crate::order::OrderSpec): shuffled,
//! split across ranks, cut into batches and resumed exactly as rows are.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use mmtensor_format::Dtype;

use crate::owned::OwnedTensor;
use crate::ragged::RaggedColumn;
use crate::take::{cast_row, read_cast};
use crate::{pool, Error, Result};

/// Output bytes of a batch below which the calling thread copies it alone.
const SERIAL_BYTES: usize = 256 << 10;

/// A ragged column's stream as windows of `seq_len + 1` items.
pub(crate) struct Windows {
    column: RaggedColumn,
    seq_len: u64,
    /// Window starts in the stream when windows stay within documents; `None` when packed.
    starts: Option<Arc<[u64]>>,
    count: u64,
}

impl Windows {
    /// The windows of `column`; errors name `path`.
    pub(crate) fn new(
        path: &Path,
        column: RaggedColumn,
        seq_len: u64,
        within_documents: bool,
    ) -> Result<Windows> {
        let refuse = |reason: String| Error::Windows {
            path: path.to_path_buf(),
            column: column.name().to_owned(),
            reason,
        };
        if seq_len == 0 {
            return Err(refuse("seq_len is 0; it must be at least 1".into()));
        }
        if !column.item_shape().is_empty() {
            return Err(refuse(format!(
                "its items have shape {:?}; sequence windows need a stream of scalars (token ids)",
                column.item_shape()
            )));
        }
        if !column.is_complete() {
            return Err(refuse(
                "the dataset was opened for one rank; sequence windows split the whole stream across ranks, so open every shard".into(),
            ));
        }
        let tokens = column.num_values();
        let (starts, count) = if within_documents {
            let mut starts = Vec::new();
            for (p, &base) in column.value_starts()[..column.value_starts().len() - 1]
                .iter()
                .enumerate()
            {
                let offsets = column.part_offsets(p).unwrap_or(&[0]);
                for w in offsets.windows(2) {
                    let d = w[1] - w[0];
                    let n = d.saturating_sub(1) / seq_len;
                    starts.extend((0..n).map(|k| base + w[0] + k * seq_len));
                }
            }
            let n = starts.len() as u64;
            if n == 0 {
                let longest = (0..column.num_rows())
                    .map(|r| column.row_len(r).unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                return Err(refuse(format!(
                    "seq_len = {seq_len} needs a document of at least {} items for a window within it, but the longest has {longest}",
                    seq_len + 1
                )));
            }
            (Some(starts.into()), n)
        } else {
            if tokens < seq_len + 1 {
                return Err(refuse(format!(
                    "seq_len = {seq_len} needs at least {} items for one window of seq_len + 1, but the stream has {tokens}",
                    seq_len + 1
                )));
            }
            (None, (tokens - 1) / seq_len)
        };
        Ok(Windows {
            column,
            seq_len,
            starts,
            count,
        })
    }

    /// The number of windows: the loader's rows.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Items per window: `seq_len + 1`.
    pub(crate) fn width(&self) -> u64 {
        self.seq_len + 1
    }

    /// The column read.
    pub(crate) fn column(&self) -> &RaggedColumn {
        &self.column
    }

    /// Where window `w` starts in the stream.
    pub(crate) fn start(&self, w: u64) -> u64 {
        match &self.starts {
            Some(s) => s[w as usize],
            None => w * self.seq_len,
        }
    }

    /// The stream items the windows `windows` (a range of window indices) cover.
    pub(crate) fn items(&self, windows: Range<u64>) -> Range<u64> {
        if windows.is_empty() {
            return 0..0;
        }
        self.start(windows.start)..self.start(windows.end - 1) + self.width()
    }

    /// Copies windows `windows` into `out` (one window of `dtype` after the other), cast as
    /// copied. Indices are below [`Windows::count`] (the order's rows).
    pub(crate) fn take_into(&self, windows: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        let path = self.column.path();
        let cast = read_cast(path, self.column.name(), self.column.dtype(), dtype)?;
        let row = cast_row(path, self.width() * self.column.item_bytes(), cast)? as usize;
        if row * windows.len() != out.len() {
            return Err(Error::TakeOutput {
                path: path.to_path_buf(),
                tensor: self.column.name().to_owned(),
                rows: windows.len(),
                row_bytes: row as u64,
                actual: out.len(),
            });
        }
        if let Some(&w) = windows.iter().find(|&&w| w >= self.count) {
            return Err(Error::RowIndex {
                path: path.to_path_buf(),
                tensor: self.column.name().to_owned(),
                index: w,
                rows: self.count,
            });
        }
        let copy = |(w, dst): (&u64, &mut [u8])| {
            self.column
                .stream_into(self.start(*w), self.width(), dst, cast)
        };
        if out.len() <= SERIAL_BYTES || row == 0 {
            return windows
                .iter()
                .zip(out.chunks_mut(row.max(1)))
                .try_for_each(copy);
        }
        use rayon::prelude::*;
        #[allow(clippy::disallowed_methods)] // inside the fork-safe pool
        let done = pool::install(|| {
            windows
                .par_iter()
                .zip(out.par_chunks_mut(row))
                .try_for_each(copy)
        });
        done
    }

    /// Copies window `w` into `out` (one window of the cast's output), cast by `cast`.
    pub(crate) fn copy_window(
        &self,
        w: u64,
        out: &mut [u8],
        cast: mmtensor_format::Cast,
    ) -> Result<()> {
        self.column
            .stream_into(self.start(w), self.width(), out, cast)
    }

    /// Calls `f` with each values tensor holding part of windows `windows`, and the bytes of it.
    pub(crate) fn pieces(&self, windows: Range<u64>, f: impl FnMut(&OwnedTensor, Range<u64>)) {
        self.column.stream_pieces(self.items(windows), f);
    }

    /// The values tensor holding window `w`'s first item, and that item's byte offset in it.
    pub(crate) fn locate(&self, w: u64) -> Option<(&OwnedTensor, u64)> {
        self.column.locate_item(self.start(w))
    }

    /// Every values tensor read.
    pub(crate) fn tensors(&self) -> impl Iterator<Item = &OwnedTensor> {
        self.column.values_tensors()
    }
}
