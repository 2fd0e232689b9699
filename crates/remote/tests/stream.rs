//! Streaming a dataset through a cache smaller than the data, on every backend
//! (`common::backends`: moto, fake-gcs-server, Azurite, nginx, which scripts/test.sh starts):
//! every batch equals the local loader's, every byte verified, the cache sampled under its cap,
//! parts shared by processes using one folder, and the errors of a batch too large for the cache
//! and of a shard deleted mid-epoch.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mmtensor::order::Shuffle;
use mmtensor::{Loader, LoaderOptions};
use mmtensor_convert::{ConvertOptions, DatasetWriter, Fill};
use mmtensor_format::{ColumnSpec, Dtype};
use mmtensor_remote::{Cache, CacheOptions, Error, StreamOptions, StreamingDataset};

mod common;
use common::backends::{for_each_backend, Backend};

const ROW: usize = 4096;

fn options(backend: &Backend) -> CacheOptions {
    backend.cache_options(8 << 20, 8)
}

fn stream_options(part_size: u64, ahead: u64) -> StreamOptions {
    let mut o = StreamOptions::default();
    o.part_size = part_size;
    o.concurrency = 4;
    o.ahead = Some(ahead);
    o
}

/// Row `i`'s bytes of column x: a pattern only row `i` has.
fn x_row(i: u64) -> Vec<u8> {
    (0..ROW as u64)
        .map(|k| (i.wrapping_mul(31).wrapping_add(k * 7) % 251) as u8)
        .collect()
}

/// A local dataset of `rows` rows (x: U8 [4096] with `x_row`, id: U64 = the row) in shards of
/// `shard_size` bytes with 64 KiB checksum blocks, written from row `from` on (append when
/// `from > 0`).
fn write_rows(dir: &Path, from: u64, rows: u64, shard_size: u64) {
    let columns = vec![
        ColumnSpec::new("x", Dtype::U8, vec![ROW as u64]).unwrap(),
        ColumnSpec::new("id", Dtype::U64, vec![]).unwrap(),
    ];
    let mut o = ConvertOptions::default();
    o.block_size = 64 << 10;
    let mut w = if from == 0 {
        DatasetWriter::create(dir, columns, shard_size, &o).unwrap()
    } else {
        DatasetWriter::append(dir, Some(shard_size), Fill::LastShard, &o).unwrap()
    };
    for start in (from..from + rows).step_by(500) {
        let n = 500.min(from + rows - start);
        let x: Vec<u8> = (start..start + n).flat_map(x_row).collect();
        let id: Vec<u8> = (start..start + n).flat_map(|i| i.to_le_bytes()).collect();
        w.write_rows(n, &[&x, &id]).unwrap();
    }
    w.finish().unwrap();
}

/// A dataset of `rows` rows in shards of 2 MiB, uploaded to a new place of `backend`: (local
/// folder, URL).
fn remote_dataset(backend: &Backend, name: &str, rows: u64) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    write_rows(&dir.path().join("train"), 0, rows, 2 << 20);
    let url = format!("{}/train", backend.place(name));
    backend.put_dataset(&url, &dir.path().join("train"), None);
    (dir, url)
}

/// One batch as (ids, x bytes).
type Rows = (Vec<u64>, Vec<u8>);

/// Every batch of one epoch.
fn epoch(loader: &mut Loader) -> Result<Vec<Rows>, mmtensor::Error> {
    let mut out = Vec::new();
    for batch in loader.iter()? {
        let batch = batch?;
        let id: &[u64] = batch.column("id")?.as_slice()?;
        let x: &[u8] = batch.column("x")?.as_slice()?;
        out.push((id.to_vec(), x.to_vec()));
    }
    Ok(out)
}

/// Asserts that every row of `batches` holds its own bytes (`x_row` of its id); `what` names the
/// run in a failure.
fn assert_rows_are_their_own(batches: &[Rows], what: &str) {
    for (ids, x) in batches {
        for (id, row) in ids.iter().zip(x.chunks(ROW)) {
            assert!(row == x_row(*id).as_slice(), "{what}: row {id}");
        }
    }
}

/// Samples the bytes the cache folder takes on disk every 5 ms until dropped: the largest seen.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(dir: &Path) -> Sampler {
        let dir = dir.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (Arc::clone(&stop), Arc::clone(&max));
        let handle = std::thread::spawn(move || {
            use std::os::unix::fs::MetadataExt;
            while !s.load(Ordering::Relaxed) {
                let used: u64 = std::fs::read_dir(&dir)
                    .map(|d| {
                        d.filter_map(|e| e.ok()?.metadata().ok())
                            .map(|m| m.blocks() * 512)
                            .sum()
                    })
                    .unwrap_or(0);
                m.fetch_max(used, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            stop,
            max,
            handle: Some(handle),
        }
    }

    fn max(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.max.load(Ordering::Relaxed)
    }
}

fn loader_options(shuffle: Shuffle) -> LoaderOptions {
    LoaderOptions {
        shuffle,
        seed: 5,
        ..LoaderOptions::new(64)
    }
}

#[test]
fn an_epoch_streams_through_a_cache_smaller_than_the_data_and_equals_the_local_one() {
    for_each_backend("stream epoch", |backend| {
        // 3000 rows of 4 KiB: about 12 MiB in 6 shards; the cache holds 6 MiB.
        let (local, url) = remote_dataset(backend, "stream", 3000);
        // SAFETY: nothing writes the test's own folder while it is mapped.
        let local_ds = unsafe { mmtensor::Dataset::open(local.path().join("train")) }.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("c");
        let capacity = 6 << 20;
        let cache = Arc::new(Cache::with_options(&cache_dir, capacity, options(backend)).unwrap());
        // Parts as large as a shuffle block read little else; a full shuffle reads single rows, so
        // its parts are single checksum blocks (64 KiB), or a batch would not fit in the cache.
        for (shuffle, part_size) in [
            (
                Shuffle::Block {
                    block_rows: 64,
                    window_blocks: 4,
                },
                256 << 10,
            ),
            (Shuffle::Full, 64 << 10),
            (Shuffle::None, 1 << 20),
        ] {
            let ds = StreamingDataset::open(
                Arc::clone(&cache),
                &url,
                stream_options(part_size, 1 << 20),
            )
            .unwrap();
            assert_eq!(ds.num_rows(), 3000);
            let sampler = Sampler::start(&cache_dir);
            let before = cache.stats();
            let mut streamed = ds.loader(loader_options(shuffle)).unwrap();
            let got = epoch(&mut streamed).unwrap();
            let max = sampler.max();
            let mut at_home = Loader::from_dataset(&local_ds, loader_options(shuffle)).unwrap();
            let want = epoch(&mut at_home).unwrap();
            assert_eq!(got.len(), want.len(), "{shuffle:?}");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.0, w.0, "{shuffle:?}: batch {k}'s rows");
                assert!(g.1 == w.1, "{shuffle:?}: batch {k}'s bytes");
            }
            // Every row once, each with its own bytes.
            let mut ids: Vec<u64> = got.iter().flat_map(|b| b.0.clone()).collect();
            assert_rows_are_their_own(&got, &format!("{shuffle:?}"));
            ids.sort_unstable();
            assert_eq!(ids, (0..3000).collect::<Vec<_>>());
            assert!(
                max <= capacity,
                "{shuffle:?}: the cache took {max} bytes, over its capacity {capacity}"
            );
            let after = cache.stats();
            eprintln!(
                "{shuffle:?}: {} GETs, {} bytes downloaded (data {} bytes), cache at most {max}",
                after.gets - before.gets,
                after.bytes_downloaded - before.bytes_downloaded,
                3000 * (ROW as u64 + 8)
            );
        }
    });
}

#[test]
fn a_second_pass_with_room_for_everything_sends_no_get_and_a_new_open_reuses_the_files() {
    for_each_backend("stream reuse", |backend| {
        let (_local, url) = remote_dataset(backend, "reuse", 1000);
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("c");
        let open = || {
            let cache =
                Arc::new(Cache::with_options(&cache_dir, 64 << 20, options(backend)).unwrap());
            let ds = StreamingDataset::open(
                Arc::clone(&cache),
                &url,
                stream_options(256 << 10, 32 << 20),
            )
            .unwrap();
            (cache, ds)
        };
        let (cache, ds) = open();
        let mut loader = ds.loader(loader_options(Shuffle::Full)).unwrap();
        let first = epoch(&mut loader).unwrap();
        let gets = cache.stats().gets;
        let second = epoch(&mut loader).unwrap();
        assert_eq!(cache.stats().gets, gets, "the second epoch fetched again");
        assert_eq!(first.len(), second.len());
        drop((loader, ds, cache));
        // Another process (a new cache on the folder): heads and tables and parts read back and
        // verified from the files, no GET at all.
        let (cache, ds) = open();
        let mut loader = ds.loader(loader_options(Shuffle::Full)).unwrap();
        let again = epoch(&mut loader).unwrap();
        assert_eq!(cache.stats().gets, 1, "one GET: the manifest");
        assert_eq!(again.len(), first.len());
        assert_eq!(again[0].0, first[0].0);
    });
}

#[test]
fn ranks_sharing_one_folder_with_other_part_sizes_read_verified_rows_within_the_capacity() {
    for_each_backend("stream ranks", |backend| {
        let (_local, url) = remote_dataset(backend, "ranks", 2000);
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("c");
        let capacity = 5 << 20;
        // Each rank opens the folder on its own (its own descriptors and locks, as a process does).
        let caches: Vec<Arc<Cache>> = (0..2)
            .map(|_| Arc::new(Cache::with_options(&cache_dir, capacity, options(backend)).unwrap()))
            .collect();
        let sampler = Sampler::start(&cache_dir);
        let ids: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = caches
                .iter()
                .enumerate()
                .map(|(rank, cache)| {
                    let url = &url;
                    scope.spawn(move || {
                        let ds = StreamingDataset::open(
                            Arc::clone(cache),
                            url,
                            // Ranks with different part sizes: their locks still
                            // exclude each other where their parts overlap.
                            stream_options(if rank == 0 { 256 << 10 } else { 64 << 10 }, 1 << 20),
                        )
                        .unwrap();
                        let mut loader = ds
                            .loader(LoaderOptions {
                                rank: rank as u64,
                                world_size: 2,
                                ..loader_options(Shuffle::Block {
                                    block_rows: 64,
                                    window_blocks: 4,
                                })
                            })
                            .unwrap();
                        let got = epoch(&mut loader).unwrap();
                        assert_rows_are_their_own(&got, &format!("rank {rank}"));
                        got.into_iter().flat_map(|b| b.0).collect::<Vec<u64>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let max = sampler.max();
        let mut all: Vec<u64> = ids.concat();
        all.sort_unstable();
        assert_eq!(all, (0..2000).collect::<Vec<_>>());
        assert!(
            max <= capacity,
            "the cache took {max} bytes, over {capacity}"
        );
        let downloaded: u64 = caches.iter().map(|c| c.stats().bytes_downloaded).sum();
        eprintln!(
            "two ranks downloaded {downloaded} bytes of a {} byte dataset",
            2000 * (ROW as u64 + 8)
        );
    });
}

#[test]
fn a_batch_larger_than_the_cache_is_a_clear_error() {
    for_each_backend("stream too small", |backend| {
        let (_local, url) = remote_dataset(backend, "small", 1000);
        let dir = tempfile::tempdir().unwrap();
        let cache =
            Arc::new(Cache::with_options(dir.path().join("c"), 1 << 20, options(backend)).unwrap());
        let ds =
            StreamingDataset::open(Arc::clone(&cache), &url, stream_options(256 << 10, 1 << 19))
                .unwrap();
        // 512 random rows of 4 KiB touch far more than 1 MiB of parts.
        let mut loader = ds
            .loader(LoaderOptions {
                shuffle: Shuffle::Full,
                ..LoaderOptions::new(512)
            })
            .unwrap();
        let e = epoch(&mut loader).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("batch 0") && text.contains(&url), "{text}");
        assert!(text.contains("more than the cache"), "{text}");
    });
}

#[test]
fn a_shard_deleted_mid_epoch_is_named_and_an_append_leaves_an_open_reader_whole() {
    for_each_backend("stream deleted", |backend| {
        let (local, url) = remote_dataset(backend, "deleted", 1500);
        let dir = tempfile::tempdir().unwrap();
        let cache =
            Arc::new(Cache::with_options(dir.path().join("c"), 2 << 20, options(backend)).unwrap());
        let ds =
            StreamingDataset::open(Arc::clone(&cache), &url, stream_options(256 << 10, 1 << 19))
                .unwrap();

        // Rows appended (new shards, a new manifest): the open reader keeps reading its own rows.
        // As an append uploads: the new shards, then the manifest (old objects untouched).
        let train = local.path().join("train");
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        };
        let before = names(&train);
        write_rows(&train, 1500, 600, 2 << 20);
        let mut added: Vec<String> = names(&train)
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        added.sort();
        added.push(mmtensor_format::MANIFEST_FILE.to_owned());
        for n in added {
            backend.put(
                &format!("{url}/{n}"),
                &std::fs::read(train.join(&n)).unwrap(),
            );
        }
        let mut loader = ds.loader(loader_options(Shuffle::None)).unwrap();
        let got = epoch(&mut loader).unwrap();
        let ids: Vec<u64> = got.iter().flat_map(|b| b.0.clone()).collect();
        assert_eq!(ids, (0..1500).collect::<Vec<_>>());
        let reopened =
            StreamingDataset::open(Arc::clone(&cache), &url, stream_options(256 << 10, 1 << 19))
                .unwrap();
        assert_eq!(reopened.num_rows(), 2100);

        // The first shard's object deleted: the batch that needs a part no longer on disk names it.
        let first = ds.manifest().shards()[0].file().to_owned();
        backend.delete(&format!("{url}/{first}"));
        let mut loader = ds.loader(loader_options(Shuffle::None)).unwrap();
        let e = epoch(&mut loader).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("{url}/{first}")), "{text}");
        assert!(
            matches!(
                e,
                mmtensor::Error::Gate { ref source, .. }
                    if matches!(source.downcast_ref::<Error>(), Some(Error::NotFound { .. }))
            ),
            "{e:?}"
        );
    });
}

#[test]
fn streaming_through_faults_hands_out_verified_rows_and_resumes_after_an_outage() {
    use mmtensor_testsupport::{Fault, FaultProxy};
    use std::net::ToSocketAddrs;
    let Some(endpoint) = common::required_env("MMT_TEST_S3_ENDPOINT", "stream faults") else {
        return;
    };
    let upstream = endpoint
        .trim_start_matches("http://")
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let proxy = FaultProxy::start(upstream).unwrap();
    let server = Backend::s3(&endpoint);
    let (local, url) = remote_dataset(&server, "faults", 1500);
    // SAFETY: nothing writes the test's own folder while it is mapped.
    let local_ds = unsafe { mmtensor::Dataset::open(local.path().join("train")) }.unwrap();
    let shuffle = Shuffle::Block {
        block_rows: 64,
        window_blocks: 4,
    };
    let want =
        epoch(&mut Loader::from_dataset(&local_ds, loader_options(shuffle)).unwrap()).unwrap();
    // The cache reaches the server only through the proxy.
    let through = Backend::s3(&proxy.endpoint()).cache_options(8 << 20, 8);
    let dir = tempfile::tempdir().unwrap();

    // Every other connection reset after 100 KiB, or cut short cleanly: retried, and every row
    // handed out is the server's.
    for fault in [
        Fault::Reset { after: 100 << 10 },
        Fault::Truncate { after: 100 << 10 },
    ] {
        let cache = Arc::new(
            Cache::with_options(
                dir.path().join(format!("{fault:?}").replace(' ', "")),
                3 << 20,
                through.clone(),
            )
            .unwrap(),
        );
        let ds = StreamingDataset::open(cache, &url, stream_options(256 << 10, 1 << 20)).unwrap();
        proxy.set_fault_every_nth(fault.clone(), 2);
        let got = epoch(&mut ds.loader(loader_options(shuffle)).unwrap()).unwrap();
        proxy.set_fault(Fault::Pass, None);
        assert!(
            got == want,
            "{fault:?}: the batches differ from the local ones"
        );
    }
    assert!(proxy.stats().cut > 0, "the proxy cut no connection");

    // The server goes away after a few batches: the batch that needs a missing part fails naming
    // the URL; once it is back, the loader resumes from its state with exactly the rest.
    let cache = Arc::new(Cache::with_options(dir.path().join("outage"), 3 << 20, through).unwrap());
    let ds = StreamingDataset::open(cache, &url, stream_options(256 << 10, 1 << 20)).unwrap();
    let mut loader = ds.loader(loader_options(shuffle)).unwrap();
    let mut got = Vec::new();
    let failed = {
        let mut it = loader.iter().unwrap();
        loop {
            match it.next() {
                None => panic!("the epoch ended though the server was down"),
                Some(Ok(batch)) => {
                    let id: &[u64] = batch.column("id").unwrap().as_slice().unwrap();
                    let x: &[u8] = batch.column("x").unwrap().as_slice().unwrap();
                    got.push((id.to_vec(), x.to_vec()));
                    if got.len() == 3 {
                        proxy.set_fault(Fault::Down, None);
                    }
                }
                Some(Err(e)) => break e,
            }
        }
    };
    let text = failed.to_string();
    assert!(text.contains(&url), "{text}");
    assert!(got.len() >= 3 && got.len() < want.len());
    proxy.set_fault(Fault::Pass, None);
    got.extend(epoch(&mut loader).unwrap());
    assert!(got == want, "the resumed epoch differs from the local one");
}
