//! What identifies the file a store was opened from, to check that a path still names the same
//! file, unchanged, in another process (a `Store` sent to a worker by path is reopened there).

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use crate::format::Format;

/// What identifies the file a [`Store`](crate::Store) was opened from, and the version of it that
/// was opened: its format, its length, a 64-bit xxh3 hash of its header, and the file's
/// [`FileStamp`] (inode number and modification time). Taken at open, from the header bytes
/// already read and from `fstat` of the very descriptor the bytes were mapped or read from (never
/// a second look at the path, which a rename could have changed in between).
///
/// Another process that is handed a path and a fingerprint (a store sent to a worker by path)
/// reopens the path with [`Store::open_expecting`](crate::Store::open_expecting) or
/// [`Store::read_expecting`](crate::Store::read_expecting), which refuse a file whose fingerprint
/// differs in any part ([`Error::Changed`](crate::Error::Changed)). Taking it costs one `fstat` at
/// open and checking it reads no tensor data. The rule is the same for every format.
///
/// This is the one place that says what a fingerprint detects and what it cannot; the Python
/// binding's pickling (`StoreChangedError`), `mmtensor.data` and the docs refer here.
///
/// # What it detects
///
/// - A file replaced at the path by a rename (as mmtensor's writer, `mmt convert`, `np.save` to a
///   temporary file then `os.replace`, and most careful writers do), or deleted and created anew:
///   the new file has another inode number, whatever its bytes. Both files exist at once while the
///   rename happens, so they cannot share the number; a number the filesystem reuses later (after
///   the old file is deleted and no process holds it open) comes with the new file's own
///   modification time.
/// - A file rewritten in place (`cp new old`, `truncate`, a program that opens it for writing): the
///   kernel moves its modification time at every write, and the stamp records it to the
///   nanosecond.
/// - A different length, format or header, whatever the stamp says. For `.mmt`, the header hash is
///   the header checksum its preamble records; the header holds the xxh3 of the block checksum
///   table, which covers every tensor byte, so a store rewritten by mmtensor's writer with any
///   tensor byte different has a different header. For `.safetensors` and `.npy`, which carry no
///   checksums, it is the xxh3-64 of every byte before the data (the length prefix and the JSON;
///   the magic, version and header dict), so the stamp is what tells other values under the same
///   names, dtypes and shapes apart.
///
/// # What it cannot detect
///
/// - A write in place that sets the modification time back afterwards (`touch -r`, `os.utime`,
///   `cp -p` or `rsync -t` onto the existing file) and keeps the length and the header.
/// - A write in place within the filesystem's timestamp granularity of the write before the
///   fingerprint was taken: Linux filesystems record nanoseconds from a clock that advances every
///   few milliseconds, some filesystems (or NFS servers) keep whole seconds, FAT two.
/// - Corruption in place that leaves the stamp as it was (a failing disk, a write through another
///   mapping of the file): for `.mmt`, [`Store::verify`](crate::Store::verify) checks every byte
///   against its checksums; `.safetensors` and `.npy` have none. (And while a store is *mapped*,
///   any write to its file breaks [`Store::open`](crate::Store::open)'s contract, fingerprint or
///   not.)
///
/// # What it deliberately treats as a change, and what not
///
/// A fingerprint names one version of one file, not its content: a byte-identical copy of the file
/// (`cp`, a restore from a backup, another run of the same conversion renamed over the path, a copy
/// on another machine's disk) is another file, and is refused. Open it afresh there. Two parts of
/// `fstat` are left out on purpose:
///
/// - the device number (`st_dev`): the kernel numbers mounts per machine and per mount, so it
///   differs between machines that share a filesystem (NFS) and can change when a filesystem is
///   remounted, while the inode number and the times come from the filesystem itself. A store sent
///   to another machine over a shared filesystem therefore reopens there. (Another filesystem
///   whose file has the same inode number, length, header and modification time to the nanosecond
///   is a snapshot or block copy of this one, taken when the file was this version.)
/// - the status-change time (`st_ctime`): `chmod`, `chown`, a hard link or an extended attribute
///   change it without touching a byte, and counting those would stop every worker started after a
///   harmless permission fix.
///
/// The inode number must be stable for the same file: it is on local filesystems, NFS and Lustre.
/// FUSE mounts that make inode numbers up (gcsfuse, s3fs, blobfuse without `use_ino`) and vfat or
/// exFAT (which renumber a file when its inode is evicted) can give the same file another number
/// on reopen: there a store reopened by path may be refused as changed although it is not. Copy
/// such data to a local disk (or convert it into one) before training from it with workers.
///
/// ```
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
/// use mmtensor::{FileStamp, Fingerprint, Store};
///
/// let store = Store::read(path)?;
/// let fp: Fingerprint = store.fingerprint();
/// // ... send `path` and the parts of `fp` to another process ...
/// let (inode, (secs, nanos)) = (fp.file().inode(), fp.file().mtime());
/// let stamp = FileStamp::new(inode, secs, nanos);
/// let fp = Fingerprint::new(fp.format(), fp.len(), fp.header_xxh3(), stamp);
/// let again = Store::read_expecting(path, &fp)?; // Error::Changed if the file is another one
/// assert_eq!(again.fingerprint(), fp);
/// # Ok::<(), mmtensor::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    // The stamp's fields are kept flat (not a `FileStamp`), so that the padding is shared and
    // `Error::Changed`, which holds two fingerprints, stays small.
    len: u64,
    header_xxh3: u64,
    inode: u64,
    mtime_secs: i64,
    mtime_nanos: u32,
    format: Format,
}

/// Which file, and which version of it: the inode number (`st_ino`) and the modification time
/// (`st_mtime` seconds since the Unix epoch, negative before it, and `st_mtime_nsec`), as `fstat`
/// reports them. Part of a [`Fingerprint`], which says what the two detect and why the device
/// number and the status-change time are not here. [`FileStamp::mtime_ns`] is Python's
/// `os.stat(path).st_mtime_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    inode: u64,
    mtime_secs: i64,
    mtime_nanos: u32,
}

impl FileStamp {
    /// A stamp from its parts, as [`FileStamp::inode`] and [`FileStamp::mtime`] return them. A
    /// stamp made up with `mtime_nanos` of a second or more matches no file.
    pub fn new(inode: u64, mtime_secs: i64, mtime_nanos: u32) -> FileStamp {
        FileStamp {
            inode,
            mtime_secs,
            mtime_nanos,
        }
    }

    /// The stamp of an open file, from its `fstat`.
    pub(crate) fn of(meta: &Metadata) -> FileStamp {
        // The kernel's `st_mtime_nsec` is below a second; a value that is not matches no stamp.
        let nanos = u32::try_from(meta.mtime_nsec()).unwrap_or(u32::MAX);
        FileStamp::new(meta.ino(), meta.mtime(), nanos)
    }

    /// The file's inode number.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The file's modification time: whole seconds since the Unix epoch (rounded down, so
    /// negative before it) and the nanoseconds past them.
    pub fn mtime(&self) -> (i64, u32) {
        (self.mtime_secs, self.mtime_nanos)
    }

    /// The file's modification time in nanoseconds since the Unix epoch.
    pub fn mtime_ns(&self) -> i128 {
        i128::from(self.mtime_secs) * 1_000_000_000 + i128::from(self.mtime_nanos)
    }
}

impl fmt::Display for FileStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "inode {}, modified at {}.{:09} s",
            self.inode, self.mtime_secs, self.mtime_nanos
        )
    }
}

impl Fingerprint {
    /// A fingerprint from its parts, as [`Fingerprint::format`], [`Fingerprint::len`],
    /// [`Fingerprint::header_xxh3`] and [`Fingerprint::file`] return them (to rebuild one sent to
    /// another process).
    pub fn new(format: Format, len: u64, header_xxh3: u64, file: FileStamp) -> Fingerprint {
        Fingerprint {
            len,
            header_xxh3,
            inode: file.inode,
            mtime_secs: file.mtime_secs,
            mtime_nanos: file.mtime_nanos,
            format,
        }
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

    /// The file's inode number and modification time when it was opened.
    pub fn file(&self) -> FileStamp {
        FileStamp::new(self.inode, self.mtime_secs, self.mtime_nanos)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} file of {} bytes with header xxh3 {:016x} ({})",
            self.format,
            self.len,
            self.header_xxh3,
            self.file()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn fingerprints_print_their_parts() {
        let stamp = FileStamp::new(77, 1_700_000_000, 123_456_789);
        let fp = Fingerprint::new(Format::Mmt, 4096, 0xab, stamp);
        assert_eq!(
            fp.to_string(),
            "a .mmt file of 4096 bytes with header xxh3 00000000000000ab \
             (inode 77, modified at 1700000000.123456789 s)"
        );
        assert_eq!(
            (fp.format(), fp.len(), fp.header_xxh3(), fp.file()),
            (Format::Mmt, 4096, 0xab, stamp)
        );
        assert_eq!(
            (stamp.inode(), stamp.mtime(), stamp.mtime_ns()),
            (77, (1_700_000_000, 123_456_789), 1_700_000_000_123_456_789)
        );
        // Before the epoch: whole seconds round down, nanoseconds count up from them.
        let before = FileStamp::new(1, -1, 999_999_999);
        assert_eq!(before.to_string(), "inode 1, modified at -1.999999999 s");
        assert_eq!(before.mtime_ns(), -1);
    }

    #[test]
    fn the_error_stays_small_with_a_fingerprint_in_it() {
        // `Error::Changed` holds fingerprints, and `mmtensor_convert::Error` holds this crate's
        // error inline: clippy's `result_large_err` (128 bytes) bounds both.
        assert!(std::mem::size_of::<Fingerprint>() <= 40);
        assert!(std::mem::size_of::<Error>() <= 112);
    }
}
