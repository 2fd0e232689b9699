//! The cache's suite against every backend, each a real local server that `scripts/test.sh`
//! starts (`common::backends`): S3 (moto), GCS (fake-gcs-server), Azure (Azurite) and HTTP
//! (nginx). Every test runs its checks on each backend, then fails naming those that failed.
//!
//! Without the servers' variables the tests skip with a printed reason, and fail under `CI=true`.

use std::path::Path;

mod common;
use common::backends::{for_each_backend, Backend, Kind};
use common::{assert_same_rows, golden_dataset, listing, no_download_left, parts_done, sample_mmt};

use mmtensor_format::FileLayout;
use mmtensor_remote::{Cache, Error};

/// A cache in `dir` for `b`, 64 MiB, parts of `part_size` bytes, two GETs at once.
fn new_cache(b: &Backend, dir: &Path, part_size: u64) -> Cache {
    Cache::with_options(dir, 64 << 20, b.cache_options(part_size, 2)).unwrap()
}

/// Waits past the second that a file written now would have as its modification time.
fn next_second() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}

fn entries(dir: &Path) -> usize {
    listing(dir).iter().filter(|n| n.ends_with(".mmt")).count()
}

#[test]
fn fetch_is_the_object_byte_for_byte_and_a_second_fetch_sends_no_get() {
    for_each_backend("fetch", |b| {
        let url = format!("{}/shards/x-000.mmt", b.place("fetch"));
        let bytes = sample_mmt(2, 1);
        b.put(&url, &bytes);
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(b, dir.path(), 256 << 10);

        let path = cache.fetch(&url).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let first = cache.stats();
        assert_eq!(first.heads, 1);
        assert!(first.gets >= 2, "{first:?}");
        assert_eq!(first.bytes_downloaded, bytes.len() as u64);

        let again = cache.fetch(&url).unwrap();
        assert_eq!(again, path);
        let second = cache.stats();
        assert_eq!(second.gets, first.gets, "a cached entry sends no GET");
        assert_eq!(
            second.heads, 2,
            "one HEAD checks that the object is the same"
        );
        assert_eq!(second.bytes_downloaded, first.bytes_downloaded);
        assert_eq!(entries(dir.path()), 1, "{:?}", listing(dir.path()));
    });
}

#[test]
fn an_object_replaced_between_two_fetches_is_a_new_entry() {
    for_each_backend("replaced", |b| {
        let url = format!("{}/x.mmt", b.place("replaced"));
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(b, dir.path(), 1 << 20);
        // Same size, other bytes: only the ETag (or the modification time) tells them apart.
        let (old, new) = (sample_mmt(1, 3), sample_mmt(1, 4));
        assert_eq!(old.len(), new.len());
        b.put(&url, &old);
        let old_path = cache.fetch(&url).unwrap();
        if b.kind == Kind::Http {
            // nginx's ETag (without one, its Last-Modified) is the file's modification time in
            // whole seconds (and its size): a file of the same size replaced within the same
            // second looks unchanged (a limit of nginx; `fetch_expecting` checks the header's
            // checksum for such servers).
            next_second();
        }
        b.put(&url, &new);
        let new_path = cache.fetch(&url).unwrap();
        assert_ne!(new_path, old_path, "a changed object is a new entry");
        assert_eq!(std::fs::read(&new_path).unwrap(), new);
        // The old entry stays until it is evicted: whoever maps it keeps the old bytes.
        assert_eq!(std::fs::read(&old_path).unwrap(), old);

        // A new size is a new entry at once, on every server.
        let smaller = sample_mmt(0, 5);
        b.put(&url, &smaller);
        let third = cache.fetch(&url).unwrap();
        assert!(third != old_path && third != new_path);
        assert_eq!(std::fs::read(&third).unwrap(), smaller);
        assert_eq!(entries(dir.path()), 3);
    });
}

#[test]
fn a_corrupt_object_names_url_tensor_and_block_and_leaves_nothing() {
    for_each_backend("corrupt", |b| {
        let url = format!("{}/bad.mmt", b.place("corrupt"));
        let mut bytes = sample_mmt(1, 3);
        let layout = FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
        let x = layout.tensor_range(layout.tensor("x").unwrap());
        let bad = x.start + 5 * (64 << 10) + 17;
        bytes[bad as usize] ^= 0x40;
        b.put(&url, &bytes);

        let dir = tempfile::tempdir().unwrap();
        let cache =
            Cache::with_options(dir.path(), 64 << 20, b.cache_options(128 << 10, 4)).unwrap();
        let err = cache.fetch(&url).unwrap_err();
        match &err {
            Error::BlockChecksum {
                url: u,
                tensor,
                block,
                offset,
                ..
            } => {
                assert_eq!(u, &url);
                assert_eq!((tensor.as_str(), *block), ("x", 5));
                assert_eq!(*offset, x.start + 5 * (64 << 10));
            }
            e => panic!("expected a block checksum error, got {e}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&url) && msg.contains("block 5"), "{msg}");
        assert!(no_download_left(dir.path()), "{:?}", listing(dir.path()));
        assert_eq!(cache.usage().unwrap(), 0);
    });
}

/// Ranged GETs carry `If-Match` with the ETag of the HEAD: an object replaced mid-download is
/// `Error::Changed`, never a mix of two versions, and nothing of it stays.
#[test]
fn an_object_replaced_during_the_download_is_changed_and_leaves_nothing() {
    for_each_backend("changed during", |b| {
        if b.kind == Kind::Gcs {
            // fake-gcs-server ignores If-Match on its XML API's GETs (GCS honours it): the rest
            // of the download would be the new object's bytes, caught only by the checksums.
            eprintln!("skipping {}: the emulator ignores If-Match", b.name);
            return;
        }
        let url = format!("{}/x.mmt", b.place("changed"));
        b.put(&url, &sample_mmt(12, 7));
        if b.kind == Kind::Http {
            // Without an ETag, the GETs carry If-Unmodified-Since, in whole seconds: the new
            // file must be modified in a later second than the old one to count as changed.
            next_second();
        }
        let dir = tempfile::tempdir().unwrap();
        let result = std::thread::scope(|s| {
            let fetch = s.spawn(|| {
                let cache = Cache::with_options(dir.path(), 64 << 20, b.cache_options(64 << 10, 1))
                    .unwrap();
                cache.fetch(&url)
            });
            while parts_done(dir.path()) < 2 && !fetch.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            b.put(&url, &sample_mmt(1, 8));
            fetch.join().unwrap()
        });
        let err = result.expect_err("the fetch should notice the new object");
        assert!(
            matches!(&err, Error::Changed { url: u } if *u == url),
            "{err}"
        );
        assert!(no_download_left(dir.path()), "{:?}", listing(dir.path()));
    });
}

#[test]
fn a_missing_object_is_not_found_and_says_what_is_there_where_the_server_lists() {
    for_each_backend("missing", |b| {
        let place = b.place("missing");
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(b, dir.path(), 1 << 20);
        let url = format!("{place}/nope.mmt");
        let err = cache.fetch(&url).unwrap_err();
        let Error::NotFound { url: u, note } = &err else {
            panic!("expected not found, got {err}");
        };
        assert_eq!(*u, url);
        assert!(err.to_string().contains(&url), "{err}");
        if b.lists() {
            assert_eq!(
                note.as_deref(),
                Some(format!("nothing is stored under {place}/").as_str()),
                "{err}"
            );
        } else {
            // HTTP cannot list: the 404 is all there is to say.
            assert_eq!(*note, None, "{err}");
        }

        // A prefix with objects but no manifest: an upload not finished.
        b.put(&format!("{place}/half/shard-00000.mmt"), b"x");
        let err = mmtensor_remote::read_manifest(&cache, &format!("{place}/half")).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        if b.lists() {
            assert!(err.to_string().contains("no manifest.mmtm"), "{err}");
        }

        // A bucket (container) that does not exist.
        let err = cache
            .fetch(&format!("{}/x.mmt", b.missing_place()))
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        // fake-gcs-server answers the listing of a missing bucket with a 500 (GCS: a 404,
        // NoSuchBucket), which says nothing: the note is left out rather than guessed.
        if b.lists() && b.kind != Kind::Gcs {
            assert!(err.to_string().contains("does not exist"), "{err}");
        }

        // Not a store at all: refused by its header, nothing kept.
        let text = format!("{place}/text.mmt");
        b.put(&text, b"not a tensor store at all, just text");
        let err = cache.fetch(&text).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err}");

        // An object that is gone by the time of the fetch.
        let gone = format!("{place}/gone.mmt");
        b.put(&gone, &sample_mmt(0, 1));
        b.delete(&gone);
        let err = cache.fetch(&gone).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(no_download_left(dir.path()), "{:?}", listing(dir.path()));
    });
}

/// The golden dataset uploaded to the server opens as the local folder does, its second opening
/// fetches only the manifest, and each rank fetches only its own shards.
#[test]
fn a_dataset_under_a_prefix_opens_as_the_local_folder_does() {
    for_each_backend("dataset", |b| {
        let golden = golden_dataset();
        let url = format!("{}/train", b.place("dataset"));
        b.put_dataset(&url, &golden, None);
        // SAFETY: the committed fixture is not modified while mapped.
        let local = unsafe { mmtensor::Dataset::open(&golden) }.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(b, dir.path(), 1 << 20);
        let remote = mmtensor_remote::open_dataset(&cache, &format!("{url}/")).unwrap();
        assert_eq!(remote.num_rows(), local.num_rows());
        assert_eq!(remote.shards().len(), 4);
        assert_eq!(remote.path(), Path::new(&url));
        assert_same_rows(&remote, &local, &[9, 0, 3, 4, 8, 2]);
        remote.verify().unwrap();
        let gets = cache.stats().gets;
        mmtensor_remote::open_dataset(&cache, &url).unwrap();
        assert_eq!(
            cache.stats().gets,
            gets + 1,
            "the second opening fetches only the manifest"
        );

        // An empty manifest is an invalid one, found without a GET (a ranged GET of 0..0 is
        // an invalid range to every server).
        let empty = format!("{url}-empty");
        b.put(&format!("{empty}/manifest.mmtm"), b"");
        let gets = cache.stats().gets;
        let e = mmtensor_remote::open_dataset(&cache, &empty).unwrap_err();
        assert!(matches!(e, Error::Manifest { .. }), "{e}");
        assert!(e.to_string().contains("manifest.mmtm"), "{e}");
        assert_eq!(cache.stats().gets, gets, "no GET for an empty object");

        // Shards of 3, 3, 3 and 1 rows: rank 0 owns shards 0 and 2, rank 1 shards 1 and 3.
        let local_y = local.column("y").unwrap();
        for (rank, owned) in [(0u64, [0usize, 2]), (1, [1, 3])] {
            let dir = tempfile::tempdir().unwrap();
            let cache = new_cache(b, dir.path(), 1 << 20);
            let ds = mmtensor_remote::open_dataset_rank(&cache, &url, rank, 2).unwrap();
            let open: Vec<usize> = (0..4).filter(|&i| ds.shards()[i].is_some()).collect();
            assert_eq!(open, owned);
            // The manifest (into memory) and two shards: three HEADs, two entries.
            assert_eq!(cache.stats().heads, 3);
            assert_eq!(entries(dir.path()), 2);
            let y = ds.column("y").unwrap();
            // starts(): where each shard's rows begin, then the total.
            let rows: Vec<u64> = owned
                .iter()
                .flat_map(|&i| y.starts()[i]..y.starts()[i + 1])
                .collect();
            let mut got = vec![0u8; rows.len() * 8];
            let mut want = got.clone();
            y.take_into(&rows, &mut got).unwrap();
            local_y.take_into(&rows, &mut want).unwrap();
            assert_eq!(got, want, "rank {rank}");
        }

        // A missing shard is named; the shards fetched meanwhile are whole entries.
        let missing = format!("{}/train", b.place("dataset-missing"));
        b.put_dataset(&missing, &golden, Some("shard-00002.mmt"));
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(b, dir.path(), 1 << 20);
        let e = mmtensor_remote::open_dataset(&cache, &missing).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("train/shard-00002.mmt"), "{e}");
        assert!(
            listing(dir.path())
                .iter()
                .all(|n| !n.ends_with(".partial") && !n.ends_with(".parts.json")),
            "{:?}",
            listing(dir.path())
        );
    });
}
