//! The cache folder: which files in it are the cache's, and the only code that deletes any.
//!
//! A cache deletes its entries to stay under its size, so it must never mistake a user's file
//! for one of its own. Two rules make that impossible:
//!
//! - **A folder of its own.** [`Folder::claim`] accepts a folder that is new, empty, already
//!   marked as an mmtensor cache (a `CACHEDIR.TAG` that says so, per the Cache Directory Tagging
//!   Specification, which backup tools also honour), or that holds nothing but names this module
//!   makes (a cache written before the marker existed). It marks the folder, and refuses any other
//!   folder with [`Error::NotACacheFolder`], naming files it would not touch.
//! - **Names only it makes.** Every file the cache creates is named after a [`Key`]: 32 lowercase
//!   hex digits (an xxh3-128) and one of a fixed set of suffixes. Listing, usage and eviction look
//!   at those names alone, so a file a user drops into a marked folder later is never counted or
//!   removed.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use object_store::ObjectMeta;

use crate::{Error, Result};

/// The marker's file name (the Cache Directory Tagging Specification's).
const MARKER: &str = "CACHEDIR.TAG";

/// The marker's content: the specification's signature line, then mmtensor's own line, which
/// tells this cache's marker from another tool's (cargo's `target/` has one too).
const MARKER_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by mmtensor-remote.\n\
# Every other file here whose name is 32 hex digits and a suffix is a cache entry, which\n\
# mmtensor deletes to stay under the cache's size. Keep nothing of your own in this folder.\n";

/// The line that makes a marker this cache's.
const MARKER_OWNER: &str = "# This file is a cache directory tag created by mmtensor-remote.";

/// The identity of one version of one object: an xxh3-128 of its URL and of everything the
/// server says identifies the version (size, ETag, version, last modification). Only
/// [`Key::of`] and [`Key::parse_name`] make one, so every name built from a key is a name the
/// cache alone makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key(u128);

/// What a file named after a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `KEY.mmt`: a complete, verified entry.
    Entry,
    /// `KEY.mmt.partial`: a download in progress or interrupted.
    Partial,
    /// `KEY.parts.json`: the partial download's verified parts.
    Sidecar,
    /// `KEY.parts.json.tmp`: the sidecar being replaced.
    SidecarTmp,
    /// `KEY.lock`: serializes the downloads of one key.
    Lock,
    /// `KEY.mmt.stream`: a streamed shard, a sparse file of the object's length holding its
    /// head, its checksum table and the data parts fetched so far (`stream/`).
    Stream,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Entry,
        Kind::Partial,
        Kind::Sidecar,
        Kind::SidecarTmp,
        Kind::Lock,
        Kind::Stream,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Kind::Entry => ".mmt",
            Kind::Partial => ".mmt.partial",
            Kind::Sidecar => ".parts.json",
            Kind::SidecarTmp => ".parts.json.tmp",
            Kind::Lock => ".lock",
            Kind::Stream => ".mmt.stream",
        }
    }
}

impl Key {
    /// The key of the object `url` as its HEAD describes it: its size, version and ETag, or,
    /// from a server that sends no ETag, its last modification time, which such a server still
    /// changes when the object is replaced. (With an ETag, the time is left out: the same bytes
    /// uploaded again keep their ETag, and a download interrupted before keeps its parts.)
    pub(crate) fn of(url: &str, meta: &ObjectMeta) -> Key {
        let version = match &meta.e_tag {
            Some(tag) => format!("etag {tag}"),
            None => format!(
                "modified {}",
                meta.last_modified.timestamp_nanos_opt().unwrap_or(i64::MIN)
            ),
        };
        let id = format!(
            "{url}\n{}\n{}\n{version}",
            meta.size,
            meta.version.as_deref().unwrap_or(""),
        );
        Key(xxhash_rust::xxh3::xxh3_128(id.as_bytes()))
    }

    /// The key and kind of a file the cache made, or `None` for any other name.
    pub(crate) fn parse_name(name: &str) -> Option<(Key, Kind)> {
        let hex = name.get(..32)?;
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let rest = &name[32..];
        let kind = Kind::ALL.into_iter().find(|k| k.suffix() == rest)?;
        Some((Key(u128::from_str_radix(hex, 16).ok()?), kind))
    }

    fn name(self, kind: Kind) -> String {
        format!("{:032x}{}", self.0, kind.suffix())
    }
}

/// A file that counts against the capacity.
pub(crate) struct Item {
    pub(crate) key: Key,
    pub(crate) len: u64,
    mtime: SystemTime,
}

/// A claimed cache folder.
#[derive(Debug)]
pub(crate) struct Folder {
    dir: PathBuf,
}

impl Folder {
    /// Creates `dir` if missing and makes it this cache's folder, or refuses it.
    ///
    /// # Errors
    ///
    /// [`Error::NotACacheFolder`] when `dir` holds files the cache did not make and no marker
    /// of this cache; [`Error::Io`] when it cannot be created, listed or marked.
    pub(crate) fn claim(dir: PathBuf) -> Result<Folder> {
        let io = |action, source| Error::Io {
            path: dir.clone(),
            action,
            source,
        };
        fs::create_dir_all(&dir).map_err(|e| io("create the cache folder", e))?;
        let marker = dir.join(MARKER);
        let mut text = String::new();
        match File::open(&marker) {
            Ok(mut f) => {
                // A marker is a few hundred bytes; anything longer is not this cache's.
                let _ = Read::by_ref(&mut f)
                    .take(MARKER_TEXT.len() as u64 + 1)
                    .read_to_string(&mut text);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("read the marker of", e)),
        }
        if text.lines().any(|l| l == MARKER_OWNER) {
            return Ok(Folder { dir });
        }
        // Not (yet) marked: accept only a folder whose every file is one this cache names, and a
        // marker left half-written by a process killed while writing it.
        let mut foreign = Vec::new();
        let mut count = 0usize;
        for e in fs::read_dir(&dir).map_err(|e| io("list the cache folder", e))? {
            let e = e.map_err(|e| io("list the cache folder", e))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let own = match Key::parse_name(&name) {
                Some(_) => e.file_type().map(|t| t.is_file()).unwrap_or(false),
                None => name == MARKER && MARKER_TEXT.starts_with(text.as_str()),
            };
            if !own {
                count += 1;
                if foreign.len() < 3 {
                    foreign.push(name.into_owned());
                }
            }
        }
        if count > 0 {
            foreign.sort();
            return Err(Error::NotACacheFolder {
                dir,
                foreign,
                more: count.saturating_sub(3),
            });
        }
        write_marker(&dir).map_err(|e| io("write the cache marker CACHEDIR.TAG in", e))?;
        Ok(Folder { dir })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, key: Key, kind: Kind) -> PathBuf {
        self.dir.join(key.name(kind))
    }

    /// Entries, partial downloads and streamed shards, which count against the capacity, oldest
    /// access first. Nothing but names this cache makes is looked at. A streamed shard counts the
    /// disk space it takes (its parts fetched), not its length.
    pub(crate) fn list(&self) -> Result<Vec<Item>> {
        let io = |source| Error::Io {
            path: self.dir.clone(),
            action: "list the cache folder",
            source,
        };
        let mut items = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io)? {
            let e = e.map_err(io)?;
            let Some((key, kind @ (Kind::Entry | Kind::Partial | Kind::Stream))) =
                e.file_name().to_str().and_then(Key::parse_name)
            else {
                continue;
            };
            // The file may vanish between the listing and the stat (another process evicted it).
            let Ok(m) = e.metadata() else { continue };
            if !m.is_file() {
                continue;
            }
            items.push(Item {
                key,
                len: match kind {
                    Kind::Stream => m.blocks().saturating_mul(512),
                    _ => m.len(),
                },
                mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        items.sort_by_key(|i| i.mtime);
        Ok(items)
    }

    /// Bytes of disk taken by every file the cache made in the folder (entries, partial
    /// downloads and their sidecars, streamed shards, locks, the marker), as `du` counts them:
    /// what a streamed dataset keeps within the capacity.
    pub(crate) fn disk_usage(&self) -> Result<u64> {
        let io = |source| Error::Io {
            path: self.dir.clone(),
            action: "list the cache folder",
            source,
        };
        let mut used = 0u64;
        for e in fs::read_dir(&self.dir).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name();
            let ours = name
                .to_str()
                .is_some_and(|n| n == MARKER || Key::parse_name(n).is_some());
            if let (true, Ok(m)) = (ours, e.metadata()) {
                used = used.saturating_add(m.blocks().saturating_mul(512));
            }
        }
        Ok(used)
    }

    /// Deletes least recently used entries (and stale partial downloads) until `incoming` more
    /// bytes fit in `capacity`, never touching `keep` or a key another thread or process holds
    /// locked.
    pub(crate) fn evict(&self, capacity: u64, incoming: u64, keep: Option<Key>) -> Result<()> {
        let items = self.list()?;
        let mut used: u64 = items
            .iter()
            .filter(|i| Some(i.key) != keep)
            .map(|i| i.len)
            .sum();
        for item in items {
            if used.saturating_add(incoming) <= capacity {
                break;
            }
            if Some(item.key) == keep {
                continue;
            }
            let Some(lock) = KeyLock::try_acquire(self, item.key)? else {
                continue;
            };
            self.remove(item.key)?;
            lock.remove();
            used = used.saturating_sub(item.len);
        }
        Ok(())
    }

    /// The folder's budget lock (an exclusive `flock` on the folder itself), released on drop:
    /// held by a streamed dataset while it counts the folder's usage, evicts and reserves the
    /// space of a part, so that processes sharing the folder never reserve the same free space
    /// twice.
    pub(crate) fn budget(&self) -> Result<File> {
        let io = |action, source| Error::Io {
            path: self.dir.clone(),
            action,
            source,
        };
        let dir = File::open(&self.dir).map_err(|e| io("open", e))?;
        loop {
            // SAFETY: flock only reads its integer arguments; the descriptor is open and owned by `dir`.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(dir);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(io("lock", e));
            }
        }
    }

    /// Removes every file of `key` but its lock (which the caller holds).
    pub(crate) fn remove(&self, key: Key) -> Result<()> {
        for kind in [
            Kind::Entry,
            Kind::Partial,
            Kind::Sidecar,
            Kind::SidecarTmp,
            Kind::Stream,
        ] {
            self.remove_file(key, kind)?;
        }
        Ok(())
    }

    /// Removes one file of `key`; a missing one is fine.
    pub(crate) fn remove_file(&self, key: Key, kind: Kind) -> Result<()> {
        let path = self.path(key, kind);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                path,
                action: "remove",
                source,
            }),
        }
    }
}

/// Writes the marker in place. Only a folder holding nothing but this cache's names (or a marker
/// that is a beginning of this one, left by a process killed while writing it) gets here, so a
/// marker cut short by a kill is completed by the next claim.
fn write_marker(dir: &Path) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(MARKER))?;
    f.write_all(MARKER_TEXT.as_bytes())?;
    f.sync_data()
}

/// A `flock` on `KEY.lock`, released on drop: exclusive while one object is downloaded (and
/// while its files are evicted), shared while a streamed shard of it is open (so that whole-file
/// eviction leaves the shard alone; its parts are evicted one by one, `stream/`).
pub(crate) struct KeyLock {
    file: File,
    path: PathBuf,
}

impl KeyLock {
    pub(crate) fn acquire(folder: &Folder, key: Key) -> Result<KeyLock> {
        Ok(Self::lock(folder, key, libc::LOCK_EX)?.expect("a blocking lock is always taken"))
    }

    /// A shared lock, waited for: held by every process that has the key's streamed shard open.
    pub(crate) fn shared(folder: &Folder, key: Key) -> Result<KeyLock> {
        Ok(Self::lock(folder, key, libc::LOCK_SH)?.expect("a blocking lock is always taken"))
    }

    fn try_acquire(folder: &Folder, key: Key) -> Result<Option<KeyLock>> {
        Self::lock(folder, key, libc::LOCK_EX | libc::LOCK_NB)
    }

    fn lock(folder: &Folder, key: Key, op: libc::c_int) -> Result<Option<KeyLock>> {
        let path = folder.path(key, Kind::Lock);
        let io = |action, source| Error::Io {
            path: path.clone(),
            action,
            source,
        };
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io("create the lock file", e))?;
            // SAFETY: flock only reads its integer arguments; the descriptor is open and owned by `file`.
            if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::WouldBlock {
                    return Ok(None);
                }
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(io("lock", e));
            }
            // An evicting process may have removed the lock file while this one waited on it:
            // then the lock is on an orphan inode, and the one to take is the file now at `path`.
            let held = file.metadata().map_err(|e| io("stat", e))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(KeyLock { file, path }))
                }
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io("stat", e)),
            }
        }
    }

    /// Removes the lock file while holding it (eviction), then releases it.
    fn remove(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// Marks an entry as used now (its modification time is the LRU clock). `false` if it is absent.
pub(crate) fn touch(entry: &Path) -> Result<bool> {
    match File::open(entry) {
        Ok(f) => {
            f.set_modified(SystemTime::now())
                .map_err(|source| Error::Io {
                    path: entry.to_path_buf(),
                    action: "set the access time of",
                    source,
                })?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Io {
            path: entry.to_path_buf(),
            action: "open",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_the_cache_makes_are_its_own() {
        let key = Key(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        for kind in Kind::ALL {
            assert_eq!(Key::parse_name(&key.name(kind)), Some((key, kind)));
        }
        for name in [
            "precious.mmt",
            "model.mmt.partial",
            "0123456789abcdef0011223344556677.npy",
            "0123456789ABCDEF0011223344556677.mmt",
            "0123456789abcdef001122334455667.mmt",
            "0123456789abcdef00112233445566778.mmt",
            "0123456789abcdef0011223344556677.mmt.bak",
            "+123456789abcdef0011223344556677.mmt",
            "CACHEDIR.TAG",
            "",
        ] {
            assert_eq!(Key::parse_name(name), None, "{name}");
        }
    }

    /// The review: from a server without ETags, an object replaced by one of the same size kept
    /// its key, and the cache served the old bytes forever.
    #[test]
    fn regression_a_changed_modification_time_is_a_new_key() {
        let meta = |secs| ObjectMeta {
            location: "x.mmt".into(),
            last_modified: (SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).into(),
            size: 4096,
            e_tag: None,
            version: None,
        };
        let url = "https://example.com/x.mmt";
        assert_eq!(Key::of(url, &meta(1)), Key::of(url, &meta(1)));
        assert_ne!(Key::of(url, &meta(1)), Key::of(url, &meta(2)));
        // With an ETag, the ETag is the identity: the same bytes uploaded again are the same.
        let tagged = |secs, tag: &str| ObjectMeta {
            e_tag: Some(tag.into()),
            ..meta(secs)
        };
        assert_eq!(Key::of(url, &tagged(1, "a")), Key::of(url, &tagged(2, "a")));
        assert_ne!(Key::of(url, &tagged(1, "a")), Key::of(url, &tagged(1, "b")));
    }
}
