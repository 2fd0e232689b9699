//! The store handle: opening a file as a store (mapped, read into a private copy, or reopened
//! against a fingerprint) and what a store says about itself. The bytes and their pages are the
//! [`OpenFile`]'s, the table of contents the [`Index`]'s; views of a store are made in
//! `tensor.rs` ([`Store::tensor`]) and `owned.rs` ([`Store::tensor_owned`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use mmtensor_format::{FileLayout, Preamble, PREAMBLE_LEN};

use crate::file::{self, OpenFile};
use crate::fingerprint::{FileStamp, Fingerprint};
use crate::format::Format;
use crate::hints::{self, Advice, Prefetch};
use crate::index::{self, Index};
use crate::{verify, Error, Result};

/// An open tensor file: an `.mmt` store, a `.safetensors` file or a `.npy` file.
///
/// A `Store` holds the file's bytes (a read-only memory mapping from [`Store::open`], or an aligned
/// read-only private copy from [`Store::read`]) and its validated header. Views
/// ([`Tensor`](crate::Tensor)) borrow it and hand out slices of those bytes without copying.
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
    inner: Arc<Inner>,
}

struct Inner {
    /// The bytes, shared with the prefetch workers that read them in.
    file: Arc<OpenFile>,
    format: Format,
    index: Index,
    /// What identifies the file and its version, taken at open from the header's bytes and the
    /// descriptor's `fstat` (see `fingerprint.rs`).
    fingerprint: Fingerprint,
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
        let (file, len, stamp) = file::open(path)?;
        // A small `.mmt` header (the common case: up to thousands of tensors) is read with one
        // plain read before the file is mapped, as `np.load` reads a `.npy` header: a cold open
        // then costs one small read, not a page fault whose read-around pulls in far more.
        let index = index::read_mmt(path, &file, len)?;
        // SAFETY: the caller upholds this function's contract, which is the mapping's contract.
        let file = unsafe { OpenFile::map(path, file, len)? };
        Store::from_file(file, index, stamp)
    }

    /// Reads the whole file at `path` into private memory and validates its header.
    ///
    /// This is the safe alternative to [`Store::open`], and what Python's `mmtensor.open(path,
    /// copy=True)` does: the copy belongs to this process, so nothing
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
        let (file, len, stamp) = file::open(path)?;
        let file = OpenFile::read(path, &file, len, stamp)?;
        Store::from_file(file, None, stamp)
    }

    /// Wraps `file`, with the `.mmt` index already read from it, or found from its bytes; `stamp`
    /// is the `fstat` of the descriptor the bytes came from.
    fn from_file(file: OpenFile, index: Option<Index>, stamp: FileStamp) -> Result<Store> {
        let (format, index) = match index {
            Some(index) => (Format::Mmt, index),
            None => {
                let bytes = file.bytes();
                // Fault an `.mmt` header in with one call rather than a fault per page.
                if let Ok(pre) = Preamble::parse(bytes) {
                    let end = (PREAMBLE_LEN + pre.header_len).min(file.len());
                    let _ = file.populate(0..end, "read");
                }
                index::parse(file.path(), bytes)?
            }
        };
        check_ragged(&file, &index)?;
        // An `.mmt` index carries its header checksum; other formats hash the header bytes they
        // were just parsed from.
        let header_xxh3 = index.header_xxh3(file.bytes());
        let fingerprint = Fingerprint::new(format, file.len(), header_xxh3, stamp);
        Ok(Store {
            inner: Arc::new(Inner {
                file: Arc::new(file),
                format,
                index,
                fingerprint,
            }),
        })
    }

    /// The path the store was opened from.
    pub fn path(&self) -> &Path {
        self.inner.file.path()
    }

    /// The format detected at open.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// True when the bytes are a memory mapping ([`Store::open`]), false for a private copy
    /// ([`Store::read`]).
    pub fn is_mapped(&self) -> bool {
        self.inner.file.is_mapped()
    }

    /// The names of every tensor, in file order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.inner.index.tensors().iter().map(|t| t.name.as_str())
    }

    /// The store's string metadata (safetensors' `__metadata__`; empty for `.npy`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        self.inner.index.metadata()
    }

    /// The validated `.mmt` layout (alignment, block size, offsets), or `None` for other formats.
    pub fn layout(&self) -> Option<&FileLayout> {
        self.inner.index.layout()
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
        verify::store(&self.inner.file, self.checksummed()?)
    }

    /// Tells the kernel how the whole file will be read (`madvise`). A no-op for a private copy.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `madvise` fails.
    pub fn advise(&self, advice: Advice) -> Result<()> {
        hints::advise(&self.inner.file, 0..self.inner.file.len(), advice)
    }

    /// Starts reading the whole file into the page cache in the background; see
    /// [`Tensor::prefetch`](crate::Tensor::prefetch).
    pub fn prefetch(&self) -> Prefetch {
        Prefetch::start(&self.inner.file, 0..self.inner.file.len())
    }

    /// Bytes the kernel reads around a page fault in this store's mapping: the read-ahead of the
    /// block device holding the file (`read_ahead_kb`), which decides what a cold random read
    /// costs (see "How an epoch is read" in `docs/LOADER.md`). `None` for a private copy, or
    /// where the kernel does not say (tmpfs, another platform).
    pub fn read_ahead(&self) -> Option<u64> {
        self.inner.file.device().map(|d| d.read_ahead)
    }

    /// The opened file: the bytes, and the operations on their pages.
    pub(crate) fn file(&self) -> &Arc<OpenFile> {
        &self.inner.file
    }

    /// The validated table of contents.
    pub(crate) fn index(&self) -> &Index {
        &self.inner.index
    }

    /// The `.mmt` layout whose checksums `verify` checks, or [`Error::NoChecksums`].
    pub(crate) fn checksummed(&self) -> Result<&FileLayout> {
        self.inner.index.layout().ok_or_else(|| Error::NoChecksums {
            path: self.path().to_owned(),
            format: self.inner.format,
        })
    }
}

/// Reopening a store in another process: the fingerprint, and the opens that check it.
impl Store {
    /// The fingerprint of the file as it was opened (format, length, header hash, inode number and
    /// modification time); see [`Fingerprint`]. Computed at open: this reads nothing.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.fingerprint
    }

    /// Checks that `self` was opened from the file `expected` was taken of.
    ///
    /// # Errors
    ///
    /// [`Error::Changed`] when the fingerprints differ.
    pub fn check_fingerprint(&self, expected: &Fingerprint) -> Result<()> {
        let found = self.fingerprint();
        if found == *expected {
            return Ok(());
        }
        Err(Error::Changed {
            path: self.path().to_owned(),
            expected: *expected,
            len: found.len(),
            found: Some(Box::new(found)),
            source: None,
        })
    }

    /// Maps the file at `path` as [`Store::open`] does, and checks that it is the file `expected`
    /// was taken of (in this process or another), in the version it was taken of: the way to
    /// reopen a store sent by path. [`Fingerprint`] says what the check detects and what it
    /// cannot.
    ///
    /// Only the header is read before the check, so refusing a changed file costs what an open
    /// costs.
    ///
    /// # Safety
    ///
    /// As [`Store::open`]: the file must not be modified or truncated while the store or any clone
    /// of it lives.
    ///
    /// # Errors
    ///
    /// [`Error::Changed`] when the file's fingerprint differs, or when the file no longer opens as
    /// a tensor file (an invalid header, an unknown format: the open's error is its source).
    /// An open that fails for a reason that does not say the file changed is returned as it is:
    /// [`Error::Io`] (the file is gone, or unreadable), [`Error::IsADirectory`],
    /// [`Error::NotAFile`], [`Error::TooLarge`].
    pub unsafe fn open_expecting(path: impl AsRef<Path>, expected: &Fingerprint) -> Result<Store> {
        let path = path.as_ref();
        // SAFETY: the caller upholds Store::open's contract, which is this function's.
        let opened = unsafe { Store::open(path) };
        expect(path, opened, expected)
    }

    /// Reads the file at `path` into private memory as [`Store::read`] does, and checks that it is
    /// the file `expected` was taken of (in this process or another), in the version it was taken
    /// of (see [`Fingerprint`]).
    ///
    /// A file whose length differs is refused before it is read.
    ///
    /// # Errors
    ///
    /// As [`Store::open_expecting`], and as [`Store::read`].
    pub fn read_expecting(path: impl AsRef<Path>, expected: &Fingerprint) -> Result<Store> {
        let path = path.as_ref();
        // Refuse a file of another length without reading it whole. A file that is not there, or
        // not readable, is left to `read` to report as it reports any other.
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.is_file() && meta.len() != expected.len() {
                return Err(Error::Changed {
                    path: path.to_owned(),
                    expected: *expected,
                    len: meta.len(),
                    found: None,
                    source: None,
                });
            }
        }
        expect(path, Store::read(path), expected)
    }
}

/// `opened`, checked against `expected`. A file that opened before and now fails its header's
/// validation changed; a file that is gone or unreadable is reported as such.
fn expect(path: &Path, opened: Result<Store>, expected: &Fingerprint) -> Result<Store> {
    match opened {
        Ok(store) => {
            store.check_fingerprint(expected)?;
            Ok(store)
        }
        Err(
            e @ (Error::Io { .. }
            | Error::IsADirectory { .. }
            | Error::NotAFile { .. }
            | Error::TooLarge { .. }),
        ) => Err(e),
        Err(e) => Err(Error::Changed {
            path: path.to_owned(),
            expected: *expected,
            // The open measured the file; measuring again can only disagree if it changed again.
            len: std::fs::metadata(path).map_or(0, |m| m.len()),
            found: None,
            source: Some(Box::new(e)),
        }),
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path())
            .field("format", &self.inner.format)
            .field("len", &self.inner.file.bytes().len())
            .field("mapped", &self.is_mapped())
            .field("tensors", &self.inner.index.tensors().len())
            .finish()
    }
}

/// Checks every ragged tensor's row offsets (format 1.1, rule 10): one linear pass over 8 bytes a
/// row, so that every row view computed from them lies within the values. A store without ragged
/// tensors reads nothing here.
fn check_ragged(file: &OpenFile, index: &Index) -> Result<()> {
    let tensors = index.tensors();
    for (i, values) in tensors.iter().enumerate() {
        if values.offsets.is_none() {
            continue;
        }
        // The header's validation proved the offsets are the next tensor, within the file.
        let offsets = &tensors[i + 1];
        let start = index.data_start() + offsets.offset;
        // One call faults the offsets in, rather than a fault per page.
        let _ = file.populate(start..start + offsets.length, "read");
        let bytes = file.slice(start..start + offsets.length)?;
        mmtensor_format::check_offsets(&values.name, bytes, values.shape[0]).map_err(|source| {
            Error::Format {
                path: file.path().to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OwnedTensor, Tensor};

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
