//! A sharded dataset (docs/FORMAT.md, "Dataset manifest") read from object storage: the manifest
//! fetched into memory, every shard fetched into the cache and checked, then all of them mapped
//! as one [`mmtensor::Dataset`].

use mmtensor_format::{Manifest, MANIFEST_FILE, MANIFEST_PREAMBLE_LEN, MAX_MANIFEST_BODY_LEN};

use crate::{Cache, Error, Result};

/// Opens the dataset whose manifest and shards lie under `url` (`s3://bucket/train/`, with or
/// without the final `/`): fetches `manifest.mmtm`, then each shard it lists through `cache`
/// (verified block by block, placed atomically; a shard already cached costs one HEAD), four
/// shards at once, mapping each as soon as it is placed, and makes them one [`mmtensor::Dataset`]
/// whose `dir()` is the URL.
///
/// The shards are mapped from the cache, whose placed files are read-only and never written again
/// (an evicted one is unlinked, which leaves an existing mapping whole), so no caller promise is
/// needed: this function is safe.
///
/// # Errors
///
/// As [`Cache::fetch_expecting`] for the manifest and each shard (the error names the shard's
/// URL; with several failures, the first shard's in manifest order): a shard whose length or
/// header checksum on the server is not the manifest's is [`Error::NotAsListed`] before its data
/// is fetched; [`Error::Manifest`] for an invalid manifest (an empty object among them);
/// [`Error::DatasetTooLarge`] before any shard is fetched when the shards together exceed the
/// cache's capacity; [`Error::Open`] when a fetched shard does not match the manifest.
pub fn open_dataset(cache: &Cache, url: &str) -> Result<mmtensor::Dataset> {
    open_selected(cache, url, None)
}

/// Like [`open_dataset`], but fetches and maps only the shards rank `rank` of `world_size` owns
/// when the loader reads whole shards per rank (`mmtensor::order::shard_ranks`; `docs/LOADER.md`,
/// "Whole shards per rank"): each of `world_size` processes downloads its own part of the
/// dataset, and no shard twice. Read it with `mmtensor::RankSplit::Shards` and the same rank and
/// world size (`Dataset::rank` remembers them); rows of other ranks' shards are
/// `mmtensor::Error::ShardNotOpen`.
///
/// # Errors
///
/// As [`open_dataset`]; [`Error::Open`] holding `mmtensor::Error::Order` when the rank is not
/// below the world size or the dataset has fewer non-empty shards than ranks (before any shard is
/// fetched).
pub fn open_dataset_rank(
    cache: &Cache,
    url: &str,
    rank: u64,
    world_size: u64,
) -> Result<mmtensor::Dataset> {
    open_selected(cache, url, Some((rank, world_size)))
}

/// Shards fetched (and mapped) at once when a dataset is opened. Each fetch already keeps
/// [`crate::CacheOptions::concurrency`] ranged GETs in flight; several shards at once also overlap
/// the HEAD of every cached shard (one round trip each) and a download's verification.
const SHARDS_AT_ONCE: usize = 4;

/// Reads the manifest under `url`, fetches the shards `select` flags, and maps them.
///
/// Each shard is mapped as soon as it is placed, so that a later fetch evicting it (when the
/// cache's other entries crowd it out) cannot take it away before it is opened: an evicted
/// file is unlinked, and a mapping of it stays whole. The shards selected must fit in the cache
/// together, or the dataset would evict itself while opening.
fn open_selected(cache: &Cache, url: &str, rank: Option<(u64, u64)>) -> Result<mmtensor::Dataset> {
    let base = url.trim_end_matches('/');
    let open_error = |source| Error::Open {
        url: base.into(),
        source: Box::new(source),
    };
    let manifest = read_manifest(cache, base)?;
    let wanted = match rank {
        Some((r, w)) => {
            mmtensor::Dataset::rank_shards(base, &manifest, r, w).map_err(open_error)?
        }
        None => vec![true; manifest.shards().len()],
    };
    let picked: Vec<usize> = (0..wanted.len()).filter(|&i| wanted[i]).collect();
    let size = picked
        .iter()
        .map(|&i| manifest.shards()[i].length())
        .fold(0u64, u64::saturating_add);
    if size > cache.capacity() {
        return Err(Error::DatasetTooLarge {
            url: base.into(),
            shards: picked.len(),
            size,
            dir: cache.dir().to_path_buf(),
            capacity: cache.capacity(),
            rank,
        });
    }
    // Each mapped shard holds a file descriptor; a failure leaves the limit as it was, and an
    // open over it reports the shard.
    let _ = mmtensor::Dataset::reserve_open_files(picked.len());
    let open = |i: usize| -> Result<mmtensor::Store> {
        let shard = &manifest.shards()[i];
        let url = format!("{base}/{}", shard.file());
        let mut tries = 0;
        loop {
            // The manifest's length and header checksum are the shard's identity: a server
            // object that is another is refused before its data is fetched, and a cached entry
            // that is another is fetched again.
            let path = cache.fetch_expecting(&url, crate::Expected::shard(shard))?;
            // SAFETY: `path` is a placed cache entry: written, verified and fsynced in full
            // before it was renamed into place read-only, and never opened for writing again by
            // any cache (an entry is replaced only under a new name and removed only by
            // unlinking, which leaves a mapping of it intact). Nothing else is documented to
            // write into the cache folder.
            match unsafe { mmtensor::Store::open(&path) } {
                Ok(store) => return Ok(store),
                // Another process sharing the folder evicted the entry between its placement and
                // this open: fetch it again (a few times, then report).
                Err(mmtensor::Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && tries < 3 =>
                {
                    tries += 1;
                }
                Err(source) => {
                    return Err(Error::Open {
                        url,
                        source: Box::new(source),
                    })
                }
            }
        }
    };
    let opened = in_parallel(picked.len(), SHARDS_AT_ONCE, |k| open(picked[k]))?;
    let mut shards: Vec<Option<mmtensor::Store>> = (0..wanted.len()).map(|_| None).collect();
    for (k, store) in opened.into_iter().enumerate() {
        shards[picked[k]] = Some(store);
    }
    let ds = match rank {
        Some((r, w)) => mmtensor::Dataset::from_rank_stores(base, manifest, shards, r, w),
        None => mmtensor::Dataset::from_stores(base, manifest, shards),
    }
    .map_err(open_error)?;
    // Processes sharing the folder may have pushed it past its capacity together (each one only
    // makes room before its own downloads): trim it back now. Every shard of this dataset is
    // mapped, so evicting one only unlinks it (a later open fetches it again). Housekeeping: a
    // failure here does not fail the open.
    let _ = cache.trim();
    Ok(ds)
}

/// The manifest of the dataset under `url`, read into memory (one HEAD and one GET; nothing is
/// written to the cache folder): what `mmt info s3://...` shows.
///
/// # Errors
///
/// As [`Cache::get_small`] (a missing manifest is [`Error::NotFound`]); [`Error::Manifest`] for
/// an invalid one.
pub fn read_manifest(cache: &Cache, url: &str) -> Result<Manifest> {
    let manifest_url = format!("{}/{MANIFEST_FILE}", url.trim_end_matches('/'));
    let bytes = cache.get_small(&manifest_url, MANIFEST_PREAMBLE_LEN + MAX_MANIFEST_BODY_LEN)?;
    Manifest::parse(&bytes).map_err(|source| Error::Manifest {
        url: manifest_url,
        source,
    })
}

/// `f(0)`, ..., `f(count - 1)` on up to `at_once` threads, each taking the next index from a
/// shared counter; the results in index order, or the error of the first index that failed.
///
/// After a failure no further index is started: indices are claimed in order, so every index
/// before a failed one was tried, and the first failure in index order is the one reported.
pub(crate) fn in_parallel<T: Send>(
    count: usize,
    at_once: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<std::sync::Mutex<Option<Result<T>>>> =
        (0..count).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..at_once.min(count) {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= count {
                    break;
                }
                let result = f(k);
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            });
        }
    });
    let mut out = Vec::with_capacity(count);
    for slot in slots {
        match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            // Not claimed: the workers stopped after an error in an earlier slot, returned above.
            None => continue,
        }
    }
    Ok(out)
}
