//! The format's rules for names, shapes and metadata keys, which readers and writers share.

use crate::{Dtype, Error, Result};

/// Largest rank accepted (NumPy 2's limit).
pub const MAX_RANK: usize = 64;
/// Longest tensor name accepted, in UTF-8 bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Metadata keys that start with this prefix are reserved by the format.
pub const RESERVED_KEY_PREFIX: &str = "mmt.";

/// Checks that `key` is a metadata key a user may set: it must not start with
/// [`RESERVED_KEY_PREFIX`]. [`crate::LayoutBuilder::metadata`] calls it; a converter may call it
/// to refuse such a key before it reads any input.
///
/// Readers accept reserved keys (a newer writer sets them): only writers are held to this.
///
/// # Errors
/// [`Error::ReservedKey`] naming the key.
pub fn check_metadata_key(key: &str) -> Result<()> {
    if key.starts_with(RESERVED_KEY_PREFIX) {
        return Err(Error::ReservedKey {
            key: key.chars().take(256).collect(),
        });
    }
    Ok(())
}

/// Checks a tensor name against the format's rules.
///
/// # Errors
/// [`Error::InvalidName`] when it is empty, over [`MAX_NAME_LEN`] bytes or holds a NUL.
pub fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 1024 bytes"
    } else if name.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.chars().take(64).collect(),
        reason,
    })
}

/// The byte length of a tensor of `dtype` and `shape`, with checked arithmetic.
///
/// The product of the shape's non-zero dims times the dtype size must fit in a u64, even when a
/// zero dim makes the tensor empty, so that row sizes and row offsets of a valid tensor never
/// overflow.
///
/// # Errors
/// [`Error::RankTooLarge`] or [`Error::ShapeOverflow`].
pub fn checked_byte_len(tensor: &str, dtype: Dtype, shape: &[u64]) -> Result<u64> {
    if shape.len() > MAX_RANK {
        return Err(Error::RankTooLarge {
            tensor: tensor.to_owned(),
            rank: shape.len(),
            max: MAX_RANK,
        });
    }
    let overflow = || Error::ShapeOverflow {
        tensor: tensor.to_owned(),
        shape: shape.to_vec(),
        dtype,
    };
    // The product of the non-zero dims times the dtype size must fit, even when a zero dim makes
    // the tensor empty: `[0, 2^40, 2^40]` holds no byte, but its row size (2^80 elements) would
    // overflow every later computation of rows and row ranges. With this bound, every partial
    // product of the shape (element count, row size, row offsets within the tensor) fits in a u64.
    shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size() as u64))
        .ok_or_else(overflow)?;
    checked_product(shape)
        .and_then(|n| n.checked_mul(dtype.size() as u64))
        .ok_or_else(overflow)
}

/// The product of `dims`, `None` on overflow.
pub(crate) fn checked_product(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}
