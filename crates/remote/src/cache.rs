//! The cache: a folder of its own, a capacity, how it downloads (`CacheOptions`), the runtime its
//! requests block on, and the count of the requests it has sent (`Stats`). What a fetch does is
//! `fetch.rs`'s; the folder's names, locks and eviction are `folder.rs`'s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::client::Clients;
use crate::folder::Folder;
use crate::{Error, Result};

/// How a [`Cache`] downloads. The defaults suit a cloud bucket; tests use small parts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheOptions {
    /// Bytes per ranged GET (at least this much, rounded up to whole checksum blocks). Default 8 MiB.
    pub part_size: u64,
    /// Ranged GETs in flight at once for one object. Default 8; 0 counts as 1.
    pub concurrency: usize,
    /// Retries of one request (object_store's `RetryConfig`, for errors before the body starts),
    /// and again of one part whose body failed midway (this crate). Default 5.
    pub retries: usize,
    /// object_store's bound on the time spent retrying one request. Default 3 minutes.
    pub retry_timeout: Duration,
    /// First wait between part retries; it doubles after each. Default 100 ms.
    pub backoff: Duration,
    /// Configuration for the object store client, applied after the environment variables:
    /// object_store's keys for the URL's scheme (`aws_endpoint`, `aws_access_key_id`,
    /// `aws_allow_http`, `google_service_account`, `azure_storage_account_key`, `allow_http`...).
    /// An unknown key is [`Error::InvalidUrl`].
    pub store_options: Vec<(String, String)>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            part_size: 8 << 20,
            concurrency: 8,
            retries: 5,
            retry_timeout: Duration::from_secs(180),
            backoff: Duration::from_millis(100),
            store_options: Vec::new(),
        }
    }
}

/// Requests a [`Cache`] has sent, counted where it sends them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// HEAD requests (one per fetch).
    pub heads: u64,
    /// GET requests (ranged) this crate sent, its retries of a part included; object_store's
    /// own retries of one request (a failed connection, a body resumed after an error) are not
    /// seen here.
    pub gets: u64,
    /// Object bytes received by GETs.
    pub bytes_downloaded: u64,
}

/// The requests behind [`Stats`], counted by the code that sends them.
#[derive(Default)]
pub(crate) struct Counters {
    heads: AtomicU64,
    gets: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    /// One HEAD request sent.
    pub(crate) fn head(&self) {
        self.heads.fetch_add(1, Ordering::Relaxed);
    }

    /// One GET request sent.
    pub(crate) fn get(&self) {
        self.gets.fetch_add(1, Ordering::Relaxed);
    }

    /// `bytes` of an object's body received.
    pub(crate) fn received(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A local folder of verified `.mmt` files fetched from object storage, capped in size.
///
/// Callers stay synchronous: the cache owns a small tokio runtime and blocks on it. Methods must
/// not be called from inside a tokio runtime ([`Error::InsideAsyncRuntime`]). A `Cache` is `Send`
/// and `Sync`; several threads, and several processes sharing one folder, may fetch at once.
pub struct Cache {
    pub(crate) folder: Folder,
    pub(crate) capacity: u64,
    pub(crate) options: CacheOptions,
    /// What every method blocks on: the HEADs, the GETs and the download's parallel parts.
    pub(crate) runtime: tokio::runtime::Runtime,
    pub(crate) clients: Clients,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.folder.dir())
            .field("capacity", &self.capacity)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache in `dir` (created if missing) holding at most `capacity` bytes of entries.
    ///
    /// The folder must be the cache's own: new, empty, or one a cache made. A cache deletes its
    /// entries to stay under its capacity, so it refuses a folder that holds anything else (a
    /// user's stores, say) rather than share it, and it only ever lists, counts or deletes files
    /// named as it names them (32 hex digits and a suffix; see the crate docs).
    ///
    /// # Errors
    /// [`Error::NotACacheFolder`] for a folder holding files the cache did not make;
    /// [`Error::Io`] if the folder cannot be created or marked, or the runtime cannot start.
    pub fn new(dir: impl Into<PathBuf>, capacity: u64) -> Result<Cache> {
        Cache::with_options(dir, capacity, CacheOptions::default())
    }

    /// [`Cache::new`] with download options.
    ///
    /// # Errors
    /// As [`Cache::new`].
    pub fn with_options(
        dir: impl Into<PathBuf>,
        capacity: u64,
        options: CacheOptions,
    ) -> Result<Cache> {
        let folder = Folder::claim(dir.into())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mmtensor-remote")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: folder.dir().to_path_buf(),
                action: "start the download runtime for",
                source,
            })?;
        Ok(Cache {
            folder,
            capacity,
            clients: Clients::new(
                options.retries,
                options.retry_timeout,
                options.store_options.clone(),
            ),
            options,
            runtime,
            counters: Counters::default(),
        })
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        self.folder.dir()
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The requests sent so far by this `Cache`.
    pub fn stats(&self) -> Stats {
        Stats {
            heads: self.counters.heads.load(Ordering::Relaxed),
            gets: self.counters.gets.load(Ordering::Relaxed),
            bytes_downloaded: self.counters.bytes.load(Ordering::Relaxed),
        }
    }

    /// Evicts least recently used entries (and stale partial downloads) until the folder is within
    /// its capacity; downloads in progress are left alone. Fetches make room before each
    /// download, but processes sharing one folder can fill it past the capacity together;
    /// opening a dataset trims it afterwards.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the folder cannot be listed or an entry cannot be removed.
    pub fn trim(&self) -> Result<()> {
        self.folder.evict(self.capacity, 0, None)
    }

    /// Bytes held by complete entries and partial downloads.
    ///
    /// # Errors
    /// [`Error::Io`] if the folder cannot be listed.
    pub fn usage(&self) -> Result<u64> {
        Ok(self.folder.list()?.iter().map(|i| i.len).sum())
    }
}
