//! The dataset manifest: a sharded dataset's columns and shards, one small checksummed file.
//!
//! A dataset is a folder holding [`MANIFEST_FILE`] and the `.mmt` shards it lists. Every shard is an
//! ordinary store that opens alone; the manifest says which columns every shard holds (name, dtype,
//! row shape) and, per shard, its file name, length, header checksum and row count, in row order.
//! `docs/FORMAT.md` ("Dataset manifest") is the byte-exact spec.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::{check_name, checked_byte_len, Dtype, Error, Result, REQUIRED_FLAGS_MASK};

/// Name of the manifest inside a dataset folder.
pub const MANIFEST_FILE: &str = "manifest.mmtm";
/// The eight magic bytes that open a manifest: `\x89MMD\r\n\x1a\n` (the `.mmt` magic with `D`
/// for dataset, so neither file is taken for the other).
pub const MANIFEST_MAGIC: [u8; 8] = *b"\x89MMD\r\n\x1a\n";
/// The manifest major version this crate reads and writes.
pub const MANIFEST_VERSION_MAJOR: u16 = 1;
/// The manifest minor version this crate writes.
pub const MANIFEST_VERSION_MINOR: u16 = 1;
/// Length of the manifest's fixed preamble (laid out as the `.mmt` preamble).
pub const MANIFEST_PREAMBLE_LEN: u64 = 32;
/// Largest manifest body accepted, in bytes (100 MiB, the `.mmt` header cap).
pub const MAX_MANIFEST_BODY_LEN: u64 = 100 * 1024 * 1024;
/// Longest shard file name accepted, in bytes (`NAME_MAX` of common file systems).
pub const MAX_SHARD_NAME_LEN: usize = 255;
/// Required flag bit 0 (manifest 1.1): the dataset has a ragged column. A 1.0 reader, which would
/// take a ragged column for a fixed-shape one and then refuse every shard with a confusing shape
/// mismatch, refuses the manifest instead, saying it needs a newer mmtensor.
pub const MANIFEST_FLAG_RAGGED: u32 = 1;
/// Required manifest flags this reader understands.
pub const KNOWN_MANIFEST_REQUIRED_FLAGS: u32 = MANIFEST_FLAG_RAGGED;

/// One column of a dataset: every shard holds a tensor of this name and dtype whose shape is the
/// shard's row count followed by [`ColumnSpec::row_shape`].
///
/// Made only by [`ColumnSpec::new`], which validates; its fields cannot change afterwards. A
/// declaration only: the loader's `mmtensor::Column` is a dataset's column that reads rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSpec {
    name: String,
    dtype: Dtype,
    row_shape: Vec<u64>,
    row_bytes: u64,
    ragged: bool,
}

impl ColumnSpec {
    /// A column named `name` (a valid tensor name) of `dtype` whose rows have shape `row_shape`.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::RankTooLarge`] (the full rank, `1 + row_shape.len()`, is
    /// over [`crate::MAX_RANK`]) or [`Error::ShapeOverflow`] (one row's bytes overflow a u64).
    pub fn new(name: impl Into<String>, dtype: Dtype, row_shape: Vec<u64>) -> Result<ColumnSpec> {
        let name = name.into();
        check_name(&name)?;
        let mut full = Vec::with_capacity(row_shape.len() + 1);
        full.push(1);
        full.extend_from_slice(&row_shape);
        let row_bytes = checked_byte_len(&name, dtype, &full)?;
        Ok(ColumnSpec {
            name,
            dtype,
            row_shape,
            row_bytes,
            ragged: false,
        })
    }

    /// A ragged column (manifest 1.1) named `name`: rows of any length, each of shape
    /// `[length] + item_shape`. Every shard stores it as a ragged tensor: its values `name`, of
    /// shape `[values] + item_shape`, then its row offsets [`crate::offsets_name`]`(name)`.
    ///
    /// # Errors
    /// As [`ColumnSpec::new`], for the values' shape `[1] + item_shape`, and
    /// [`Error::InvalidName`] when the offsets' name is not a valid tensor name.
    pub fn ragged(
        name: impl Into<String>,
        dtype: Dtype,
        item_shape: Vec<u64>,
    ) -> Result<ColumnSpec> {
        let mut c = ColumnSpec::new(name, dtype, item_shape)?;
        check_name(&crate::offsets_name(&c.name))?;
        c.ragged = true;
        Ok(c)
    }

    /// True for a ragged column: rows of varying length along their first axis.
    pub fn is_ragged(&self) -> bool {
        self.ragged
    }

    /// The column's name: the tensor name in every shard.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The shape of one row (the tensor's shape without its first dimension); for a ragged
    /// column, the shape of one item of a row (a row is `[length] + row_shape`).
    pub fn row_shape(&self) -> &[u64] {
        &self.row_shape
    }

    /// Bytes of one row; for a ragged column, of one item of a row.
    pub fn row_bytes(&self) -> u64 {
        self.row_bytes
    }

    /// The shape of this column's tensor in a shard of `rows` rows (of a ragged column: the
    /// shape of its values when they hold `rows` items).
    pub fn shape(&self, rows: u64) -> Vec<u64> {
        let mut s = Vec::with_capacity(self.row_shape.len() + 1);
        s.push(rows);
        s.extend_from_slice(&self.row_shape);
        s
    }
}

/// One shard of a dataset: an `.mmt` file in the dataset's folder.
///
/// Made only by [`Shard::new`], which checks the file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    file: String,
    length: u64,
    header_checksum: u64,
    num_rows: u64,
}

impl Shard {
    /// A shard stored as `file` in the dataset folder: `length` bytes long, whose preamble records
    /// `header_checksum` (bytes 24..32), holding `num_rows` rows of every column.
    ///
    /// # Errors
    /// [`Error::InvalidShardName`] (see [`check_shard_name`]).
    pub fn new(
        file: impl Into<String>,
        length: u64,
        header_checksum: u64,
        num_rows: u64,
    ) -> Result<Shard> {
        let file = file.into();
        check_shard_name(&file)?;
        Ok(Shard {
            file,
            length,
            header_checksum,
            num_rows,
        })
    }

    /// The file name, relative to the dataset folder (one path component).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The file's length in bytes.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The header checksum the shard's preamble records (which covers the block checksum table's
    /// hash, so it identifies every byte a writer wrote).
    pub fn header_checksum(&self) -> u64 {
        self.header_checksum
    }

    /// Rows of every column in this shard.
    pub fn num_rows(&self) -> u64 {
        self.num_rows
    }
}

impl Shard {
    /// Why the `.mmt` file whose layout is `layout` is not this shard as its manifest lists it
    /// (whose columns are `columns`): another length, another header checksum, or tensors other
    /// than the columns (names, dtypes, shapes for this shard's rows, in order); `None` when it
    /// is. The one rule every reader of a dataset applies to a shard file (the loader, the
    /// converter), worded as a reason after "this shard does not match the manifest: ".
    pub fn mismatch(&self, columns: &[ColumnSpec], layout: &crate::FileLayout) -> Option<String> {
        if layout.file_len() != self.length {
            return Some(format!(
                "it is {} bytes long, but the manifest records {}: it was replaced or truncated",
                layout.file_len(),
                self.length
            ));
        }
        if layout.preamble().header_checksum != self.header_checksum {
            return Some(format!(
                "its header checksum is {:016x}, but the manifest records {:016x}: it was replaced",
                layout.preamble().header_checksum,
                self.header_checksum
            ));
        }
        let tensors = &layout.header().tensors;
        let expected = columns.len() + columns.iter().filter(|c| c.ragged).count();
        if tensors.len() != expected {
            return Some(format!(
                "it holds {} tensors, but the dataset's {} columns need {expected}",
                tensors.len(),
                columns.len()
            ));
        }
        let rows = self.num_rows;
        let mut tensors = tensors.iter();
        for c in columns {
            let t = tensors.next()?;
            let differs = |shape: &[u64], what: &str| {
                format!(
                    "it holds `{}` {} {:?}{} where the manifest has column `{}` {} {:?}{what}",
                    t.name,
                    t.dtype,
                    t.shape,
                    if t.offsets.is_some() { " (ragged)" } else { "" },
                    c.name(),
                    c.dtype(),
                    shape,
                )
            };
            if !c.ragged {
                if t.name != c.name()
                    || t.dtype != c.dtype()
                    || t.shape != c.shape(rows)
                    || t.offsets.is_some()
                {
                    return Some(differs(&c.shape(rows), ""));
                }
                continue;
            }
            // The values: any length along axis 0, then the item shape, linked to their offsets
            // (the store's own validation checked that the offsets follow, U64 and rank 1).
            let values = t.shape.first().copied().unwrap_or(0);
            let offsets = crate::offsets_name(c.name());
            if t.name != c.name()
                || t.dtype != c.dtype()
                || t.shape.get(1..) != Some(c.row_shape())
                || t.offsets.as_deref() != Some(offsets.as_str())
            {
                return Some(differs(&c.shape(values), " (ragged)"));
            }
            let o = tensors.next()?;
            // `Manifest::new` proved `rows + 1` fits for a dataset with a ragged column.
            let entries = rows.saturating_add(1);
            if o.name != offsets || o.shape != [entries] {
                return Some(format!(
                    "its ragged column `{}` has offsets `{}` {:?}, but the manifest records {rows} rows, which need `{offsets}` [{entries}]",
                    c.name(),
                    o.name,
                    o.shape,
                ));
            }
        }
        None
    }
}

/// Checks a shard file name: 1 to [`MAX_SHARD_NAME_LEN`] bytes of ASCII letters, digits, `.`,
/// `_` and `-`, not starting with `.`, ending with `.mmt`.
///
/// So a name is always one plain path component (no separator, no `..`, not absolute, no
/// hidden temporary file) that means the same on every file system and object store.
///
/// # Errors
/// [`Error::InvalidShardName`] saying which rule the name breaks.
pub fn check_shard_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_SHARD_NAME_LEN {
        "it is longer than 255 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "only ASCII letters, digits, `.`, `_` and `-` are allowed (one path component, no separator)"
    } else if name.starts_with('.') {
        "it starts with `.`"
    } else if name.len() <= 4 || !name.ends_with(".mmt") {
        "it does not end with `.mmt`"
    } else {
        return Ok(());
    };
    Err(Error::InvalidShardName {
        name: name.chars().take(64).collect(),
        reason,
    })
}

/// A validated dataset manifest: its columns, and its shards in row order.
///
/// Made by [`Manifest::new`] or [`Manifest::parse`], which validate; its fields are private, so a
/// manifest cannot become invalid afterwards. [`Manifest::with_shards`] makes the manifest of an
/// append.
///
/// ```
/// use mmtensor_format::{ColumnSpec, Dtype, Manifest, Shard};
///
/// let m = Manifest::new(
///     vec![ColumnSpec::new("x", Dtype::F32, vec![3])?, ColumnSpec::new("y", Dtype::I64, vec![])?],
///     vec![
///         Shard::new("shard-00000.mmt", 8192, 0x9b4a_2c7e_01d3_f5a8, 100)?,
///         Shard::new("shard-00001.mmt", 8192, 0x04c1_d2e3_f4a5_b6c7, 20)?,
///     ],
/// )?;
/// assert_eq!(m.num_rows(), 120);
/// assert_eq!(m.locate(105), Some((1, 5))); // row 5 of the second shard
/// let bytes = m.encode();
/// assert_eq!(Manifest::parse(&bytes)?, m);
/// assert!(Shard::new("../escape.mmt", 1, 0, 1).is_err()); // one plain path component only
/// # Ok::<(), mmtensor_format::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    columns: Vec<ColumnSpec>,
    shards: Vec<Shard>,
    /// `starts[i]` is the dataset row of shard `i`'s first row; `starts[shards.len()]` the total.
    starts: Vec<u64>,
}

impl Manifest {
    /// A manifest of `columns` and `shards` (in row order).
    ///
    /// # Errors
    /// [`Error::NoColumns`], [`Error::DuplicateColumn`], [`Error::DuplicateShard`] (names equal
    /// ignoring ASCII case, so that a case-insensitive file system keeps them apart),
    /// [`Error::RowCountOverflow`] (the rows add up past 2^64 − 1) or [`Error::ShapeOverflow`]
    /// (a shard's tensor of some column would be over 2^64 − 1 bytes).
    pub fn new(columns: Vec<ColumnSpec>, shards: Vec<Shard>) -> Result<Manifest> {
        if columns.is_empty() {
            return Err(Error::NoColumns);
        }
        let hasher = RandomState::new();
        let mut names: HashSet<&str, _> = HashSet::with_capacity_and_hasher(columns.len(), hasher);
        for (i, c) in columns.iter().enumerate() {
            if !names.insert(c.name.as_str()) {
                let first = columns.iter().position(|o| o.name == c.name).unwrap_or(i);
                return Err(Error::DuplicateColumn {
                    name: c.name.clone(),
                    first,
                    second: i,
                });
            }
        }
        // A ragged column's offsets are a tensor of their own in every shard: no column may take
        // their name.
        for c in columns.iter().filter(|c| c.ragged) {
            let offsets = crate::offsets_name(&c.name);
            if let Some(second) = columns.iter().position(|o| o.name == offsets) {
                let first = columns.iter().position(|o| o.name == c.name).unwrap_or(0);
                return Err(Error::DuplicateColumn {
                    name: offsets,
                    first,
                    second,
                });
            }
        }
        // The widest row bounds every column's tensor size in a shard.
        let widest = columns
            .iter()
            .max_by_key(|c| c.row_bytes)
            .expect("at least one column");
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut files: HashSet<String, _> =
            HashSet::with_capacity_and_hasher(shards.len(), RandomState::new());
        let mut total = 0u64;
        for (i, s) in shards.iter().enumerate() {
            if !files.insert(s.file.to_ascii_lowercase()) {
                let first = shards
                    .iter()
                    .position(|o| o.file.eq_ignore_ascii_case(&s.file))
                    .unwrap_or(i);
                return Err(Error::DuplicateShard {
                    name: s.file.clone(),
                    first,
                    second: i,
                });
            }
            // A ragged column's offsets hold rows + 1 entries of 8 bytes.
            let ragged_overflow = columns.iter().any(|c| c.ragged)
                && s.num_rows
                    .checked_add(1)
                    .and_then(|n| n.checked_mul(8))
                    .is_none();
            if s.num_rows.checked_mul(widest.row_bytes).is_none() || ragged_overflow {
                return Err(Error::ShapeOverflow {
                    tensor: widest.name.clone(),
                    shape: widest.shape(s.num_rows),
                    dtype: widest.dtype,
                });
            }
            starts.push(total);
            total = total
                .checked_add(s.num_rows)
                .ok_or_else(|| Error::RowCountOverflow {
                    shard: s.file.clone(),
                })?;
        }
        starts.push(total);
        Ok(Manifest {
            columns,
            shards,
            starts,
        })
    }

    /// This manifest with `more` shards after its own: the manifest of an append.
    ///
    /// # Errors
    /// As [`Manifest::new`].
    pub fn with_shards(&self, more: Vec<Shard>) -> Result<Manifest> {
        let mut shards = Vec::with_capacity(self.shards.len() + more.len());
        shards.extend_from_slice(&self.shards);
        shards.extend(more);
        Manifest::new(self.columns.clone(), shards)
    }

    /// The columns, in the order every shard stores them.
    pub fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    /// The column named `name`, if any (a linear search: datasets have few columns).
    pub fn column(&self, name: &str) -> Option<&ColumnSpec> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The shards, in row order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Total rows of the dataset.
    pub fn num_rows(&self) -> u64 {
        *self.starts.last().expect("starts holds the total")
    }

    /// The dataset row of each shard's first row, then the total: `shards().len() + 1` entries,
    /// non-decreasing.
    pub fn starts(&self) -> &[u64] {
        &self.starts
    }

    /// The shard holding dataset row `row` and the row's position in it; `None` past the end.
    /// A binary search (empty shards are skipped).
    pub fn locate(&self, row: u64) -> Option<(usize, u64)> {
        if row >= self.num_rows() {
            return None;
        }
        // The last shard whose start is at or before `row`; empty shards share their start with
        // the next one, and `partition_point` passes over them.
        let i = self.starts.partition_point(|&s| s <= row) - 1;
        Some((i, row - self.starts[i]))
    }

    /// The manifest file's bytes: the 32-byte preamble, then the compact JSON body.
    ///
    /// Field order is fixed and nothing is optional, so equal manifests encode to equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let out = ManifestOut {
            columns: self
                .columns
                .iter()
                .map(|c| ColumnOut {
                    name: &c.name,
                    dtype: c.dtype.name(),
                    row_shape: &c.row_shape,
                    ragged: c.ragged,
                })
                .collect(),
            shards: self
                .shards
                .iter()
                .map(|s| ShardOut {
                    file: &s.file,
                    length: s.length,
                    header_xxh3: format!("{:016x}", s.header_checksum),
                    rows: s.num_rows,
                })
                .collect(),
        };
        // Cannot fail: every map key is a string and no value has a serializer that errs.
        let body = serde_json::to_vec(&out).expect("a manifest always serializes");
        let mut file = Vec::with_capacity(MANIFEST_PREAMBLE_LEN as usize + body.len());
        file.extend_from_slice(&MANIFEST_MAGIC);
        // The lowest version that describes the dataset: without a ragged column, a 1.0 manifest
        // byte for byte.
        let ragged = self.columns.iter().any(|c| c.ragged);
        let (minor, flags) = if ragged {
            (MANIFEST_VERSION_MINOR, MANIFEST_FLAG_RAGGED)
        } else {
            (0, 0)
        };
        file.extend_from_slice(&MANIFEST_VERSION_MAJOR.to_le_bytes());
        file.extend_from_slice(&minor.to_le_bytes());
        file.extend_from_slice(&flags.to_le_bytes());
        file.extend_from_slice(&(body.len() as u64).to_le_bytes());
        let checksum = manifest_checksum(&file[..24], &body);
        file.extend_from_slice(&checksum.to_le_bytes());
        file.extend_from_slice(&body);
        file
    }

    /// Parses and validates a whole manifest file.
    ///
    /// The input must be exactly the file: `32 + body length` bytes. A reader checks the file's
    /// length against `32 +` [`MAX_MANIFEST_BODY_LEN`] before reading it, so nothing is read or
    /// allocated for a manifest over the cap.
    ///
    /// # Errors
    /// [`Error::ManifestBadMagic`], [`Error::UnsupportedManifestVersion`],
    /// [`Error::UnknownRequiredFlags`], [`Error::HeaderTooLarge`] (a body length over the cap),
    /// [`Error::ManifestLength`] (truncated, or trailing bytes), [`Error::ManifestChecksum`],
    /// [`Error::ManifestJson`], [`Error::UnknownDtype`], [`Error::InvalidField`] (a malformed
    /// `header_xxh3`), then every error of [`ColumnSpec::new`], [`Shard::new`] and
    /// [`Manifest::new`], for the first entry that breaks a rule.
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let Some(p) = bytes.get(..MANIFEST_PREAMBLE_LEN as usize) else {
            let n = bytes.len().min(8);
            if bytes[..n] != MANIFEST_MAGIC[..n] {
                let mut found = [0u8; 8];
                found[..n].copy_from_slice(&bytes[..n]);
                return Err(Error::ManifestBadMagic { found });
            }
            return Err(Error::ManifestLength {
                len: bytes.len() as u64,
                expected: MANIFEST_PREAMBLE_LEN,
            });
        };
        let magic: [u8; 8] = p[0..8].try_into().expect("8 bytes");
        if magic != MANIFEST_MAGIC {
            return Err(Error::ManifestBadMagic { found: magic });
        }
        let major = u16::from_le_bytes([p[8], p[9]]);
        let minor = u16::from_le_bytes([p[10], p[11]]);
        let flags = u32::from_le_bytes(p[12..16].try_into().expect("4 bytes"));
        let body_len = u64::from_le_bytes(p[16..24].try_into().expect("8 bytes"));
        let stored = u64::from_le_bytes(p[24..32].try_into().expect("8 bytes"));
        if major != MANIFEST_VERSION_MAJOR {
            return Err(Error::UnsupportedManifestVersion {
                major,
                minor,
                supported: MANIFEST_VERSION_MAJOR,
            });
        }
        let unknown = flags & REQUIRED_FLAGS_MASK & !KNOWN_MANIFEST_REQUIRED_FLAGS;
        if unknown != 0 {
            return Err(Error::UnknownRequiredFlags { flags: unknown });
        }
        if body_len > MAX_MANIFEST_BODY_LEN {
            return Err(Error::HeaderTooLarge {
                len: body_len,
                max: MAX_MANIFEST_BODY_LEN,
            });
        }
        let expected = MANIFEST_PREAMBLE_LEN + body_len;
        if bytes.len() as u64 != expected {
            return Err(Error::ManifestLength {
                len: bytes.len() as u64,
                expected,
            });
        }
        let body = &bytes[MANIFEST_PREAMBLE_LEN as usize..];
        let computed = manifest_checksum(&p[..24], body);
        if computed != stored {
            return Err(Error::ManifestChecksum { stored, computed });
        }
        let raw: ManifestIn = serde_json::from_slice(body).map_err(|e| Error::ManifestJson {
            // Compact JSON is one line, so the column is the byte position within the body.
            offset: MANIFEST_PREAMBLE_LEN + (e.column() as u64).saturating_sub(1),
            message: e.to_string(),
        })?;
        let mut columns = Vec::with_capacity(raw.columns.len());
        for c in raw.columns {
            let dtype = Dtype::from_name(&c.dtype).ok_or_else(|| Error::UnknownDtype {
                tensor: Some(c.name.chars().take(64).collect()),
                name: c.dtype.chars().take(64).collect(),
            })?;
            if c.ragged && flags & MANIFEST_FLAG_RAGGED == 0 {
                return Err(Error::InvalidField {
                    field: "columns[].ragged",
                    value: c.name.chars().take(64).collect(),
                    reason: "a ragged column needs required flag bit 0 set (bytes 12..16), so that older readers refuse the manifest",
                });
            }
            columns.push(if c.ragged {
                ColumnSpec::ragged(c.name, dtype, c.row_shape)?
            } else {
                ColumnSpec::new(c.name, dtype, c.row_shape)?
            });
        }
        let mut shards = Vec::with_capacity(raw.shards.len());
        for s in raw.shards {
            let header_checksum =
                parse_hex16(&s.header_xxh3).ok_or_else(|| Error::InvalidField {
                    field: "shards[].header_xxh3",
                    value: format!("{:?}", s.header_xxh3.chars().take(64).collect::<String>()),
                    reason: "must be 16 lowercase hex digits",
                })?;
            shards.push(Shard::new(s.file, s.length, header_checksum, s.rows)?);
        }
        Manifest::new(columns, shards)
    }
}

/// xxh3-64 (seed 0) of preamble bytes 0..24 followed by the body.
fn manifest_checksum(head: &[u8], body: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(head);
    h.update(body);
    h.digest()
}

fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[derive(Serialize)]
struct ManifestOut<'a> {
    columns: Vec<ColumnOut<'a>>,
    shards: Vec<ShardOut<'a>>,
}

#[derive(Serialize)]
struct ColumnOut<'a> {
    name: &'a str,
    dtype: &'a str,
    row_shape: &'a [u64],
    // Absent unless true: a dataset without ragged columns encodes as in 1.0.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ragged: bool,
}

#[derive(Serialize)]
struct ShardOut<'a> {
    file: &'a str,
    length: u64,
    header_xxh3: String,
    rows: u64,
}

// Unknown fields are ignored at every level, so that a minor version can add them.
#[derive(Deserialize)]
struct ManifestIn {
    columns: Vec<ColumnIn>,
    shards: Vec<ShardIn>,
}

#[derive(Deserialize)]
struct ColumnIn {
    name: String,
    dtype: String,
    row_shape: Vec<u64>,
    #[serde(default)]
    ragged: bool,
}

#[derive(Deserialize)]
struct ShardIn {
    file: String,
    length: u64,
    header_xxh3: String,
    rows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest::new(
            vec![
                ColumnSpec::new("x", Dtype::F32, vec![3]).unwrap(),
                ColumnSpec::new("y", Dtype::I64, vec![]).unwrap(),
            ],
            vec![
                Shard::new("shard-00000.mmt", 8192, 0x0123_4567_89ab_cdef, 10).unwrap(),
                Shard::new("shard-00001.mmt", 8192, 1, 0).unwrap(),
                Shard::new("shard-00002.mmt", 8192, 2, 5).unwrap(),
            ],
        )
        .unwrap()
    }

    /// Rewrites the body of an encoded manifest and fixes its length and checksum, so a test
    /// reaches the JSON rules instead of the checksum.
    fn with_body(body: &str) -> Vec<u8> {
        let mut file = sample().encode()[..24].to_vec();
        file[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
        let sum = manifest_checksum(&file, body.as_bytes());
        file.extend_from_slice(&sum.to_le_bytes());
        file.extend_from_slice(body.as_bytes());
        file
    }

    #[test]
    fn golden_bytes() {
        let bytes = sample().encode();
        let body = &bytes[32..];
        assert_eq!(
            std::str::from_utf8(body).unwrap(),
            r#"{"columns":[{"name":"x","dtype":"F32","row_shape":[3]},{"name":"y","dtype":"I64","row_shape":[]}],"shards":[{"file":"shard-00000.mmt","length":8192,"header_xxh3":"0123456789abcdef","rows":10},{"file":"shard-00001.mmt","length":8192,"header_xxh3":"0000000000000001","rows":0},{"file":"shard-00002.mmt","length":8192,"header_xxh3":"0000000000000002","rows":5}]}"#
        );
        assert_eq!(&bytes[..8], b"\x89MMD\r\n\x1a\n");
        assert_eq!(&bytes[8..16], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
            body.len() as u64
        );
        assert_eq!(Manifest::parse(&bytes).unwrap(), sample());
    }

    #[test]
    fn locate_skips_empty_shards() {
        let m = sample();
        assert_eq!(m.num_rows(), 15);
        assert_eq!(m.starts(), [0, 10, 10, 15]);
        assert_eq!(m.locate(0), Some((0, 0)));
        assert_eq!(m.locate(9), Some((0, 9)));
        assert_eq!(m.locate(10), Some((2, 0)));
        assert_eq!(m.locate(14), Some((2, 4)));
        assert_eq!(m.locate(15), None);
        assert_eq!(m.locate(u64::MAX), None);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = r#"{"future":1,"columns":[{"name":"x","dtype":"U8","row_shape":[],"new":[]}],"shards":[{"file":"a.mmt","length":1,"header_xxh3":"00000000000000ff","rows":2,"etc":{}}]}"#;
        let m = Manifest::parse(&with_body(body)).unwrap();
        assert_eq!(m.num_rows(), 2);
        assert_eq!(m.shards()[0].header_checksum(), 255);
    }

    #[test]
    fn hostile_manifests_give_exact_errors() {
        let good = sample().encode();
        let e = |bytes: &[u8]| Manifest::parse(bytes).unwrap_err();

        assert_eq!(
            e(b""),
            Error::ManifestLength {
                len: 0,
                expected: 32
            }
        );
        assert!(matches!(
            e(b"\x89MMT\r\n\x1a\n"),
            Error::ManifestBadMagic { .. }
        ));
        let mut b = good.clone();
        b[3] = b'T';
        assert!(matches!(e(&b), Error::ManifestBadMagic { .. }));
        let mut b = good.clone();
        b[8] = 2;
        assert_eq!(
            e(&b),
            Error::UnsupportedManifestVersion {
                major: 2,
                minor: 0,
                supported: 1
            }
        );
        let mut b = good.clone();
        b[12] = 2;
        assert_eq!(e(&b), Error::UnknownRequiredFlags { flags: 2 });
        let mut b = good.clone();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(e(&b), Error::HeaderTooLarge { len: u64::MAX, .. }));
        let n = good.len() as u64;
        assert_eq!(
            e(&good[..good.len() - 1]),
            Error::ManifestLength {
                len: n - 1,
                expected: n
            }
        );
        let mut b = good.clone();
        b.push(b' ');
        assert_eq!(
            e(&b),
            Error::ManifestLength {
                len: n + 1,
                expected: n
            }
        );
        let mut b = good.clone();
        let last = b.len() - 3;
        b[last] ^= 1;
        assert!(matches!(e(&b), Error::ManifestChecksum { .. }));
        // An optional flag is ignored, but it is covered by the checksum like every byte.
        let mut b = good.clone();
        b[14] = 1;
        assert!(matches!(e(&b), Error::ManifestChecksum { .. }));

        assert!(matches!(e(&with_body("{")), Error::ManifestJson { .. }));
        assert!(matches!(
            e(&with_body(r#"{"columns":[]}"#)),
            Error::ManifestJson { .. }
        ));
        assert_eq!(
            e(&with_body(r#"{"columns":[],"shards":[]}"#)),
            Error::NoColumns
        );
        let col = |c: &str| format!(r#"{{"columns":[{c}],"shards":[]}}"#);
        assert_eq!(
            e(&with_body(&col(
                r#"{"name":"x","dtype":"F99","row_shape":[]}"#
            ))),
            Error::UnknownDtype {
                tensor: Some("x".into()),
                name: "F99".into()
            }
        );
        assert!(matches!(
            e(&with_body(&col(
                r#"{"name":"","dtype":"F32","row_shape":[]}"#
            ))),
            Error::InvalidName { .. }
        ));
        assert!(matches!(
            e(&with_body(&col(
                r#"{"name":"x","dtype":"F32","row_shape":[4294967296,4294967296]}"#
            ))),
            Error::ShapeOverflow { .. }
        ));
        let rank64 = format!(
            r#"{{"name":"x","dtype":"U8","row_shape":{:?}}}"#,
            vec![1u64; 64]
        );
        assert!(matches!(
            e(&with_body(&col(&rank64))),
            Error::RankTooLarge { rank: 65, .. }
        ));
        assert_eq!(
            e(&with_body(&col(
                r#"{"name":"x","dtype":"U8","row_shape":[]},{"name":"x","dtype":"U8","row_shape":[]}"#
            ))),
            Error::DuplicateColumn {
                name: "x".into(),
                first: 0,
                second: 1
            }
        );

        let shards = |s: &str| {
            format!(
                r#"{{"columns":[{{"name":"x","dtype":"U64","row_shape":[2]}}],"shards":[{s}]}}"#
            )
        };
        let shard = |file: &str, rows: u64| {
            format!(
                r#"{{"file":"{file}","length":64,"header_xxh3":"0000000000000000","rows":{rows}}}"#
            )
        };
        for (name, reason) in [
            ("", "it is empty"),
            ("../a.mmt", "only ASCII letters"),
            ("/abs.mmt", "only ASCII letters"),
            ("sub/a.mmt", "only ASCII letters"),
            ("a\\\\b.mmt", "only ASCII letters"),
            ("é.mmt", "only ASCII letters"),
            (".hidden.mmt", "it starts with `.`"),
            ("..", "it starts with `.`"),
            ("a.npy", "it does not end with `.mmt`"),
            (".mmt", "it starts with `.`"),
        ] {
            match e(&with_body(&shards(&shard(name, 1)))) {
                Error::InvalidShardName { reason: r, .. } => {
                    assert!(r.starts_with(reason), "{name}: {r}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let long = format!("{}.mmt", "a".repeat(252));
        assert!(matches!(
            e(&with_body(&shards(&shard(&long, 1)))),
            Error::InvalidShardName {
                reason: "it is longer than 255 bytes",
                ..
            }
        ));
        assert_eq!(
            e(&with_body(&shards(&format!(
                "{},{}",
                shard("A.mmt", 1),
                shard("a.mmt", 1)
            )))),
            Error::DuplicateShard {
                name: "a.mmt".into(),
                first: 0,
                second: 1
            }
        );
        let bytes_rows = format!(
            r#"{{"columns":[{{"name":"x","dtype":"U8","row_shape":[]}}],"shards":[{},{}]}}"#,
            shard("a.mmt", u64::MAX / 2),
            shard("b.mmt", u64::MAX / 2 + 2)
        );
        assert_eq!(
            e(&with_body(&bytes_rows)),
            Error::RowCountOverflow {
                shard: "b.mmt".into()
            }
        );
        assert!(matches!(
            e(&with_body(&shards(&shard("a.mmt", u64::MAX / 8)))),
            Error::ShapeOverflow { .. }
        ));
        let bad_hex =
            shards(r#"{"file":"a.mmt","length":64,"header_xxh3":"0000000000000ABC","rows":1}"#);
        assert!(matches!(
            e(&with_body(&bad_hex)),
            Error::InvalidField {
                field: "shards[].header_xxh3",
                ..
            }
        ));
        let negative =
            shards(r#"{"file":"a.mmt","length":-1,"header_xxh3":"0000000000000000","rows":1}"#);
        assert!(matches!(
            e(&with_body(&negative)),
            Error::ManifestJson { .. }
        ));
    }

    #[test]
    fn with_shards_appends_and_revalidates() {
        let m = sample();
        let more = m
            .with_shards(vec![Shard::new("shard-00003.mmt", 1, 3, 7).unwrap()])
            .unwrap();
        assert_eq!(more.num_rows(), 22);
        assert_eq!(more.shards().len(), 4);
        assert!(matches!(
            m.with_shards(vec![Shard::new("SHARD-00000.mmt", 1, 3, 7).unwrap()]),
            Err(Error::DuplicateShard {
                first: 0,
                second: 3,
                ..
            })
        ));
    }
}
