//! The loader's columns: where each one's rows are (one [`Source`]: a store's tensor, or a sharded
//! dataset's column), what they are as stored and as batches hold them, and what every batch and
//! the worker share.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mmtensor_format::Dtype;

use crate::dataset::{Column as DatasetColumn, Dataset};
use crate::owned::OwnedTensor;
use crate::ragged::RaggedColumn;

use super::mixture::{MixParts, MixWindows};
use super::padded::{Lengths, Padded};
use super::windows::Windows;
use crate::ragged::Pad;
use crate::store::Store;
use crate::take::{cast_row, read_cast};
use crate::{Error, Result};

/// What every batch and the worker share: the columns, and the path that names them in errors.
pub(super) struct Shared {
    pub(super) path: PathBuf,
    pub(super) columns: Box<[Column]>,
    /// The advice in force for the columns, shared by the loader's streams ([`super::plan`]).
    pub(super) advice: Mutex<super::plan::Advised>,
}

/// One column of a loader: where its rows are, and what they are.
pub(super) struct Column {
    pub(super) source: Source,
    pub(super) name: Arc<str>,
    /// The dtype of the rows as stored.
    pub(super) dtype: Dtype,
    /// The dtype batches hold: `dtype`, or the one
    /// [`LoaderOptions::dtypes`](crate::LoaderOptions::dtypes) names for the column, which rows are
    /// cast to as they are gathered.
    pub(super) out_dtype: Dtype,
    /// The shape of one row (the tensor's dimensions after the first).
    pub(super) row_shape: Box<[u64]>,
    pub(super) rows: u64,
    /// Bytes of one stored row: where rows lie in the file.
    pub(super) row_bytes: usize,
    /// Bytes of one row in a batch (of `out_dtype`).
    pub(super) out_row_bytes: usize,
}

/// Where a column's rows are: one tensor of a store, one column of a sharded dataset, the
/// sequence windows of a ragged column's stream (each window a row), or the same-named column of
/// every source of a weighted mixture, one after the other.
pub(super) enum Source {
    Tensor(OwnedTensor),
    Shards(DatasetColumn),
    Windows(Windows),
    Padded(Padded),
    Lengths(Lengths),
    Mix(MixParts),
    MixWindows(MixWindows),
}

impl Source {
    pub(super) fn take_into(&self, rows: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        match self {
            Source::Tensor(t) => t.take_into_as(rows, out, dtype),
            Source::Shards(c) => c.take_into_as(rows, out, dtype),
            Source::Windows(w) => w.take_into(rows, out, dtype),
            Source::Padded(p) => p.take_into(rows, out, dtype),
            Source::Lengths(l) => l.take_into(rows, out),
            Source::Mix(m) => m.take_into(rows, out, dtype),
            Source::MixWindows(m) => m.take_into(rows, out, dtype),
        }
    }

    /// For a padded column: the padded length of a batch of `rows`; `None` for every other.
    pub(super) fn padded_length(&self, rows: &[u64]) -> Option<Result<u64>> {
        match self {
            Source::Padded(p) => Some(p.length(rows)),
            _ => None,
        }
    }

    /// Every tensor the column reads from (a dataset's open shards).
    pub(super) fn tensors(&self) -> Box<dyn Iterator<Item = &OwnedTensor> + '_> {
        match self {
            Source::Tensor(t) => Box::new(std::iter::once(t)),
            Source::Shards(c) => Box::new(c.parts().iter().flatten()),
            Source::Windows(w) => Box::new(w.tensors()),
            Source::Padded(p) => Box::new(p.tensors()),
            Source::Lengths(_) => Box::new(std::iter::empty()),
            Source::Mix(m) => Box::new(m.parts().iter()),
            Source::MixWindows(m) => Box::new(m.tensors()),
        }
    }

    /// Calls `f` with each open tensor holding part of the column rows `range`, and that part as
    /// a byte range of the tensor; `row_bytes` is the bytes of one stored row.
    pub(super) fn pieces(
        &self,
        range: Range<u64>,
        row_bytes: u64,
        mut f: impl FnMut(&OwnedTensor, Range<u64>),
    ) {
        // Rows of a tensor: their bytes lie within it, so these cannot overflow.
        let bytes = |rows: Range<u64>| rows.start * row_bytes..rows.end * row_bytes;
        match self {
            Source::Tensor(t) => f(t, bytes(range)),
            Source::Shards(c) => {
                let starts = c.starts();
                for (i, part) in c.parts().iter().enumerate() {
                    let (lo, hi) = (starts[i], starts[i + 1]);
                    let (a, b) = (range.start.max(lo), range.end.min(hi));
                    if let (Some(part), true) = (part, a < b) {
                        f(part, bytes(a - lo..b - lo));
                    }
                }
            }
            Source::Windows(w) => w.pieces(range, f),
            Source::Padded(p) => {
                let c = &p.column;
                if let (Some(a), Some(b)) = (
                    c.row_items(range.start),
                    range.end.checked_sub(1).and_then(|l| c.row_items(l)),
                ) {
                    c.stream_pieces(a.start..b.end, f);
                }
            }
            Source::Lengths(_) => {}
            Source::Mix(m) => m.pieces(range, row_bytes, f),
            Source::MixWindows(m) => m.pieces(range, f),
        }
    }

    /// The open tensor holding column row `row`, and the byte offset of the row's start in it.
    pub(super) fn locate(&self, row: u64, row_bytes: u64) -> Option<(&OwnedTensor, u64)> {
        match self {
            Source::Tensor(t) => Some((t, row * row_bytes)),
            Source::Shards(c) => {
                let (i, r) = c.locate(row)?;
                Some((c.parts()[i].as_ref()?, r * row_bytes))
            }
            Source::Windows(w) => w.locate(row),
            Source::Padded(p) => p.column.locate_item(p.column.row_items(row)?.start),
            Source::Lengths(_) => None,
            Source::Mix(m) => m.locate(row, row_bytes),
            Source::MixWindows(m) => m.locate(row),
        }
    }

    /// Each shard's rows (one shard: a store's tensor); `None` for windows, which are not cut
    /// by shards, and for a mixture, which is not split by shards.
    pub(super) fn shard_rows(&self) -> Option<Arc<[u64]>> {
        match self {
            Source::Tensor(t) => Some(Arc::new([t.shape()[0]])),
            Source::Shards(c) => Some(c.starts().windows(2).map(|w| w[1] - w[0]).collect()),
            Source::Windows(_) | Source::Mix(_) | Source::MixWindows(_) => None,
            Source::Padded(Padded { column: c, .. })
            | Source::Lengths(Lengths { column: c, .. }) => {
                Some(c.row_starts().windows(2).map(|w| w[1] - w[0]).collect())
            }
        }
    }

    /// The first shard of the column that `need` selects and is not open, as
    /// [`Error::ShardNotOpen`].
    pub(super) fn check_open(&self, need: impl Fn(usize) -> bool) -> Result<()> {
        let Source::Shards(c) = self else {
            return Ok(());
        };
        match c
            .parts()
            .iter()
            .enumerate()
            .find(|(i, p)| p.is_none() && need(*i))
        {
            Some((i, _)) => Err(c.not_open(i, c.starts()[i])),
            None => Ok(()),
        }
    }
}

impl Column {
    /// The column reading tensor `name` of `store`; errors name `path`.
    pub(super) fn of_tensor(path: &Path, store: &Store, name: &str) -> Result<Column> {
        if store.tensor(name)?.is_ragged() {
            return Err(Error::RaggedColumn {
                path: path.to_path_buf(),
                column: name.to_owned(),
            });
        }
        let tensor = store.tensor_owned(name)?;
        let row_bytes = tensor.row_bytes()?;
        // A column's bytes must be viewable; checked once here, not at every batch.
        tensor.bytes()?;
        Column::new(path, name, row_bytes, Source::Tensor(tensor))
    }

    /// The column reading column `name` of `dataset`; errors name `path`.
    pub(super) fn of_dataset(path: &Path, dataset: &Dataset, name: &str) -> Result<Column> {
        let column = dataset.column(name)?;
        Column::new(path, name, column.row_bytes(), Source::Shards(column))
    }

    /// The column reading windows of `seq_len + 1` items of ragged column `column`; errors name
    /// `path`.
    pub(super) fn of_windows(
        path: &Path,
        column: RaggedColumn,
        seq_len: u64,
        within_documents: bool,
    ) -> Result<Column> {
        let name = column.name().to_owned();
        let windows = Windows::new(path, column, seq_len, within_documents)?;
        let row_bytes = windows
            .width()
            .checked_mul(windows.column().item_bytes())
            .ok_or_else(|| Error::TooLarge {
                path: path.to_path_buf(),
                len: u64::MAX,
            })?;
        Column::new(path, &name, row_bytes, Source::Windows(windows))
    }

    /// The columns reading ragged column `column` as padded rows, then each row's length
    /// (`NAME.lengths`, `I64`); errors name `path`.
    pub(super) fn of_padded(path: &Path, column: RaggedColumn, pad: Pad) -> Result<[Column; 2]> {
        let name = column.name().to_owned();
        let cut = pad.to.filter(|_| pad.truncate);
        let lengths = Lengths {
            column: column.clone(),
            cut,
        };
        let padded = Padded::new(path, column, pad)?;
        let row_bytes = padded.row_bytes(path)?;
        Ok([
            Column::new(path, &name, row_bytes, Source::Padded(padded))?,
            Column::new(
                path,
                &format!("{name}.lengths"),
                8,
                Source::Lengths(lengths),
            )?,
        ])
    }

    /// The column `name` reading `source`, whose rows are `row_bytes` long, as stored.
    pub(super) fn new(path: &Path, name: &str, row_bytes: u64, source: Source) -> Result<Column> {
        let row_bytes = row_size(path, row_bytes)?;
        let (dtype, row_shape, rows) = match &source {
            Source::Tensor(t) => (t.dtype(), t.shape()[1..].into(), t.shape()[0]),
            Source::Shards(c) => (c.dtype(), c.row_shape().into(), c.num_rows()),
            Source::Windows(w) => (w.column().dtype(), Box::from([w.width()]), w.count()),
            Source::Padded(p) => {
                let mut shape = vec![p.max_length];
                shape.extend_from_slice(p.column.item_shape());
                (p.column.dtype(), shape.into(), p.column.num_rows())
            }
            Source::Lengths(l) => (Dtype::I64, Box::from([]), l.column.num_rows()),
            Source::Mix(m) => (m.dtype(), m.row_shape().into(), m.num_rows()),
            Source::MixWindows(m) => (m.dtype(), Box::from([m.width()]), m.num_rows()),
        };
        Ok(Column {
            name: name.into(),
            dtype,
            out_dtype: dtype,
            row_shape,
            rows,
            row_bytes,
            out_row_bytes: row_bytes,
            source,
        })
    }

    /// Makes batches hold the column as `dtype`, cast as rows are gathered: checked once here (a
    /// cast that could fail on a value is refused now, not mid-epoch); errors name `path`.
    pub(super) fn cast_to(&mut self, path: &Path, dtype: Dtype) -> Result<()> {
        let cast = read_cast(path, &self.name, self.dtype, dtype)?;
        let out = cast_row(path, self.row_bytes as u64, cast)?;
        self.out_row_bytes = row_size(path, out)?;
        self.out_dtype = dtype;
        Ok(())
    }

    /// Bytes a batch of `rows` rows of this column holds; `width`: a padded column's length
    /// in this batch (its rows are then `width` of its `row_shape[0]` items).
    pub(super) fn batch_bytes(&self, rows: usize, width: Option<u64>) -> usize {
        match (width, self.row_shape.first()) {
            (Some(w), Some(&max)) if max > 0 => {
                self.out_row_bytes / max as usize * w as usize * rows
            }
            (Some(_), _) => 0,
            (None, _) => self.out_row_bytes * rows,
        }
    }

    /// The column as [`Loader::columns`](crate::Loader::columns) describes it.
    pub(super) fn describe(&self) -> LoaderColumn<'_> {
        LoaderColumn {
            name: &self.name,
            dtype: self.out_dtype,
            source_dtype: self.dtype,
            row_shape: &self.row_shape,
        }
    }
}

/// A row size as a `usize`, or [`Error::TooLarge`].
fn row_size(path: &Path, row_bytes: u64) -> Result<usize> {
    usize::try_from(row_bytes).map_err(|_| Error::TooLarge {
        path: path.to_path_buf(),
        len: row_bytes,
    })
}

/// One column of a [`Loader`](crate::Loader), as [`Loader::columns`](crate::Loader::columns)
/// describes it.
#[derive(Clone, Copy, Debug)]
pub struct LoaderColumn<'a> {
    name: &'a str,
    dtype: Dtype,
    source_dtype: Dtype,
    row_shape: &'a [u64],
}

impl<'a> LoaderColumn<'a> {
    /// The column's (tensor's) name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The dtype its batches hold: the stored dtype, or the one
    /// [`LoaderOptions::dtypes`](crate::LoaderOptions::dtypes) casts it to.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The dtype of its rows as stored.
    pub fn source_dtype(&self) -> Dtype {
        self.source_dtype
    }

    /// The shape of one of its rows: a batch of it has shape `[rows] + row_shape`.
    pub fn row_shape(&self) -> &'a [u64] {
        self.row_shape
    }
}
