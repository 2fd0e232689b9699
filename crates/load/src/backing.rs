//! Where a store's bytes live: a read-only mapping of the file, or a read-only anonymous mapping
//! holding a private copy of it. Either way no byte of a store is ever writable; memory a caller
//! may write (`Backing::private`) is another mapping, private to that caller.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use std::ops::Range;

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::{Error, Result};

/// The bytes of a whole file. They never move and never change while the value lives, which is what
/// lets views (and the foreign arrays a binding makes from an [`crate::OwnedTensor`]) outlive any
/// one borrow of `Backing` as long as its owner (the store's `Arc`) lives.
pub(crate) enum Backing {
    /// A read-only shared mapping of the file, and the file, to notice that it shrank.
    Map { map: Mmap, file: File },
    /// A private copy: an anonymous mapping (page-aligned), filled by one read and then made
    /// read-only with `mprotect`, so a write through any pointer handed out faults instead of
    /// silently changing what every view of the store reads. `len` is the file's length (the
    /// mapping is at least one byte long, since an empty mapping cannot be made).
    Copy { map: Mmap, len: usize },
}

impl Backing {
    /// Maps `file` (of `len` bytes) read-only.
    ///
    /// # Safety
    /// As [`crate::Store::open`]: the file must not be modified or truncated while the mapping lives.
    pub(crate) unsafe fn map(path: &Path, file: File, len: u64) -> Result<Backing> {
        let len = usize::try_from(len).map_err(|_| Error::TooLarge {
            path: path.to_owned(),
            len,
        })?;
        // SAFETY: the caller promises the file is not modified or truncated while mapped. The
        // length is the one the caller validates against, so views never reach past it.
        let map =
            unsafe { MmapOptions::new().len(len).map(&file) }.map_err(|source| Error::Io {
                path: path.to_owned(),
                action: "map",
                source,
            })?;
        Ok(Backing::Map { map, file })
    }

    /// Reads `len` bytes of `file` into a private anonymous mapping, then makes it read-only.
    pub(crate) fn read(path: &Path, mut file: &File, len: u64) -> Result<Backing> {
        let n = usize::try_from(len).map_err(|_| Error::TooLarge {
            path: path.to_owned(),
            len,
        })?;
        let io = |action| {
            move |source| Error::Io {
                path: path.to_owned(),
                action,
                source,
            }
        };
        // Anonymous pages are zero and page-aligned (so at least as aligned as any element type),
        // and untouched ones cost nothing: the read is the only pass over the memory.
        let mut map = MmapOptions::new()
            .len(n.max(1))
            .map_anon()
            .map_err(|source| match source.kind() {
                io::ErrorKind::OutOfMemory => Error::TooLarge {
                    path: path.to_owned(),
                    len,
                },
                _ => io("allocate memory for")(source),
            })?;
        // A file that shrank since it was measured is an error rather than a shorter store.
        file.read_exact(&mut map[..n]).map_err(io("read"))?;
        let map = map.make_read_only().map_err(io("protect the copy of"))?;
        Ok(Backing::Copy { map, len: n })
    }

    /// The whole file.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map { map, .. } => map,
            Backing::Copy { map, len } => &map[..*len],
        }
    }

    /// Bytes `range` of the file in memory the caller may write, and nobody else sees: a private
    /// copy-on-write mapping of that range of the file (`MAP_PRIVATE`: reads share the page
    /// cache, a write copies only the pages it touches, and neither the file nor any other view of
    /// it changes), or, for a store read into a private copy (anonymous memory cannot be mapped
    /// twice), a fresh copy of the range. `range` is within the file.
    pub(crate) fn private(&self, path: &Path, range: Range<usize>) -> Result<MmapMut> {
        let io = |action| {
            move |source| Error::Io {
                path: path.to_owned(),
                action,
                source,
            }
        };
        let len = range.end - range.start;
        match self {
            Backing::Map { file, .. } if len > 0 => {
                // SAFETY: the store this backing belongs to was opened under `Store::open`'s
                // contract (nobody modifies or truncates the file while it is mapped), and the
                // caller keeps that store alive for as long as this mapping lives
                // (`PrivateBytes` holds it). The range lies within the file's length, which the
                // store's mapping was made with. memmap2 aligns the offset down to a page and
                // returns the range's first byte.
                unsafe {
                    MmapOptions::new()
                        .offset(range.start as u64)
                        .len(len)
                        .map_copy(file)
                }
                .map_err(io("map a private copy-on-write view of"))
            }
            _ => {
                let mut map = MmapOptions::new()
                    .len(len.max(1))
                    .map_anon()
                    .map_err(io("allocate memory for a private copy of"))?;
                map[..len].copy_from_slice(&self.bytes()[range]);
                Ok(map)
            }
        }
    }

    /// The mapping of the file, when the bytes are mapped from it (not a private copy).
    pub(crate) fn file_map(&self) -> Option<&Mmap> {
        match self {
            Backing::Map { map, .. } => Some(map),
            Backing::Copy { .. } => None,
        }
    }

    /// Checks that the mapped file is still as long as the mapping (`fstat`). A file truncated
    /// under a mapping raises `SIGBUS` on the first touch of a vanished page, so the operations
    /// that read every page (verify, prefetch) look first and report the truncation instead.
    /// A private copy cannot shrink.
    pub(crate) fn check_len(&self, path: &Path) -> Result<()> {
        let Backing::Map { map, file } = self else {
            return Ok(());
        };
        let now = file.metadata().map_err(|source| Error::Io {
            path: path.to_owned(),
            action: "stat",
            source,
        })?;
        let mapped = map.len() as u64;
        if now.len() < mapped {
            return Err(Error::Shrank {
                path: path.to_owned(),
                len: now.len(),
                mapped,
            });
        }
        Ok(())
    }
}
