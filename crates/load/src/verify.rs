//! Integrity checks of an `.mmt` file against its layout: the checksum table, block checksums (in
//! parallel, in the loader's fork-safe pool), BOOL bytes and zero padding.

use std::ops::Range;

use mmtensor_format::{block_checksum, decode_checksum_table, Dtype, FileLayout, TensorInfo};
use rayon::prelude::*;

use crate::file::OpenFile;
use crate::pool;
use crate::{Error, Result};

/// Padding is checked in pieces of this size, so a large gap is checked in parallel too.
const PADDING_PIECE: u64 = 1 << 20;

/// Verifies every block of every tensor of `file`, then every padding byte.
pub(crate) fn store(file: &OpenFile, layout: &FileLayout) -> Result<()> {
    file.check_len()?;
    let table = table(file, layout)?;
    let tensors = &layout.header().tensors;
    let block_size = layout.header().block_size;
    // Tensors' block ranges tile 0..total in file order, so the tensor holding block `b` is the
    // first one whose range ends after it.
    let total = table.len() as u64;
    #[allow(clippy::disallowed_methods)] // Inside `pool::install`.
    let bad = pool::install(|| {
        (0..total).into_par_iter().find_map_first(|b| {
            let i = tensors.partition_point(|t| t.first_block + t.block_count(block_size) <= b);
            check_block(file, layout, &tensors[i], b, table[b as usize]).err()
        })
    });
    if let Some(e) = bad {
        return Err(e);
    }
    padding(file, layout)
}

/// Verifies the blocks that cover `bytes` (relative to the tensor's start) of one tensor.
pub(crate) fn range(
    file: &OpenFile,
    layout: &FileLayout,
    info: &TensorInfo,
    bytes: Range<u64>,
) -> Result<()> {
    file.check_len()?;
    let table = table(file, layout)?;
    let blocks = info.blocks_for(bytes, layout.header().block_size);
    #[allow(clippy::disallowed_methods)] // Inside `pool::install`.
    let bad = pool::install(|| {
        blocks
            .into_par_iter()
            .find_map_first(|b| check_block(file, layout, info, b, table[b as usize]).err())
    });
    bad.map_or(Ok(()), Err)
}

/// The checksum table, after checking it against the hash in the (checksummed) header.
fn table(file: &OpenFile, layout: &FileLayout) -> Result<Vec<u64>> {
    let range = layout.checksum_table_range();
    let bytes = resident(file, range.clone())?;
    let computed = block_checksum(bytes);
    let stored = layout.header().checksums.checksum;
    if computed != stored {
        return Err(Error::ChecksumTable {
            path: file.path().to_owned(),
            start: range.start,
            end: range.end,
            stored,
            computed,
        });
    }
    Ok(decode_checksum_table(bytes).collect())
}

/// Checks block `b` (an index into the table) of `info`.
fn check_block(
    file: &OpenFile,
    layout: &FileLayout,
    info: &TensorInfo,
    b: u64,
    stored: u64,
) -> Result<()> {
    let block_size = layout.header().block_size.get();
    let tensor = layout.tensor_range(info);
    let local = b - info.first_block;
    let start = tensor.start + local * block_size;
    let end = tensor.end.min(start + block_size);
    let bytes = resident(file, start..end)?;
    let computed = block_checksum(bytes);
    if computed == stored {
        return check_bools(file, info, start, bytes);
    }
    Err(Error::ChecksumMismatch {
        path: file.path().to_owned(),
        tensor: info.name.clone(),
        block: local,
        start,
        end,
        stored,
        computed,
    })
}

/// The bytes `range` of the store, faulted in first with `MADV_POPULATE_READ` when they are mapped:
/// a file truncated while the check runs then gives an error ([`Error::Shrank`]) instead of
/// `SIGBUS`, and the reads reach the disk as one request per block rather than one fault per page.
fn resident(file: &OpenFile, range: Range<u64>) -> Result<&[u8]> {
    let bytes = file.slice(range.clone())?;
    // In bounds of the file: `slice` just checked it.
    file.populate(range, "read")?;
    Ok(bytes)
}

/// A BOOL tensor's bytes must be 0 or 1: any other byte would reach NumPy and torch as a `bool`
/// that is neither (undefined behaviour in their kernels), so a block whose checksum matches is
/// still corrupt when it holds one. `start` is the absolute offset of `bytes`.
fn check_bools(file: &OpenFile, info: &TensorInfo, start: u64, bytes: &[u8]) -> Result<()> {
    if info.dtype != Dtype::Bool {
        return Ok(());
    }
    match bytes.iter().position(|&b| b > 1) {
        None => Ok(()),
        Some(i) => Err(Error::InvalidBool {
            path: file.path().to_owned(),
            tensor: info.name.clone(),
            offset: start + i as u64,
            value: bytes[i],
        }),
    }
}

/// Checks that every padding byte is zero, reporting the first one that is not.
fn padding(file: &OpenFile, layout: &FileLayout) -> Result<()> {
    let pieces: Vec<Range<u64>> = layout
        .padding_ranges()
        .into_iter()
        .flat_map(|r| {
            (r.start..r.end)
                .step_by(PADDING_PIECE as usize)
                .map(move |s| s..r.end.min(s + PADDING_PIECE))
        })
        .collect();
    #[allow(clippy::disallowed_methods)] // Inside `pool::install`.
    let bad = pool::install(|| {
        pieces.into_par_iter().find_map_first(|r| {
            let bytes = match resident(file, r.clone()) {
                Ok(b) => b,
                Err(e) => return Some(e),
            };
            let i = bytes.iter().position(|&b| b != 0)?;
            Some(Error::NonZeroPadding {
                path: file.path().to_owned(),
                offset: r.start + i as u64,
                value: bytes[i],
            })
        })
    });
    bad.map_or(Ok(()), Err)
}
