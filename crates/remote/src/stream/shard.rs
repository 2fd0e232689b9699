//! One streamed shard on disk: a sparse file of the object's length in the cache folder
//! (`KEY.mmt.stream`) holding its verified head and checksum table, and the data parts fetched so
//! far, each written only after every one of its blocks was verified.
//!
//! Processes sharing the folder share the file. Who may read or remove a part is settled by
//! open-file-description locks (`F_OFD_SETLK`) on ranges past the end of the file, which the
//! kernel drops with the process. A part's lock range is its own byte range moved up by a fixed
//! base, so parts of different sizes (processes streaming with another `part_size`) conflict
//! exactly where their bytes overlap:
//!
//! - a **pin** (a shared lock on the part's range at [`PIN_BASE`]) is held by every process that
//!   reads the part's bytes: it verified them (fetched them, or read them back and checked their
//!   checksums) and keeps them from being removed under it;
//! - **eviction** takes the lock exclusively, without waiting: it succeeds only when no other
//!   process pins the part, then punches the part's range out of the file
//!   (`FALLOC_FL_PUNCH_HOLE`, which gives the space back) and lets go;
//! - a **fetch** of a part is taken exclusively on its range at [`FETCH_BASE`] (without waiting,
//!   by one process at a time), so that ranks of one node reading the same part in step download
//!   it once: the others wait for the fetch and then verify what it wrote.
//!
//! A hole reads as zeros, which fail their checksum (unless the part is all zeros, which is then
//! what it holds), so a part is never taken as present without its checksums.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use mmtensor_format::FileLayout;

use crate::plan::{Part, PartVerifier};
use crate::{Error, Result};

/// A part's pin is locked on its byte range moved up by `PIN_BASE`: past the end of any object
/// the format can address here (objects are refused at open from this size on).
const PIN_BASE: i64 = 1 << 62;

/// A part's fetch is claimed on its byte range moved up by `FETCH_BASE`.
const FETCH_BASE: i64 = 1 << 61;

/// The largest object a stream opens: its lock ranges stay apart and below `i64::MAX`.
pub(crate) const MAX_STREAMED_OBJECT: u64 = 1 << 61;

/// A streamed shard's sparse file and what is known of its object.
pub(crate) struct ShardFile {
    pub(crate) path: PathBuf,
    pub(crate) url: String,
    file: File,
    pub(crate) layout: FileLayout,
    /// The checksum table, read and checked when a part of the shard is first wanted (from the
    /// file when a previous run left it there, else by one GET): opening a dataset costs one
    /// small GET per shard, and a batch's shards their tables.
    table: OnceLock<Vec<u64>>,
    /// Serializes loading the table.
    loading: Mutex<()>,
    /// The data section cut into parts of whole checksum blocks, in file order.
    pub(crate) parts: Vec<Part>,
}

/// What taking a lock found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Locked {
    Taken,
    /// Another process holds a conflicting lock.
    Busy,
}

impl ShardFile {
    /// Opens (creating it if needed) the sparse file at `path` for an object of `size` bytes,
    /// extended to that length when shorter. It is never shortened or emptied: another process
    /// may map it (the key names the object's size, so a longer file is not this cache's).
    pub(crate) fn open_file(path: &Path, size: u64) -> Result<File> {
        let io = |action, source| Error::Io {
            path: path.to_path_buf(),
            action,
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("create", e))?;
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        if len > size {
            return Err(io(
                "open a streamed shard longer than its object:",
                std::io::Error::other(format!("{len} bytes, the object has {size}")),
            ));
        }
        if len < size {
            // Extending is what every opener does alike: two at once leave the same length.
            file.set_len(size).map_err(|e| io("size", e))?;
        }
        Ok(file)
    }

    pub(crate) fn new(
        path: PathBuf,
        url: String,
        file: File,
        layout: FileLayout,
        parts: Vec<Part>,
    ) -> ShardFile {
        ShardFile {
            path,
            url,
            file,
            layout,
            table: OnceLock::new(),
            loading: Mutex::new(()),
            parts,
        }
    }

    /// The checksum table: read back from the file and checked, or, when the file does not hold
    /// it, got by `fetch` (the table's byte range), checked and written.
    ///
    /// # Errors
    ///
    /// What `fetch` returns; [`Error::TableChecksum`] for a fetched table that does not match
    /// the header's hash of it; [`Error::Io`] for the file.
    pub(crate) fn table(
        &self,
        fetch: impl FnOnce(std::ops::Range<u64>) -> Result<Vec<u8>>,
    ) -> Result<&[u64]> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let _loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let range = self.layout.checksum_table_range();
        let local = self.read(range.clone())?;
        let table = match crate::plan::table(&self.url, &self.layout, &local) {
            Ok(t) => t,
            Err(_) => {
                let bytes = fetch(range.clone())?;
                let t = crate::plan::table(&self.url, &self.layout, &bytes)?;
                self.write(&bytes, range.start)?;
                t
            }
        };
        Ok(self.table.get_or_init(|| table))
    }

    /// The checksum table, once [`ShardFile::table`] loaded it.
    fn loaded_table(&self) -> &[u64] {
        self.table
            .get()
            .expect("a part is verified only after its shard's table is loaded")
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// Reads `range` of the file.
    pub(crate) fn read(&self, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        crate::request::read_at(&self.file, &self.path, range)
    }

    /// Writes `bytes` at `offset`.
    pub(crate) fn write(&self, bytes: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(self.io("write"))
    }

    /// Bytes of disk the file takes.
    pub(crate) fn allocated(&self) -> u64 {
        self.file
            .metadata()
            .map_or(0, |m| m.blocks().saturating_mul(512))
    }

    /// A verifier of part `i`'s bytes as they arrive (the table is loaded).
    pub(crate) fn verifier(&self, i: usize) -> PartVerifier<'_> {
        PartVerifier::new(&self.url, &self.layout, self.loaded_table(), &self.parts[i])
    }

    /// Checks `bytes` as part `i`'s content.
    pub(crate) fn verify(&self, i: usize, bytes: &[u8]) -> Result<()> {
        let part = &self.parts[i];
        let mut v = self.verifier(i);
        v.update(bytes)?;
        if !v.is_complete() {
            return Err(Error::ShortRead {
                url: self.url.clone(),
                start: part.range.start,
                end: part.range.end,
                got: bytes.len() as u64,
            });
        }
        Ok(())
    }

    /// Whether the file holds part `i`, verified: any data at all in its range (a cheap
    /// `SEEK_DATA` first), then every block's checksum.
    pub(crate) fn holds(&self, i: usize) -> Result<bool> {
        let r = self.parts[i].range.clone();
        if !self.has_data(i) {
            // All zeros is what a hole reads as: a part of zeros only is held by any file.
            return Ok(r.is_empty() || self.verify(i, &vec![0; (r.end - r.start) as usize]).is_ok());
        }
        let bytes = self.read(r.clone())?;
        Ok(self.verify(i, &bytes).is_ok())
    }

    /// Whether any byte of part `i`'s range is allocated (not a hole).
    pub(crate) fn has_data(&self, i: usize) -> bool {
        let r = &self.parts[i].range;
        let (Ok(start), true) = (libc::off_t::try_from(r.start), r.start < r.end) else {
            return false;
        };
        // SAFETY: lseek only reads its integer arguments; the descriptor is open and owned by
        // `self.file`.
        let at = unsafe { libc::lseek(self.file.as_raw_fd(), start, libc::SEEK_DATA) };
        // -1: ENXIO (no data after `start`), or a file system without SEEK_DATA, which says
        // nothing: count the part as holding data then, and let its checksums decide.
        if at < 0 {
            return std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO);
        }
        (at as u64) < r.end
    }

    /// Punches part `i`'s range out of the file: the space goes back to the file system, and
    /// the range reads as zeros. The caller holds the part's lock exclusively.
    fn punch(&self, i: usize) -> Result<()> {
        self.fallocate(i, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            .map_err(self.io("punch a part out of"))
    }

    /// `fallocate(mode)` over part `i`'s range.
    fn fallocate(&self, i: usize, mode: libc::c_int) -> std::io::Result<()> {
        let r = &self.parts[i].range;
        let (Ok(start), Ok(len)) = (
            libc::off_t::try_from(r.start),
            libc::off_t::try_from(r.end - r.start),
        ) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        // SAFETY: fallocate only reads its integer arguments; the descriptor is open and owned
        // by `self.file`.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, start, len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes, converts or drops this process's lock on part `i`'s range moved up by `base`.
    fn lock(&self, base: i64, i: usize, kind: libc::c_int, wait: bool) -> Result<Locked> {
        let r = &self.parts[i].range;
        // Below MAX_STREAMED_OBJECT (checked at open): these fit an i64.
        let (start, len) = (base + r.start as i64, (r.end - r.start).max(1) as i64);
        // SAFETY: an all-zero `flock` is a valid value of the plain C struct; the fields the
        // call reads are set below (l_pid must be 0 for open-file-description locks).
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = len;
        let cmd = if wait {
            libc::F_OFD_SETLKW
        } else {
            libc::F_OFD_SETLK
        };
        loop {
            // SAFETY: `fl` is a valid flock that lives across the call; the descriptor is open
            // and owned by `self.file`.
            if unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut fl) } == 0 {
                return Ok(Locked::Taken);
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::EACCES) if !wait => return Ok(Locked::Busy),
                _ => return Err(self.io("lock a part of")(e)),
            }
        }
    }

    /// Pins part `i` for this process (waiting out an eviction in progress).
    pub(crate) fn pin(&self, i: usize) -> Result<()> {
        self.lock(PIN_BASE, i, libc::F_RDLCK, true).map(drop)
    }

    /// Drops this process's pin of part `i`.
    pub(crate) fn unpin(&self, i: usize) -> Result<()> {
        self.lock(PIN_BASE, i, libc::F_UNLCK, false).map(drop)
    }

    /// Removes part `i` from the file if no other process pins it (this process's own pin, if
    /// any, is converted, then dropped either way): `Taken` when it was punched out.
    pub(crate) fn evict(&self, i: usize) -> Result<Locked> {
        let got = self.lock(PIN_BASE, i, libc::F_WRLCK, false)?;
        let punched = match got {
            Locked::Taken => self.punch(i),
            Locked::Busy => Ok(()),
        };
        self.lock(PIN_BASE, i, libc::F_UNLCK, false)?;
        punched.map(|()| got)
    }

    /// Claims the fetch of part `i` for this process, without waiting: `Busy` while another
    /// process fetches it.
    pub(crate) fn claim_fetch(&self, i: usize) -> Result<Locked> {
        self.lock(FETCH_BASE, i, libc::F_WRLCK, false)
    }

    /// Waits until no other process fetches part `i`.
    pub(crate) fn wait_fetch(&self, i: usize) -> Result<()> {
        self.lock(FETCH_BASE, i, libc::F_RDLCK, true)?;
        self.lock(FETCH_BASE, i, libc::F_UNLCK, false).map(drop)
    }

    /// Lets go of this process's claim on the fetch of part `i`.
    pub(crate) fn release_fetch(&self, i: usize) -> Result<()> {
        self.lock(FETCH_BASE, i, libc::F_UNLCK, false).map(drop)
    }
}
