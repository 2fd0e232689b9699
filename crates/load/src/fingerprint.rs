//! A cheap identity of an open store's file, to check that a path still names the same file in
//! another process (a `Store` sent to a worker by path is reopened there).

use std::fmt;
use std::path::Path;

use mmtensor_format::block_checksum;

use crate::store::Index;
use crate::{Error, Format, Result, Store};

/// What identifies the file a [`Store`] was opened from, taken at open from bytes already read:
/// its format, its length and a 64-bit xxh3 hash of its header.
///
/// Another process that is handed a path and a fingerprint (a store sent to a worker by path)
/// reopens the path with [`Store::open_expecting`] or [`Store::read_expecting`], which refuse a
/// file whose fingerprint differs ([`Error::Changed`]). Taking it costs nothing at open and checking
/// it reads no tensor data.
///
/// What it covers depends on the format:
///
/// - `.mmt`: the header checksum the preamble records (xxh3-64 of the preamble and the header).
///   The header holds the xxh3 of the block checksum table, which covers every tensor byte, so a
///   store rewritten by mmtensor's writer with any tensor byte different has a different
///   fingerprint (a store corrupted in place after it was written does not: [`Store::verify`]
///   finds that).
/// - `.safetensors` and `.npy`, which carry no checksums: the xxh3-64 of the header bytes (the
///   length prefix and the JSON for safetensors; the magic, version and header dict for `.npy`).
///   A file rewritten with the same names, dtypes, shapes and length but other tensor values has
///   the same fingerprint.
///
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
/// use mmtensor::{Fingerprint, Store};
///
/// let store = Store::read(path)?;
/// let fp: Fingerprint = store.fingerprint();
/// // ... send `path` and `(fp.format(), fp.len(), fp.header_xxh3())` to another process ...
/// let fp = Fingerprint::new(fp.format(), fp.len(), fp.header_xxh3());
/// let again = Store::read_expecting(path, &fp)?; // Error::Changed if the file is another one
/// assert_eq!(again.fingerprint(), fp);
/// # Ok::<(), mmtensor::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    format: Format,
    len: u64,
    header_xxh3: u64,
}

impl Fingerprint {
    /// A fingerprint from its parts, as [`Fingerprint::format`], [`Fingerprint::len`] and
    /// [`Fingerprint::header_xxh3`] return them (to rebuild one sent to another process).
    pub fn new(format: Format, len: u64, header_xxh3: u64) -> Fingerprint {
        Fingerprint {
            format,
            len,
            header_xxh3,
        }
    }

    /// The fingerprint of a store being opened from `bytes`, the whole file.
    pub(crate) fn of(format: Format, index: &Index, bytes: &[u8]) -> Fingerprint {
        let header_xxh3 = match index {
            // Validated at open: the preamble's checksum is the header's.
            Index::Mmt(layout) => layout.preamble().header_checksum,
            // The header was parsed from these bytes, so they are present and already read.
            Index::Foreign(_) => {
                let end = usize::try_from(index.data_start()).map_or(bytes.len(), |e| e);
                block_checksum(bytes.get(..end).unwrap_or(bytes))
            }
        };
        Fingerprint::new(format, bytes.len() as u64, header_xxh3)
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The file's length in bytes.
    #[allow(clippy::len_without_is_empty)] // a file length, not a collection
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The xxh3-64 hash of the header: for `.mmt`, the header checksum its preamble records; for
    /// `.safetensors` and `.npy`, the hash of every byte before the data.
    pub fn header_xxh3(&self) -> u64 {
        self.header_xxh3
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} file of {} bytes with header xxh3 {:016x}",
            self.format, self.len, self.header_xxh3
        )
    }
}

/// What [`Error::Changed`] says of the file found at the path.
pub(crate) fn found_text(len: u64, found: &Option<Fingerprint>, opens: bool) -> String {
    match found {
        Some(fp) => format!("it is now {fp}"),
        None if opens => format!("it is now {len} bytes long"),
        None => format!("it is now {len} bytes long and is not a valid tensor file"),
    }
}

impl Store {
    /// The fingerprint of the file as it was opened (format, length, header hash); see
    /// [`Fingerprint`]. Computed at open: this reads nothing.
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
            found: Some(found),
            source: None,
        })
    }

    /// Maps the file at `path` as [`Store::open`] does, and checks that it is the file `expected`
    /// was taken of (in this process or another): the way to reopen a store sent by path.
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
    /// the file `expected` was taken of (in this process or another).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_their_parts() {
        let fp = Fingerprint::new(Format::Mmt, 4096, 0xab);
        assert_eq!(
            fp.to_string(),
            "a .mmt file of 4096 bytes with header xxh3 00000000000000ab"
        );
        assert_eq!(
            (fp.format(), fp.len(), fp.header_xxh3()),
            (Format::Mmt, 4096, 0xab)
        );
    }
}
