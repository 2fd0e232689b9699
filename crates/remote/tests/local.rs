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

/// The files in a cache folder other than its marker and its lock files (which a failed fetch
/// may leave, and which hold no data): what a fetch that failed must not have left behind.
fn left_in_cache(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock") && n != "CACHEDIR.TAG")
        .collect()
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
    let left = left_in_cache(dir.path());
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

/// A copy of the golden dataset (4 shards of 3, 3, 3 and 1 rows) in a new folder.
fn golden_copy() -> tempfile::TempDir {
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden/dataset");
    let src = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&golden).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), src.path().join(entry.file_name())).unwrap();
    }
    src
}

/// Every file under `dir` (not following links) and its bytes, sorted by path.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The review's data loss: `open_dataset(url, cache="data/")` deleted the user's own `.mmt`
/// files beside the cache entries. A folder holding anything the cache did not make is refused
/// and left as it was; and in a cache's own folder, files someone puts there later are never
/// counted or deleted, however hard eviction works.
#[test]
fn regression_the_cache_never_deletes_files_it_did_not_make() {
    let src = golden_copy();
    let shard = |i: usize| format!("{}/shard-{i:05}.mmt", url(src.path()));
    let user_files = |dir: &std::path::Path| {
        let precious = tempfile::tempdir().unwrap();
        write_sample(&precious.path().join("p.mmt"));
        std::fs::copy(precious.path().join("p.mmt"), dir.join("precious.mmt")).unwrap();
        std::fs::copy(src.path().join("shard-00000.mmt"), dir.join("model.mmt")).unwrap();
        std::fs::write(dir.join("model.mmt.partial"), b"half of something").unwrap();
        std::fs::write(dir.join("x.npy"), b"\x93NUMPY not really").unwrap();
        std::fs::write(dir.join("notes.txt"), b"keep me").unwrap();
        // Shaped like a cache name, but not one of its suffixes.
        std::fs::write(dir.join("0123456789abcdef0123456789abcdef.npy"), b"mine").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/inner.mmt"), b"nested").unwrap();
    };

    // A folder of the user's: refused, untouched.
    let data = tempfile::tempdir().unwrap();
    user_files(data.path());
    let before = snapshot(data.path());
    let err = Cache::new(data.path(), 1 << 20).unwrap_err();
    assert!(matches!(err, Error::NotACacheFolder { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&data.path().display().to_string())
            && msg.contains("precious.mmt")
            && msg.contains("more")
            && msg.contains("folder of its own"),
        "{msg}"
    );
    assert_eq!(
        snapshot(data.path()),
        before,
        "a refused folder is left as it was"
    );

    // The cache's own folder, with the same files dropped in after it was made; a capacity
    // that holds about two shards, so every fetch evicts and every open trims.
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 9000).unwrap();
    assert!(dir.path().join("CACHEDIR.TAG").exists());
    user_files(dir.path());
    let mine: Vec<_> = snapshot(dir.path())
        .into_iter()
        .filter(|(p, _)| !p.ends_with("CACHEDIR.TAG"))
        .collect();
    for round in 0..3 {
        for i in [0, 1, 2, 3, 2, 0] {
            cache.fetch(&shard(i)).unwrap();
            assert!(cache.usage().unwrap() <= 9000, "round {round} shard {i}");
        }
        cache.trim().unwrap();
        let ds = mmtensor_remote::open_dataset_rank(&cache, &url(src.path()), round % 2, 2);
        assert!(ds.is_ok(), "{:?}", ds.err());
    }
    let after = snapshot(dir.path());
    for (path, bytes) in &mine {
        let kept = after.iter().find(|(p, _)| p == path);
        assert_eq!(
            kept.map(|(_, b)| b),
            Some(bytes),
            "{} was changed or deleted",
            path.display()
        );
    }
    // A second cache on the marked folder is accepted, foreign files and all.
    Cache::new(dir.path(), 9000).unwrap();

    // A folder holding only names a cache makes (a cache from before the marker) is adopted.
    let old = tempfile::tempdir().unwrap();
    std::fs::write(
        old.path().join("0123456789abcdef0123456789abcdef.mmt"),
        b"x",
    )
    .unwrap();
    std::fs::write(
        old.path().join("0123456789abcdef0123456789abcdef.lock"),
        b"",
    )
    .unwrap();
    Cache::new(old.path(), 1 << 20).unwrap();
    assert!(old.path().join("CACHEDIR.TAG").exists());
    // Another tool's cache folder (cargo's target/ has a CACHEDIR.TAG too) is not ours.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# created by cargo\n",
    )
    .unwrap();
    std::fs::write(other.path().join("build.mmt"), b"y").unwrap();
    let err = Cache::new(other.path(), 1 << 20).unwrap_err();
    assert!(matches!(err, Error::NotACacheFolder { .. }), "{err}");
}

/// The manifest with each shard's recorded length or header checksum changed by `f`.
fn rewrite_manifest(dir: &std::path::Path, f: impl Fn(usize, u64, u64) -> (u64, u64)) {
    use mmtensor_format::{Manifest, Shard, MANIFEST_FILE};
    let path = dir.join(MANIFEST_FILE);
    let m = Manifest::parse(&std::fs::read(&path).unwrap()).unwrap();
    let shards = m
        .shards()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (len, sum) = f(i, s.length(), s.header_checksum());
            Shard::new(s.file(), len, sum, s.num_rows()).unwrap()
        })
        .collect();
    let m = Manifest::new(m.columns().to_vec(), shards).unwrap();
    std::fs::write(&path, m.encode()).unwrap();
}

/// The review: a manifest that under-states lengths downloaded every shard (evicting other
/// entries) before it was refused, naming the hex cache file. The HEAD's size is compared with
/// the manifest before any GET, and the header checksum before any tensor byte; the error names
/// the shard's URL, and the cache is left without any of it.
#[test]
fn regression_a_manifest_that_misstates_a_shard_is_refused_before_its_data_is_fetched() {
    let src = golden_copy();
    rewrite_manifest(src.path(), |_, len, sum| (len - 1, sum));
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 1 << 20).unwrap();
    let err = mmtensor_remote::open_dataset(&cache, &url(src.path())).unwrap_err();
    let first = format!("{}/shard-00000.mmt", url(src.path()));
    assert!(
        matches!(&err, Error::NotAsListed { url, what: mmtensor_remote::Listed::Length { .. } } if *url == first),
        "{err}"
    );
    assert!(err.to_string().contains(&first), "{err}");
    assert_eq!(cache.stats().gets, 1, "only the manifest was read");
    assert_eq!(cache.usage().unwrap(), 0);

    let src = golden_copy();
    rewrite_manifest(src.path(), |_, len, sum| (len, sum ^ 1));
    let err = mmtensor_remote::open_dataset(&cache, &url(src.path())).unwrap_err();
    let first = format!("{}/shard-00000.mmt", url(src.path()));
    assert!(
        matches!(&err, Error::NotAsListed { url, what: mmtensor_remote::Listed::HeaderChecksum { .. } } if *url == first),
        "{err}"
    );
    // The manifest, then one GET of the first page of each of the 4 shards: no data part.
    assert!(cache.stats().gets <= 1 + 1 + 4, "{:?}", cache.stats());
    assert_eq!(cache.usage().unwrap(), 0);
    let left = left_in_cache(dir.path());
    assert!(left.is_empty(), "{left:?}");
}

/// The review: an object replaced by one of the same size on a server without ETags kept hitting
/// the old entry, and a dataset whose manifest changed then failed every open ("it was
/// replaced") until the cache was deleted by hand. A cached entry that disagrees with the
/// manifest is fetched again.
#[test]
fn regression_a_cached_shard_that_disagrees_with_the_manifest_is_fetched_again() {
    let src = golden_copy();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 1 << 20).unwrap();
    mmtensor_remote::open_dataset(&cache, &url(src.path())).unwrap();
    // Make the entry of shard 0 hold shard 2's bytes (same length: 3 rows each), as a stale entry
    // under an unchanged key would: the server's answer to HEAD is what it was.
    let s0 = std::fs::read(src.path().join("shard-00000.mmt")).unwrap();
    let s2 = std::fs::read(src.path().join("shard-00002.mmt")).unwrap();
    assert_eq!(s0.len(), s2.len());
    let entry = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read(p).is_ok_and(|b| b == s0))
        .expect("shard 0's entry");
    let mut perms = std::fs::metadata(&entry).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&entry, perms).unwrap();
    std::fs::write(&entry, &s2).unwrap();
    let gets = cache.stats().gets;
    let ds = mmtensor_remote::open_dataset(&cache, &url(src.path())).unwrap();
    assert!(cache.stats().gets > gets + 1, "shard 0 was fetched again");
    assert_eq!(std::fs::read(&entry).unwrap(), s0);
    ds.verify().unwrap();
}

/// The review: an empty manifest object gave "Range started at 0 and ended at 0", classed as a
/// transient request error and retried. It is an invalid manifest, named by its URL, and no GET
/// is sent for it.
#[test]
fn regression_an_empty_manifest_is_an_invalid_manifest() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("manifest.mmtm"), b"").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 1 << 20).unwrap();
    let err = mmtensor_remote::open_dataset(&cache, &url(src.path())).unwrap_err();
    let manifest = format!("{}/manifest.mmtm", url(src.path()));
    assert!(
        matches!(&err, Error::Manifest { url, .. } if *url == manifest),
        "{err}"
    );
    assert_eq!(cache.stats().gets, 0);
    assert_eq!(cache.stats().heads, 1, "not retried");
}

/// The environment variable that makes [`fetch_as_another_user`] do its work (it is a no-op in
/// an ordinary test run).
const CHILD: &str = "MMT_TEST_REMOTE_CHILD_FETCH";

/// Run by `regression_a_read_only_partial_left_by_a_kill_does_not_wedge_its_object` in a child
/// process that is not root (root may write a read-only file, which hides the defect): fetches
/// the URL into the cache folder given in the environment.
#[test]
fn fetch_as_another_user() {
    let Ok(job) = std::env::var(CHILD) else {
        return;
    };
    let (dir, url) = job.split_once('\n').unwrap();
    let cache = Cache::new(dir, 1 << 20).unwrap();
    cache.fetch(url).unwrap();
}

/// Fetches `url` into `dir` as a user who is not root: in this process when it is not root,
/// else in a child process of this test binary running as `nobody`.
fn fetch_unprivileged(dir: &std::path::Path, url: &str) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        Cache::new(dir, 1 << 20).unwrap().fetch(url).unwrap();
        return;
    }
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fetch_as_another_user", "--nocapture"])
        .env(CHILD, format!("{}\n{url}", dir.display()))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the fetch as nobody failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The review: a process killed between making a finished download read-only and renaming it
/// into place left a read-only `KEY.mmt.partial`, which the next fetch (by a user who is not
/// root) could not open for writing, and never evicted: the object was wedged for good.
#[test]
fn regression_a_read_only_partial_left_by_a_kill_does_not_wedge_its_object() {
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = top.path().join("s.mmt");
    let bytes = write_sample(&path);
    let dir = top.path().join("cache");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    fetch_unprivileged(&dir, &url(&path));
    // The state such a kill left: the finished download, read-only, under its partial name.
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "mmt"))
        .unwrap();
    let partial = entry.with_extension("mmt.partial");
    std::fs::rename(&entry, &partial).unwrap();
    assert!(std::fs::metadata(&partial)
        .unwrap()
        .permissions()
        .readonly());
    fetch_unprivileged(&dir, &url(&path));
    assert_eq!(std::fs::read(&entry).unwrap(), bytes);
    assert!(!partial.exists());
}
