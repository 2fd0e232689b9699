//! Where a stored array's bytes live ([`Location`]: a byte range, a zip member, or a column of a
//! Parquet or Arrow IPC table that arrow-rs decodes), the array as a reader planned it ([`Part`]:
//! stored dtype, byte order, memory order, shape, length), and the block checksums it may carry
//! ([`BlockCheck`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmtensor_format::Dtype;

use crate::source::read::io_or_zip;
use crate::source::table::Table;
use crate::{Error, Result};

/// Where one stored array's bytes live.
#[derive(Clone, Debug)]
pub(crate) enum Location {
    /// A byte range of a plain file (`.npy` data, a safetensors tensor).
    File { path: PathBuf, offset: u64 },
    /// A member of a zip archive (`.npz`); the data follows `header_len` bytes of npy header.
    Member {
        path: PathBuf,
        index: usize,
        member: String,
        header_len: u64,
    },
    /// Column `column` of a Parquet file or an Arrow IPC file or stream: not a byte range but
    /// values that arrow-rs decodes, group by group (`source/arrow.rs`).
    Arrow { table: Arc<Table>, column: usize },
}

impl Location {
    pub(crate) fn path(&self) -> &Path {
        match self {
            Location::File { path, .. } | Location::Member { path, .. } => path,
            Location::Arrow { table, .. } => &table.path,
        }
    }

    pub(crate) fn member(&self) -> Option<&str> {
        match self {
            Location::File { .. } | Location::Arrow { .. } => None,
            Location::Member { member, .. } => Some(member),
        }
    }

    /// `path`, `path:member` or `path:column`, for messages and metadata.
    pub(crate) fn describe(&self) -> String {
        if let Location::Arrow { table, column } = self {
            return format!("{}:{}", table.path.display(), table.column_name(*column));
        }
        match self.member() {
            Some(m) => format!("{}:{m}", self.path().display()),
            None => self.path().display().to_string(),
        }
    }

    fn data_offset(&self) -> u64 {
        match self {
            Location::File { offset, .. } => *offset,
            Location::Member { header_len, .. } => *header_len,
            // Decoded values have no byte offset in the file.
            Location::Arrow { .. } => 0,
        }
    }
}

/// One stored array: its place, its stored dtype and byte order, its shape and memory order.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    pub(crate) location: Location,
    /// The dtype of the stored elements (after any input-dtype rule).
    pub(crate) dtype: Dtype,
    /// The descr (npy) or dtype name (safetensors) as stored.
    pub(crate) descr: String,
    pub(crate) big_endian: bool,
    /// An input-dtype rule named the dtype (raw void data, or a reinterpretation).
    pub(crate) reinterpreted: bool,
    pub(crate) fortran: bool,
    pub(crate) shape: Vec<u64>,
    /// Data bytes.
    pub(crate) len: u64,
    /// The stored block checksums the bytes must match as they stream (an `.mmt` input).
    pub(crate) verify: Option<Arc<BlockCheck>>,
}

/// The block checksums of one stored tensor: its bytes, cut into blocks of `block_size` from its
/// start (the last one short), hash to `sums`.
#[derive(Debug)]
pub(crate) struct BlockCheck {
    pub(crate) block_size: u64,
    pub(crate) sums: Vec<u64>,
    /// The tensor's first byte in its file, for messages.
    pub(crate) offset: u64,
}

impl Part {
    /// The part's data is not the length its header gives: `found` bytes (`None`: more).
    pub(crate) fn size_error(&self, tensor: &str, found: Option<u64>) -> Error {
        Error::DataSize {
            path: self.location.path().to_path_buf(),
            member: self.location.member().map(str::to_owned),
            tensor: tensor.to_owned(),
            offset: self.location.data_offset(),
            expected: self.len,
            found,
        }
    }

    /// Checks that the part ends exactly at byte `len` of its file or member (the file's length, a
    /// member's declared size), as its header says.
    ///
    /// # Errors
    /// [`Error::DataSize`] with the bytes there are (`None`: more than the header says).
    pub(crate) fn check_ends_at(&self, tensor: &str, len: u64) -> Result<()> {
        let offset = self.location_offset();
        let end = offset.saturating_add(self.len);
        if end != len {
            return Err(self.size_error(tensor, (len < end).then(|| len.saturating_sub(offset))));
        }
        Ok(())
    }

    /// A failed read of the part's bytes.
    pub(crate) fn read_error(&self, e: io::Error) -> Error {
        io_or_zip(e, self.location.path(), self.location.member())
    }

    /// The first data byte of the part in its file, or in its zip member.
    pub(crate) fn location_offset(&self) -> u64 {
        self.location.data_offset()
    }

    /// How the part is stored: descr or dtype name, byte order, memory order (for the plan and
    /// provenance).
    pub(crate) fn stored_as(&self) -> String {
        let mut s = self.descr.clone();
        if self.big_endian {
            s.push_str(", big-endian");
        }
        if self.fortran {
            s.push_str(", Fortran order");
        }
        s
    }
}

/// The dtype an array stored as `descr` (elements of `size` bytes; of dtype `stored`, unless it is
/// raw void data) is read as: `rule`, an input-dtype rule, which must have the stored element
/// size, else the stored dtype.
///
/// # Errors
/// [`Error::InputDtypeSize`] when `rule`'s element size differs; [`Error::NeedsInputDtype`] for
/// void data without a rule.
pub(crate) fn read_dtype(
    location: &Location,
    tensor: &str,
    descr: &str,
    stored: Option<Dtype>,
    size: usize,
    rule: Option<Dtype>,
) -> Result<Dtype> {
    let path = || location.path().to_path_buf();
    let member = || location.member().map(str::to_owned);
    match (stored, rule) {
        (_, Some(d)) if d.size() != size => Err(Error::InputDtypeSize {
            path: path(),
            member: member(),
            tensor: tensor.to_owned(),
            descr: descr.to_owned(),
            size,
            dtype: d,
        }),
        (_, Some(d)) | (Some(d), None) => Ok(d),
        (None, None) => Err(Error::NeedsInputDtype {
            path: path(),
            member: member(),
            tensor: tensor.to_owned(),
            descr: descr.to_owned(),
            size,
        }),
    }
}
