//! The cache against a real S3-compatible server: moto, started by `scripts/test.sh`
//! (`MMT_TEST_S3_ENDPOINT`), and, for the fault tests, by the test itself from
//! `MMT_TEST_MOTO_SERVER` (so it can kill and restart it, or start it with authentication on).
//!
//! Without those variables the tests skip with a printed reason, and fail under `CI=true`.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;
use common::backends::Backend;
use common::{
    assert_same_rows, bucket, create_bucket, each_dataset_file, golden_dataset, listing,
    no_download_left, parts_done, required_env, s3_options, sample_mmt, sidecar,
};

use mmtensor_convert::sample::{SampleStore, SampleTensor};
use mmtensor_format::Dtype;
use mmtensor_remote::{Cache, CacheOptions, Error};
use mmtensor_testsupport::small_disk;

/// Uploads `bytes` as `s3://bucket/key` with object_store itself.
fn upload(endpoint: &str, bucket: &str, key: &str, bytes: Vec<u8>) {
    Backend::s3(endpoint).put(&format!("s3://{bucket}/{key}"), &bytes);
}

/// Creates `bucket` and uploads the dataset folder `dir` under `train/`, but for the file `skip`.
fn upload_dataset(endpoint: &str, bucket: &str, dir: &Path, skip: Option<&str>) {
    create_bucket(endpoint, bucket);
    each_dataset_file(dir, skip, |name, bytes| {
        upload(endpoint, bucket, &format!("train/{name}"), bytes)
    });
}

fn options(endpoint: &str, part_size: u64, concurrency: usize) -> CacheOptions {
    let mut o = CacheOptions::default();
    o.part_size = part_size;
    o.concurrency = concurrency;
    o.retries = 2;
    o.retry_timeout = Duration::from_secs(5);
    o.backoff = Duration::from_millis(20);
    o.store_options = s3_options(endpoint);
    o
}

#[test]
fn fetch_is_the_object_byte_for_byte_and_a_second_fetch_sends_no_get() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "fetch") else {
        return;
    };
    let b = bucket("fetch");
    create_bucket(&endpoint, &b);
    let bytes = sample_mmt(2, 1);
    upload(&endpoint, &b, "shards/x-000.mmt", bytes.clone());

    let dir = tempfile::tempdir().unwrap();
    // Endpoint and credentials from the environment (AWS_ENDPOINT_URL, ...), as a user's would.
    let cache = Cache::with_options(dir.path(), 64 << 20, {
        let mut o = CacheOptions::default();
        o.part_size = 256 << 10;
        o
    })
    .unwrap();
    let url = format!("s3://{b}/shards/x-000.mmt");
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
        "one HEAD checks that the object did not change"
    );
    assert_eq!(second.bytes_downloaded, first.bytes_downloaded);
    assert_eq!(
        listing(dir.path())
            .iter()
            .filter(|n| n.ends_with(".mmt"))
            .count(),
        1
    );

    // A changed object (new ETag) is a new entry.
    let changed = sample_mmt(1, 2);
    upload(&endpoint, &b, "shards/x-000.mmt", changed.clone());
    let new_path = cache.fetch(&url).unwrap();
    assert_ne!(new_path, path);
    assert_eq!(std::fs::read(&new_path).unwrap(), changed);
}

#[test]
fn a_missing_object_is_not_found_and_a_bad_header_is_refused() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "missing") else {
        return;
    };
    let b = bucket("missing");
    create_bucket(&endpoint, &b);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::with_options(dir.path(), 64 << 20, options(&endpoint, 1 << 20, 2)).unwrap();
    let url = format!("s3://{b}/nope.mmt");
    let err = cache.fetch(&url).unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { url: u, .. } if *u == url),
        "{err}"
    );
    assert!(err.to_string().contains(&url));

    // Regression (issue 23): a missing bucket said only "no such object". The 404 of a HEAD is the
    // same for a missing bucket, an empty prefix and a missing manifest: a listing tells them apart.
    let err = cache
        .fetch(&format!("s3://{b}-not-created/x.mmt"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { .. }) && err.to_string().contains("bucket"),
        "{err}"
    );
    let err = mmtensor_remote::read_manifest(&cache, &format!("s3://{b}/no-dataset/")).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("nothing is stored under s3://{b}/no-dataset/")),
        "{err}"
    );
    upload(&endpoint, &b, "half/shard-00000.mmt", b"x".to_vec());
    let err = mmtensor_remote::read_manifest(&cache, &format!("s3://{b}/half")).unwrap_err();
    assert!(
        err.to_string().contains("no manifest.mmtm") && err.to_string().contains("uploaded last"),
        "{err}"
    );

    upload(
        &endpoint,
        &b,
        "text.mmt",
        b"not a tensor store at all, just text".to_vec(),
    );
    let err = cache.fetch(&format!("s3://{b}/text.mmt")).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    assert!(no_download_left(dir.path()), "{:?}", listing(dir.path()));
}

#[test]
fn least_recently_used_entries_are_evicted_to_stay_under_capacity() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "lru") else {
        return;
    };
    let b = bucket("lru");
    create_bucket(&endpoint, &b);
    let objects: Vec<Vec<u8>> = (0..3).map(|i| sample_mmt(1, 10 + i)).collect();
    for (i, o) in objects.iter().enumerate() {
        upload(&endpoint, &b, &format!("s{i}.mmt"), o.clone());
    }
    let size = objects[0].len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let capacity = size * 5 / 2;
    let cache = Cache::with_options(dir.path(), capacity, options(&endpoint, 1 << 20, 2)).unwrap();
    let url = |i: usize| format!("s3://{b}/s{i}.mmt");

    let p0 = cache.fetch(&url(0)).unwrap();
    let p1 = cache.fetch(&url(1)).unwrap();
    // s0 is used again, so s1 is now the least recently used.
    cache.fetch(&url(0)).unwrap();
    // Map s1 as a caller would: eviction must not disturb a mapping that is still open.
    let mapped = std::fs::File::open(&p1).unwrap();
    let p2 = cache.fetch(&url(2)).unwrap();
    assert!(p0.exists() && p2.exists());
    assert!(!p1.exists(), "the least recently used entry goes first");
    assert!(cache.usage().unwrap() <= capacity);
    let mut still = Vec::new();
    (&mapped).read_to_end(&mut still).unwrap();
    assert_eq!(
        still, objects[1],
        "an evicted file stays whole for whoever holds it"
    );

    let small = Cache::with_options(dir.path(), size - 1, options(&endpoint, 1 << 20, 2)).unwrap();
    let err = small.fetch(&format!("s3://{b}/s1.mmt")).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn threads_fetching_one_object_at_once_download_it_once() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "concurrent") else {
        return;
    };
    let b = bucket("concurrent");
    create_bucket(&endpoint, &b);
    let bytes = sample_mmt(2, 6);
    upload(&endpoint, &b, "x.mmt", bytes.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache =
        Cache::with_options(dir.path(), 64 << 20, options(&endpoint, 256 << 10, 2)).unwrap();
    let url = format!("s3://{b}/x.mmt");
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| cache.fetch(&url).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths.iter().all(|p| *p == paths[0]));
    assert_eq!(std::fs::read(&paths[0]).unwrap(), bytes);
    let stats = cache.stats();
    assert_eq!(stats.heads, 4);
    assert_eq!(
        stats.bytes_downloaded,
        bytes.len() as u64,
        "the per-object lock lets one thread download, the others find its entry"
    );
}

#[test]
fn an_object_replaced_during_the_download_is_changed_and_leaves_nothing() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "changed") else {
        return;
    };
    let b = bucket("changed");
    create_bucket(&endpoint, &b);
    upload(&endpoint, &b, "x.mmt", sample_mmt(12, 7));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("s3://{b}/x.mmt");
    let result = std::thread::scope(|s| {
        let fetch = s.spawn(|| {
            let cache =
                Cache::with_options(dir.path(), 64 << 20, options(&endpoint, 64 << 10, 1)).unwrap();
            cache.fetch(&url)
        });
        while parts_done(dir.path()) < 2 && !fetch.is_finished() {
            std::thread::sleep(Duration::from_millis(2));
        }
        upload(&endpoint, &b, "x.mmt", sample_mmt(1, 8));
        fetch.join().unwrap()
    });
    // Ranged GETs carry If-Match with the ETag of the HEAD: the rest of the old object is gone.
    let err = result.expect_err("the fetch should notice the new object");
    assert!(
        matches!(&err, Error::Changed { url: u } if *u == url),
        "{err}"
    );
    assert!(no_download_left(dir.path()), "{:?}", listing(dir.path()));
}

/// A moto server this test owns, on a free port of 127.0.0.1.
struct Moto {
    child: Child,
    port: u16,
    program: String,
    env: Vec<(String, String)>,
}

impl Moto {
    fn start(test: &str, env: &[(&str, &str)]) -> Option<Moto> {
        let program = required_env("MMT_TEST_MOTO_SERVER", test)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Self::spawn(&program, port, &env);
        Some(Moto {
            child,
            port,
            program,
            env,
        })
    }

    fn spawn(program: &str, port: u16, env: &[(String, String)]) -> Child {
        let mut child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        // Wait until it answers (bounded: 30 s).
        for _ in 0..300 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return child;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{program} did not start listening on port {port}");
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.program, self.port, &self.env);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_download_cut_by_a_killed_server_resumes_with_only_the_missing_parts() {
    let Some(mut moto) = Moto::start("resume", &[]) else {
        return;
    };
    let endpoint = moto.endpoint();
    let b = bucket("resume");
    create_bucket(&endpoint, &b);
    let bytes = sample_mmt(12, 4);
    upload(&endpoint, &b, "big.mmt", bytes.clone());
    let part = 64u64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("s3://{b}/big.mmt");

    let first = std::thread::scope(|s| {
        let fetch = s.spawn(|| {
            let cache =
                Cache::with_options(dir.path(), 64 << 20, options(&endpoint, part, 1)).unwrap();
            cache.fetch(&url)
        });
        // Kill the server once a few parts are verified and recorded, well before the last of 190.
        while parts_done(dir.path()) < 3 && !fetch.is_finished() {
            std::thread::sleep(Duration::from_millis(2));
        }
        moto.kill();
        fetch.join().unwrap()
    });
    let err = first.expect_err("the fetch should fail once the server is gone");
    assert!(matches!(err, Error::Request { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    let done = parts_done(dir.path());
    assert!(done >= 3, "{done} parts recorded");
    assert!(
        listing(dir.path()).iter().all(|n| !n.ends_with(".mmt")),
        "no entry under a final name: {:?}",
        listing(dir.path())
    );

    // moto keeps objects in memory: the restarted server gets the same bytes (same ETag) again.
    moto.restart();
    create_bucket(&endpoint, &b);
    upload(&endpoint, &b, "big.mmt", bytes.clone());
    let cache = Cache::with_options(dir.path(), 64 << 20, options(&endpoint, part, 4)).unwrap();
    let path = cache.fetch(&url).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    let stats = cache.stats();
    let size = bytes.len() as u64;
    eprintln!(
        "resume: {done} of about {} parts were kept; the resumed fetch sent {} GETs for {} of {size} bytes",
        size / part,
        stats.gets,
        stats.bytes_downloaded
    );
    assert!(
        stats.bytes_downloaded <= size - done as u64 * part,
        "resumed download fetched {} of {size} bytes though {done} parts of {part} were kept",
        stats.bytes_downloaded
    );
    assert!(stats.bytes_downloaded > 0);
    assert!(sidecar(dir.path()).is_none());
    assert!(listing(dir.path()).iter().all(|n| !n.ends_with(".partial")));
}

/// An http:// endpoint without permission for plain HTTP: the error says what to set.
#[test]
fn a_plain_http_endpoint_not_allowed_says_what_to_set() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "allow http") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&endpoint, 1 << 20, 1);
    o.store_options
        .push(("aws_allow_http".to_string(), "false".to_string()));
    let cache = Cache::with_options(dir.path(), 1 << 20, o).unwrap();
    let err = cache.fetch("s3://any/x.mmt").unwrap_err();
    assert!(matches!(err, Error::Setup { .. }), "{err}");
    assert!(err.to_string().contains("AWS_ALLOW_HTTP=true"), "{err}");
    assert!(no_download_left(dir.path()));
}

#[test]
fn wrong_credentials_are_access_denied() {
    // INITIAL_NO_AUTH_ACTION_COUNT=0 makes moto check every request's signature against its IAM
    // users, of which there are none: any key is wrong.
    let Some(moto) = Moto::start("credentials", &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache =
        Cache::with_options(dir.path(), 1 << 20, options(&moto.endpoint(), 1 << 20, 1)).unwrap();
    let url = "s3://private/x.mmt";
    let err = cache.fetch(url).unwrap_err();
    assert!(matches!(err, Error::AccessDenied { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(url) && msg.contains("AWS_ACCESS_KEY_ID"),
        "{msg}"
    );
    assert!(no_download_left(dir.path()));
}

#[test]
fn a_full_cache_disk_is_a_clear_error_and_leaves_nothing() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "disk full") else {
        return;
    };
    let b = bucket("full");
    create_bucket(&endpoint, &b);
    let bytes = sample_mmt(3, 5);
    upload(&endpoint, &b, "x.mmt", bytes.clone());
    let parent = tempfile::tempdir().unwrap();
    let Some(mount) = small_disk(parent.path()) else {
        return;
    };
    let dir = mount.path().join("cache");
    // Something else fills the disk: 6 of its 8 MiB.
    let filler = mount.path().join("filler");
    std::fs::write(&filler, vec![1u8; 6 << 20]).unwrap();

    // The capacity allows the object; the disk does not.
    let cache = Cache::with_options(&dir, 64 << 20, options(&endpoint, 256 << 10, 2)).unwrap();
    let url = format!("s3://{b}/x.mmt");
    let err = cache.fetch(&url).unwrap_err();
    assert!(matches!(err, Error::DiskFull { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&url) && msg.contains(&dir.display().to_string()),
        "{msg}"
    );
    assert!(no_download_left(&dir), "{:?}", listing(&dir));

    // With the space back, the same cache fetches it.
    std::fs::remove_file(&filler).unwrap();
    let path = cache.fetch(&url).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), bytes);
}

/// A sharded dataset folder uploaded to the server opens as the same dataset, its second opening
/// fetches nothing again, and a manifest that is not one is refused naming its URL.
#[test]
fn a_dataset_under_a_prefix_opens_as_the_local_folder_does() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "dataset") else {
        return;
    };
    let golden = golden_dataset();
    let b = bucket("dataset");
    upload_dataset(&endpoint, &b, &golden, None);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 64 << 20).unwrap();
    let url = format!("s3://{b}/train/");
    let remote = mmtensor_remote::open_dataset(&cache, &url).unwrap();
    // SAFETY: the committed fixture is not modified while mapped.
    let local = unsafe { mmtensor::Dataset::open(&golden) }.unwrap();
    assert_eq!(remote.num_rows(), local.num_rows());
    assert_eq!(remote.shards().len(), 4);
    assert_eq!(remote.path(), Path::new(&format!("s3://{b}/train")));
    assert_same_rows(&remote, &local, &[9, 0, 3, 4, 8, 2]);
    remote.verify().unwrap();
    let gets = cache.stats().gets;
    mmtensor_remote::open_dataset(&cache, &url).unwrap();
    assert_eq!(
        cache.stats().gets,
        gets + 1,
        "the second opening fetches only the manifest"
    );

    upload(
        &endpoint,
        &b,
        "bad/manifest.mmtm",
        b"not a manifest".to_vec(),
    );
    let e = mmtensor_remote::open_dataset(&cache, &format!("s3://{b}/bad")).unwrap_err();
    assert!(matches!(e, Error::Manifest { .. }), "{e}");
    assert!(e.to_string().contains("bad/manifest.mmtm"), "{e}");
    let e = mmtensor_remote::open_dataset(&cache, &format!("s3://{b}/none")).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");

    // Regression: an empty manifest object was a ranged GET of 0..0, reported as a failed
    // request ("Range started at 0 and ended at 0") and retried. It is an invalid manifest.
    upload(&endpoint, &b, "empty/manifest.mmtm", Vec::new());
    let gets = cache.stats().gets;
    let e = mmtensor_remote::open_dataset(&cache, &format!("s3://{b}/empty/")).unwrap_err();
    assert!(matches!(e, Error::Manifest { .. }), "{e}");
    assert!(e.to_string().contains("empty/manifest.mmtm"), "{e}");
    assert_eq!(cache.stats().gets, gets, "no GET for an empty object");
}

/// Regression: a manifest that under-states a shard's length (or lists another header checksum)
/// was found out only after every shard was downloaded, and the error named the hex cache file.
/// Against a real server: refused before any data GET, naming the shard's URL, nothing cached.
#[test]
fn a_shard_that_is_not_the_one_the_manifest_lists_is_refused_before_its_data() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "not as listed") else {
        return;
    };
    let b = bucket("listed");
    // A one-shard dataset of 3 MiB, so a data part would be GETs past the first page.
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("shard-00000.mmt");
    SampleStore {
        alignment: 4096,
        block_size: 64 << 10,
        metadata: vec![],
        tensors: vec![
            SampleTensor::pattern("x", Dtype::F32, &[1024, 768], 8),
            SampleTensor::pattern("y", Dtype::I64, &[1024], 9),
        ],
    }
    .write(&path)
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let layout = mmtensor_format::FileLayout::parse(&bytes, bytes.len() as u64).unwrap();
    let columns = layout
        .header()
        .tensors
        .iter()
        .map(|t| {
            mmtensor_format::ColumnSpec::new(t.name.clone(), t.dtype, t.shape[1..].to_vec())
                .unwrap()
        })
        .collect::<Vec<_>>();
    let rows = layout.header().tensors[0].shape[0];
    let manifest = |len: u64, sum: u64| {
        let shard = mmtensor_format::Shard::new("shard-00000.mmt", len, sum, rows).unwrap();
        mmtensor_format::Manifest::new(columns.clone(), vec![shard])
            .unwrap()
            .encode()
    };
    create_bucket(&endpoint, &b);
    upload(&endpoint, &b, "d/shard-00000.mmt", bytes.clone());
    let sum = layout.preamble().header_checksum;
    let len = bytes.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::with_options(dir.path(), 64 << 20, options(&endpoint, 1 << 20, 2)).unwrap();
    let shard_url = format!("s3://{b}/d/shard-00000.mmt");
    for (wrong, gets) in [(manifest(len - 4096, sum), 1), (manifest(len, sum ^ 1), 2)] {
        upload(&endpoint, &b, "d/manifest.mmtm", wrong);
        let before = cache.stats().gets;
        let e = mmtensor_remote::open_dataset(&cache, &format!("s3://{b}/d")).unwrap_err();
        assert!(
            matches!(&e, Error::NotAsListed { url, .. } if *url == shard_url),
            "{e}"
        );
        assert_eq!(cache.stats().gets - before, gets, "{e}");
        assert_eq!(cache.usage().unwrap(), 0);
        assert!(no_download_left(dir.path()), "{:?}", listing(dir.path()));
    }
    upload(&endpoint, &b, "d/manifest.mmtm", manifest(len, sum));
    let ds = mmtensor_remote::open_dataset(&cache, &format!("s3://{b}/d")).unwrap();
    ds.verify().unwrap();
}

/// A manifest whose shard is missing on the server: the error names the shard's URL, and the cache
/// holds no partial download afterwards (the other shards, fetched meanwhile, are whole entries).
#[test]
fn a_missing_shard_is_named_and_leaves_the_cache_consistent() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "missing shard") else {
        return;
    };
    let b = bucket("missing");
    upload_dataset(&endpoint, &b, &golden_dataset(), Some("shard-00002.mmt"));
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 64 << 20).unwrap();
    let e = mmtensor_remote::open_dataset(&cache, &format!("s3://{b}/train")).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("train/shard-00002.mmt"), "{e}");
    let names = listing(dir.path());
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".partial") && !n.ends_with(".parts.json")),
        "{names:?}"
    );
    // Rank 1 of 2 owns shards 1 and 3, both there: it opens.
    mmtensor_remote::open_dataset_rank(&cache, &format!("s3://{b}/train"), 1, 2).unwrap();
}

/// With whole shards per rank, each rank fetches only the shards it owns: the two ranks' caches
/// hold disjoint shards, together every shard, and each rank's loader reads only its own rows.
#[test]
fn each_rank_fetches_only_its_own_shards() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "rank shards") else {
        return;
    };
    let golden = golden_dataset();
    let b = bucket("ranks");
    upload_dataset(&endpoint, &b, &golden, None);
    let url = format!("s3://{b}/train");
    // Shards of 3, 3, 3 and 1 rows: rank 0 owns shards 0 and 2, rank 1 shards 1 and 3.
    let owned = [vec![0usize, 2], vec![1, 3]];
    // SAFETY: the committed fixture is not modified while mapped.
    let local = unsafe { mmtensor::Dataset::open(&golden) }.unwrap();
    let local_y = local.column("y").unwrap();
    let mut seen = Vec::new();
    for rank in 0..2u64 {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), 64 << 20).unwrap();
        let ds = mmtensor_remote::open_dataset_rank(&cache, &url, rank, 2).unwrap();
        let open: Vec<usize> = (0..4).filter(|&i| ds.shards()[i].is_some()).collect();
        assert_eq!(open, owned[rank as usize]);
        // The manifest (into memory) and two shards: three HEADs, and only the shards on disk.
        assert_eq!(cache.stats().heads, 3);
        let entries = listing(dir.path())
            .into_iter()
            .filter(|n| n.ends_with(".mmt"))
            .count();
        assert_eq!(entries, 2);
        let mut loader = mmtensor::Loader::from_dataset(
            &ds,
            mmtensor::LoaderOptions {
                shuffle: mmtensor::order::Shuffle::Full,
                rank,
                world_size: 2,
                drop_last: true,
                split: mmtensor::RankSplit::Shards,
                ..mmtensor::LoaderOptions::new(2)
            },
        )
        .unwrap();
        for batch in loader.iter().unwrap() {
            let batch = batch.unwrap();
            let mut want = vec![0u8; batch.row_indices().len() * 8];
            local_y.take_into(batch.row_indices(), &mut want).unwrap();
            assert_eq!(batch.column("y").unwrap().bytes(), want);
            seen.extend_from_slice(batch.row_indices());
        }
        let e = mmtensor_remote::open_dataset_rank(&cache, &url, 2, 2).unwrap_err();
        assert!(e.to_string().contains("rank 2"), "{e}");
    }
    // A cache too small for the whole dataset (4 shards of 464 bytes) refuses it before fetching
    // anything, naming the sizes; one rank's two shards fit.
    let dir = tempfile::tempdir().unwrap();
    let small = Cache::new(dir.path(), 1000).unwrap();
    let e = mmtensor_remote::open_dataset(&small, &url).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DatasetTooLarge {
                shards: 4,
                size: 1856,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(small.stats().gets, 1, "only the manifest");
    assert!(e.to_string().contains("1.8 KiB"), "{e}");
    let ds = mmtensor_remote::open_dataset_rank(&small, &url, 0, 2).unwrap();
    assert_eq!(ds.rank(), Some((0, 2)));
    // For one rank, the advice is the cache's size alone.
    let tiny = Cache::new(dir.path(), 500).unwrap();
    let e = mmtensor_remote::open_dataset_rank(&tiny, &url, 0, 2).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("for rank 0 of 2") && !text.contains("open only one rank"),
        "{text}"
    );
    // A folder pushed past its capacity (here by a cache with a larger one, as processes sharing
    // it can together) is trimmed back by the next open.
    let big = Cache::new(dir.path(), 64 << 20).unwrap();
    mmtensor_remote::open_dataset(&big, &url).unwrap();
    assert!(big.usage().unwrap() > 1000);
    mmtensor_remote::open_dataset_rank(&small, &url, 1, 2).unwrap();
    assert!(small.usage().unwrap() <= 1000, "{}", small.usage().unwrap());
    // drop_last: each rank reads as many rows as the smaller part (4), in batches of 2.
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 8);
}
