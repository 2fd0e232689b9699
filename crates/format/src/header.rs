//! The preamble, the JSON header and their validation.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::checksum::{block_count, blocks_covering};
use crate::{Alignment, BlockSize, Dtype, Error, Result};

/// The eight magic bytes that open every `.mmt` file: `\x89MMT\r\n\x1a\n`.
///
/// Like PNG's, the high first byte and the CR LF / ^Z / LF tail make text-mode transfers and
/// 7-bit channels visibly corrupt the file instead of silently changing tensor bytes.
pub const MAGIC: [u8; 8] = *b"\x89MMT\r\n\x1a\n";
/// Length of the fixed preamble.
pub const PREAMBLE_LEN: u64 = 32;
/// The major version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// The minor version this crate writes.
pub const VERSION_MINOR: u16 = 0;
/// Largest header accepted, in bytes (100 MiB).
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;
/// Largest rank accepted (NumPy 2's limit).
pub const MAX_RANK: usize = 64;
/// Longest tensor name accepted, in UTF-8 bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Smallest alignment accepted ([`Alignment::MIN`] as a number).
pub const MIN_ALIGNMENT: u64 = Alignment::MIN.get();
/// Largest alignment accepted (1 GiB; [`Alignment::MAX`] as a number).
pub const MAX_ALIGNMENT: u64 = Alignment::MAX.get();
/// Default alignment: one 4 KiB page ([`Alignment::DEFAULT`] as a number).
pub const DEFAULT_ALIGNMENT: u64 = Alignment::DEFAULT.get();
/// Smallest checksum block size accepted ([`BlockSize::MIN`] as a number).
pub const MIN_BLOCK_SIZE: u64 = BlockSize::MIN.get();
/// Largest checksum block size accepted (1 GiB; [`BlockSize::MAX`] as a number).
pub const MAX_BLOCK_SIZE: u64 = BlockSize::MAX.get();
/// Default checksum block size: 1 MiB ([`BlockSize::DEFAULT`] as a number).
pub const DEFAULT_BLOCK_SIZE: u64 = BlockSize::DEFAULT.get();
/// Preamble flag bits 0..16 are *required*: a reader that does not know a set bit must refuse the
/// file. Bits 16..32 are *optional*: a reader ignores the ones it does not know. Version 1.0 defines none.
pub const REQUIRED_FLAGS_MASK: u32 = 0x0000_ffff;
/// Required flags this reader understands (none in 1.0).
pub const KNOWN_REQUIRED_FLAGS: u32 = 0;

/// The fixed 32-byte preamble.
///
/// | bytes  | field           | encoding                                           |
/// |--------|-----------------|----------------------------------------------------|
/// | 0..8   | magic           | [`MAGIC`]                                          |
/// | 8..10  | major version   | u16 LE                                             |
/// | 10..12 | minor version   | u16 LE                                             |
/// | 12..16 | flags           | u32 LE                                             |
/// | 16..24 | header length   | u64 LE                                             |
/// | 24..32 | header checksum | u64 LE, xxh3-64 of bytes 0..24 then the header     |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// Major version; a reader refuses any other major than its own.
    pub major: u16,
    /// Minor version; a 1.x reader reads any 1.y file.
    pub minor: u16,
    /// Flag bits (see [`REQUIRED_FLAGS_MASK`]).
    pub flags: u32,
    /// Length of the JSON header that follows the preamble.
    pub header_len: u64,
    /// xxh3-64 of preamble bytes 0..24 followed by the header.
    pub header_checksum: u64,
}

impl Preamble {
    /// Parses and checks the preamble at the start of `bytes`: magic, version, flags, header cap.
    ///
    /// # Errors
    /// [`Error::TooShort`], [`Error::BadMagic`], [`Error::UnsupportedVersion`],
    /// [`Error::UnknownRequiredFlags`] or [`Error::HeaderTooLarge`].
    pub fn parse(bytes: &[u8]) -> Result<Preamble> {
        let Some(p) = bytes.get(..PREAMBLE_LEN as usize) else {
            // Show the magic problem first when the bytes we have already disagree with it.
            let n = bytes.len().min(8);
            if bytes[..n] != MAGIC[..n] {
                let mut found = [0u8; 8];
                found[..n].copy_from_slice(&bytes[..n]);
                return Err(Error::BadMagic {
                    found,
                    expected: MAGIC,
                });
            }
            return Err(Error::TooShort {
                len: bytes.len() as u64,
                min: PREAMBLE_LEN,
            });
        };
        let magic: [u8; 8] = p[0..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(Error::BadMagic {
                found: magic,
                expected: MAGIC,
            });
        }
        let u16_at = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
        let pre = Preamble {
            major: u16_at(8),
            minor: u16_at(10),
            flags: u32_at(12),
            header_len: u64_at(16),
            header_checksum: u64_at(24),
        };
        if pre.major != VERSION_MAJOR {
            return Err(Error::UnsupportedVersion {
                major: pre.major,
                minor: pre.minor,
                supported: VERSION_MAJOR,
            });
        }
        let unknown = pre.flags & REQUIRED_FLAGS_MASK & !KNOWN_REQUIRED_FLAGS;
        if unknown != 0 {
            return Err(Error::UnknownRequiredFlags { flags: unknown });
        }
        if pre.header_len > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLarge {
                len: pre.header_len,
                max: MAX_HEADER_LEN,
            });
        }
        Ok(pre)
    }

    /// The 32 bytes of this preamble.
    pub fn encode(&self) -> [u8; PREAMBLE_LEN as usize] {
        let mut out = [0u8; PREAMBLE_LEN as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.minor.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.header_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.header_checksum.to_le_bytes());
        out
    }

    /// The checksum that belongs in bytes 24..32 for this preamble and `header`.
    pub fn compute_checksum(&self, header: &[u8]) -> u64 {
        let bytes = self.encode();
        let mut h = Xxh3::new();
        h.update(&bytes[..24]);
        h.update(header);
        h.digest()
    }

    /// Absolute offset of the data section: the header's end rounded up to `alignment`.
    pub fn data_start(&self, alignment: Alignment) -> Option<u64> {
        alignment.align_up(PREAMBLE_LEN.checked_add(self.header_len)?)
    }
}

/// Rounds `value` up to a multiple of `alignment`; `None` on overflow. Same as
/// [`Alignment::align_up`].
pub fn align_up(value: u64, alignment: Alignment) -> Option<u64> {
    alignment.align_up(value)
}

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Unique name: 1 to [`MAX_NAME_LEN`] bytes of UTF-8, without NUL.
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
    pub fn rows(&self) -> Option<u64> {
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
        let n = self.rows().ok_or_else(|| Error::Scalar {
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

// Serialization borrows from the `Header`: encoding copies no name, shape or metadata entry.
#[derive(Serialize)]
struct HeaderOut<'a> {
    alignment: u64,
    block_size: u64,
    checksums: TableOut,
    metadata: &'a BTreeMap<String, String>,
    tensors: TensorsOut<'a>,
}

#[derive(Serialize)]
struct TableOut {
    offset: u64,
    length: u64,
    xxh3: String,
}

struct TensorsOut<'a>(&'a [TensorInfo]);

impl Serialize for TensorsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|t| TensorOut {
            name: &t.name,
            dtype: t.dtype.name(),
            shape: &t.shape,
            offset: t.offset,
            length: t.length,
        }))
    }
}

#[derive(Serialize)]
struct TensorOut<'a> {
    name: &'a str,
    dtype: &'a str,
    shape: &'a [u64],
    offset: u64,
    length: u64,
}

// Deserialization builds the final `TensorInfo`s as the JSON array is read: no intermediate vector
// of raw entries, and a dtype name becomes a `Dtype` without being copied.
#[derive(Deserialize)]
struct HeaderIn {
    alignment: u64,
    block_size: u64,
    checksums: TableIn,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    tensors: TensorsIn,
}

#[derive(Deserialize)]
struct TableIn {
    offset: u64,
    length: u64,
    xxh3: String,
}

struct TensorsIn {
    list: Vec<TensorInfo>,
    /// The first tensor whose dtype is unknown, and that dtype (reported after the JSON parses, so
    /// that a syntax error anywhere comes first, as it always did).
    unknown: Option<(String, String)>,
}

impl<'de> Deserialize<'de> for TensorsIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Seq;
        impl<'de> serde::de::Visitor<'de> for Seq {
            type Value = TensorsIn;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of tensor entries")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<TensorsIn, A::Error> {
                // The size hint comes from the input: capped, so a lie cannot allocate.
                let mut list = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 12));
                let mut unknown = None;
                while let Some(t) = seq.next_element::<TensorIn>()? {
                    let dtype = match t.dtype {
                        DtypeIn::Known(d) => d,
                        DtypeIn::Unknown(name) => {
                            if unknown.is_none() {
                                unknown = Some((t.name.clone(), name));
                            }
                            Dtype::U8
                        }
                    };
                    list.push(TensorInfo {
                        name: t.name,
                        dtype,
                        shape: t.shape,
                        offset: t.offset,
                        length: t.length,
                        first_block: 0,
                    });
                }
                list.shrink_to_fit();
                Ok(TensorsIn { list, unknown })
            }
        }
        d.deserialize_seq(Seq)
    }
}

#[derive(Deserialize)]
struct TensorIn {
    name: String,
    dtype: DtypeIn,
    shape: Vec<u64>,
    offset: u64,
    length: u64,
}

enum DtypeIn {
    Known(Dtype),
    /// An unknown name, cut to 64 characters.
    Unknown(String),
}

impl<'de> Deserialize<'de> for DtypeIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = DtypeIn;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a dtype name")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<DtypeIn, E> {
                Ok(Dtype::from_name(v).map_or_else(
                    || DtypeIn::Unknown(v.chars().take(64).collect()),
                    DtypeIn::Known,
                ))
            }
        }
        d.deserialize_str(Name)
    }
}

impl Header {
    /// The compact JSON encoding of this header, exactly as the writer stores it.
    ///
    /// Field order is fixed and metadata is sorted by key, so equal headers encode to equal bytes.
    /// The checksum table's hash is always 16 hex digits, so the length does not depend on it.
    pub fn to_json(&self) -> Vec<u8> {
        let out = HeaderOut {
            alignment: self.alignment.get(),
            block_size: self.block_size.get(),
            checksums: TableOut {
                offset: self.checksums.offset,
                length: self.checksums.length,
                xxh3: format!("{:016x}", self.checksums.checksum),
            },
            metadata: &self.metadata,
            tensors: TensorsOut(&self.tensors),
        };
        // Cannot fail: every map key is a string and no value has a custom serializer that errs.
        serde_json::to_vec(&out).expect("a header always serializes")
    }

    /// Parses header JSON (without validating the layout; [`FileLayout::parse`] does both).
    ///
    /// Unknown fields are ignored, so that minor versions can add them.
    ///
    /// # Errors
    /// [`Error::HeaderJson`] for malformed JSON or a missing field, [`Error::UnknownDtype`],
    /// [`Error::InvalidField`] for an alignment or block size out of range or a malformed table
    /// hash.
    pub fn from_json(json: &[u8]) -> Result<Header> {
        let raw: HeaderIn = serde_json::from_slice(json).map_err(|e| Error::HeaderJson {
            // Compact JSON is one line, so the column is the byte position within the header.
            offset: PREAMBLE_LEN + (e.column() as u64).saturating_sub(1),
            message: e.to_string(),
        })?;
        let alignment = Alignment::new(raw.alignment)?;
        let block_size = BlockSize::new(raw.block_size)?;
        let checksum = parse_hex16(&raw.checksums.xxh3).ok_or_else(|| Error::InvalidField {
            field: "checksums.xxh3",
            value: format!("{:?}", raw.checksums.xxh3),
            reason: "must be 16 lowercase hex digits",
        })?;
        if let Some((tensor, name)) = raw.tensors.unknown {
            return Err(Error::UnknownDtype {
                tensor: Some(tensor),
                name,
            });
        }
        let mut tensors = raw.tensors.list;
        let mut first_block = 0u64;
        for t in &mut tensors {
            t.first_block = first_block;
            // Saturating here; validation rejects lengths that could matter.
            first_block = first_block.saturating_add(t.block_count(block_size));
        }
        Ok(Header {
            alignment,
            block_size,
            checksums: ChecksumTable {
                offset: raw.checksums.offset,
                length: raw.checksums.length,
                checksum,
            },
            metadata: raw.metadata,
            tensors,
        })
    }

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
    fn validate_indexed(&self, data_start: u64, file_len: u64) -> Result<NameIndex> {
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
fn checked_product(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// A validated store layout: preamble, header and where the data section starts.
///
/// This is what a reader holds after [`FileLayout::parse`]; every offset in it is in bounds of the
/// file it was parsed against. Its fields are private, so it cannot be changed after validation.
#[derive(Clone, Debug)]
pub struct FileLayout {
    preamble: Preamble,
    header: Header,
    data_start: u64,
    file_len: u64,
    index: NameIndex,
}

impl FileLayout {
    /// Parses and validates the start of a `.mmt` file.
    ///
    /// `prefix` holds at least the preamble and the header (the whole file is fine); `file_len` is
    /// the length of the whole file. Allocates at most in proportion to the header, which is capped.
    /// Parsing, validation and the name index are one pass over the tensors; the index holds
    /// positions (4 bytes and a 4-byte fingerprint per slot), not a second copy of the names.
    ///
    /// # Errors
    /// Any [`Error`]: the first problem found, in file order.
    pub fn parse(prefix: &[u8], file_len: u64) -> Result<FileLayout> {
        let preamble = Preamble::parse(prefix)?;
        let header_end = PREAMBLE_LEN + preamble.header_len;
        if header_end > file_len {
            return Err(Error::Truncated {
                what: "the header".into(),
                start: PREAMBLE_LEN,
                end: header_end,
                file_len,
            });
        }
        let json = prefix
            .get(PREAMBLE_LEN as usize..header_end as usize)
            .ok_or_else(|| Error::Truncated {
                what: "the header (in the bytes given)".into(),
                start: PREAMBLE_LEN,
                end: header_end,
                file_len: prefix.len() as u64,
            })?;
        let computed = preamble.compute_checksum(json);
        if computed != preamble.header_checksum {
            return Err(Error::HeaderChecksum {
                stored: preamble.header_checksum,
                computed,
                end: header_end,
            });
        }
        let header = Header::from_json(json)?;
        // The header length is capped at 100 MiB, so this cannot overflow; an error all the same.
        let data_start = preamble
            .data_start(header.alignment)
            .ok_or(Error::HeaderTooLarge {
                len: preamble.header_len,
                max: MAX_HEADER_LEN,
            })?;
        let index = header.validate_indexed(data_start, file_len)?;
        Ok(FileLayout {
            preamble,
            header,
            data_start,
            file_len,
            index,
        })
    }

    /// The preamble.
    pub fn preamble(&self) -> &Preamble {
        &self.preamble
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Absolute offset of the data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Length of the file this layout was checked against.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.get(self.position(name)?)
    }

    /// Position of the tensor named `name` in [`Header::tensors`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(&self.header.tensors, name)
    }

    /// Absolute byte range of a tensor's data in the file.
    ///
    /// For a tensor of this layout the range is in bounds of the file (validation checked it). A
    /// `TensorInfo` from elsewhere gets a range saturated at `u64::MAX`, never a panic.
    pub fn tensor_range(&self, t: &TensorInfo) -> Range<u64> {
        let start = self.data_start.saturating_add(t.offset);
        start..start.saturating_add(t.length)
    }

    /// Absolute byte range of the checksum table in the file.
    pub fn checksum_table_range(&self) -> Range<u64> {
        let start = self.data_start + self.header.checksums.offset;
        start..start + self.header.checksums.length
    }

    /// Absolute byte ranges that must hold zeros: between the header and the data, between tensors,
    /// and between the last tensor and the checksum table.
    pub fn padding_ranges(&self) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut cursor = PREAMBLE_LEN + self.preamble.header_len;
        let regions = self
            .header
            .tensors
            .iter()
            .map(|t| self.tensor_range(t))
            .chain(std::iter::once(self.checksum_table_range()));
        for r in regions {
            if r.start > cursor {
                out.push(cursor..r.start);
            }
            cursor = cursor.max(r.end);
        }
        out
    }
}

/// Positions of tensors by name: an open-addressing table (linear probing, at most half full) of
/// `(position + 1, fingerprint)` slots, where 0 marks an empty slot and the fingerprint is the high
/// half of the name's hash. Names stay in the tensors; the table holds 8 bytes per slot.
///
/// The hash is SipHash with a random key per table (std's `RandomState`), so names chosen to
/// collide cannot make building the index quadratic.
#[derive(Clone, Debug)]
struct NameIndex {
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

    fn get(&self, tensors: &[TensorInfo], name: &str) -> Option<usize> {
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
