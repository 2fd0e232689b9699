//! One column of a sharded dataset: the shards' tensors of one name as one index space, gathered
//! across shards in one pass and cut into zero-copy pieces per shard.

use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use mmtensor_format::{ColumnSpec, Dtype, Manifest};

use crate::owned::OwnedTensor;
use crate::store::Store;
use crate::take::{cast_row, gather, read_cast};
use crate::tensor::{row_bounds, Tensor};
use crate::{Error, Result};

/// One column of a [`Dataset`](crate::Dataset): the shards' tensors of one name, and where each
/// one's rows start in the dataset's index space.
///
/// `'static`, `Send + Sync` and cheap to clone (three [`Arc`]s): it holds the shards' stores, so it
/// outlives the [`Dataset`](crate::Dataset) it came from.
#[derive(Clone)]
pub struct Column {
    dir: Arc<Path>,
    spec: ColumnSpec,
    /// Shard `i`'s tensor of this column (empty shards included, so indices match the manifest);
    /// `None` for a shard the dataset was opened without.
    parts: Arc<[Option<OwnedTensor>]>,
    /// The dataset's manifest: where each shard's rows start (`Manifest::starts`), and the file
    /// an error about an unopened shard names.
    manifest: Arc<Manifest>,
    /// Whether every shard is open (no row needs checking before a gather).
    complete: bool,
    /// `(rank, world_size)` the dataset was opened for, for errors.
    rank: Option<(u64, u64)>,
}

impl Column {
    /// Column `spec` of the dataset in `dir` whose manifest is `manifest`, over its shards'
    /// stores (`None` for a shard not opened).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when a store has no tensor of the column's name.
    pub(super) fn new(
        dir: Arc<Path>,
        spec: ColumnSpec,
        shards: &[Option<Store>],
        manifest: Arc<Manifest>,
        rank: Option<(u64, u64)>,
    ) -> Result<Column> {
        let parts = shards
            .iter()
            .map(|st| {
                st.as_ref()
                    .map(|st| st.tensor_owned(spec.name()))
                    .transpose()
            })
            .collect::<Result<Arc<[Option<OwnedTensor>]>>>()?;
        Ok(Column {
            dir,
            spec,
            parts,
            manifest,
            complete: shards.iter().all(Option::is_some),
            rank,
        })
    }

    /// The column's name.
    pub fn name(&self) -> &str {
        self.spec.name()
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.spec.dtype()
    }

    /// The shape of one row.
    pub fn row_shape(&self) -> &[u64] {
        self.spec.row_shape()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> u64 {
        self.spec.row_bytes()
    }

    /// Rows of the column: the dataset's rows.
    pub fn num_rows(&self) -> u64 {
        self.manifest.num_rows()
    }

    /// The column's shape: `[rows] + row shape`.
    pub fn shape(&self) -> Vec<u64> {
        self.spec.shape(self.num_rows())
    }

    /// Each shard's tensor of this column, in manifest order (empty shards included); `None` for
    /// a shard the dataset was opened without.
    pub fn parts(&self) -> &[Option<OwnedTensor>] {
        &self.parts
    }

    /// [`Error::ShardNotOpen`] for dataset row `row` of shard `shard`.
    pub(crate) fn not_open(&self, shard: usize, row: u64) -> Error {
        Error::ShardNotOpen {
            path: self.dir.to_path_buf(),
            shard,
            file: self.manifest.shards()[shard].file().to_owned(),
            row,
            rank: self.rank,
        }
    }

    /// The dataset row at which each part starts, then the total: `parts().len() + 1` entries.
    pub fn starts(&self) -> &[u64] {
        self.manifest.starts()
    }

    /// The part holding row `row`, and the row's position in it; `None` past the end.
    pub fn locate(&self, row: u64) -> Option<(usize, u64)> {
        self.manifest.locate(row)
    }

    /// Gathers the rows `indices` (dataset rows, any order, repeats allowed) into `out`: row
    /// `indices[k]` lands at `out[k * row_bytes..(k + 1) * row_bytes]`.
    ///
    /// One gather over every shard, as [`OwnedTensor::take_into`] does over one tensor: the rows
    /// sorted into (shard, file) order, neighbours in a shard and in `out` copied in one piece,
    /// the copies spread over the loader's pool, each straight to its place in `out` (no
    /// intermediate buffer), so a one-shard dataset costs what its store costs.
    ///
    /// # Errors
    ///
    /// Checked before anything is written to `out`: [`Error::TakeOutput`] when `out.len()` is not
    /// `indices.len() * row_bytes`; [`Error::RowIndex`] for the first index (in the order given)
    /// that is not below [`Column::num_rows`]. Both name the dataset folder and the column.
    /// [`Error::ShardNotOpen`] for the first index (in the order given) in a shard the dataset
    /// was opened without. Then as [`OwnedTensor::take_into`] for each shard
    /// ([`Error::InvalidBool`] naming the shard).
    pub fn take_into(&self, indices: &[u64], out: &mut [u8]) -> Result<()> {
        self.take_into_as(indices, out, self.dtype())
    }

    /// Gathers the rows `indices` into `out` as [`Column::take_into`] does, cast to `dtype` as
    /// each shard's rows are copied (one pass, no intermediate buffer); `out` holds
    /// `indices.len()` rows of `dtype`. The casts made are [`crate::Tensor::take_into_as`]'s: those
    /// that cannot fail on any value.
    ///
    /// # Errors
    ///
    /// As [`Column::take_into`], where [`Error::TakeOutput`] counts rows of `dtype`; first of all
    /// [`Error::UnsupportedCast`] (naming the dataset folder and the column) for a cast it does
    /// not make.
    pub fn take_into_as(&self, indices: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        let cast = read_cast(&self.dir, self.name(), self.dtype(), dtype)?;
        let row = self.row_bytes();
        let out_row = cast_row(&self.dir, row, cast)?;
        if u128::from(out_row) * indices.len() as u128 != out.len() as u128 {
            return Err(Error::TakeOutput {
                path: self.dir.to_path_buf(),
                tensor: self.name().to_owned(),
                rows: indices.len(),
                row_bytes: out_row,
                actual: out.len(),
            });
        }
        let n = self.num_rows();
        if let Some(&index) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::RowIndex {
                path: self.dir.to_path_buf(),
                tensor: self.name().to_owned(),
                index,
                rows: n,
            });
        }
        // One gather over every shard: rows sorted into (shard, file) order, neighbours copied in
        // one piece, the copies spread over the pool, each straight to its place in `out`.
        if self.complete {
            let views: Vec<Tensor<'_>> =
                self.parts.iter().flatten().map(OwnedTensor::view).collect();
            return gather(&views, self.starts(), indices, out, row, cast);
        }
        for &index in indices {
            if let Some((shard, _)) = self.locate(index) {
                if self.parts[shard].is_none() {
                    return Err(self.not_open(shard, index));
                }
            }
        }
        // The open parts only, each starting where its shard does and reaching up to the next
        // open part: no index falls in an unopened shard (checked above), so every index lands in
        // the part of its own shard, at its own offset.
        let (mut views, mut starts) = (Vec::new(), Vec::new());
        for (part, &start) in self.parts.iter().zip(self.starts()) {
            if let Some(part) = part {
                views.push(part.view());
                starts.push(start);
            }
        }
        starts.push(n);
        gather(&views, &starts, indices, out, row, cast)
    }

    /// The rows `rows` (dataset rows) as zero-copy pieces, one per shard the range touches, in
    /// order: their row counts add up to the range's length. A range within one shard is one
    /// piece.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] holding [`mmtensor_format::Error::RowRange`] (naming the dataset folder
    /// and the column) when the range is reversed or past the end; [`Error::ShardNotOpen`] when it
    /// touches a shard the dataset was opened without.
    pub fn rows(&self, rows: impl RangeBounds<u64>) -> Result<Vec<OwnedTensor>> {
        let n = self.num_rows();
        let (start, end) = row_bounds(&rows, n);
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) if s <= e && e <= n => (s, e),
            _ => {
                return Err(Error::Format {
                    path: self.dir.to_path_buf(),
                    source: mmtensor_format::Error::RowRange {
                        tensor: self.name().to_owned(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        rows: n,
                    },
                })
            }
        };
        let mut pieces = Vec::new();
        if start == end {
            return Ok(pieces);
        }
        let starts = self.starts();
        let first = starts.partition_point(|&s| s <= start) - 1;
        for (s, part) in self.parts.iter().enumerate().skip(first) {
            let (a, b) = (starts[s], starts[s + 1]);
            if a >= end {
                break;
            }
            let (lo, hi) = (a.max(start), b.min(end));
            if lo < hi {
                let Some(part) = part else {
                    return Err(self.not_open(s, lo));
                };
                pieces.push(part.rows(lo - a..hi - a)?);
            }
        }
        Ok(pieces)
    }
}
