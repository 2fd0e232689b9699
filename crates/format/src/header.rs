//! The header's types and their validation: one pass over the tensors checks every rule and
//! builds the index of their names.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::ops::Range;

use crate::checksum::{block_count, blocks_covering};
use crate::rules::{check_name, checked_byte_len, checked_product};
use crate::{Alignment, BlockSize, Dtype, Error, Result};

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Unique name: 1 to [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes of UTF-8, without NUL.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, C order; empty for a 0-dimensional scalar.
    pub shape: Vec<u64>,
    /// Start of the tensor's bytes, relative to the start of the data section.
    pub offset: u64,
    /// Length of the tensor's bytes: element count times dtype size.
    pub length: u64,
    /// Index of this tensor's first block checksum in the checksum table.
    pub first_block: u64,
    /// For the values of a ragged tensor (format 1.1): the name of its row offsets, the tensor
    /// that follows it in the file (`U64`, one more entry than rows). Row `i` is then the slice
    /// `offsets[i]..offsets[i + 1]` of this tensor along axis 0. `None` for every other tensor.
    pub offsets: Option<String>,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    ///
    /// Never overflows for a tensor of a validated header: validation ([`checked_byte_len`]) proves
    /// that the product of the non-zero dims times the dtype size fits in a u64, and the element
    /// count is either 0 or that product divided by the dtype size. For a hand-built `TensorInfo`
    /// whose shape does overflow, it saturates at `u64::MAX` instead of wrapping or panicking.
    pub fn numel(&self) -> u64 {
        checked_product(&self.shape).unwrap_or(u64::MAX)
    }

    /// Rows along axis 0; `None` for a scalar.
    pub fn num_rows(&self) -> Option<u64> {
        self.shape.first().copied()
    }

    /// Bytes per row along axis 0 (the product of the trailing dimensions times the dtype size).
    ///
    /// Never overflows for a tensor of a validated header: the trailing product is either 0 or
    /// divides the product of all non-zero dims, and validation proves that product times the dtype
    /// size fits in a u64. For a hand-built `TensorInfo` whose shape does overflow, it saturates
    /// at `u64::MAX`; [`TensorInfo::row_byte_range`] refuses such a tensor instead.
    pub fn row_bytes(&self) -> u64 {
        self.checked_row_bytes().unwrap_or(u64::MAX)
    }

    fn checked_row_bytes(&self) -> Option<u64> {
        checked_product(self.shape.get(1..).unwrap_or(&[]))?.checked_mul(self.dtype.size() as u64)
    }

    /// Number of checksum blocks of this tensor.
    pub fn block_count(&self, block_size: BlockSize) -> u64 {
        block_count(self.length, block_size.get())
    }

    /// Bytes (relative to the tensor's start) of rows `rows`, bounds-checked.
    ///
    /// # Errors
    /// [`Error::Scalar`] for a 0-dimensional tensor, [`Error::RowRange`] when out of bounds,
    /// [`Error::ShapeOverflow`] for a hand-built tensor whose shape overflows (never for one of a
    /// validated header).
    pub fn row_byte_range(&self, rows: Range<u64>) -> Result<Range<u64>> {
        let n = self.num_rows().ok_or_else(|| Error::Scalar {
            tensor: self.name.clone(),
        })?;
        if rows.start > rows.end || rows.end > n {
            return Err(Error::RowRange {
                tensor: self.name.clone(),
                start: rows.start,
                end: rows.end,
                rows: n,
            });
        }
        // Checked although a validated tensor cannot overflow here (see `row_bytes`): the fields
        // are public, so a hand-built `TensorInfo` must get an error, not a wrapped range.
        let overflow = || Error::ShapeOverflow {
            tensor: self.name.clone(),
            shape: self.shape.clone(),
            dtype: self.dtype,
        };
        let rb = self.checked_row_bytes().ok_or_else(overflow)?;
        let start = rows.start.checked_mul(rb).ok_or_else(overflow)?;
        let end = rows.end.checked_mul(rb).ok_or_else(overflow)?;
        Ok(start..end)
    }

    /// Indices in the checksum table of the blocks that cover `bytes` of this tensor.
    pub fn blocks_for(&self, bytes: Range<u64>, block_size: BlockSize) -> Range<u64> {
        let local = blocks_covering(bytes, block_size.get());
        // Saturating: validated headers keep block indices far below 2^64 (the table holds 8 bytes
        // per block), and a hand-built `TensorInfo` must not panic.
        self.first_block.saturating_add(local.start)..self.first_block.saturating_add(local.end)
    }
}

/// Where the block checksum table lies: `length / 8` little-endian u64 xxh3-64 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChecksumTable {
    /// Start, relative to the data section.
    pub offset: u64,
    /// Length in bytes: 8 per block of every tensor.
    pub length: u64,
    /// xxh3-64 of the table's bytes.
    pub checksum: u64,
}

/// A parsed and validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Alignment of every tensor's start, in bytes (in range by construction).
    pub alignment: Alignment,
    /// Block size of the checksums (in range by construction).
    pub block_size: BlockSize,
    /// Where the block checksums are.
    pub checksums: ChecksumTable,
    /// Free-form string metadata.
    pub metadata: BTreeMap<String, String>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
}

impl Header {
    /// Total number of checksum blocks over all tensors.
    ///
    /// Saturates at `u64::MAX` for a hand-built header (its fields are public) whose lengths add up
    /// past 2^64; a validated header's tensors fit in one file, so its sum is exact.
    pub fn total_blocks(&self) -> u64 {
        self.tensors.iter().fold(0u64, |n, t| {
            n.saturating_add(t.block_count(self.block_size))
        })
    }

    /// Checks every rule of the format against a file of `file_len` bytes whose data section starts
    /// at `data_start`.
    ///
    /// # Errors
    /// The first rule broken, naming the tensor and the offending field or offset.
    pub fn validate(&self, data_start: u64, file_len: u64) -> Result<()> {
        self.validate_indexed(data_start, file_len).map(drop)
    }

    /// [`Header::validate`], returning the name index built on the way: one pass over the
    /// tensors checks every rule and indexes every name.
    pub(crate) fn validate_indexed(&self, data_start: u64, file_len: u64) -> Result<NameIndex> {
        let mut index = NameIndex::with_capacity(self.tensors.len())?;
        let mut prev: Option<(&str, u64)> = None;
        let mut blocks = 0u64;
        for (i, t) in self.tensors.iter().enumerate() {
            check_name(&t.name)?;
            if let Some(first) = index.insert(&self.tensors, i) {
                return Err(Error::DuplicateName {
                    name: t.name.clone(),
                    first,
                    second: i,
                });
            }
            let expected = checked_byte_len(&t.name, t.dtype, &t.shape)?;
            if t.length != expected {
                return Err(Error::LengthMismatch {
                    tensor: t.name.clone(),
                    length: t.length,
                    expected,
                });
            }
            let start = data_start.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.length));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(Error::OutOfBounds {
                    what: format!("tensor `{}`", t.name),
                    start: data_start.saturating_add(t.offset),
                    end: u64::MAX,
                    file_len,
                });
            };
            if !self.alignment.is_aligned(start) {
                return Err(Error::Misaligned {
                    tensor: t.name.clone(),
                    offset: start,
                    alignment: self.alignment.get(),
                });
            }
            if let Some((previous, previous_end)) = prev {
                if start < previous_end {
                    return Err(Error::Overlap {
                        tensor: t.name.clone(),
                        offset: start,
                        previous: previous.to_owned(),
                        previous_end,
                    });
                }
            }
            if end > file_len {
                return Err(Error::OutOfBounds {
                    what: format!("tensor `{}`", t.name),
                    start,
                    end,
                    file_len,
                });
            }
            if t.first_block != blocks {
                return Err(Error::ChecksumTable {
                    reason: format!(
                        "tensor `{}` should start at block {blocks}, not {}",
                        t.name, t.first_block
                    ),
                });
            }
            blocks += t.block_count(self.block_size);
            prev = Some((&t.name, end));
            if let Some(offsets) = &t.offsets {
                check_ragged_link(t, offsets, self.tensors.get(i + 1))?;
            }
        }
        let table = &self.checksums;
        let want = blocks.checked_mul(8).ok_or_else(|| Error::ChecksumTable {
            reason: format!("{blocks} blocks overflow the table length"),
        })?;
        if table.length != want {
            return Err(Error::ChecksumTable {
                reason: format!(
                    "length is {} bytes but the tensors have {blocks} blocks of {} bytes, which need {want}",
                    table.length, self.block_size
                ),
            });
        }
        let start = data_start.checked_add(table.offset);
        let end = start.and_then(|s| s.checked_add(table.length));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(Error::OutOfBounds {
                what: "checksum table".into(),
                start: data_start.saturating_add(table.offset),
                end: u64::MAX,
                file_len,
            });
        };
        if start % 8 != 0 {
            return Err(Error::ChecksumTable {
                reason: format!("starts at byte {start}, not a multiple of 8"),
            });
        }
        if let Some((previous, previous_end)) = prev {
            if start < previous_end {
                return Err(Error::ChecksumTable {
                    reason: format!(
                        "starts at byte {start}, inside tensor `{previous}` which ends at byte {previous_end}"
                    ),
                });
            }
        }
        if end > file_len {
            return Err(Error::OutOfBounds {
                what: "checksum table".into(),
                start,
                end,
                file_len,
            });
        }
        Ok(index)
    }
}

/// Checks that the values tensor `values` names as its offsets the tensor `next` that follows it,
/// and that `next` is a valid offsets tensor: `U64`, rank 1, at least one entry, not ragged itself.
fn check_ragged_link(values: &TensorInfo, offsets: &str, next: Option<&TensorInfo>) -> Result<()> {
    let refuse = |reason: String| {
        Err(Error::Ragged {
            tensor: values.name.clone(),
            reason,
        })
    };
    if values.shape.is_empty() {
        return refuse("its values are a 0-dimensional scalar; they need rank 1 or more".into());
    }
    let Some(next) = next.filter(|n| n.name == offsets) else {
        return refuse(format!(
            "its offsets `{offsets}` must be the next tensor in the file, but {}",
            match next {
                Some(n) => format!("the next one is `{}`", n.name),
                None => "it is the last tensor".into(),
            }
        ));
    };
    if next.dtype != Dtype::U64 || next.shape.len() != 1 || next.shape[0] == 0 {
        return refuse(format!(
            "its offsets `{offsets}` are {} {:?}; they must be U64 of shape [rows + 1]",
            next.dtype.name(),
            next.shape
        ));
    }
    if next.offsets.is_some() {
        return refuse(format!("its offsets `{offsets}` are themselves ragged"));
    }
    Ok(())
}

/// Checks a ragged tensor's row offsets (`bytes`: `rows + 1` little-endian u64s, as stored):
/// the first is 0, none is smaller than the one before, and the last is `values_len`, the
/// values' length along axis 0. One linear pass; `tensor` names the ragged tensor in the error.
///
/// # Errors
/// [`Error::RaggedOffsets`] naming the first index that breaks a rule.
pub fn check_offsets(tensor: &str, bytes: &[u8], values_len: u64) -> Result<()> {
    let refuse = |index: u64, value: u64, reason: String| {
        Err(Error::RaggedOffsets {
            tensor: tensor.to_owned(),
            index,
            reason: format!("is {value}: {reason}"),
        })
    };
    if !bytes.len().is_multiple_of(8) || bytes.is_empty() {
        return refuse(
            0,
            0,
            format!("{} bytes of offsets; they need 8 per row + 8", bytes.len()),
        );
    }
    let mut prev = 0u64;
    let n = bytes.len() / 8;
    for (i, c) in bytes.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        if i == 0 && v != 0 {
            return refuse(0, v, "the first offset must be 0".into());
        }
        if v < prev {
            return refuse(
                i as u64,
                v,
                format!("it is smaller than the offset before it, {prev}"),
            );
        }
        if v > values_len {
            return refuse(
                i as u64,
                v,
                format!("it is past the end of the values ({values_len} long)"),
            );
        }
        prev = v;
    }
    if prev != values_len {
        return refuse(
            n as u64 - 1,
            prev,
            format!("the last offset must be the values' length, {values_len}"),
        );
    }
    Ok(())
}

/// Positions of tensors by name: an open-addressing table (linear probing, at most half full) of
/// `(position + 1, fingerprint)` slots, where 0 marks an empty slot and the fingerprint is the high
/// half of the name's hash. Names stay in the tensors; the table holds 8 bytes per slot.
///
/// The hash is SipHash with a random key per table (std's `RandomState`), so names chosen to
/// collide cannot make building the index quadratic.
#[derive(Clone, Debug)]
pub(crate) struct NameIndex {
    hasher: RandomState,
    slots: Box<[(u32, u32)]>,
}

impl NameIndex {
    fn with_capacity(n: usize) -> Result<NameIndex> {
        // Positions are stored as `u32 + 1`. A capped header holds far fewer entries than that.
        if n >= u32::MAX as usize {
            return Err(Error::InvalidField {
                field: "tensors",
                value: n.to_string(),
                reason: "more than 2^32 - 2 tensors",
            });
        }
        let len = n.saturating_mul(2).max(8).next_power_of_two();
        Ok(NameIndex {
            hasher: RandomState::new(),
            slots: vec![(0, 0); len].into_boxed_slice(),
        })
    }

    /// The first slot to probe for `name`, and its fingerprint.
    fn start(&self, name: &str) -> (usize, u32) {
        let h = self.hasher.hash_one(name);
        // The table length is a power of two; the low bits pick the slot, the high bits check it.
        ((h as usize) & (self.slots.len() - 1), (h >> 32) as u32)
    }

    /// Indexes `tensors[pos]` by its name; when a tensor of that name is already indexed, returns
    /// its position instead.
    fn insert(&mut self, tensors: &[TensorInfo], pos: usize) -> Option<usize> {
        let name = tensors.get(pos)?.name.as_str();
        let (mut i, fp) = self.start(name);
        let mask = self.slots.len() - 1;
        loop {
            match self.slots[i] {
                (0, _) => {
                    // `with_capacity` checked that every position fits.
                    self.slots[i] = (pos as u32 + 1, fp);
                    return None;
                }
                (p, f) if f == fp && tensors.get(p as usize - 1)?.name == name => {
                    return Some(p as usize - 1)
                }
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub(crate) fn get(&self, tensors: &[TensorInfo], name: &str) -> Option<usize> {
        let (mut i, fp) = self.start(name);
        let mask = self.slots.len() - 1;
        loop {
            match self.slots[i] {
                (0, _) => return None,
                (p, f) if f == fp && tensors.get(p as usize - 1)?.name == name => {
                    return Some(p as usize - 1)
                }
                _ => i = (i + 1) & mask,
            }
        }
    }
}
