//! A fetch: the HEAD that identifies the object, the lookup of a cached entry, and, under the
//! key's lock, eviction and the download; and the small GET of a whole object (a manifest).

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use mmtensor_format::{Preamble, PREAMBLE_LEN};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::download;
use crate::folder::{touch, Key, KeyLock, Kind};
use crate::request::Object;
use crate::{error, Cache, Error, Listed, Result};

impl Cache {
    /// The local path of the verified object at `url`, downloading it first unless an entry for
    /// the same object (URL, size, ETag, version) is cached.
    ///
    /// # Errors
    /// - [`Error::InvalidUrl`], [`Error::NotFound`], [`Error::AccessDenied`], [`Error::Request`]
    ///   (after retries; the verified parts are kept, and the next fetch resumes).
    /// - [`Error::Format`], [`Error::TableChecksum`], [`Error::BlockChecksum`], [`Error::Padding`]:
    ///   the object is corrupt; [`Error::Changed`]: it changed during the download. Nothing of it
    ///   stays in the cache.
    /// - [`Error::TooLarge`]: the object alone exceeds the capacity; [`Error::DiskFull`]: the
    ///   partial download was removed.
    /// - [`Error::Io`] on the cache folder, [`Error::InsideAsyncRuntime`].
    pub fn fetch(&self, url: &str) -> Result<PathBuf> {
        self.fetch_object(url, None)
    }

    /// [`Cache::fetch`] of an object whose length and header checksum are known beforehand, as
    /// a dataset's manifest records them for each shard: the length is compared with the HEAD's
    /// before any GET, and the header checksum with the preamble's as soon as it arrives (before
    /// any tensor byte is fetched). A cached entry under the same key whose header checksum is
    /// not the expected one (an object replaced on a server that sends no ETag, within the
    /// resolution of its modification time) is fetched again, never served.
    ///
    /// # Errors
    /// As [`Cache::fetch`]; [`Error::NotAsListed`] when the object on the server is not the one
    /// expected (nothing of it stays in the cache).
    pub fn fetch_expecting(&self, url: &str, expected: Expected) -> Result<PathBuf> {
        self.fetch_object(url, Some(expected))
    }

    fn fetch_object(&self, url: &str, expected: Option<Expected>) -> Result<PathBuf> {
        let (store, location, meta) = self.head(url)?;
        if let Some(x) = expected {
            x.check_length(url, &meta)?;
        }
        let key = Key::of(url, &meta);
        let entry = self.folder.path(key, Kind::Entry);
        if self.lookup(&entry, expected)? == Lookup::Hit {
            return Ok(entry);
        }
        if meta.size > self.capacity {
            return Err(Error::TooLarge {
                url: url.into(),
                size: meta.size,
                dir: self.dir().to_path_buf(),
                capacity: self.capacity,
            });
        }
        let _lock = KeyLock::acquire(&self.folder, key)?;
        // Another thread or process may have placed it while this one waited for the lock.
        match self.lookup(&entry, expected)? {
            Lookup::Hit => return Ok(entry),
            // Unlinked: whoever maps it keeps it whole, and the download places a new file.
            Lookup::Stale => self.folder.remove_file(key, Kind::Entry)?,
            Lookup::Absent => {}
        }
        self.folder.evict(self.capacity, meta.size, Some(key))?;
        let partial = self.folder.path(key, Kind::Partial);
        let sidecar = self.folder.path(key, Kind::Sidecar);
        let result = download::run(
            self,
            url,
            store,
            location,
            &meta,
            expected.map(|x| x.header_checksum),
            &partial,
            &sidecar,
            &entry,
        );
        if let Err(e) = &result {
            // A bad or changed object is not worth resuming, and a full disk needs the space back;
            // any other failure keeps the verified parts for the next fetch.
            if !e.keeps_partial() {
                let _ = fs::remove_file(&sidecar);
                let _ = fs::remove_file(&partial);
            }
        }
        result.map(|()| entry)
    }

    /// Whether the entry at `entry` can be served: present and, when a header checksum is
    /// expected, holding it (its preamble is read: 32 bytes). A hit is marked as used.
    fn lookup(&self, entry: &Path, expected: Option<Expected>) -> Result<Lookup> {
        if let Some(x) = expected {
            let mut preamble = [0u8; PREAMBLE_LEN as usize];
            match File::open(entry) {
                Ok(f) => {
                    let ok = f.read_exact_at(&mut preamble, 0).is_ok()
                        && Preamble::parse(&preamble)
                            .is_ok_and(|p| p.header_checksum == x.header_checksum);
                    if !ok {
                        return Ok(Lookup::Stale);
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Lookup::Absent),
                Err(source) => {
                    return Err(Error::Io {
                        path: entry.to_path_buf(),
                        action: "open",
                        source,
                    })
                }
            }
        }
        Ok(if touch(entry)? {
            Lookup::Hit
        } else {
            Lookup::Absent
        })
    }

    /// The whole of a small object (a dataset manifest), read into memory without caching it:
    /// one HEAD and one GET, refused with [`Error::TooLarge`] past `max` bytes.
    ///
    /// # Errors
    ///
    /// As [`Cache::fetch`]'s requests; [`Error::TooLarge`]; [`Error::ShortRead`] when the body's
    /// length is not the HEAD's.
    pub fn get_small(&self, url: &str, max: u64) -> Result<Vec<u8>> {
        let (store, location, meta) = self.head(url)?;
        if meta.size > max {
            return Err(Error::TooLarge {
                url: url.into(),
                size: meta.size,
                dir: self.dir().to_path_buf(),
                capacity: max,
            });
        }
        // An empty object has no bytes to ask for: a ranged GET of 0..0 is an invalid range to
        // every server, which would be reported (and retried) as a failed request.
        if meta.size == 0 {
            return Ok(Vec::new());
        }
        let object = Object::new(url, store, location, &meta);
        self.runtime
            .block_on(object.get(&self.counters, 0..meta.size, true, |_| Ok(())))
    }

    /// The client, the object's location and its HEAD (size, ETag, version): how every request
    /// of this crate begins. Refused from inside an async runtime, which `block_on` would abort.
    pub(crate) fn head(
        &self,
        url: &str,
    ) -> Result<(Arc<dyn ObjectStore>, object_store::path::Path, ObjectMeta)> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideAsyncRuntime);
        }
        let (store, location) = self.clients.for_url(url)?;
        self.counters.head();
        let meta = match self.runtime.block_on(store.head(&location)) {
            Ok(meta) => meta,
            Err(e) => {
                return Err(match Error::request(url, "HEAD", e) {
                    Error::NotFound { url, .. } => Error::NotFound {
                        note: self.missing_note(&*store, &url, &location),
                        url,
                    },
                    other => other,
                })
            }
        };
        Ok((store, location, meta))
    }

    /// What is there instead of the missing object at `location`, when a listing says more than
    /// the HEAD's 404 (which is the same for a missing bucket, a mistyped prefix and a missing
    /// file): one LIST request of the object's folder, on an error path only. `None` for stores
    /// that cannot list (HTTP) and when the folder holds other objects.
    fn missing_note(
        &self,
        store: &dyn ObjectStore,
        url: &str,
        location: &object_store::path::Path,
    ) -> Option<String> {
        if url.starts_with("http://") || url.starts_with("https://") {
            return None;
        }
        let parts: Vec<_> = location.parts().collect();
        let parent: object_store::path::Path = parts[..parts.len().saturating_sub(1)]
            .iter()
            .cloned()
            .collect();
        let folder = match url.rsplit_once('/') {
            Some((folder, _)) => format!("{folder}/"),
            None => url.to_owned(),
        };
        let first = self
            .runtime
            .block_on(async { store.list(Some(&parent)).next().await });
        let is_manifest = location.filename() == Some(mmtensor_format::MANIFEST_FILE);
        match first {
            None => Some(format!("nothing is stored under {folder}")),
            Some(Ok(_)) if is_manifest => Some(format!(
                "{folder} holds objects but no {}: it is not a dataset, or its upload is not \
                 finished (the manifest is uploaded last)",
                mmtensor_format::MANIFEST_FILE
            )),
            Some(Ok(_)) => None,
            Some(Err(e)) => {
                let text = error::chain(&e);
                (matches!(e, object_store::Error::NotFound { .. })
                    || [
                        "NoSuchBucket",
                        "ContainerNotFound",
                        "The specified bucket does not exist",
                    ]
                    .iter()
                    .any(|s| text.contains(s)))
                .then(|| "the bucket (or container) does not exist".to_owned())
            }
        }
    }
}

/// What the cache found under an object's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    /// A complete entry that is the object wanted.
    Hit,
    /// A complete entry that is not (its header checksum is not the expected one).
    Stale,
    /// No complete entry.
    Absent,
}

/// What a caller knows of an object before fetching it ([`Cache::fetch_expecting`]): a dataset's
/// manifest records each shard's length and header checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The object's length in bytes.
    pub length: u64,
    /// The xxh3-64 its preamble records for its header (the manifest's `header_xxh3`).
    pub header_checksum: u64,
}

impl Expected {
    /// Checks the length a HEAD gave for the object at `url` against the expected one.
    ///
    /// # Errors
    /// [`Error::NotAsListed`] when they differ.
    pub(crate) fn check_length(&self, url: &str, meta: &ObjectMeta) -> Result<()> {
        if meta.size != self.length {
            return Err(Error::NotAsListed {
                url: url.into(),
                what: Listed::Length {
                    found: meta.size,
                    listed: self.length,
                },
            });
        }
        Ok(())
    }

    /// What `shard`'s manifest entry says of its file.
    pub fn shard(shard: &mmtensor_format::Shard) -> Expected {
        Expected {
            length: shard.length(),
            header_checksum: shard.header_checksum(),
        }
    }
}
