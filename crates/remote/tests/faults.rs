//! The cache against a real S3-compatible server (moto, `MMT_TEST_S3_ENDPOINT`, started by
//! `scripts/test.sh`) through a fault-injecting proxy (`mmtensor_testsupport::FaultProxy`):
//! slow and throttled responses, connections reset or cut short mid-body, a server that is down
//! and comes back. Whatever the network does, a fetch either returns the object byte for byte or
//! fails with an error naming the URL, and never places a byte it did not verify.
//!
//! Objects are uploaded to moto directly; only the cache's requests go through the proxy. No test
//! asserts on wall-clock time but for generous upper bounds that catch a hang.
//!
//! Without the variables the tests skip with a printed reason, and fail under `CI=true`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::backends::Backend;
use common::{
    assert_same_rows, bucket, create_bucket, golden_dataset, required_env, s3_options, sample_mmt,
};

use mmtensor_remote::{Cache, CacheOptions, Error};
use mmtensor_testsupport::{Fault, FaultProxy};

/// Bytes per ranged GET in these tests: a 6 MiB object is some two dozen parts.
const PART: u64 = 256 << 10;

/// A generous bound on a fetch that fails: only a hang takes this long.
const HANG: Duration = Duration::from_secs(60);

/// The moto endpoint and a proxy in front of it, or `None` (the test skips) without moto.
fn setup(test: &str) -> Option<(String, FaultProxy)> {
    let endpoint = required_env("MMT_TEST_S3_ENDPOINT", test)?;
    let upstream: SocketAddr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("MMT_TEST_S3_ENDPOINT={endpoint}: {e}"))
        .next()
        .unwrap_or_else(|| panic!("MMT_TEST_S3_ENDPOINT={endpoint}: no address"));
    let proxy = FaultProxy::start(upstream).expect("start the fault proxy");
    Some((endpoint, proxy))
}

/// A bucket with one object of `mib` MiB: its URL and bytes.
fn object(endpoint: &str, name: &str, mib: u64) -> (String, Vec<u8>) {
    let b = bucket(name);
    create_bucket(endpoint, &b);
    let bytes = sample_mmt(mib, 7);
    Backend::s3(endpoint).put(&format!("s3://{b}/x.mmt"), &bytes);
    (format!("s3://{b}/x.mmt"), bytes)
}

/// Small parts, 4 at once, `retries` tries of each request and part, short waits; every request
/// to the proxy.
fn options(proxy: &FaultProxy, retries: usize) -> CacheOptions {
    let mut o = CacheOptions::default();
    o.part_size = PART;
    o.concurrency = 4;
    o.retries = retries;
    o.retry_timeout = Duration::from_secs(10);
    o.backoff = Duration::from_millis(10);
    o.store_options = s3_options(&proxy.endpoint());
    o
}

fn new_cache(dir: &Path, proxy: &FaultProxy, retries: usize) -> Cache {
    Cache::with_options(dir, 256 << 20, options(proxy, retries)).unwrap()
}

/// The names in the cache folder, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Whether the folder holds a complete entry (a `KEY.mmt`).
fn has_entry(dir: &Path) -> bool {
    listing(dir).iter().any(|n| n.ends_with(".mmt"))
}

fn sidecar(dir: &Path) -> Option<PathBuf> {
    listing(dir)
        .into_iter()
        .find(|n| n.ends_with(".parts.json"))
        .map(|n| dir.join(n))
}

/// The sidecar's record: head and tail done, and how many data parts.
fn progress(dir: &Path) -> (bool, bool, u64) {
    let Some(v) = sidecar(dir)
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return (false, false, 0);
    };
    // Runs [start, end) of finished part indices.
    let parts = v["done"].as_array().map_or(0, |runs| {
        runs.iter()
            .map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap())
            .sum()
    });
    (v["head"] == true, v["tail"] == true, parts)
}

/// The `start..end` of the first "bytes START..END" in `text`.
fn byte_range(text: &str) -> Option<(u64, u64)> {
    let at = text.find("bytes ")? + "bytes ".len();
    let (range, _) = text[at..].split_once(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (a, b) = range.split_once("..")?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Fetches `url` with a bound that catches a hang.
fn fetch_within(cache: &Cache, url: &str) -> Result<PathBuf, Error> {
    let start = Instant::now();
    let result = cache.fetch(url);
    assert!(
        start.elapsed() < HANG,
        "the fetch of {url} took {:?}",
        start.elapsed()
    );
    result
}

#[test]
fn delayed_and_throttled_responses_still_fetch_the_object_byte_for_byte() {
    let Some((endpoint, proxy)) = setup("delay and throttle") else {
        return;
    };
    let (url, bytes) = object(&endpoint, "slow", 4);

    proxy.set_fault(Fault::Delay(Duration::from_millis(50)), None);
    let dir = tempfile::tempdir().unwrap();
    let path = fetch_within(&new_cache(dir.path(), &proxy, 2), &url).unwrap();
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "delayed: not the object"
    );

    // 1 MiB/s a connection, 4 connections: a few seconds.
    proxy.set_fault(
        Fault::Throttle {
            bytes_per_sec: 1 << 20,
        },
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = fetch_within(&new_cache(dir.path(), &proxy, 2), &url).unwrap();
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "throttled: not the object"
    );
    // Both fetches went through the proxy.
    assert!(proxy.stats().bytes_to_client > 2 * bytes.len() as u64);
    assert_eq!(proxy.stats().cut, 0);
}

#[test]
fn connections_reset_or_cut_short_mid_body_are_retried_and_the_entry_is_the_object() {
    let Some((endpoint, proxy)) = setup("resets and truncations") else {
        return;
    };
    let (url, bytes) = object(&endpoint, "flaky", 6);
    // moto closes each connection after one response, so a fault "after N bytes" acts on one
    // response: responses over 100 KiB (every data part) are cut, the HEAD, the head (4 KiB) and
    // the checksum table get through.
    for (fault, times) in [
        // Every data part cut on every connection: object_store resumes the range on a new
        // connection, three of which carry a part.
        (Fault::Reset { after: 100 << 10 }, None),
        (Fault::Truncate { after: 100 << 10 }, None),
        // Every other connection reset at its first byte (the HEAD's among them).
        (Fault::Reset { after: 0 }, Some(0)),
        // The next 10 connections only: some parts fail every try of object_store's and are
        // retried by the download, after its backoff.
        (Fault::Truncate { after: 100 << 10 }, Some(10)),
    ] {
        match times {
            Some(0) => proxy.set_fault_every_nth(fault.clone(), 2),
            _ => proxy.set_fault(fault.clone(), times),
        }
        let cut = proxy.stats().cut;
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(dir.path(), &proxy, 4);
        let path = fetch_within(&cache, &url).unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "{fault:?}: not the object"
        );
        let cut = proxy.stats().cut - cut;
        match times {
            None => assert!(cut > 0, "{fault:?} cut no connection"),
            Some(0) => assert!(cut > 0, "{fault:?} cut no connection"),
            // Only those of data parts (over 100 KiB) among the 10.
            Some(n) => assert!(cut > 0 && cut <= n as u64, "{fault:?}: {cut} cut"),
        }
        assert!(sidecar(dir.path()).is_none(), "{:?}", listing(dir.path()));
    }
}

#[test]
fn truncation_on_every_request_fails_naming_url_and_range_and_places_nothing() {
    let Some((endpoint, proxy)) = setup("truncation exhausts retries") else {
        return;
    };
    let (url, bytes) = object(&endpoint, "short", 2);
    // 16 KiB a connection: the head (4 KiB) and the checksum table get through, no 256 KiB data
    // part does, even resumed by object_store's own retries on fresh connections.
    proxy.set_fault(Fault::Truncate { after: 16 << 10 }, None);
    let dir = tempfile::tempdir().unwrap();
    let err =
        fetch_within(&new_cache(dir.path(), &proxy, 2), &url).expect_err("no part gets through");
    assert!(
        matches!(err, Error::Request { .. } | Error::ShortRead { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    eprintln!("truncated every time: {msg}");
    assert!(msg.starts_with(&format!("{url}: ")), "{msg}");
    let (start, end) = byte_range(&msg).unwrap_or_else(|| panic!("no byte range in: {msg}"));
    assert!(
        start < end && end <= bytes.len() as u64 && end - start >= PART,
        "{msg}"
    );
    // Nothing placed; what was verified (head and table) is kept to resume from.
    assert!(!has_entry(dir.path()), "{:?}", listing(dir.path()));
    assert_eq!(progress(dir.path()), (true, true, 0));

    proxy.set_fault(Fault::Pass, None);
    let cache = new_cache(dir.path(), &proxy, 2);
    let path = fetch_within(&cache, &url).unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes);
    // The head (4 KiB) and the table were kept: only the data parts are fetched again.
    assert!(
        cache.stats().bytes_downloaded <= bytes.len() as u64 - 4096,
        "{:?}",
        cache.stats()
    );
}

#[test]
fn a_server_down_mid_download_fails_naming_the_url_and_the_next_fetch_resumes() {
    let Some((endpoint, proxy)) = setup("server down") else {
        return;
    };
    let (url, bytes) = object(&endpoint, "down", 6);
    let size = bytes.len() as u64;
    // Slow enough (4 connections of 256 KiB/s: 6 s for the object) to go down midway.
    proxy.set_fault(
        Fault::Throttle {
            bytes_per_sec: 256 << 10,
        },
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let first = std::thread::scope(|s| {
        let fetch = s.spawn(|| fetch_within(&new_cache(dir.path(), &proxy, 2), &url));
        let start = Instant::now();
        while progress(dir.path()).2 < 3 && !fetch.is_finished() && start.elapsed() < HANG {
            std::thread::sleep(Duration::from_millis(2));
        }
        proxy.set_fault(Fault::Down, None);
        fetch.join().unwrap()
    });
    let err = first.expect_err("the fetch should fail once the server is down");
    assert!(matches!(err, Error::Request { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("down mid-download: {msg}");
    assert!(msg.starts_with(&format!("{url}: GET bytes ")), "{msg}");
    let (head, tail, done) = progress(dir.path());
    assert!(head && tail && done >= 3, "{:?}", progress(dir.path()));
    assert!(!has_entry(dir.path()), "{:?}", listing(dir.path()));

    // Still down: the HEAD fails, as clearly, and the partial download stays as it was.
    let start = Instant::now();
    let err = new_cache(dir.path(), &proxy, 2)
        .fetch(&url)
        .expect_err("the server is down");
    assert!(start.elapsed() < HANG, "{:?}", start.elapsed());
    assert!(matches!(err, Error::Request { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("still down: {msg}");
    assert!(msg.starts_with(&format!("{url}: HEAD failed: ")), "{msg}");
    // The cause, which object_store's own message leaves out.
    assert!(msg.contains("Connection refused"), "{msg}");
    assert_eq!(progress(dir.path()).2, done);
    assert!(!has_entry(dir.path()));

    // Back up: the next fetch GETs only the parts not yet done, and the entry is the object.
    proxy.set_fault(Fault::Pass, None);
    let cache = new_cache(dir.path(), &proxy, 2);
    let path = fetch_within(&cache, &url).unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes);
    let stats = cache.stats();
    let missing = size - done * PART;
    assert!(
        stats.bytes_downloaded <= missing,
        "resumed after {done} parts of {PART} bytes, yet fetched {stats:?} of {size}"
    );
    assert!(stats.gets <= missing.div_ceil(PART), "{stats:?}");
    assert!(sidecar(dir.path()).is_none());
    assert!(listing(dir.path()).iter().all(|n| !n.ends_with(".partial")));
}

#[test]
fn a_server_down_before_the_fetch_fails_naming_the_url_within_a_bound() {
    let Some((endpoint, proxy)) = setup("server down at the start") else {
        return;
    };
    let (url, bytes) = object(&endpoint, "refused", 1);
    proxy.set_fault(Fault::Down, None);
    let dir = tempfile::tempdir().unwrap();
    let cache = new_cache(dir.path(), &proxy, 2);
    let err = fetch_within(&cache, &url).expect_err("nothing listens");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{url}: HEAD failed: ")), "{msg}");
    assert!(listing(dir.path()).iter().all(|n| !n.contains(".mmt")));

    proxy.set_fault(Fault::Pass, None);
    let path = fetch_within(&cache, &url).unwrap();
    assert!(std::fs::read(&path).unwrap() == bytes);
}

#[test]
fn a_dataset_opens_through_intermittent_resets_as_the_local_folder_does() {
    let Some((endpoint, proxy)) = setup("dataset through resets") else {
        return;
    };
    let golden = golden_dataset();
    let b = bucket("flaky-dataset");
    create_bucket(&endpoint, &b);
    Backend::s3(&endpoint).put_dataset(&format!("s3://{b}/train"), &golden, None);
    // Intermittent resets: every other connection is reset at its first response byte, from
    // the first request (the manifest's HEAD) on.
    proxy.set_fault_every_nth(Fault::Reset { after: 0 }, 2);
    let dir = tempfile::tempdir().unwrap();
    let cache = new_cache(dir.path(), &proxy, 5);
    let start = Instant::now();
    let remote = mmtensor_remote::open_dataset(&cache, &format!("s3://{b}/train/")).unwrap();
    assert!(start.elapsed() < HANG, "{:?}", start.elapsed());
    assert!(proxy.stats().cut > 0, "no connection was reset");
    // SAFETY: the committed fixture is not modified while mapped.
    let local = unsafe { mmtensor::Dataset::open(&golden) }.unwrap();
    assert_eq!(remote.num_rows(), local.num_rows());
    assert_eq!(remote.shards().len(), local.shards().len());
    let idx: Vec<u64> = (0..local.num_rows()).rev().collect();
    assert_same_rows(&remote, &local, &idx);
    remote.verify().unwrap();
}
