//! `mmt info` of a dataset in object storage, against the moto server scripts/test.sh starts
//! (`MMT_TEST_S3_ENDPOINT`; the AWS_* variables it exports point the CLI at it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

/// The endpoint, or `None` (the test skips) outside CI; in CI a missing server fails the test.
fn endpoint(test: &str) -> Option<String> {
    match std::env::var("MMT_TEST_S3_ENDPOINT") {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let why = "MMT_TEST_S3_ENDPOINT is not set (scripts/test.sh starts moto and sets it)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {why}; CI must run the object storage tests");
            }
            eprintln!("skipping {test}: {why}");
            None
        }
    }
}

/// One unsigned HTTP PUT (moto takes them unless authentication is on): a bucket, or an object.
fn put(endpoint: &str, path: &str, body: &[u8]) {
    let host = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("connect to moto");
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "PUT {path}: {reply}");
}

#[test]
fn info_of_a_dataset_url_reads_its_manifest() {
    let Some(endpoint) = endpoint("info of a dataset URL") else {
        return;
    };
    let bucket = format!("cli-info-{}", std::process::id());
    put(&endpoint, &format!("/{bucket}"), b"");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/dataset");
    for entry in std::fs::read_dir(&golden).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        put(
            &endpoint,
            &format!("/{bucket}/train/{name}"),
            &std::fs::read(entry.path()).unwrap(),
        );
    }
    let home = tempfile::tempdir().unwrap();
    let mmt = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mmt"))
            .args(args)
            .env("XDG_CACHE_HOME", home.path())
            .output()
            .expect("mmt runs")
    };
    let url = format!("s3://{bucket}/train/");
    let o = mmt(&["info", &url, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["rows"], 10);
    assert_eq!(v["shards"].as_array().unwrap().len(), 4);
    assert_eq!(v["dataset"], format!("s3://{bucket}/train"));
    // Only the manifest was read: nothing was fetched into the cache folder.
    let cached: Vec<_> = walk(home.path());
    assert!(cached.is_empty(), "{cached:?}");

    let o = mmt(&["info", &format!("s3://{bucket}/missing/")]);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("missing/manifest.mmtm: no such object"), "{e}");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
