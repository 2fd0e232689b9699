//! The opened file: where a store's bytes live, and every operation on their pages.
//!
//! The bytes are a read-only mapping of the file, or a read-only anonymous mapping holding a
//! private copy of it. Either way no byte of a store is ever writable; memory a caller may write
//! ([`OpenFile::private`]) is another mapping, private to that caller. Everything that touches the
//! pages themselves (a bounds-checked slice, the length check that turns a truncation into an
//! error, faulting a range in, residency, `madvise`) is here, so nothing else holds a mapping.

use std::fmt;
use std::fs::File;
use std::hint::black_box;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::fingerprint::FileStamp;
use crate::{Error, Result};

/// The file at `path`, opened for reading, its length and its stamp (inode number and modification
/// time), both from `fstat` of the descriptor that the store's bytes then come from: a second look
/// at the path could see another file, renamed over it in between.
pub(crate) fn open(path: &Path) -> Result<(File, u64, FileStamp)> {
    let io = |action| Error::io(path, action);
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

/// The bytes of a whole file, and the path that names it in errors. The bytes never move and never
/// change while the value lives, which is what lets views (and the foreign arrays a binding makes
/// from an [`crate::OwnedTensor`]) outlive any one borrow of it as long as its owner (a store's
/// `Arc`, a prefetch worker's) lives.
pub(crate) struct OpenFile {
    path: PathBuf,
    backing: Backing,
}

enum Backing {
    /// A read-only shared mapping of the file, and the file, to notice that it shrank.
    Map { map: Mmap, file: File },
    /// A private copy: an anonymous mapping (page-aligned), filled by one read and then made
    /// read-only with `mprotect`, so a write through any pointer handed out faults instead of
    /// silently changing what every view of the store reads. `len` is the file's length (the
    /// mapping is at least one byte long, since an empty mapping cannot be made).
    Copy { map: Mmap, len: usize },
}

impl OpenFile {
    /// Maps `file` (of `len` bytes) read-only.
    ///
    /// # Safety
    /// As [`crate::Store::open`]: the file must not be modified or truncated while the mapping lives.
    pub(crate) unsafe fn map(path: &Path, file: File, len: u64) -> Result<OpenFile> {
        let n = usize::try_from(len).map_err(|_| Error::TooLarge {
            path: path.to_owned(),
            len,
        })?;
        // SAFETY: the caller promises the file is not modified or truncated while mapped. The
        // length is the one the caller validates against, so views never reach past it.
        let map =
            unsafe { MmapOptions::new().len(n).map(&file) }.map_err(Error::io(path, "map"))?;
        Ok(OpenFile {
            path: path.to_owned(),
            backing: Backing::Map { map, file },
        })
    }

    /// Reads `len` bytes of `file` into a private anonymous mapping, then makes it read-only;
    /// `stamp` is the `fstat` the file was measured with.
    ///
    /// # Errors
    ///
    /// [`Error::ChangedWhileRead`] when the file's length or stamp moved during the read.
    pub(crate) fn read(
        path: &Path,
        mut file: &File,
        len: u64,
        stamp: FileStamp,
    ) -> Result<OpenFile> {
        let io = |action| Error::io(path, action);
        let n = usize::try_from(len).map_err(|_| Error::TooLarge {
            path: path.to_owned(),
            len,
        })?;
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
        // A writer in place during the read would leave a torn copy under the stamp taken
        // before it: look again, on the same descriptor, now that every byte is in.
        let after = file.metadata().map_err(io("stat"))?;
        if after.len() != len || FileStamp::of(&after) != stamp {
            return Err(Error::ChangedWhileRead {
                path: path.to_owned(),
            });
        }
        Ok(OpenFile {
            path: path.to_owned(),
            backing: Backing::Copy { map, len: n },
        })
    }

    /// The path the file was opened from.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Map { map, .. } => map,
            Backing::Copy { map, len } => &map[..*len],
        }
    }

    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// The block device the mapped file lives on (its read-ahead, its largest request), or `None`
    /// for a private copy or where the kernel does not say.
    pub(crate) fn device(&self) -> Option<crate::machine::Device> {
        match &self.backing {
            Backing::Map { file, .. } => crate::machine::Device::of(file),
            Backing::Copy { .. } => None,
        }
    }

    /// True when the bytes are a mapping of the file, false for a private copy.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Map { .. })
    }

    /// The bytes `range` (absolute) of the file. Every range a view asks for was validated against
    /// the file's length at open, so the error is a guard, not a path callers see.
    pub(crate) fn slice(&self, range: Range<u64>) -> Result<&[u8]> {
        let bytes = self.bytes();
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

    /// Checks that the mapped file is still as long as the mapping (`fstat`). A file truncated
    /// under a mapping raises `SIGBUS` on the first touch of a vanished page, so the operations
    /// that read every page (verify, prefetch) look first and report the truncation instead.
    /// A private copy cannot shrink.
    pub(crate) fn check_len(&self) -> Result<()> {
        let Backing::Map { map, file } = &self.backing else {
            return Ok(());
        };
        let now = file.metadata().map_err(Error::io(&self.path, "stat"))?;
        let mapped = map.len() as u64;
        if now.len() < mapped {
            return Err(Error::Shrank {
                path: self.path.clone(),
                len: now.len(),
                mapped,
            });
        }
        Ok(())
    }

    /// Reads `range` (absolute, within the file) of the mapping into memory, blocking until it is
    /// resident; a no-op for a private copy. A failure is [`Error::Shrank`] when the file is now
    /// shorter than its mapping (`MADV_POPULATE_READ` reports a truncated file as `EFAULT`, "Bad
    /// address", where a page fault would raise `SIGBUS`), else [`Error::Io`] saying `action`.
    pub(crate) fn populate(&self, range: Range<u64>, action: &'static str) -> Result<()> {
        let Backing::Map { map, .. } = &self.backing else {
            return Ok(());
        };
        // Ranges come from validated views of this mapping, so they fit in usize and in the map.
        match populate(map, range.start as usize..range.end as usize) {
            Ok(()) => Ok(()),
            Err(source) => {
                self.check_len()?;
                Err(Error::io(&self.path, action)(source))
            }
        }
    }

    /// Reads the bytes of the mapped file at `offset` into `buf` with `pread` (the read path, and
    /// its readahead, rather than page faults), returning how many were read; 0 for a private
    /// copy, whose bytes are all in memory already.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match &self.backing {
            Backing::Map { file, .. } => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::FileExt;
                    file.read_at(buf, offset)
                }
                #[cfg(not(unix))]
                {
                    let _ = (file, buf, offset);
                    Ok(0)
                }
            }
            Backing::Copy { .. } => Ok(0),
        }
    }

    /// Whether the page holding byte `offset` of the file is in memory (`mincore`), or `None`
    /// when that cannot be told: a private copy (always in memory, so `Some(true)`), a platform
    /// without `mincore`, or a failed call.
    pub(crate) fn resident(&self, offset: u64) -> Option<bool> {
        let Backing::Map { map, .. } = &self.backing else {
            return Some(true);
        };
        #[cfg(target_os = "linux")]
        {
            let page = page_size()?;
            let offset = usize::try_from(offset).ok()?;
            if offset >= map.len() {
                return None;
            }
            // The mapping starts on a page boundary, so rounding the offset down stays inside it.
            let start = offset - offset % page;
            let mut vec = [0u8; 1];
            // SAFETY: `start` is page-aligned and `map.as_ptr() + start` lies inside the mapping,
            // which this file keeps alive for the call; one page of it is asked about, so the
            // kernel writes one byte into `vec`. mincore reads no memory of ours and changes no
            // mapping.
            let rc = unsafe {
                libc::mincore(
                    map.as_ptr().add(start) as *mut libc::c_void,
                    1,
                    vec.as_mut_ptr(),
                )
            };
            (rc == 0).then_some(vec[0] & 1 == 1)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (map, offset);
            None
        }
    }

    /// Passes `advice` for `range` (absolute, within the file) to the kernel (`madvise`); a no-op
    /// for a private copy or an empty range.
    #[cfg(unix)]
    pub(crate) fn advise(&self, range: Range<u64>, advice: memmap2::Advice) -> Result<()> {
        let Backing::Map { map, .. } = &self.backing else {
            return Ok(());
        };
        if range.is_empty() {
            return Ok(());
        }
        // Ranges come from validated views of this mapping, so they fit in usize and in the map.
        map.advise_range(
            advice,
            range.start as usize,
            (range.end - range.start) as usize,
        )
        .map_err(Error::io(&self.path, "madvise"))
    }

    /// Bytes `range` of the file in memory the caller may write, and nobody else sees: a private
    /// copy-on-write mapping of that range of the file (`MAP_PRIVATE`: reads share the page
    /// cache, a write copies only the pages it touches, and neither the file nor any other view of
    /// it changes), or, for a private copy of the file (anonymous memory cannot be mapped twice),
    /// a fresh copy of the range. `range` is within the file.
    pub(crate) fn private(&self, range: Range<usize>) -> Result<MmapMut> {
        let io = |action| Error::io(&self.path, action);
        let len = range.end - range.start;
        match &self.backing {
            Backing::Map { file, .. } if len > 0 => {
                // SAFETY: this file was mapped under `Store::open`'s contract (nobody modifies or
                // truncates it while it is mapped), and the caller keeps it alive for as long as
                // this mapping lives (`PrivateBytes` holds the store). The range lies within the
                // file's length, which the mapping was made with. memmap2 aligns the offset down
                // to a page and returns the range's first byte.
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
}

impl fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenFile")
            .field("path", &self.path)
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// Reads `range` of the mapping into memory, blocking until it is resident.
fn populate(map: &Mmap, range: Range<usize>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        // MADV_POPULATE_READ (Linux 5.14) faults the whole range in one call and reports a
        // truncated file as EFAULT instead of SIGBUS; older kernels answer EINVAL.
        static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
        if !UNSUPPORTED.load(Ordering::Relaxed) {
            match map.advise_range(memmap2::Advice::PopulateRead, range.start, range.len()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    UNSUPPORTED.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
    }
    // Touch one byte per page: each fault reads its page (and the kernel's readahead beyond it).
    for i in range.step_by(4096) {
        black_box(map[i]);
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn page_size() -> Option<usize> {
    use std::sync::OnceLock;
    static PAGE: OnceLock<Option<usize>> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant; it has no memory arguments.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n.is_power_of_two())
    })
}
