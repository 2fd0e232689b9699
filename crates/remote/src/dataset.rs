//! A sharded dataset (docs/FORMAT.md, "Dataset manifest") read from object storage: the manifest
//! fetched into memory, every shard fetched into the cache and checked, then all of them mapped
//! as one [`mmtensor::Dataset`].

use std::path::PathBuf;

use mmtensor_format::{Manifest, MANIFEST_FILE, MANIFEST_PREAMBLE_LEN, MAX_MANIFEST_BODY_LEN};

use crate::{Cache, Error, Result};

/// Opens the dataset whose manifest and shards lie under `url` (`s3://bucket/train/`, with or
/// without the final `/`): fetches `manifest.mmtm`, then each shard it lists through `cache`
/// (verified block by block, placed atomically; a shard already cached costs one HEAD), and maps
/// the cached files as one [`mmtensor::Dataset`] whose `dir()` is the URL.
///
/// The shards are mapped from the cache, whose placed files are read-only and never written again
/// (an evicted one is unlinked, which leaves an existing mapping whole), so no caller promise is
/// needed: this function is safe.
///
/// # Errors
///
/// As [`Cache::fetch`] for the manifest and each shard (the error names the URL);
/// [`Error::Manifest`] for an invalid manifest; [`Error::Open`] when a fetched shard does not
/// match the manifest.
pub fn open_dataset(cache: &Cache, url: &str) -> Result<mmtensor::Dataset> {
    open_selected(cache, url, |_, manifest| {
        Ok(vec![true; manifest.shards().len()])
    })
}

/// Like [`open_dataset`], but fetches and maps only the shards rank `rank` of `world_size` owns
/// when the loader reads whole shards per rank (`mmtensor::order::shard_ranks`; `docs/LOADER.md`,
/// "Whole shards per rank"): each of `world_size` processes downloads its own part of the
/// dataset, and no shard twice. Read it with `mmtensor::RankSplit::Shards` and the same rank and
/// world size; rows of other ranks' shards are `mmtensor::Error::ShardNotOpen`.
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
    open_selected(cache, url, |base, manifest| {
        mmtensor::Dataset::rank_shards(base, manifest, rank, world_size).map_err(|source| {
            Error::Open {
                url: base.into(),
                source: Box::new(source),
            }
        })
    })
}

/// Reads the manifest under `url`, fetches the shards `select` flags, and maps them.
fn open_selected(
    cache: &Cache,
    url: &str,
    select: impl FnOnce(&str, &Manifest) -> Result<Vec<bool>>,
) -> Result<mmtensor::Dataset> {
    let base = url.trim_end_matches('/');
    let manifest = read_manifest(cache, base)?;
    let wanted = select(base, &manifest)?;
    let paths = manifest
        .shards()
        .iter()
        .zip(wanted)
        .map(|(s, want)| {
            want.then(|| cache.fetch(&format!("{base}/{}", s.file())))
                .transpose()
        })
        .collect::<Result<Vec<Option<PathBuf>>>>()?;
    // SAFETY: every path is a placed cache entry: written, verified and fsynced in full before it
    // was renamed into place read-only, and never opened for writing again by any cache (an
    // entry is replaced only under a new name and removed only by unlinking, which leaves a
    // mapping of it intact). Nothing else is documented to write into the cache folder.
    unsafe { mmtensor::Dataset::open_shards(base, manifest, &paths) }.map_err(|source| {
        Error::Open {
            url: base.into(),
            source: Box::new(source),
        }
    })
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
