//! Ragged rows as samples: a ragged column read as padded rows (`[rows, length] + item_shape`,
//! `length` the batch's longest row, or `pad.to`, rounded up to `pad.multiple_of`), and its
//! companion column of each row's length.

use std::path::Path;

use mmtensor_format::Dtype;

use crate::owned::OwnedTensor;
use crate::ragged::{Pad, RaggedColumn};
use crate::{Error, Result};

/// A ragged column read as padded rows.
pub(crate) struct Padded {
    pub(crate) column: RaggedColumn,
    pub(crate) pad: Pad,
    /// The longest padded length any batch can have: the buffers' capacity, in items.
    pub(crate) max_length: u64,
}

impl Padded {
    /// The column `column` padded by `pad` (its `dtype` must be `None`: a loader casts with its
    /// `dtypes`); errors name `path`.
    pub(crate) fn new(path: &Path, column: RaggedColumn, pad: Pad) -> Result<Padded> {
        if pad.dtype.is_some() {
            return Err(Error::Windows {
                path: path.to_path_buf(),
                column: column.name().to_owned(),
                reason: "a loader's pad has no dtype of its own: cast the column with the loader's dtypes".into(),
            });
        }
        if pad.multiple_of == 0 {
            return Err(Error::Windows {
                path: path.to_path_buf(),
                column: column.name().to_owned(),
                reason: "pad multiple_of is 0; it must be at least 1".into(),
            });
        }
        let longest = column.longest_row();
        let max = match pad.to {
            Some(to) if pad.truncate => to,
            Some(to) => to.max(longest),
            None => longest,
        };
        let max_length = max
            .div_ceil(pad.multiple_of)
            .saturating_mul(pad.multiple_of);
        Ok(Padded {
            column,
            pad,
            max_length,
        })
    }

    /// The padded length of a batch of `rows`.
    pub(crate) fn length(&self, rows: &[u64]) -> Result<u64> {
        self.column.padded_length(rows, &self.pad)
    }

    /// Gathers `rows` padded into `out` (`rows × length` items of `dtype`).
    pub(crate) fn take_into(&self, rows: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        let cast = self.column.cast(Some(dtype))?;
        self.column.check_pad(&self.pad, dtype)?;
        let length = self.length(rows)?;
        let mut lengths = vec![0u64; rows.len()];
        self.column
            .take_padded_into(rows, &self.pad, length, cast, out, &mut lengths)
    }

    /// Bytes of one padded row of `max_length` items, as stored (the loader's cast to the
    /// batch's dtype applies to it as to any row).
    pub(crate) fn row_bytes(&self, path: &Path) -> Result<u64> {
        self.max_length
            .checked_mul(self.column.item_bytes())
            .ok_or_else(|| Error::TooLarge {
                path: path.to_path_buf(),
                len: u64::MAX,
            })
    }

    /// Every values tensor read.
    pub(crate) fn tensors(&self) -> impl Iterator<Item = &OwnedTensor> {
        self.column.values_tensors()
    }
}

/// Each row's length in a padded column (after `pad.to` cuts it), as `I64`.
pub(crate) struct Lengths {
    pub(crate) column: RaggedColumn,
    pub(crate) cut: Option<u64>,
}

impl Lengths {
    pub(crate) fn take_into(&self, rows: &[u64], out: &mut [u8]) -> Result<()> {
        for (k, &r) in rows.iter().enumerate() {
            let len = self.column.row_len(r)?.min(self.cut.unwrap_or(u64::MAX));
            out[k * 8..k * 8 + 8].copy_from_slice(&(len as i64).to_le_bytes());
        }
        Ok(())
    }
}
