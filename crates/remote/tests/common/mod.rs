//! What the object-storage tests share: the variables that point them at a local S3 server, and
//! buckets of their own on it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A variable the tests need: `None` (and a printed reason) when unset, a panic under CI.
pub fn required_env(name: &str, test: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let why = format!("{name} is not set (scripts/test.sh starts moto and sets it)");
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
    let host = endpoint.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("connect to moto");
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "create bucket {bucket}: {reply}"
    );
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

/// Deletes the object `name` under the `s3://bucket/prefix` URL `base` on the server at
/// `endpoint`.
pub fn delete_object(endpoint: &str, base: &str, name: &str) {
    use object_store::ObjectStoreExt;
    let rest = base.trim_start_matches("s3://");
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut b = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
    for (k, v) in s3_options(endpoint) {
        b = b.with_config(k.parse().unwrap(), v);
    }
    let store = b.build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = format!("{}/{name}", prefix.trim_end_matches('/'));
    rt.block_on(store.delete(&key.as_str().into()))
        .expect("delete");
}
