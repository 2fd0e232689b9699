//! What the object-storage tests share: the variables that point them at local servers, buckets
//! of their own on them, the objects they upload and what they look for in a cache folder. The
//! servers of every backend, and how to put objects on each, are `backends`'s.
#![allow(dead_code)]

pub mod backends;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mmtensor_convert::sample::{SampleStore, SampleTensor};
use mmtensor_format::Dtype;

/// A variable the tests need: `None` (and a printed reason) when unset, a panic under CI.
pub fn required_env(name: &str, test: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let why = format!("{name} is not set (scripts/test.sh starts the servers and sets it)");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {why}; CI must run the object storage tests");
            }
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// A bucket name no other test (or earlier run against the same server) uses.
pub fn bucket(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a bucket with a bare HTTP request: object_store reads and writes objects, but has no
/// call to create a bucket. moto accepts unsigned requests unless authentication is on.
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let (status, reply) = http_request(endpoint, "PUT", &format!("/{bucket}"), &[], &[]);
    assert_eq!(status, 200, "create bucket {bucket}: {reply}");
}

/// A bare HTTP/1.1 request to `endpoint` (`http://host:port`, any path after it is ignored), for
/// the calls object_store does not make (creating buckets, an emulator's upload API): the status
/// and the body as text.
pub fn http_request(
    endpoint: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, String) {
    let rest = endpoint.trim_start_matches("http://");
    let host = rest.split('/').next().unwrap();
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect to {host}: {e}"));
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path_and_query} on {host}: no status in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

pub fn s3_options(endpoint: &str) -> Vec<(String, String)> {
    [
        ("aws_endpoint", endpoint),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "testing"),
        ("aws_secret_access_key", "testing"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The bytes of a valid store of about `mib` MiB with 64 KiB blocks (two tensors).
pub fn sample_mmt(mib: u64, seed: u64) -> Vec<u8> {
    let store = SampleStore {
        alignment: 4096,
        block_size: 64 << 10,
        metadata: vec![],
        tensors: vec![
            SampleTensor::pattern("x", Dtype::F32, &[mib << 18], seed),
            SampleTensor::pattern("y", Dtype::I64, &[1000], seed + 1),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.mmt");
    store.write(&path).unwrap();
    std::fs::read(path).unwrap()
}

/// The committed golden dataset: 4 shards of 3, 3, 3 and 1 rows.
pub fn golden_dataset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/dataset")
}

/// Hands `put` the name and bytes of every file of the dataset folder `dir` but `skip`.
pub fn each_dataset_file(dir: &Path, skip: Option<&str>, mut put: impl FnMut(&str, Vec<u8>)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if Some(name.as_str()) != skip {
            put(&name, std::fs::read(entry.path()).unwrap());
        }
    }
}

/// The names in the cache folder, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Whether the cache folder holds no entry and no download, finished or not.
pub fn no_download_left(dir: &Path) -> bool {
    listing(dir)
        .iter()
        .all(|n| !n.ends_with(".mmt") && !n.ends_with(".partial") && !n.ends_with(".parts.json"))
}

/// The sidecar of the download in progress in the cache folder `dir`, if any.
pub fn sidecar(dir: &Path) -> Option<PathBuf> {
    listing(dir)
        .into_iter()
        .find(|n| n.ends_with(".parts.json"))
        .map(|n| dir.join(n))
}

/// How many parts the download in progress in `dir` has verified and recorded.
pub fn parts_done(dir: &Path) -> usize {
    let Some(p) = sidecar(dir) else { return 0 };
    let Ok(bytes) = std::fs::read(p) else {
        return 0;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return 0;
    };
    // Runs [start, end) of finished part indices.
    v["done"].as_array().map_or(0, |runs| {
        runs.iter()
            .map(|r| (r[1].as_u64().unwrap() - r[0].as_u64().unwrap()) as usize)
            .sum()
    })
}

/// Asserts that rows `idx` of `remote`'s columns `x` and `y` (the golden dataset's) are the same
/// bytes as `local`'s.
pub fn assert_same_rows(remote: &mmtensor::Dataset, local: &mmtensor::Dataset, idx: &[u64]) {
    for name in ["x", "y"] {
        let (r, l) = (remote.column(name).unwrap(), local.column(name).unwrap());
        let mut got = vec![0u8; idx.len() * r.row_bytes() as usize];
        let mut want = got.clone();
        r.take_into(idx, &mut got).unwrap();
        l.take_into(idx, &mut want).unwrap();
        assert_eq!(got, want, "column {name}");
    }
}
