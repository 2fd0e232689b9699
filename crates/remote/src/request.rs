//! One version of one object, as a HEAD described it, and the ranged GETs of it: every GET carries
//! the HEAD's preconditions, counts what it receives, checks its length, and is retried with
//! backoff when its body fails midway (which object_store's own retries, before the body starts,
//! do not cover). A download (`download.rs`) and a streamed dataset (`stream/`) both read so.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};

use crate::cache::Counters;
use crate::client::unchanged_since;
use crate::{Cache, CacheOptions, Error, Result};

/// One version of one object: its client, location and URL, and the preconditions that pin
/// every GET to the version its HEAD saw (so a replaced object is [`Error::Changed`], never a mix
/// of two versions).
pub(crate) struct Object {
    pub(crate) url: String,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) location: object_store::path::Path,
    pub(crate) conditions: GetOptions,
}

impl Object {
    /// The object `meta` describes.
    pub(crate) fn new(
        url: &str,
        store: Arc<dyn ObjectStore>,
        location: object_store::path::Path,
        meta: &ObjectMeta,
    ) -> Object {
        Object {
            url: url.into(),
            store,
            location,
            conditions: unchanged_since(meta),
        }
    }

    /// One ranged GET, each chunk passed to `check` as it arrives; returns the bytes if `keep`,
    /// or nothing (a caller that writes each chunk as it streams).
    ///
    /// # Errors
    ///
    /// [`Error::request`]'s for a failed request or body; [`Error::ShortRead`] for a body of
    /// another length; what `check` returns.
    pub(crate) async fn get(
        &self,
        counters: &Counters,
        range: Range<u64>,
        keep: bool,
        mut check: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<Vec<u8>> {
        counters.get();
        let action = || format!("GET bytes {}..{}", range.start, range.end);
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..self.conditions.clone()
        };
        let result = self
            .store
            .get_opts(&self.location, options)
            .await
            .map_err(|e| Error::request(&self.url, action(), e))?;
        let mut stream = result.into_stream();
        // The whole range when kept: grown by doubling, a 64 MiB part would be copied twice more.
        let mut out = Vec::with_capacity(if keep {
            (range.end - range.start) as usize
        } else {
            0
        });
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::request(&self.url, action(), e))?;
            counters.received(chunk.len() as u64);
            got += chunk.len() as u64;
            if got > range.end - range.start {
                break;
            }
            check(&chunk)?;
            if keep {
                out.extend_from_slice(&chunk);
            }
        }
        if got != range.end - range.start {
            return Err(Error::ShortRead {
                url: self.url.clone(),
                start: range.start,
                end: range.end,
                got,
            });
        }
        Ok(out)
    }
}

impl Object {
    /// The bytes of `range`, by [`Object::get`], retried as [`retrying`] retries with `cache`'s
    /// options: a head, a checksum table.
    ///
    /// # Errors
    ///
    /// As [`Object::get`], once the retries are spent.
    pub(crate) async fn bytes(&self, cache: &Cache, range: Range<u64>) -> Result<Vec<u8>> {
        retrying(&cache.options, || {
            self.get(&cache.counters, range.clone(), true, |_| Ok(()))
        })
        .await
    }
}

/// Reads `range` of `file` (at `path`, which errors name): bytes a cache file already holds.
///
/// # Errors
///
/// [`Error::Io`] when the read fails or the file is shorter.
pub(crate) fn read_at(
    file: &std::fs::File,
    path: &std::path::Path,
    range: Range<u64>,
) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; (range.end - range.start) as usize];
    file.read_exact_at(&mut buf, range.start)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            action: "read",
            source,
        })?;
    Ok(buf)
}

/// Runs `once` until it succeeds, fails for good, or has been retried
/// [`CacheOptions::retries`] times, waiting between tries from [`CacheOptions::backoff`],
/// doubling.
pub(crate) async fn retrying<T, F>(options: &CacheOptions, mut once: impl FnMut() -> F) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match once().await {
            Err(e) if e.is_transient() && attempt < options.retries => {
                tokio::time::sleep(backoff(options, attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The wait before retry `attempt` (from 0): the first backoff, doubled each time.
fn backoff(options: &CacheOptions, attempt: usize) -> Duration {
    options.backoff.saturating_mul(1 << attempt.min(10))
}
