//! What a file holds: its validated table of contents, by format, read from the file's first bytes
//! or parsed from the whole file. Safetensors and `.npy` headers are translated into `.mmt` terms
//! (a [`TensorInfo`] per tensor) and held to the `.mmt` rules, so a view never asks which format
//! it came from.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;

use mmtensor_format::npy::{self, ByteOrder};
use mmtensor_format::{
    block_checksum, checked_byte_len, Dtype, FileLayout, Preamble, TensorInfo, PREAMBLE_LEN,
};

use crate::format::{detect, Format};
use crate::{Error, Result};

/// A validated table of contents, by format.
pub(crate) enum Index {
    /// An `.mmt` store: the format crate's validated layout, which also drives `verify`.
    Mmt(FileLayout),
    /// A safetensors or `.npy` file, translated into `.mmt` terms.
    Foreign(Foreign),
}

pub(crate) struct Foreign {
    tensors: Vec<TensorInfo>,
    positions: HashMap<String, usize>,
    data_start: u64,
    metadata: BTreeMap<String, String>,
    /// Why the bytes are not a little-endian C-order tensor (a Fortran-order or big-endian `.npy`).
    needs_convert: Option<&'static str>,
}

impl Index {
    pub(crate) fn tensors(&self) -> &[TensorInfo] {
        match self {
            Index::Mmt(l) => &l.header().tensors,
            Index::Foreign(f) => &f.tensors,
        }
    }

    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        match self {
            Index::Mmt(l) => l.position(name),
            Index::Foreign(f) => f.positions.get(name).copied(),
        }
    }

    pub(crate) fn data_start(&self) -> u64 {
        match self {
            Index::Mmt(l) => l.data_start(),
            Index::Foreign(f) => f.data_start,
        }
    }

    pub(crate) fn needs_convert(&self) -> Option<&'static str> {
        match self {
            Index::Mmt(_) => None,
            Index::Foreign(f) => f.needs_convert,
        }
    }

    /// The store's string metadata (safetensors' `__metadata__`; empty for `.npy`).
    pub(crate) fn metadata(&self) -> &BTreeMap<String, String> {
        match self {
            Index::Mmt(l) => &l.header().metadata,
            Index::Foreign(f) => &f.metadata,
        }
    }

    /// The validated `.mmt` layout, or `None` for other formats.
    pub(crate) fn layout(&self) -> Option<&FileLayout> {
        match self {
            Index::Mmt(l) => Some(l),
            Index::Foreign(_) => None,
        }
    }

    /// The xxh3-64 of the header of `bytes`, the whole file this index was validated against (for
    /// its [`crate::Fingerprint`]).
    pub(crate) fn header_xxh3(&self, bytes: &[u8]) -> u64 {
        match self {
            // Validated at open: the preamble's checksum is the header's.
            Index::Mmt(layout) => layout.preamble().header_checksum,
            // The header was parsed from these bytes, so they are present and already read.
            Index::Foreign(_) => {
                let end = usize::try_from(self.data_start()).map_or(bytes.len(), |e| e);
                block_checksum(bytes.get(..end).unwrap_or(bytes))
            }
        }
    }
}

/// Bytes read at once to find an `.mmt` preamble and, usually, the whole header.
const FIRST_READ: u64 = 4096;

/// The validated index of an `.mmt` file whose header fits in the first read (no mapping); `None`
/// when the file is not an `.mmt` file or its header is larger, which is then parsed from the
/// mapped bytes.
pub(crate) fn read_mmt(path: &Path, file: &File, len: u64) -> Result<Option<Index>> {
    let head = read_prefix(path, file, len.min(FIRST_READ))?;
    if detect(&head) != Some(Format::Mmt) {
        return Ok(None);
    }
    // The header's length (capped by the preamble parser) says how much more to read; a preamble
    // that does not parse is reported by `parse_mmt` from what was read.
    let need = match Preamble::parse(&head) {
        Ok(pre) => (PREAMBLE_LEN + pre.header_len).min(len),
        Err(_) => 0,
    };
    if need <= head.len() as u64 {
        return parse_mmt(path, &head, len).map(Some);
    }
    // A header larger than the first read (thousands of tensors) is parsed from the mapping, whose
    // pages come straight from the page cache, instead of being copied into fresh heap pages that
    // the kernel must zero first (100k tensors: 40 ms against 46 ms, fresh processes alternated 15 times).
    Ok(None)
}

/// The first `n` bytes of `file` (which is at least `n` bytes long when measured).
fn read_prefix(path: &Path, file: &File, n: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; n as usize];
    file.read_exact_at(&mut buf, 0)
        .map_err(Error::io(path, "read the header of"))?;
    Ok(buf)
}

/// The format of `bytes`, the whole file at `path`, and its validated index.
///
/// # Errors
///
/// [`Error::UnknownFormat`]; [`Error::Format`], [`Error::Safetensors`] for an invalid or truncated
/// header; [`Error::UnsupportedDtype`], [`Error::NpyVoid`] for dtypes this crate has no type for.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<(Format, Index)> {
    let format = detect(bytes).ok_or_else(|| Error::UnknownFormat {
        path: path.to_owned(),
        found: bytes[..bytes.len().min(8)].to_vec(),
    })?;
    let index = match format {
        Format::Mmt => parse_mmt(path, bytes, bytes.len() as u64)?,
        Format::Safetensors => parse_safetensors(path, bytes)?,
        Format::Npy => parse_npy(path, bytes)?,
    };
    Ok((format, index))
}

fn parse_mmt(path: &Path, prefix: &[u8], file_len: u64) -> Result<Index> {
    FileLayout::parse(prefix, file_len)
        .map(Index::Mmt)
        .map_err(|source| Error::Format {
            path: path.to_owned(),
            source,
        })
}

fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<Index> {
    let (header_len, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|source| Error::Safetensors {
            path: path.to_owned(),
            source,
        })?;
    // read_metadata checked that the tensors tile the data section exactly and that the data
    // section ends at the end of the buffer, with checked arithmetic.
    let names = meta.offset_keys();
    let mut tensors = Vec::with_capacity(names.len());
    let mut positions = HashMap::with_capacity(names.len());
    for name in names {
        let Some(info) = meta.info(&name) else {
            continue;
        };
        let dtype = Dtype::from_safetensors(info.dtype).ok_or_else(|| Error::UnsupportedDtype {
            path: path.to_owned(),
            tensor: name.clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let (start, end) = info.data_offsets;
        let info = TensorInfo {
            name,
            dtype,
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            offset: start as u64,
            length: (end - start) as u64,
            first_block: 0,
            offsets: None,
        };
        check_foreign_tensor(path, &info)?;
        positions.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }
    Ok(Index::Foreign(Foreign {
        tensors,
        positions,
        data_start: 8 + header_len as u64,
        metadata: meta
            .metadata()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        needs_convert: None,
    }))
}

fn parse_npy(path: &Path, bytes: &[u8]) -> Result<Index> {
    let fmt = |source| Error::Format {
        path: path.to_owned(),
        source,
    };
    let header = npy::parse_header(bytes).map_err(fmt)?;
    header.check_file_len(bytes.len() as u64).map_err(fmt)?;
    let dtype = header.dtype.ok_or_else(|| Error::NpyVoid {
        path: path.to_owned(),
        descr: header.descr.clone(),
    })?;
    // NumPy marks an array Fortran-ordered only when it is not also C-contiguous, but a header may
    // say so of any shape: the two orders differ only when two or more axes are longer than 1.
    let orders_differ = header.shape.iter().filter(|&&d| d > 1).count() > 1;
    let needs_convert = if header.fortran_order && orders_differ {
        Some("in Fortran (column-major) order")
    } else if header.byte_order == ByteOrder::Big && header.item_size > 1 {
        Some("big-endian")
    } else {
        None
    };
    let length = header.data_len().map_err(fmt)?;
    let info = TensorInfo {
        name: npy_name(path).into_owned(),
        dtype,
        shape: header.shape,
        offset: 0,
        length,
        first_block: 0,
        offsets: None,
    };
    check_foreign_tensor(path, &info)?;
    Ok(Index::Foreign(Foreign {
        positions: HashMap::from([(info.name.clone(), 0)]),
        tensors: vec![info],
        data_start: header.data_offset,
        metadata: BTreeMap::new(),
        needs_convert,
    }))
}

/// Holds a safetensors or `.npy` tensor to the rule `.mmt` tensors are validated by
/// ([`checked_byte_len`]): the product of its non-zero dims times the dtype size fits in a u64, and
/// its length is exactly what its shape and dtype need.
///
/// The foreign parsers check only the element count, so a zero-size shape with huge dims
/// (`[0, 2^40, 2^40]`) passes them while its row size overflows; with this check, every row size,
/// row offset and element count later computed from a foreign tensor fits in a u64, as for `.mmt`.
fn check_foreign_tensor(path: &Path, info: &TensorInfo) -> Result<()> {
    let fmt = |source| Error::Format {
        path: path.to_owned(),
        source,
    };
    let expected = checked_byte_len(&info.name, info.dtype, &info.shape).map_err(fmt)?;
    if info.length != expected {
        return Err(fmt(mmtensor_format::Error::LengthMismatch {
            tensor: info.name.clone(),
            length: info.length,
            expected,
        }));
    }
    Ok(())
}

/// The name of a `.npy` file's one tensor: the file's stem, as `np.savez` names members.
fn npy_name(path: &Path) -> Cow<'_, str> {
    match path.file_stem() {
        Some(s) if !s.is_empty() => s.to_string_lossy(),
        _ => Cow::Borrowed("array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_tensors_are_named_after_the_file() {
        assert_eq!(npy_name(Path::new("/a/x.npy")), "x");
        assert_eq!(npy_name(Path::new("weights.v2.npy")), "weights.v2");
        assert_eq!(npy_name(Path::new("/")), "array");
    }
}
