//! [`save`]: tensors already in memory written as one `.mmt` store, planned by the format crate's
//! [`LayoutBuilder`] and written by the one atomic [`StoreWriter`], like every other store.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mmtensor_format::{offsets_name, Dtype, Error as FormatError, LayoutBuilder};

use crate::options::COPY_CHUNK_SIZE;
use crate::{Error, Result, StoreWriter};

/// One tensor for [`save`]: its name, dtype, shape and bytes, and for a ragged tensor (format 1.1)
/// its rows' lengths.
///
/// `bytes` are the tensor's elements in C order, little-endian, already in `dtype` (no cast, swap
/// or transpose is made): exactly `dtype.size()` times the product of `shape` bytes, which
/// [`save`] checks. Build one with [`SaveTensor::new`], or [`SaveTensor::ragged`] for rows of
/// different lengths.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct SaveTensor<'a> {
    /// The tensor's name in the store.
    pub name: &'a str,
    /// The dtype the bytes are in, and the store records.
    pub dtype: Dtype,
    /// The shape; `&[]` for a 0-dimensional tensor (one element).
    pub shape: &'a [u64],
    /// The elements, C order, little-endian.
    pub bytes: &'a [u8],
    /// For a ragged tensor: each row's length along `shape[0]` (the rows' values back to back);
    /// `None` for a fixed-shape tensor.
    pub lengths: Option<&'a [u64]>,
}

impl<'a> SaveTensor<'a> {
    /// A tensor called `name` of `dtype` and `shape`, whose elements are `bytes` (C order,
    /// little-endian). Nothing is checked until [`save`].
    pub const fn new(name: &'a str, dtype: Dtype, shape: &'a [u64], bytes: &'a [u8]) -> Self {
        SaveTensor {
            name,
            dtype,
            shape,
            bytes,
            lengths: None,
        }
    }

    /// A ragged tensor called `name`: `lengths.len()` rows, row `i` the next `lengths[i]` values
    /// of `bytes`, whose shape is `values_shape` (`[sum of lengths] + item_shape`; C order,
    /// little-endian). Stored as its values `name` and its row offsets
    /// [`offsets_name`](mmtensor_format::offsets_name)`(name)`, read back by
    /// `mmtensor::Store::ragged`. Nothing is checked until [`save`].
    pub const fn ragged(
        name: &'a str,
        dtype: Dtype,
        values_shape: &'a [u64],
        bytes: &'a [u8],
        lengths: &'a [u64],
    ) -> Self {
        SaveTensor {
            name,
            dtype,
            shape: values_shape,
            bytes,
            lengths: Some(lengths),
        }
    }
}

impl fmt::Debug for SaveTensor<'_> {
    // The bytes may be gigabytes: their count is what a reader of a log wants.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaveTensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("rows", &self.lengths.map(<[u64]>::len))
            .finish()
    }
}

/// Writes `tensors`, in the order given, and `metadata` as the `.mmt` store `path`, and returns
/// the path written.
///
/// Everything is checked before the store's temporary file is created: the names (the format's
/// rules; no name twice), the metadata keys (none starting `mmt.`, which the format reserves),
/// each tensor's byte count against its dtype and shape, and the bytes of every BOOL tensor, which
/// must all be 0 or 1 (NumPy and torch pass any other byte on as a bool their kernels assume is 0
/// or 1). The store is then written like every other: default alignment (4096) and checksum block
/// size (1 MiB), through a hidden temporary file beside `path` that is fsynced and renamed over it.
/// So `path` holds either its old content or the complete new store, never a part of one, and a
/// process that has the old file mapped keeps reading the old bytes.
///
/// A ragged tensor ([`SaveTensor::ragged`]) is written as its values, then its row offsets
/// (`U64`, `rows + 1`, computed from the lengths), as format 1.1 lays them out; a store with one is
/// a format 1.1 store.
///
/// Memory: the writer's 1 MiB buffer and the checksums (8 bytes per MiB of data), and a ragged
/// tensor's offsets; the tensors are written from `bytes` without a copy.
///
/// # Errors
/// [`Error::Format`] for a name the format refuses or given twice, a reserved metadata key, or a
/// ragged tensor whose lengths do not add up to its values' first dimension;
/// [`Error::TooFewBytes`] or [`Error::TooManyBytes`] (naming the tensor, the bytes its dtype and
/// shape hold and the bytes given) for bytes of the wrong length; [`Error::InvalidBool`] for a BOOL
/// byte other than 0 and 1 (`path` is then the store that was not written, and `index` the
/// element's C-order position; [`crate::ConvertOptions::normalize_bools`], which the message
/// mentions, is the converter's option, not this function's: pass `u8::from(b != 0)` instead);
/// [`Error::Io`] when the temporary file cannot be created (the folder is missing) or written;
/// [`Error::NotDurable`] when only the folder's fsync after the rename failed (see
/// [`crate::AtomicFile::commit`]). Except for `NotDurable`, an error leaves `path` as it was and no
/// temporary file behind.
///
/// # Examples
///
/// ```
/// use std::collections::BTreeMap;
/// use mmtensor_convert::{save, SaveTensor};
/// use mmtensor_format::Dtype;
///
/// let dir = tempfile::tempdir()?;
/// let weights: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let mask = [1u8, 0, 1];
/// let tensors = [
///     SaveTensor::new("w", Dtype::F32, &[2, 2], &weights),
///     SaveTensor::new("mask", Dtype::Bool, &[3], &mask),
/// ];
/// let metadata = BTreeMap::from([("step".to_owned(), "100".to_owned())]);
/// let path = save(dir.path().join("model.mmt"), &tensors, &metadata)?;
///
/// // SAFETY: nothing else writes the file while it is mapped.
/// let store = unsafe { mmtensor::Store::open(&path)? };
/// assert_eq!(store.tensor("w")?.as_slice::<f32>()?, &[1.0, 2.0, 3.0, 4.0]);
/// assert_eq!(store.metadata().get("step").map(String::as_str), Some("100"));
///
/// // Bytes that do not match the dtype and shape are refused, and the store is left as it was.
/// let short = [SaveTensor::new("w", Dtype::F32, &[2, 2], &weights[..12])];
/// assert!(save(&path, &short, &BTreeMap::new()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[SaveTensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<PathBuf> {
    let path = path.as_ref();
    let format = |source| Error::Format {
        path: path.to_path_buf(),
        source,
    };
    // The format's rules (names, duplicates, reserved keys, shapes) are the planner's: the same
    // checks every writer goes through.
    let mut builder = LayoutBuilder::new();
    for (key, value) in metadata {
        builder.metadata(key, value).map_err(format)?;
    }
    // Each ragged tensor's offsets, in the order of `tensors` (`None` for a fixed one).
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        match t.lengths {
            None => {
                builder.tensor(t.name, t.dtype, t.shape).map_err(format)?;
                offsets.push(None);
            }
            Some(lengths) => {
                builder
                    .ragged(t.name, t.dtype, t.shape, lengths.len() as u64)
                    .map_err(format)?;
                offsets.push(Some(offsets_of(t, lengths).map_err(format)?));
            }
        }
    }
    let layout = builder.build().map_err(format)?;
    // The layout's tensors: each given tensor, and after a ragged one its offsets.
    let mut infos = layout.header().tensors.iter();
    for (t, o) in tensors.iter().zip(&offsets) {
        if let Some(info) = infos.next() {
            check_bytes(path, t, info.length)?;
        }
        if o.is_some() {
            infos.next();
        }
    }
    let mut writer = StoreWriter::create(path, layout)?;
    for (t, o) in tensors.iter().zip(&offsets) {
        write_tensor(&mut writer, t.name, t.bytes)?;
        if let Some(o) = o {
            write_tensor(&mut writer, &offsets_name(t.name), o)?;
        }
    }
    writer.finish()
}

/// Writes the tensor `name`, the next one the layout plans, from `bytes`.
fn write_tensor(writer: &mut StoreWriter, name: &str, bytes: &[u8]) -> Result<()> {
    writer.begin_tensor(name)?;
    // Pieces, so that the writer starts the kernel's writeback as the bytes pass instead of
    // after one write of the whole tensor.
    for piece in bytes.chunks(COPY_CHUNK_SIZE) {
        writer.write_chunk(piece)?;
    }
    writer.end_tensor()
}

/// The row offsets of the ragged tensor `t` (`rows + 1`, little-endian `u64`s) from its rows'
/// `lengths`, which must add up to its values' first dimension.
fn offsets_of(t: &SaveTensor<'_>, lengths: &[u64]) -> std::result::Result<Vec<u8>, FormatError> {
    let refuse = |reason: String| FormatError::Ragged {
        tensor: t.name.to_owned(),
        reason,
    };
    let values = *t
        .shape
        .first()
        .ok_or_else(|| refuse("its values need rank 1 or more".into()))?;
    let mut out = Vec::with_capacity((lengths.len() + 1) * 8);
    let mut end = 0u64;
    out.extend_from_slice(&end.to_le_bytes());
    for &l in lengths {
        end = end
            .checked_add(l)
            .ok_or_else(|| refuse("its row lengths add up to more than 2^64".into()))?;
        out.extend_from_slice(&end.to_le_bytes());
    }
    if end != values {
        return Err(refuse(format!(
            "its {} row lengths add up to {end} values, but its values have {values}",
            lengths.len()
        )));
    }
    Ok(out)
}

/// Refuses `t` unless it holds exactly `expected` bytes (the length the planner computed from its
/// dtype and shape) and, for a BOOL tensor, only the bytes 0 and 1.
fn check_bytes(path: &Path, t: &SaveTensor<'_>, expected: u64) -> Result<()> {
    let given = t.bytes.len() as u64;
    if given < expected {
        return Err(Error::TooFewBytes {
            tensor: t.name.to_owned(),
            expected,
            given,
        });
    }
    if given > expected {
        return Err(Error::TooManyBytes {
            tensor: t.name.to_owned(),
            expected,
            given,
        });
    }
    if t.dtype == Dtype::Bool {
        if let Some(i) = t.bytes.iter().position(|&b| b > 1) {
            return Err(Error::InvalidBool {
                path: path.to_path_buf(),
                member: None,
                tensor: t.name.to_owned(),
                index: i as u64,
                offset: None,
                value: t.bytes[i],
            });
        }
    }
    Ok(())
}
