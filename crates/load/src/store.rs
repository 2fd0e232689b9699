//! Opening a file: format detection, header validation, and the store handle.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmtensor_format::npy::{self, ByteOrder, NPY_MAGIC};
use mmtensor_format::{
    checked_byte_len, Dtype, FileLayout, Preamble, TensorInfo, MAGIC, PREAMBLE_LEN,
};

use crate::backing::Backing;
use crate::fingerprint::FileStamp;
use crate::hints::{self, Advice, Prefetch};
use crate::{verify, Error, Fingerprint, OwnedTensor, Result, Tensor};

/// The kind of file a [`Store`] was opened from, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// An `.mmt` store: aligned, checksummed, any number of tensors.
    Mmt,
    /// A safetensors file: tensors packed without alignment promises, no checksums.
    Safetensors,
    /// A NumPy `.npy` file: one array, data at a multiple of 64 bytes, no checksums.
    Npy,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Format::Mmt => ".mmt",
            Format::Safetensors => ".safetensors",
            Format::Npy => ".npy",
        })
    }
}

/// An open tensor file: an `.mmt` store, a `.safetensors` file or a `.npy` file.
///
/// A `Store` holds the file's bytes (a read-only memory mapping from [`Store::open`], or an aligned
/// read-only private copy from [`Store::read`]) and its validated header. Views ([`Tensor`]) borrow it and hand out
/// slices of those bytes without copying.
///
/// `Store` is a reference-counted handle: `clone` is cheap, every clone shares the same bytes, and
/// the bytes are released when the last clone is dropped. It is `Send + Sync`. The bytes never move
/// while any clone lives, so a pointer taken from a view (`tensor.bytes()?.as_ptr()`) stays valid for as
/// long as the code that holds it also holds a clone of the store. This is how a binding can lend a
/// tensor to a foreign array object: keep a clone as the array's owner.
///
/// # Safety
///
/// A memory mapping is only as stable as the file behind it. Rust assumes that the bytes behind a
/// `&[T]` do not change while it lives; if another process writes to a mapped file, views change under
/// their borrows (undefined behaviour), and if it truncates the file, touching a page past the new end
/// raises `SIGBUS` and kills the process. No check at open can rule this out, so [`Store::open`] is
/// an `unsafe fn` and its caller promises that the file is not modified or truncated while any clone
/// of the store lives (the model is ripgrep's `MmapChoice::auto` and memmap2's `Mmap::map`).
///
/// What mmtensor does on its side: its writer (`mmtensor_convert::StoreWriter`) never truncates or
/// rewrites a file in place. It writes a hidden temporary file and renames it over the target, so a
/// process that has the old store mapped keeps reading the old, complete file; replacing a store with
/// `mmt convert` while it is open is safe. What is left is other programs: `cp new.mmt old.mmt`,
/// editors and `truncate` rewrite files in place.
///
/// [`Store::read`] is the safe alternative: it copies the file into read-only private memory (costing
/// the file's size in memory and a full read), after which nothing outside the process can change it.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) backing: Backing,
    pub(crate) format: Format,
    pub(crate) index: Index,
    /// What identifies the file and its version, taken at open from the header's bytes and the
    /// descriptor's `fstat` (see `fingerprint.rs`).
    pub(crate) fingerprint: Fingerprint,
}

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

    fn position(&self, name: &str) -> Option<usize> {
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
}

impl Inner {
    /// The bytes `range` (absolute) of the file. Every range a view asks for was validated against
    /// the file's length at open, so the error is a guard, not a path callers see.
    pub(crate) fn slice(&self, range: Range<u64>) -> Result<&[u8]> {
        let bytes = self.backing.bytes();
        usize::try_from(range.start)
            .ok()
            .zip(usize::try_from(range.end).ok())
            .and_then(|(s, e)| bytes.get(s..e))
            .ok_or_else(|| Error::Format {
                path: self.path.clone(),
                source: mmtensor_format::Error::OutOfBounds {
                    what: "a view".into(),
                    start: range.start,
                    end: range.end,
                    file_len: bytes.len() as u64,
                },
            })
    }
}

impl Store {
    /// Maps the file at `path` and validates its header; the format (`.mmt`, `.safetensors` or
    /// `.npy`) is detected from the first bytes.
    ///
    /// Only the header is read: the cost does not depend on the size of the tensors, and no memory
    /// is allocated in proportion to them. A file shorter than its header says is refused here,
    /// before any view exists.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
    /// // SAFETY: nothing modifies or truncates the file while the store is open.
    /// let store = unsafe { mmtensor::Store::open(path)? };
    /// assert_eq!(store.tensor("labels")?.shape(), [256]);
    /// # Ok::<(), mmtensor::Error>(())
    /// ```
    ///
    /// # Safety
    ///
    /// The file must not be modified or truncated, by this process or another, while the store or
    /// any clone of it lives: views would change under their borrows, and reading a page past a new,
    /// shorter end raises `SIGBUS`. Replacing the file by a rename (as mmtensor's own writer and
    /// `mmt convert` always do) is fine. See the type-level [Safety](Store#safety) section, and
    /// [`Store::read`] for a safe copy.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be opened or mapped; [`Error::UnknownFormat`];
    /// [`Error::Format`], [`Error::Safetensors`] for an invalid or truncated header or a file shorter
    /// than its header claims; [`Error::UnsupportedDtype`], [`Error::NpyVoid`] for dtypes this
    /// crate has no type for.
    pub unsafe fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        let (file, len, stamp) = open_file(path)?;
        // A small `.mmt` header (the common case: up to thousands of tensors) is read with one
        // plain read before the file is mapped, as `np.load` reads a `.npy` header: a cold open
        // then costs one small read, not a page fault whose read-around pulls in far more.
        let index = read_mmt_index(path, &file, len)?;
        // SAFETY: the caller upholds this function's contract, which is the mapping's contract.
        let backing = unsafe { Backing::map(path, file, len)? };
        Store::from_backing(path, backing, index, stamp)
    }

    /// Reads the whole file at `path` into private memory and validates its header.
    ///
    /// This is the safe alternative to [`Store::open`]: the copy belongs to this process, so nothing
    /// another process does to the file afterwards can affect it. It costs a full read and the file's
    /// size in memory. The copy is an anonymous mapping made read-only after the read, so, as with a
    /// mapped file, no byte of the store can be written (a write through a pointer handed to foreign
    /// code faults). Views of a copy are aligned exactly where views of a mapping are (the copy is
    /// page-aligned), and [`Store::advise`] and [`Store::prefetch`] do nothing.
    ///
    /// # Errors
    ///
    /// As [`Store::open`]; also [`Error::ChangedWhileRead`] when the file's length or
    /// modification time moved during the copy, and [`Error::TooLarge`] when the memory cannot be
    /// reserved. (Under
    /// memory overcommit the reservation succeeds and a copy larger than memory is ended by the
    /// kernel's out-of-memory killer while it is read: copy only what fits.)
    pub fn read(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref();
        let (file, len, stamp) = open_file(path)?;
        let backing = Backing::read(path, &file, len)?;
        // A writer in place during the read would leave a torn copy under the stamp taken
        // before it: look again, on the same descriptor, now that every byte is in.
        let after = file.metadata().map_err(|source| Error::Io {
            path: path.to_owned(),
            action: "stat",
            source,
        })?;
        if after.len() != len || FileStamp::of(&after) != stamp {
            return Err(Error::ChangedWhileRead {
                path: path.to_owned(),
            });
        }
        Store::from_backing(path, backing, None, stamp)
    }

    /// Wraps `backing`, with the `.mmt` index already read from the file, or found from the bytes;
    /// `stamp` is the `fstat` of the descriptor the bytes came from.
    fn from_backing(
        path: &Path,
        backing: Backing,
        index: Option<Index>,
        stamp: FileStamp,
    ) -> Result<Store> {
        let (format, index) = match index {
            Some(index) => (Format::Mmt, index),
            None => {
                let bytes = backing.bytes();
                let format = detect(bytes).ok_or_else(|| Error::UnknownFormat {
                    path: path.to_owned(),
                    found: bytes[..bytes.len().min(8)].to_vec(),
                })?;
                let index = match format {
                    Format::Mmt => {
                        // Fault the header in with one call rather than a fault per page.
                        if let (Some(map), Ok(pre)) = (backing.file_map(), Preamble::parse(bytes)) {
                            let end = (PREAMBLE_LEN + pre.header_len).min(bytes.len() as u64);
                            let _ = crate::hints::populate(map, 0..end as usize);
                        }
                        parse_mmt(path, bytes, bytes.len() as u64)?
                    }
                    Format::Safetensors => parse_safetensors(path, bytes)?,
                    Format::Npy => parse_npy(path, bytes)?,
                };
                (format, index)
            }
        };
        // An `.mmt` index carries its header checksum; other formats hash the header bytes they
        // were just parsed from.
        let fingerprint = Fingerprint::of(format, &index, backing.bytes(), stamp);
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                backing,
                format,
                index,
                fingerprint,
            }),
        })
    }

    /// The path the store was opened from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The format detected at open.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// True when the bytes are a memory mapping ([`Store::open`]), false for a private copy
    /// ([`Store::read`]).
    pub fn is_mapped(&self) -> bool {
        self.inner.backing.file_map().is_some()
    }

    /// The view of the tensor called `name`.
    ///
    /// A `.npy` file holds one tensor, named after the file's stem (`x` for `x.npy`).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such tensor.
    pub fn tensor(&self, name: &str) -> Result<Tensor<'_>> {
        let i = self
            .inner
            .index
            .position(name)
            .ok_or_else(|| Error::NotFound {
                path: self.inner.path.clone(),
                tensor: name.to_owned(),
                known: self.names().map(str::to_owned).collect(),
            })?;
        Ok(Tensor::whole(self, i))
    }

    /// An owned handle to the tensor called `name`: the same view as [`Store::tensor`], holding a
    /// clone of the store instead of a borrow (see [`OwnedTensor`]).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such tensor.
    pub fn tensor_owned(&self, name: &str) -> Result<OwnedTensor> {
        self.tensor(name).map(|t| t.owned())
    }

    /// Views of every tensor, in file order.
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = Tensor<'_>> + '_ {
        (0..self.inner.index.tensors().len()).map(move |i| Tensor::whole(self, i))
    }

    /// The names of every tensor, in file order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.inner.index.tensors().iter().map(|t| t.name.as_str())
    }

    /// The store's string metadata (safetensors' `__metadata__`; empty for `.npy`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        match &self.inner.index {
            Index::Mmt(l) => &l.header().metadata,
            Index::Foreign(f) => &f.metadata,
        }
    }

    /// The validated `.mmt` layout (alignment, block size, offsets), or `None` for other formats.
    pub fn layout(&self) -> Option<&FileLayout> {
        match &self.inner.index {
            Index::Mmt(l) => Some(l),
            Index::Foreign(_) => None,
        }
    }

    /// Checks the whole store: the checksum table against the hash in the header, every block of
    /// every tensor against the table (in parallel), and that every padding byte is zero.
    ///
    /// # Errors
    ///
    /// The first problem in file order: [`Error::ChecksumTable`], [`Error::ChecksumMismatch`] (naming
    /// the tensor, the block and its byte range), [`Error::NonZeroPadding`]. [`Error::NoChecksums`]
    /// for safetensors and `.npy` files.
    pub fn verify(&self) -> Result<()> {
        verify::store(&self.inner)
    }

    /// Tells the kernel how the whole file will be read (`madvise`). A no-op for a private copy.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `madvise` fails.
    pub fn advise(&self, advice: Advice) -> Result<()> {
        hints::advise(
            &self.inner,
            0..self.inner.backing.bytes().len() as u64,
            advice,
        )
    }

    /// Starts reading the whole file into the page cache in the background; see
    /// [`Tensor::prefetch`].
    pub fn prefetch(&self) -> Prefetch {
        Prefetch::start(self, 0..self.inner.backing.bytes().len() as u64)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("format", &self.inner.format)
            .field("len", &self.inner.backing.bytes().len())
            .field("mapped", &self.is_mapped())
            .field("tensors", &self.inner.index.tensors().len())
            .finish()
    }
}

/// The file at `path`, opened for reading, its length and its stamp (inode number and modification
/// time), both from `fstat` of the descriptor that the store's bytes then come from: a second look
/// at the path could see another file, renamed over it in between.
fn open_file(path: &Path) -> Result<(File, u64, FileStamp)> {
    let io = |action| {
        move |source| Error::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    // Look before opening: opening a FIFO blocks until a writer appears.
    let kind = std::fs::metadata(path).map_err(io("open"))?.file_type();
    if !kind.is_file() && !kind.is_dir() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(io("open"))?;
    let meta = file.metadata().map_err(io("stat"))?;
    // A directory opens for reading on Unix, and mapping it fails with a puzzling "No such device".
    if meta.is_dir() {
        return Err(Error::IsADirectory {
            path: path.to_owned(),
            dataset: path.join(mmtensor_format::MANIFEST_FILE).is_file(),
        });
    }
    // The path may have been replaced by something else between the two looks.
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    Ok((file, meta.len(), FileStamp::of(&meta)))
}

/// Bytes read at once to find an `.mmt` preamble and, usually, the whole header.
const FIRST_READ: u64 = 4096;

/// The validated index of an `.mmt` file whose header fits in the first read (no mapping); `None`
/// when the file is not an `.mmt` file or its header is larger, which is then parsed from the
/// mapped bytes.
fn read_mmt_index(path: &Path, file: &File, len: u64) -> Result<Option<Index>> {
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
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            action: "read the header of",
            source,
        })?;
    Ok(buf)
}

/// The format whose signature `bytes` start with. A file that is a strict prefix of a signature is
/// given that format, so that its parser reports it as truncated.
fn detect(bytes: &[u8]) -> Option<Format> {
    let is_prefix = |magic: &[u8]| {
        let n = bytes.len().min(magic.len());
        n > 0 && bytes[..n] == magic[..n]
    };
    if is_prefix(&MAGIC) {
        Some(Format::Mmt)
    } else if is_prefix(&NPY_MAGIC) {
        Some(Format::Npy)
    } else if bytes.get(8) == Some(&b'{') {
        // safetensors: a u64 LE header length, then a JSON object.
        Some(Format::Safetensors)
    } else {
        None
    }
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
    fn detection_uses_the_first_bytes() {
        assert_eq!(detect(&MAGIC), Some(Format::Mmt));
        assert_eq!(detect(&MAGIC[..3]), Some(Format::Mmt));
        assert_eq!(detect(b"\x93NUMPY\x01\x00"), Some(Format::Npy));
        assert_eq!(detect(b"\x93NU"), Some(Format::Npy));
        assert_eq!(detect(b"\x10\0\0\0\0\0\0\0{}"), Some(Format::Safetensors));
        assert_eq!(detect(b""), None);
        assert_eq!(detect(b"PK\x03\x04 zip"), None);
    }

    #[test]
    fn npy_tensors_are_named_after_the_file() {
        assert_eq!(npy_name(Path::new("/a/x.npy")), "x");
        assert_eq!(npy_name(Path::new("weights.v2.npy")), "weights.v2");
        assert_eq!(npy_name(Path::new("/")), "array");
    }

    #[test]
    fn store_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Store>();
        assert_send_sync::<Tensor<'static>>();
        fn assert_owned<T: Send + Sync + Clone + 'static>() {}
        assert_owned::<OwnedTensor>();
        fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<Error>();
    }
}
