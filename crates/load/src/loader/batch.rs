//! A gathered batch: the same rows of every column, in buffers the batch owns, read as bytes or
//! typed elements.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use mmtensor_format::Dtype;

use super::buffers::{Buffers, PooledBuffers};
use super::column::Shared;
use super::options::LoaderState;
use crate::element::{rust_type, Element};
use crate::order::EpochOrder;
use crate::{Error, Result};

/// One batch: the same rows of every column, gathered into buffers the batch owns.
pub struct Batch<B: Buffers = PooledBuffers> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    index: usize,
    buffers: B,
    /// Per column: the padded length of this batch's rows, for a padded ragged column.
    widths: Box<[Option<u64>]>,
}

impl<B: Buffers> fmt::Debug for Batch<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("epoch", &self.epoch())
            .field("index", &self.index)
            .field("rows", &self.len())
            .finish_non_exhaustive()
    }
}

impl<B: Buffers> Batch<B> {
    /// Batch `index` of `order`, gathered into `buffers`.
    pub(super) fn new(
        shared: Arc<Shared>,
        order: Arc<EpochOrder>,
        index: usize,
        buffers: B,
        widths: Box<[Option<u64>]>,
    ) -> Batch<B> {
        Batch {
            shared,
            order,
            index,
            buffers,
            widths,
        }
    }

    /// The epoch it belongs to.
    pub fn epoch(&self) -> u64 {
        self.order.epoch()
    }

    /// Its index within the epoch on this rank.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The rows it holds, as positions along the columns' first dimension, in batch order.
    pub fn row_indices(&self) -> &[u64] {
        self.order.batch(self.index).unwrap_or(&[])
    }

    /// The number of rows (the batch size, or fewer for a short last batch).
    pub fn len(&self) -> usize {
        self.row_indices().len()
    }

    /// Whether it holds no rows (never, for a batch a loader hands out).
    pub fn is_empty(&self) -> bool {
        self.row_indices().is_empty()
    }

    /// The loader state that follows this batch: where a resume after it starts.
    pub fn state_after(&self) -> LoaderState {
        let order = &self.order;
        if self.index + 1 >= order.len() {
            LoaderState::after(order.epoch(), order.spec())
        } else {
            LoaderState {
                epoch: order.epoch(),
                next_batch: self.index as u64 + 1,
                samples: order.position(self.index + 1),
                rows: order.segment().rows,
                world_size: order.spec().world_size,
            }
        }
    }

    /// The columns' names, in the loader's order.
    pub fn column_names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.shared.columns.iter().map(|c| &*c.name)
    }

    /// The number of columns.
    pub fn num_columns(&self) -> usize {
        self.shared.columns.len()
    }

    /// Column `name` of the batch.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the loader has no such column.
    pub fn column(&self, name: &str) -> Result<BatchColumn<'_>> {
        let c = self
            .shared
            .columns
            .iter()
            .position(|c| &*c.name == name)
            .ok_or_else(|| Error::NotFound {
                path: self.shared.path.clone(),
                tensor: name.to_owned(),
                known: self
                    .shared
                    .columns
                    .iter()
                    .map(|c| c.name.to_string())
                    .collect(),
            })?;
        Ok(self.column_at(c))
    }

    /// The columns, in the loader's order.
    pub fn columns(&self) -> impl ExactSizeIterator<Item = BatchColumn<'_>> + '_ {
        (0..self.shared.columns.len()).map(|c| self.column_at(c))
    }

    fn column_at(&self, c: usize) -> BatchColumn<'_> {
        let col = &self.shared.columns[c];
        let width = self.widths.get(c).copied().flatten();
        let len = col.batch_bytes(self.len(), width);
        let mut shape = vec![self.len() as u64];
        match width {
            // A padded column: `[rows, width] + item_shape`.
            Some(w) => {
                shape.push(w);
                shape.extend_from_slice(col.row_shape.get(1..).unwrap_or(&[]));
            }
            None => shape.extend_from_slice(&col.row_shape),
        }
        // The gather wrote `len` bytes to the front of a buffer at least that long.
        let bytes = self.buffers.column(c);
        BatchColumn {
            path: &self.shared.path,
            name: &col.name,
            dtype: col.out_dtype,
            shape,
            bytes: bytes.get(..len).unwrap_or(bytes),
        }
    }

    /// The buffers, taken out of the batch (for a binding that hands them to another runtime).
    /// Column `c`'s rows are the first `len() * row_bytes` bytes of its buffer, where
    /// `columns().nth(c)` gives the shape.
    pub fn into_buffers(self) -> B {
        self.buffers
    }
}

/// One column of a [`Batch`]: its rows as bytes or typed elements, C order.
#[derive(Debug)]
pub struct BatchColumn<'b> {
    path: &'b Path,
    name: &'b str,
    dtype: Dtype,
    shape: Vec<u64>,
    bytes: &'b [u8],
}

impl<'b> BatchColumn<'b> {
    /// The column's (tensor's) name.
    pub fn name(&self) -> &'b str {
        self.name
    }

    /// Its dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Its shape in this batch: rows, then the tensor's other dimensions.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Its bytes, C order.
    pub fn bytes(&self) -> &'b [u8] {
        self.bytes
    }

    /// Its elements.
    ///
    /// # Errors
    ///
    /// [`Error::DtypeMismatch`] when `T` does not view the column's dtype; [`Error::Buffers`]
    /// when the buffers (a caller's [`Allocate`](super::Allocate)) are not aligned for `T` (the
    /// loader's own are 64-byte aligned).
    pub fn as_slice<T: Element>(&self) -> Result<&'b [T]> {
        if T::DTYPE != self.dtype {
            return Err(Error::DtypeMismatch {
                path: self.path.to_path_buf(),
                tensor: self.name.to_owned(),
                dtype: self.dtype,
                requested: T::NAME,
                expected: rust_type(self.dtype),
            });
        }
        T::view(self.bytes).map_err(|_| Error::Buffers {
            path: self.path.to_path_buf(),
            source: format!(
                "the buffer of column `{}` is not aligned to {} bytes for `{}`",
                self.name,
                std::mem::align_of::<T>(),
                T::NAME
            )
            .into(),
        })
    }
}
