//! Writing datasets to a local S3 server (moto): `push` of a folder, `RemoteDatasetWriter` (each
//! shard uploaded as it is complete), the manifest put last and conditionally, and two appenders
//! racing. Needs `MMT_TEST_S3_ENDPOINT` (scripts/test.sh starts moto and sets it).

use std::path::Path;
use std::time::Duration;

use mmtensor_convert::{ConvertOptions, DatasetWriter};
use mmtensor_format::{ColumnSpec, Dtype};
use mmtensor_remote::{push, Cache, CacheOptions, Error, RemoteDatasetWriter};
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;

mod common;
use common::{bucket, create_bucket, required_env, s3_options};

fn options(endpoint: &str) -> CacheOptions {
    let mut o = CacheOptions::default();
    o.retries = 2;
    o.retry_timeout = Duration::from_secs(5);
    o.store_options = s3_options(endpoint);
    o
}

/// The object names under `prefix/` in `bucket`, sorted.
fn objects(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut b = AmazonS3Builder::new().with_bucket_name(bucket);
    for (k, v) in s3_options(endpoint) {
        b = b.with_config(k.parse().unwrap(), v);
    }
    let store = b.build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut names: Vec<String> = rt
        .block_on(store.list(Some(&prefix.into())).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| m.location.filename().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("x", Dtype::U8, vec![1024]).unwrap(),
        ColumnSpec::new("id", Dtype::U64, vec![]).unwrap(),
    ]
}

/// Rows `from..from + n`: x filled with the row's low byte, id = the row.
fn write(w: &mut DatasetWriter, from: u64, n: u64) {
    let x: Vec<u8> = (from..from + n).flat_map(|i| [i as u8; 1024]).collect();
    let id: Vec<u8> = (from..from + n).flat_map(|i| i.to_le_bytes()).collect();
    w.write_rows(n, &[&x, &id]).unwrap();
}

/// Every row's id of the dataset at `url`, read through a cache (every block verified).
fn ids(endpoint: &str, url: &str) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::with_options(dir.path().join("c"), 1 << 30, options(endpoint)).unwrap();
    let ds = mmtensor_remote::open_dataset(&cache, url).unwrap();
    ds.verify().unwrap();
    let col = ds.column("id").unwrap();
    let all: Vec<u64> = (0..ds.num_rows()).collect();
    let mut out = vec![0u8; all.len() * 8];
    col.take_into(&all, &mut out).unwrap();
    out.chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn local_dataset(dir: &Path, rows: u64, shard_size: u64) {
    let mut w =
        DatasetWriter::create(dir, columns(), shard_size, &ConvertOptions::default()).unwrap();
    write(&mut w, 0, rows);
    w.finish().unwrap();
}

#[test]
fn push_uploads_every_shard_then_the_manifest_and_again_only_what_is_new() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "push") else {
        return;
    };
    let b = bucket("push");
    create_bucket(&endpoint, &b);
    let url = format!("s3://{b}/train/");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("train");
    // 1032-byte rows, 10000 of them in shards of 9 MiB: one shard is a multipart upload.
    local_dataset(&local, 10_000, 9 << 20);
    let pushed = push(&local, &url, &options(&endpoint)).unwrap();
    assert_eq!((pushed.uploaded, pushed.skipped), (2, 0));
    assert_eq!(ids(&endpoint, &url), (0..10_000).collect::<Vec<_>>());

    // Rows appended locally: the next push sends the new shard only.
    let mut w = DatasetWriter::append(
        &local,
        None,
        mmtensor_convert::Fill::Never,
        &ConvertOptions::default(),
    )
    .unwrap();
    write(&mut w, 10_000, 5);
    w.finish().unwrap();
    let pushed = push(&local, &url, &options(&endpoint)).unwrap();
    assert_eq!((pushed.uploaded, pushed.skipped), (1, 2));
    assert_eq!(ids(&endpoint, &url).len(), 10_005);

    // A local dataset with fewer rows than the remote one is not pushed over it.
    let other = dir.path().join("small");
    local_dataset(&other, 3, 1 << 20);
    let e = push(&other, &url, &options(&endpoint)).unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("more than the local one's 3"), "{e}");
    assert_eq!(ids(&endpoint, &url).len(), 10_005);
}

#[test]
fn a_remote_writer_uploads_shards_as_they_fill_and_lists_them_last() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "remote writer") else {
        return;
    };
    let b = bucket("rwriter");
    create_bucket(&endpoint, &b);
    let url = format!("s3://{b}/ds");
    let mut w = RemoteDatasetWriter::create(
        &url,
        columns(),
        Some(64 << 10),
        &ConvertOptions::default(),
        &options(&endpoint),
    )
    .unwrap();
    write(w.writer(), 0, 100);
    // 63 rows a shard: the first is uploaded already, and nothing is listed.
    let before = objects(&endpoint, &b, "ds");
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(!before.contains(&"manifest.mmtm".to_string()));
    write(w.writer(), 100, 100);
    let summary = w.finish().unwrap();
    assert_eq!(summary.manifest.num_rows(), 200);
    assert_eq!(ids(&endpoint, &url), (0..200).collect::<Vec<_>>());
    let e = RemoteDatasetWriter::create(
        &url,
        columns(),
        None,
        &ConvertOptions::default(),
        &options(&endpoint),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");

    // A writer given up (or killed) before its manifest: nothing of it is listed.
    let mut w = RemoteDatasetWriter::append(
        &url,
        Some(64 << 10),
        &ConvertOptions::default(),
        &options(&endpoint),
    )
    .unwrap();
    write(w.writer(), 200, 150);
    w.abort();
    assert_eq!(ids(&endpoint, &url).len(), 200);
    assert_eq!(
        objects(&endpoint, &b, "ds").len(),
        5,
        "the aborted writer's shards are deleted"
    );
}

#[test]
fn two_appenders_racing_cannot_lose_rows_the_second_gets_a_conflict() {
    let Some(endpoint) = required_env("MMT_TEST_S3_ENDPOINT", "race") else {
        return;
    };
    let b = bucket("race");
    create_bucket(&endpoint, &b);
    let url = format!("s3://{b}/ds/");
    let mut w = RemoteDatasetWriter::create(
        &url,
        columns(),
        None,
        &ConvertOptions::default(),
        &options(&endpoint),
    )
    .unwrap();
    write(w.writer(), 0, 10);
    w.finish().unwrap();
    // Both read the same manifest and would name their first shard alike but for the nonce.
    let mut a =
        RemoteDatasetWriter::append(&url, None, &ConvertOptions::default(), &options(&endpoint))
            .unwrap();
    let mut c =
        RemoteDatasetWriter::append(&url, None, &ConvertOptions::default(), &options(&endpoint))
            .unwrap();
    write(a.writer(), 10, 10);
    write(c.writer(), 1000, 7);
    a.finish().unwrap();
    let e = c.finish().unwrap_err();
    assert!(matches!(e, Error::Conflict { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("another writer replaced the manifest"),
        "{e}"
    );
    assert_eq!(ids(&endpoint, &url), (0..20).collect::<Vec<_>>());
    let names = objects(&endpoint, &b, "ds");
    assert_eq!(names.len(), 3, "the loser's shard is deleted: {names:?}");
}
