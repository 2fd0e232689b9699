//! Layout planning: from names, dtypes and shapes to aligned offsets and encoded header bytes.

use std::collections::{BTreeMap, HashMap};

use crate::{
    align_up, check_metadata_key, check_name, checked_byte_len, Alignment, BlockSize,
    ChecksumTable, Dtype, Error, FileLayout, Header, Preamble, Result, TensorInfo, MAX_HEADER_LEN,
    PREAMBLE_LEN, VERSION_MAJOR, VERSION_MINOR,
};

/// A tensor added to a [`LayoutBuilder`]: name, dtype, shape, byte length and, for a ragged
/// tensor's values, its offsets' name.
type Planned = (String, Dtype, Vec<u64>, u64, Option<String>);

/// Collects tensors and metadata, then plans where every byte of a store goes.
///
/// ```
/// use mmtensor_format::{Dtype, LayoutBuilder};
///
/// let mut b = LayoutBuilder::new();
/// b.tensor("x", Dtype::F32, &[1000, 16])?;
/// b.tensor("y", Dtype::I64, &[1000])?;
/// b.metadata("source", "example")?;
/// assert!(b.metadata("mmt.shard.index", "0").is_err());
/// let layout = b.build()?;
/// assert_eq!(layout.header().tensors[0].offset % 4096, 0);
/// assert_eq!(layout.data_start() % 4096, 0);
/// # Ok::<(), mmtensor_format::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayoutBuilder {
    alignment: Alignment,
    block_size: BlockSize,
    metadata: BTreeMap<String, String>,
    tensors: Vec<Planned>,
    names: HashMap<String, usize>,
}

impl Default for LayoutBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayoutBuilder {
    /// A builder with the default alignment (4096) and block size (1 MiB).
    pub fn new() -> Self {
        LayoutBuilder {
            alignment: Alignment::DEFAULT,
            block_size: BlockSize::DEFAULT,
            metadata: BTreeMap::new(),
            tensors: Vec::new(),
            names: HashMap::new(),
        }
    }

    /// Sets the alignment of every tensor: a power of two from 64 to 2^30.
    ///
    /// # Errors
    /// [`Error::InvalidField`] when out of range.
    pub fn alignment(&mut self, alignment: u64) -> Result<&mut Self> {
        self.alignment = Alignment::new(alignment)?;
        Ok(self)
    }

    /// Sets the checksum block size: a power of two from 4096 to 2^30.
    ///
    /// # Errors
    /// [`Error::InvalidField`] when out of range.
    pub fn block_size(&mut self, block_size: u64) -> Result<&mut Self> {
        self.block_size = BlockSize::new(block_size)?;
        Ok(self)
    }

    /// Adds a metadata entry (a later entry with the same key replaces an earlier one).
    ///
    /// # Errors
    /// [`Error::ReservedKey`] for a key that starts with
    /// [`RESERVED_KEY_PREFIX`](crate::RESERVED_KEY_PREFIX) (`mmt.`): the format keeps those for
    /// itself (a shard's place in its set, for example).
    pub fn metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<&mut Self> {
        let key = key.into();
        check_metadata_key(&key)?;
        self.metadata.insert(key, value.into());
        Ok(self)
    }

    /// Appends a tensor; tensors are laid out in the order they are added.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::DuplicateName`], [`Error::RankTooLarge`] or
    /// [`Error::ShapeOverflow`].
    pub fn tensor(&mut self, name: &str, dtype: Dtype, shape: &[u64]) -> Result<&mut Self> {
        self.add(name, dtype, shape, None)
    }

    /// Appends a ragged tensor (format 1.1): `rows` rows of `values_shape[0]` values in all, each
    /// of shape `values_shape[1..]`, as two tensors, its values `name` (of `values_shape`) and its
    /// row offsets [`offsets_name`]`(name)` (`U64`, `[rows + 1]`), in that order.
    ///
    /// # Errors
    /// As [`LayoutBuilder::tensor`] for either tensor; [`Error::Ragged`] for a 0-dimensional
    /// `values_shape`, or when `rows + 1` overflows.
    pub fn ragged(
        &mut self,
        name: &str,
        dtype: Dtype,
        values_shape: &[u64],
        rows: u64,
    ) -> Result<&mut Self> {
        let ragged = |reason: &str| Error::Ragged {
            tensor: name.to_owned(),
            reason: reason.to_owned(),
        };
        if values_shape.is_empty() {
            return Err(ragged("its values need rank 1 or more"));
        }
        let entries = rows
            .checked_add(1)
            .ok_or_else(|| ragged("rows + 1 offsets overflow a u64"))?;
        let offsets = offsets_name(name);
        self.add(name, dtype, values_shape, Some(offsets.clone()))?;
        self.add(&offsets, Dtype::U64, &[entries], None)
    }

    fn add(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[u64],
        offsets: Option<String>,
    ) -> Result<&mut Self> {
        check_name(name)?;
        if let Some(&first) = self.names.get(name) {
            return Err(Error::DuplicateName {
                name: name.to_owned(),
                first,
                second: self.tensors.len(),
            });
        }
        let length = checked_byte_len(name, dtype, shape)?;
        self.names.insert(name.to_owned(), self.tensors.len());
        self.tensors
            .push((name.to_owned(), dtype, shape.to_vec(), length, offsets));
        Ok(self)
    }

    /// Number of tensors added so far.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when no tensor was added.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Computes the aligned offsets, the checksum table's place and the encoded header.
    ///
    /// # Errors
    /// [`Error::HeaderTooLarge`] when the header would exceed the cap, [`Error::ShapeOverflow`]
    /// when the file would be larger than 2^64 bytes.
    pub fn build(&self) -> Result<Layout> {
        let mut cursor = 0u64;
        let mut first_block = 0u64;
        let mut tensors = Vec::with_capacity(self.tensors.len());
        let overflow = |name: &str, dtype: Dtype, shape: &[u64]| Error::ShapeOverflow {
            tensor: name.to_owned(),
            shape: shape.to_vec(),
            dtype,
        };
        for (name, dtype, shape, length, offsets) in &self.tensors {
            let offset =
                align_up(cursor, self.alignment).ok_or_else(|| overflow(name, *dtype, shape))?;
            cursor = offset
                .checked_add(*length)
                .ok_or_else(|| overflow(name, *dtype, shape))?;
            let info = TensorInfo {
                name: name.clone(),
                dtype: *dtype,
                shape: shape.clone(),
                offset,
                length: *length,
                first_block,
                offsets: offsets.clone(),
            };
            first_block += info.block_count(self.block_size);
            tensors.push(info);
        }
        let table_offset = align_up(cursor, self.alignment).ok_or_else(|| Error::InvalidField {
            field: "checksums.offset",
            value: cursor.to_string(),
            reason: "the store would be larger than 2^64 bytes",
        })?;
        let header = Header {
            alignment: self.alignment,
            block_size: self.block_size,
            checksums: ChecksumTable {
                offset: table_offset,
                length: first_block * 8,
                checksum: 0,
            },
            metadata: self.metadata.clone(),
            tensors,
        };
        let header_len = header.to_json().len() as u64;
        if header_len > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLarge {
                len: header_len,
                max: MAX_HEADER_LEN,
            });
        }
        // Cannot fail: the header is capped at 100 MiB. An error all the same, never a panic.
        let data_start =
            align_up(PREAMBLE_LEN + header_len, self.alignment).ok_or(Error::HeaderTooLarge {
                len: header_len,
                max: MAX_HEADER_LEN,
            })?;
        let file_len = data_start
            .checked_add(table_offset)
            .and_then(|v| v.checked_add(header.checksums.length))
            .ok_or_else(|| Error::InvalidField {
                field: "checksums.offset",
                value: table_offset.to_string(),
                reason: "the store would be larger than 2^64 bytes",
            })?;
        header.validate(data_start, file_len)?;
        Ok(Layout {
            header,
            header_len,
            data_start,
            file_len,
        })
    }
}

/// A planned store: every offset is known before any tensor byte is written.
#[derive(Clone, Debug)]
pub struct Layout {
    header: Header,
    header_len: u64,
    data_start: u64,
    file_len: u64,
}

impl Layout {
    /// The planned header (its checksum-table hash is 0 until [`Layout::encode_head`] is given one).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Absolute offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Length of the finished file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Absolute offset of tensor `index`'s first byte; `None` when there is no such tensor.
    pub fn tensor_start(&self, index: usize) -> Option<u64> {
        // Cannot overflow: `build` checked that the whole file fits in a u64.
        Some(self.data_start + self.header.tensors.get(index)?.offset)
    }

    /// Absolute offset of the checksum table.
    pub fn checksum_table_start(&self) -> u64 {
        self.data_start + self.header.checksums.offset
    }

    /// Length of [`Layout::encode_head`]'s bytes: the preamble and the header, without the zero
    /// padding that follows them up to [`Layout::data_start`].
    pub fn head_len(&self) -> u64 {
        PREAMBLE_LEN + self.header_len
    }

    /// The preamble and the header, given the hash of the checksum table: the file's bytes
    /// `0..head_len()`. Bytes `head_len()..data_start()` are zeros, which the writer provides
    /// (a new file already reads as zeros there, or it writes them in bounded chunks).
    ///
    /// The result never holds the padding, so memory stays in proportion to the header (capped at
    /// [`crate::MAX_HEADER_LEN`]) whatever the alignment: with an alignment of 2^30 the data
    /// section starts 1 GiB in, but this is still only a few hundred bytes.
    ///
    /// Its length is always [`Layout::head_len`]: the table hash is written as exactly 16 hex
    /// digits, so the header's length does not depend on it.
    pub fn encode_head(&self, table_checksum: u64) -> Vec<u8> {
        let mut header = self.header.clone();
        header.checksums.checksum = table_checksum;
        let json = header.to_json();
        debug_assert_eq!(json.len() as u64, self.header_len);
        // The lowest minor version that describes the file: a store without a ragged tensor is a
        // 1.0 store, byte for byte, and every 1.0 reader reads it as before.
        let ragged = self.header.tensors.iter().any(|t| t.offsets.is_some());
        let mut pre = Preamble {
            major: VERSION_MAJOR,
            minor: if ragged { VERSION_MINOR } else { 0 },
            flags: 0,
            header_len: json.len() as u64,
            header_checksum: 0,
        };
        pre.header_checksum = pre.compute_checksum(&json);
        let mut out = Vec::with_capacity(PREAMBLE_LEN as usize + json.len());
        out.extend_from_slice(&pre.encode());
        out.extend_from_slice(&json);
        out
    }

    /// Parses `encode_head(..)` (or a whole file that starts with it) back, for tests and for
    /// writers that check their own output.
    ///
    /// # Errors
    /// Never for a head this layout encoded.
    pub fn reparse(&self, prefix: &[u8]) -> Result<FileLayout> {
        FileLayout::parse(prefix, self.file_len)
    }
}

/// The name writers give a ragged tensor's row offsets: `NAME.offsets`.
pub fn offsets_name(values: &str) -> String {
    format!("{values}.offsets")
}

/// Encodes block checksums as the little-endian table the file stores.
pub fn encode_checksum_table(checksums: &[u64]) -> Vec<u8> {
    checksums.iter().flat_map(|c| c.to_le_bytes()).collect()
}

/// Decodes the checksum table's bytes; a trailing partial entry is ignored (validation prevents one).
pub fn decode_checksum_table(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}
