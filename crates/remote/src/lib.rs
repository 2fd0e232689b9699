//! Fetch `.mmt` shards from object storage into a local, verified, size-capped cache.
//!
//! A [`Cache`] is a folder and a capacity. [`Cache::fetch`] takes a URL (`s3://`, `gs://`,
//! `az://`/`abfs://`, `http(s)://`, `file://`), downloads the object with parallel ranged GETs
//! into a temporary file in the folder, checks the `.mmt` header, the checksum table and every
//! block as its bytes arrive, then fsyncs and renames the file into place and returns its path,
//! which the caller opens like any local store (`mmtensor::Store::open`). The second fetch of an
//! unchanged object costs one HEAD request and no GET.
//!
//! ```no_run
//! use mmtensor_remote::Cache;
//!
//! // Credentials and endpoints come from the standard environment variables
//! // (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_SERVICE_ACCOUNT, AZURE_STORAGE_ACCOUNT_NAME, ...).
//! let cache = Cache::new("/var/cache/mmt", 50 << 30)?;
//! let path = cache.fetch("s3://my-bucket/train/x-000.mmt")?;
//! // `path` is a complete, verified .mmt file: map it with mmtensor::Store::open.
//! # Ok::<(), mmtensor_remote::Error>(())
//! ```
//!
//! ## Streaming
//!
//! A dataset larger than the cache is read while it downloads with [`StreamingDataset`]: its
//! loaders fetch the parts (runs of whole checksum blocks) that the next batches read, ahead and in
//! the epoch's order, verified before they are written, and evict by next use within the capacity,
//! ranks of one node sharing the folder's parts (`docs/LOADER.md`, "Streaming from object
//! storage").
//!
//! ## The cache folder
//!
//! The folder is the cache's own. [`Cache::new`] takes a new or empty folder (or one a cache
//! made) and marks it with a `CACHEDIR.TAG` (the Cache Directory Tagging Specification's, which
//! backup tools skip) naming mmtensor; it refuses a folder that holds anything else
//! ([`Error::NotACacheFolder`]), since a cache deletes what it holds. Inside, it lists, counts and
//! deletes only the names it makes, a `KEY` of 32 hex digits and one of these suffixes, so a file
//! someone drops in later is never touched:
//!
//! - `KEY.mmt`: a complete entry. `KEY` is a hash of the URL, the object's size, its version and
//!   its ETag (from a server that sends none, its last modification time), so a changed object is
//!   a new entry (the old one ages out). Entries are read-only and never written after
//!   they are renamed into place.
//! - `KEY.mmt.partial` and `KEY.parts.json`: a download in progress or interrupted. The sidecar
//!   lists the parts whose bytes were verified and synced to disk (it is replaced atomically after
//!   each part), so the next fetch GETs only the rest. A partial file is never renamed into place
//!   before every part is verified, and stays writable until it is: a process killed at any point
//!   leaves nothing the next fetch cannot resume or start over.
//! - `KEY.lock`: serializes downloads of one object across threads and processes (`flock`).
//!
//! ## Changed objects and the network
//!
//! Every fetch sends one HEAD request, even for a cached entry: that is how a changed object (new
//! ETag, size or modification time) is noticed, at the price of a round trip per shard per epoch,
//! and no bytes. Ranged GETs carry `If-Match: ETAG` (or, from a server without ETags,
//! `If-Unmodified-Since`), so an object replaced mid-download is [`Error::Changed`], never a mix
//! of two versions. A dataset's shards are fetched with [`Cache::fetch_expecting`]: the
//! manifest's length is checked against the HEAD before any GET, its header checksum against the
//! object's first bytes and against a cached entry, which is fetched again when it differs.
//!
//! ## Eviction
//!
//! Before a download, the least recently used entries (by modification time, which every fetch
//! sets) and stale partial downloads are deleted until the new object fits under the capacity.
//! An entry is deleted by unlinking it: a process that still maps it keeps a complete, unchanging
//! file (Linux keeps an unlinked inode until its last mapping goes; the file is never truncated or
//! written), so the mapping contract of `Store::open` holds; the disk space comes back when the last
//! mapping goes. Downloads in progress (locked) are never evicted, so several processes sharing one
//! folder can exceed the capacity by what they are downloading at once. A returned path is not
//! pinned: another process sharing the folder may evict it before the caller opens it (fetch
//! again); once a caller has opened or mapped it, it stays whole.
//!
//! Cargo features: none. Each scheme's client (object_store's `aws`, `gcp`, `azure`, `http`) is built in.
#![deny(missing_docs)]

mod cache;
mod client;
mod dataset;
mod download;
mod error;
mod fetch;
mod folder;
mod plan;
mod request;
mod sidecar;
mod stream;
mod upload;

pub use cache::{Cache, CacheOptions, Stats};
pub use dataset::{open_dataset, open_dataset_rank, read_manifest};
pub use error::{Error, Listed, Result};
pub use fetch::Expected;
pub use stream::{StreamOptions, StreamingDataset};
pub use upload::{push, Pushed, RemoteDatasetWriter};
