//! Writing datasets to object storage: shards uploaded (multipart, parts in parallel, bounded
//! memory) and checked after upload, then the manifest written last with a conditional put, so a
//! reader never sees a manifest whose shards are missing and two writers racing cannot lose each
//! other's rows: [`push`] (a dataset folder already on disk) and [`RemoteDatasetWriter`] (rows
//! streamed through `mmtensor_convert::DatasetWriter`, each shard uploaded as soon as it is complete
//! and its local staging file removed).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use mmtensor_convert::{ConvertOptions, DatasetSummary, DatasetWriter};
use mmtensor_format::{
    ColumnSpec, Manifest, Shard, MANIFEST_FILE, MANIFEST_PREAMBLE_LEN, MAX_MANIFEST_BODY_LEN,
};
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

use crate::client::Clients;
use crate::{CacheOptions, Error, Result};

/// Bytes read from a file and sent as one part of a multipart upload (S3's parts are at least
/// 5 MiB, but for the last).
const PART: usize = 8 << 20;
/// Parts of one object in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Shards uploaded at once by [`push`]: memory stays under `PART x PARTS_IN_FLIGHT x` this.
const SHARDS_IN_FLIGHT: usize = 2;
/// Threads of the upload runtime: each request signs its payload (SHA-256 of the part) on one, so
/// fewer than the parts in flight would serialize the hashing (measured: 2 threads pushed at 0.70x
/// boto3's rate, `benches/upload.py`).
const UPLOAD_THREADS: usize = 4;

/// `base/name`, `base` a dataset's URL with or without its trailing slash.
fn join(base: &str, name: &str) -> String {
    format!("{}/{name}", base.trim_end_matches('/'))
}

/// The requests of a write: a small runtime to block on, and the clients by bucket.
pub(crate) struct Uploader {
    runtime: tokio::runtime::Runtime,
    clients: Clients,
}

/// A manifest read from object storage, with the version the conditional put of the next one
/// must match.
struct Current {
    manifest: Manifest,
    version: UpdateVersion,
}

impl Uploader {
    fn new(options: &CacheOptions) -> Result<Uploader> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(UPLOAD_THREADS)
            .thread_name("mmtensor-upload")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: PathBuf::from("."),
                action: "start the upload runtime for",
                source,
            })?;
        Ok(Uploader {
            runtime,
            clients: Clients::new(
                options.retries,
                options.retry_timeout,
                options.store_options.clone(),
            ),
        })
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideAsyncRuntime);
        }
        Ok(self.runtime.block_on(f))
    }

    /// The dataset's manifest at `base`, or `None` when there is none.
    fn manifest(&self, base: &str) -> Result<Option<Current>> {
        let url = join(base, MANIFEST_FILE);
        let (store, location) = self.clients.for_url(&url)?;
        let got = self.block_on(async {
            let r = store.get(&location).await?;
            let meta = r.meta.clone();
            if meta.size > MAX_MANIFEST_BODY_LEN + MANIFEST_PREAMBLE_LEN {
                return Ok(Err(meta.size));
            }
            Ok(Ok((meta, r.bytes().await?)))
        })?;
        let (meta, bytes) = match got {
            Ok(Ok(found)) => found,
            Ok(Err(size)) => {
                return Err(Error::Manifest {
                    url,
                    source: mmtensor_format::Error::ManifestLength {
                        len: size,
                        expected: MAX_MANIFEST_BODY_LEN + MANIFEST_PREAMBLE_LEN,
                    },
                })
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::request(&url, "GET", e)),
        };
        let manifest = Manifest::parse(&bytes).map_err(|source| Error::Manifest { url, source })?;
        Ok(Some(Current {
            manifest,
            version: UpdateVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            },
        }))
    }

    /// Puts `manifest` at `base` if nobody changed it since `previous` was read (`None`: if there
    /// is none yet): the last step of every write, the one that makes its shards visible.
    fn put_manifest(
        &self,
        base: &str,
        manifest: &Manifest,
        previous: Option<&UpdateVersion>,
    ) -> Result<()> {
        let url = join(base, MANIFEST_FILE);
        let (store, location) = self.clients.for_url(&url)?;
        let mode = match previous {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v.clone()),
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(manifest.encode());
        match self.block_on(store.put_opts(&location, payload, options))? {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Err(Error::Conflict {
                    url,
                    reason: if previous.is_none() {
                        "another writer created the dataset meanwhile".into()
                    } else {
                        "another writer replaced the manifest meanwhile (an append or push that finished first)".into()
                    },
                })
            }
            Err(object_store::Error::NotImplemented { .. }) => Err(Error::Conflict {
                url,
                reason: "this store cannot put an object conditionally, so a manifest cannot be replaced safely (S3 needs `conditional_put` = etag, the default; HTTP servers cannot)".into(),
            }),
            Err(e) => Err(Error::request(&url, "PUT", e)),
        }
    }

    /// Uploads the local file `path` (`shard`, as listed) to `base/NAME`, then checks the object:
    /// its length (HEAD) and the header checksum in its preamble (one ranged GET).
    async fn put_shard(&self, base: &str, path: &Path, shard: &Shard) -> Result<u64> {
        let url = join(base, shard.file());
        let (store, location) = self.clients.for_url(&url)?;
        let mut file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            action: "open",
            source,
        })?;
        let read = |file: &mut std::fs::File, buf: &mut Vec<u8>| -> Result<usize> {
            buf.resize(PART, 0);
            let mut n = 0;
            while n < PART {
                match file.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(Error::Io {
                            path: path.to_path_buf(),
                            action: "read",
                            source,
                        })
                    }
                }
            }
            buf.truncate(n);
            Ok(n)
        };
        let mut buf = Vec::new();
        if shard.length() <= PART as u64 {
            read(&mut file, &mut buf)?;
            store
                .put(&location, PutPayload::from(buf))
                .await
                .map_err(|e| Error::request(&url, "PUT", e))?;
        } else {
            let upload = store
                .put_multipart(&location)
                .await
                .map_err(|e| Error::request(&url, "start a multipart upload of", e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
            loop {
                let n = read(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| Error::request(&url, "upload a part of", e))?;
                writer.write(&buf);
            }
            writer
                .finish()
                .await
                .map_err(|e| Error::request(&url, "complete the multipart upload of", e))?;
        }
        self.check_shard(&*store, &url, &location, shard).await?;
        Ok(shard.length())
    }

    /// Whether the object at `location` is `shard` as listed: its length, then its header
    /// checksum (bytes 24..32 of the preamble).
    async fn check_shard(
        &self,
        store: &dyn ObjectStore,
        url: &str,
        location: &object_store::path::Path,
        shard: &Shard,
    ) -> Result<()> {
        let meta = store
            .head(location)
            .await
            .map_err(|e| Error::request(url, "HEAD", e))?;
        if meta.size != shard.length() {
            return Err(Error::NotAsListed {
                url: url.into(),
                what: crate::Listed::Length {
                    found: meta.size,
                    listed: shard.length(),
                },
            });
        }
        let bytes = store
            .get_range(location, 24..32)
            .await
            .map_err(|e| Error::request(url, "GET bytes 24..32 of", e))?;
        let found =
            u64::from_le_bytes(bytes.as_ref().try_into().map_err(|_| Error::ShortRead {
                url: url.into(),
                start: 24,
                end: 32,
                got: bytes.len() as u64,
            })?);
        if found != shard.header_checksum() {
            return Err(Error::NotAsListed {
                url: url.into(),
                what: crate::Listed::HeaderChecksum {
                    found,
                    listed: shard.header_checksum(),
                },
            });
        }
        Ok(())
    }

    /// Whether `base/NAME` already holds `shard` (an earlier, interrupted push uploaded it).
    async fn holds(&self, base: &str, shard: &Shard) -> Result<bool> {
        let url = join(base, shard.file());
        let (store, location) = self.clients.for_url(&url)?;
        match self.check_shard(&*store, &url, &location, shard).await {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. } | Error::NotAsListed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes `base/NAME` for each name, ignoring failures (objects no manifest lists).
    fn delete_all(&self, base: &str, names: &[String]) {
        for name in names {
            let url = join(base, name);
            if let Ok((store, location)) = self.clients.for_url(&url) {
                let _ = self.block_on(store.delete(&location));
            }
        }
    }
}

/// What [`push`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pushed {
    /// The dataset's URL.
    pub url: String,
    /// The manifest now in place there.
    pub manifest: Manifest,
    /// Shards uploaded.
    pub uploaded: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Shards already there (listed by the remote manifest, or left by an interrupted push) and
    /// checked, not uploaded again.
    pub skipped: usize,
}

/// Uploads the dataset in the folder `dir` to `url` (a folder in object storage:
/// `s3://bucket/train/`): every shard its manifest lists that is not already there (checked by
/// length and header checksum), uploaded and checked, then the manifest, last, by a conditional
/// put: created if the dataset has none, else replaced only if nobody changed it since it was read.
///
/// The remote dataset must not have rows the local one lacks (a push makes the remote manifest the
/// local one; with fewer rows, a push would drop rows others appended): that is
/// [`Error::Conflict`], as is a manifest changed by another writer during the push. Readers of
/// the remote dataset see the old manifest, complete, until the new one is in place.
///
/// # Errors
/// [`Error::Conflict`]; the requests' errors; [`Error::Io`] reading the local files.
pub fn push(dir: impl AsRef<Path>, url: &str, options: &CacheOptions) -> Result<Pushed> {
    let dir = dir.as_ref();
    let local = mmtensor::Dataset::read_manifest(dir).map_err(|source| Error::Open {
        url: dir.display().to_string(),
        source: Box::new(source),
    })?;
    let up = Uploader::new(options)?;
    let current = up.manifest(url)?;
    if let Some(c) = &current {
        if c.manifest.columns() != local.columns() {
            return Err(Error::Conflict {
                url: url.into(),
                reason: "the dataset there has other columns than the local one".into(),
            });
        }
        if c.manifest.num_rows() > local.num_rows() {
            return Err(Error::Conflict {
                url: url.into(),
                reason: format!(
                    "the dataset there has {} rows, more than the local one's {}: a push would drop rows another writer added",
                    c.manifest.num_rows(),
                    local.num_rows()
                ),
            });
        }
    }
    let listed: Vec<&Shard> = current.iter().flat_map(|c| c.manifest.shards()).collect();
    let jobs: Vec<&Shard> = local
        .shards()
        .iter()
        .filter(|s| !listed.contains(s))
        .collect();
    let skipped_listed = local.shards().len() - jobs.len();
    let results: Vec<Result<Option<u64>>> = up.block_on(
        futures::stream::iter(jobs.iter().map(|shard| {
            let up = &up;
            async move {
                if up.holds(url, shard).await? {
                    return Ok(None);
                }
                up.put_shard(url, &dir.join(shard.file()), shard)
                    .await
                    .map(Some)
            }
        }))
        .buffer_unordered(SHARDS_IN_FLIGHT)
        .collect(),
    )?;
    let (mut uploaded, mut bytes, mut skipped) = (0, 0, skipped_listed);
    for r in results {
        match r? {
            Some(b) => {
                uploaded += 1;
                bytes += b;
            }
            None => skipped += 1,
        }
    }
    up.put_manifest(url, &local, current.as_ref().map(|c| &c.version))?;
    Ok(Pushed {
        url: url.into(),
        manifest: local,
        uploaded,
        bytes,
        skipped,
    })
}

/// A `DatasetWriter` whose dataset is in object storage: rows are cut into shards in a local
/// staging folder (a temporary folder, removed at the end), each shard uploaded and checked as
/// soon as it is complete and its staging file deleted, so the local disk holds at most about one
/// shard; [`RemoteDatasetWriter::finish`] then puts the manifest, conditionally (see [`push`]).
/// Shard names carry a nonce (`shard-NNNNN-NONCE.mmt`), so two writers appending at once never
/// upload to one name; the one whose manifest put comes second gets [`Error::Conflict`] and its
/// shards are deleted: nothing of it becomes visible, and the winner's rows are intact.
/// An append never rewrites a remote shard (new rows go into new shards only).
pub struct RemoteDatasetWriter {
    url: String,
    up: Arc<Uploader>,
    writer: DatasetWriter,
    current: Option<Current>,
    uploaded: Arc<Mutex<Vec<String>>>,
    _stage: tempfile::TempDir,
}

impl std::fmt::Debug for RemoteDatasetWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDatasetWriter")
            .field("url", &self.url)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl RemoteDatasetWriter {
    /// A new dataset at `url` with `columns` (refused when `url` holds a manifest already).
    ///
    /// # Errors
    /// [`Error::Conflict`] when the dataset exists; the requests' errors; [`Error::Write`].
    pub fn create(
        url: &str,
        columns: Vec<ColumnSpec>,
        shard_size: Option<u64>,
        options: &ConvertOptions,
        store: &CacheOptions,
    ) -> Result<RemoteDatasetWriter> {
        let up = Uploader::new(store)?;
        if up.manifest(url)?.is_some() {
            return Err(Error::Conflict {
                url: join(url, MANIFEST_FILE),
                reason: "a dataset is there already: append to it instead".into(),
            });
        }
        Self::staged(url, up, None, columns, shard_size, options)
    }

    /// Rows after those of the dataset at `url` (with its columns).
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no dataset; as [`RemoteDatasetWriter::create`].
    pub fn append(
        url: &str,
        shard_size: Option<u64>,
        options: &ConvertOptions,
        store: &CacheOptions,
    ) -> Result<RemoteDatasetWriter> {
        let up = Uploader::new(store)?;
        let Some(current) = up.manifest(url)? else {
            return Err(Error::NotFound {
                url: join(url, MANIFEST_FILE),
                note: Some("there is no dataset to append to: create it first".into()),
            });
        };
        let columns = current.manifest.columns().to_vec();
        Self::staged(url, up, Some(current), columns, shard_size, options)
    }

    fn staged(
        url: &str,
        up: Uploader,
        current: Option<Current>,
        columns: Vec<ColumnSpec>,
        shard_size: Option<u64>,
        options: &ConvertOptions,
    ) -> Result<RemoteDatasetWriter> {
        let stage = tempfile::Builder::new()
            .prefix("mmtensor-upload-")
            .tempdir()
            .map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                action: "create a staging folder in",
                source,
            })?;
        let mut writer = DatasetWriter::staged(
            stage.path(),
            current.as_ref().map(|c| c.manifest.clone()),
            columns,
            shard_size,
            options,
        )?;
        let up = Arc::new(up);
        let uploaded = Arc::new(Mutex::new(Vec::new()));
        let (hook_up, hook_uploaded, base) = (up.clone(), uploaded.clone(), url.to_owned());
        writer.on_shard(move |path, shard| {
            hook_up
                .block_on(hook_up.put_shard(&base, path, shard))
                .and_then(|r| r)
                .map_err(upload_error(path))?;
            hook_uploaded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(shard.file().to_owned());
            // Uploaded and checked: the staging copy is no longer needed.
            let _ = std::fs::remove_file(path);
            Ok(())
        });
        Ok(RemoteDatasetWriter {
            url: url.to_owned(),
            up,
            writer,
            current,
            uploaded,
            _stage: stage,
        })
    }

    /// The writer rows go through (`write_rows`, `write_plan`).
    pub fn writer(&mut self) -> &mut DatasetWriter {
        &mut self.writer
    }

    /// Uploads the last shard, then puts the new manifest conditionally. On any error, the shards
    /// this writer uploaded are deleted (no manifest lists them) and the dataset is as it was.
    ///
    /// # Errors
    /// [`Error::Conflict`] when another writer changed the manifest meanwhile; [`Error::Write`].
    pub fn finish(self) -> Result<DatasetSummary> {
        let RemoteDatasetWriter {
            url,
            up,
            writer,
            current,
            uploaded,
            _stage,
        } = self;
        let result = writer.finish().map_err(Error::from).and_then(|summary| {
            up.put_manifest(
                &url,
                &summary.manifest,
                current.as_ref().map(|c| &c.version),
            )
            .map(|()| summary)
        });
        if result.is_err() {
            let names = uploaded.lock().unwrap_or_else(|e| e.into_inner()).clone();
            up.delete_all(&url, &names);
        }
        result
    }

    /// Gives the write up: deletes the shards uploaded so far; the dataset is as it was.
    pub fn abort(self) {
        let names = self
            .uploaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.up.delete_all(&self.url, &names);
    }
}

/// A failed upload as the writer's error, naming the staged shard.
fn upload_error(path: &Path) -> impl FnOnce(Error) -> mmtensor_convert::Error + '_ {
    move |e| mmtensor_convert::Error::Io {
        op: "cannot upload",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}
