//! The cache over `file://` URLs: no server needed, so these run everywhere.

use mmtensor_convert::sample::{SampleStore, SampleTensor};
use mmtensor_format::{Dtype, FileLayout};
use mmtensor_remote::{Cache, Error};

fn write_sample(path: &std::path::Path) -> Vec<u8> {
    let store = SampleStore {
        alignment: 4096,
        block_size: 4096,
        metadata: vec![],
        tensors: vec![
            SampleTensor::pattern("a", Dtype::F32, &[30_000], 1),
            SampleTensor::pattern("b", Dtype::U8, &[5], 2),
        ],
    };
    store.write(path).unwrap();
    std::fs::read(path).unwrap()
}

fn url(path: &std::path::Path) -> String {
    format!("file://{}", path.display())
}

#[test]
fn a_file_url_is_fetched_verified_and_then_served_from_the_cache() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("s.mmt");
    let bytes = write_sample(&path);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("cache"), 1 << 20).unwrap();
    let got = cache.fetch(&url(&path)).unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), bytes);
    let gets = cache.stats().gets;
    assert_eq!(cache.fetch(&url(&path)).unwrap(), got);
    assert_eq!(cache.stats().gets, gets);
    assert!(std::fs::metadata(&got).unwrap().permissions().readonly());
}

#[test]
fn a_corrupt_file_names_the_block_and_leaves_nothing() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("s.mmt");
    let mut bytes = write_sample(&path);
    let layout = FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
    let a = layout.tensor_range(layout.tensor("a").unwrap());
    bytes[(a.start + 3 * 4096) as usize] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 1 << 20).unwrap();
    let err = cache.fetch(&url(&path)).unwrap_err();
    assert!(
        matches!(&err, Error::BlockChecksum { tensor, block: 3, .. } if tensor == "a"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_urls_and_async_callers_get_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 1 << 20).unwrap();
    for bad in ["not a url", "ftp://host/x.mmt", "memory:///x"] {
        let err = cache.fetch(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
    }
    let missing = dir.path().join("missing.mmt");
    let err = cache.fetch(&url(&missing)).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt
        .block_on(async { cache.fetch(&url(&missing)) })
        .unwrap_err();
    assert!(matches!(err, Error::InsideAsyncRuntime), "{err}");
}

/// A dataset over `file://`: each rank fetches only its own shards, and with several shards
/// missing the error names the first in manifest order (every shard before a failed one is
/// tried, whatever the threads' timing).
#[test]
fn a_file_dataset_opens_per_rank_and_names_the_first_missing_shard() {
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/dataset");
    let src = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&golden).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), src.path().join(entry.file_name())).unwrap();
    }
    // Shards of 3, 3, 3 and 1 rows: rank 0 of 2 owns shards 0 and 2, rank 1 shards 1 and 3.
    for (rank, owned) in [(0u64, [0usize, 2]), (1, [1, 3])] {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 1 << 20).unwrap();
        let ds = mmtensor_remote::open_dataset_rank(&cache, &url(src.path()), rank, 2).unwrap();
        let open: Vec<usize> = (0..4).filter(|&i| ds.shards()[i].is_some()).collect();
        assert_eq!(open, owned);
    }
    std::fs::remove_file(src.path().join("shard-00001.mmt")).unwrap();
    std::fs::remove_file(src.path().join("shard-00003.mmt")).unwrap();
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 1 << 20).unwrap();
        let e = mmtensor_remote::open_dataset(&cache, &url(src.path())).unwrap_err();
        assert!(e.to_string().contains("shard-00001.mmt"), "{e}");
        // Rank 0 owns neither missing shard.
        mmtensor_remote::open_dataset_rank(&cache, &url(src.path()), 0, 2).unwrap();
    }
}
