//! A download: the partial file (space reserved up front), its head, tail and data parts fetched
//! by ranged GETs and checked as they stream in, parts retried and recorded in the sidecar as they
//! finish, then the finished file placed under the entry's name.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mmtensor_format::{block_checksum, decode_checksum_table, FileLayout, Preamble, PREAMBLE_LEN};
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};

use crate::client::unchanged_since;
use crate::folder::touch;
use crate::plan::{self, check_head_padding, data_parts, PartVerifier};
use crate::sidecar::Progress;
use crate::{Cache, Error, Listed, Result};

/// Downloads the object `meta` describes into `partial` (resuming from the parts `sidecar` lists
/// when it describes the same object), verifying every byte, then places it at `entry`: fsync,
/// rename, read-only, folder fsync. The caller holds the key's lock.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    cache: &Cache,
    url: &str,
    store: Arc<dyn ObjectStore>,
    location: object_store::path::Path,
    meta: &ObjectMeta,
    header_checksum: Option<u64>,
    partial: &Path,
    sidecar: &Path,
    entry: &Path,
) -> Result<()> {
    let size = meta.size;
    let io = |path: &Path, action| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            path,
            action,
            source,
        }
    };
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)
    };
    let file = match open() {
        // A partial file that cannot be written is not this download's to resume: a process
        // killed between making a finished download read-only and renaming it into place
        // (as earlier versions did) left it so. This thread holds the key's lock, so
        // nobody else uses it: start over.
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let _ = fs::remove_file(sidecar);
            fs::remove_file(partial).map_err(io(partial, "remove a read-only"))?;
            open()
        }
        other => other,
    }
    .map_err(io(partial, "create"))?;
    let wanted = Progress::new(url, meta, cache.options.part_size.max(1));
    let progress = match Progress::read(sidecar) {
        Some(p)
            if p.same_object(&wanted) && file.metadata().map(|m| m.len()).ok() == Some(size) =>
        {
            p
        }
        _ => {
            let _ = fs::remove_file(sidecar);
            file.set_len(0).map_err(io(partial, "truncate"))?;
            wanted
        }
    };
    allocate(&file, size).map_err(|e| write_error(cache, url, size, partial, e))?;

    let job = Download {
        url,
        store,
        location,
        conditions: unchanged_since(meta),
        header_checksum,
        size,
        file: Arc::new(file),
        partial,
        sidecar,
        cache,
        progress: Mutex::new(progress),
    };
    cache.runtime.block_on(job.run())?;

    let file = &job.file;
    file.sync_all().map_err(io(partial, "fsync"))?;
    // Renamed first, made read-only after (through the descriptor, which follows the file):
    // a kill between the two leaves a complete entry that is merely writable, never a
    // read-only partial file that the next fetch could not open.
    fs::rename(partial, entry).map_err(io(entry, "rename a finished download to"))?;
    let mut perms = file.metadata().map_err(io(entry, "stat"))?.permissions();
    perms.set_readonly(true);
    file.set_permissions(perms)
        .map_err(io(entry, "make read-only"))?;
    let _ = fs::remove_file(sidecar);
    if let Ok(d) = File::open(cache.dir()) {
        let _ = d.sync_all();
    }
    touch(entry)?;
    Ok(())
}

/// A failed write to the partial file or the sidecar: [`Error::DiskFull`] when the disk is full.
fn write_error(cache: &Cache, url: &str, size: u64, path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        Error::DiskFull {
            url: url.into(),
            dir: cache.dir().to_path_buf(),
            size,
        }
    } else {
        Error::Io {
            path: path.to_path_buf(),
            action: "write",
            source: e,
        }
    }
}

/// Reserves the whole object's space up front, so a full disk fails before any byte is fetched.
fn allocate(file: &File, size: u64) -> std::io::Result<()> {
    let Ok(len) = libc::off_t::try_from(size) else {
        return Err(std::io::Error::from_raw_os_error(libc::EFBIG));
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: posix_fallocate only reads its integer arguments; the descriptor is open and owned by `file`.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: a sparse file of the right length, space taken as written.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(size),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// One download in progress: the object, the partial file and its sidecar.
struct Download<'a> {
    url: &'a str,
    store: Arc<dyn ObjectStore>,
    location: object_store::path::Path,
    /// The preconditions of every GET: the HEAD's ETag, else its modification time, so that a
    /// replaced object is [`Error::Changed`] and never a mix of two versions.
    conditions: GetOptions,
    /// The header checksum the caller expects (a manifest's), checked before any data is fetched.
    header_checksum: Option<u64>,
    size: u64,
    file: Arc<File>,
    partial: &'a Path,
    sidecar: &'a Path,
    cache: &'a Cache,
    progress: Mutex<Progress>,
}

impl Download<'_> {
    async fn run(&self) -> Result<()> {
        let (head_done, tail_done, part_size) = {
            let p = self.progress();
            (p.head, p.tail, p.part_size)
        };
        // Head: the preamble, the header (its checksum is checked by the parse) and padding.
        // One page holds the preamble and header of most stores (and is their data start at the
        // default alignment); a longer header takes a second GET, never bytes past the data start.
        let first = self.read(0..self.size.min(4096), head_done).await?;
        let preamble = Preamble::parse(&first).map_err(|e| self.format(e))?;
        if let Some(listed) = self.header_checksum {
            if preamble.header_checksum != listed {
                return Err(Error::NotAsListed {
                    url: self.url.into(),
                    what: Listed::HeaderChecksum {
                        found: preamble.header_checksum,
                        listed,
                    },
                });
            }
        }
        let header_end = PREAMBLE_LEN
            .saturating_add(preamble.header_len)
            .min(self.size);
        let mut head = first;
        if (head.len() as u64) < header_end {
            let rest = self.read(head.len() as u64..header_end, head_done).await?;
            head.extend_from_slice(&rest);
        }
        let layout = FileLayout::parse(&head, self.size).map_err(|e| self.format(e))?;
        let data_start = layout.data_start();
        if (head.len() as u64) < data_start {
            let rest = self.read(head.len() as u64..data_start, head_done).await?;
            head.extend_from_slice(&rest);
        }
        head.truncate(data_start as usize); // Bytes past it belong to the first data part.
        check_head_padding(self.url, &layout, &head)?;
        if !head_done {
            self.write_at(&head, 0)?;
            self.record(|p| p.head = true).await?;
        }

        // Tail: the checksum table (8 bytes a block, so bounded by the capped header).
        let table_range = layout.checksum_table_range();
        let table_bytes = self.read(table_range.clone(), tail_done).await?;
        let computed = block_checksum(&table_bytes);
        let stored = layout.header().checksums.checksum;
        if computed != stored {
            return Err(Error::TableChecksum {
                url: self.url.into(),
                offset: table_range.start,
                stored,
                computed,
            });
        }
        let table: Vec<u64> = decode_checksum_table(&table_bytes).collect();
        if !tail_done {
            self.write_at(&table_bytes, table_range.start)?;
            self.record(|p| p.tail = true).await?;
        }

        // Data: parts of whole blocks, in parallel, each checked as it arrives.
        let parts = data_parts(&layout, part_size);
        let todo: Vec<usize> = {
            let p = self.progress();
            let done = p.done_set(parts.len());
            (0..parts.len()).filter(|&i| !done[i]).collect()
        };
        let (layout, table, parts) = (&layout, &table, &parts);
        futures::stream::iter(todo)
            .map(|i| async move {
                self.retrying(move || self.part(layout, table, &parts[i]))
                    .await?;
                self.record(|p| p.mark_done(i)).await
            })
            .buffer_unordered(self.cache.options.concurrency.max(1))
            .try_collect::<()>()
            .await
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn format(&self, source: mmtensor_format::Error) -> Error {
        Error::Format {
            url: self.url.into(),
            source,
        }
    }

    fn write_at(&self, bytes: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| write_error(self.cache, self.url, self.size, self.partial, e))
    }

    /// Syncs the partial file, then records a finished piece in the sidecar: a part is listed only
    /// once its bytes are on disk.
    async fn record(&self, f: impl FnOnce(&mut Progress)) -> Result<()> {
        let file = self.file.clone();
        let synced = tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        synced.map_err(|e| write_error(self.cache, self.url, self.size, self.partial, e))?;
        let mut p = self.progress();
        f(&mut p);
        p.write(self.sidecar)
            .map_err(|e| write_error(self.cache, self.url, self.size, self.sidecar, e))
    }

    /// Bytes of the object, from the partial file when already verified there, else by GET.
    async fn read(&self, range: Range<u64>, local: bool) -> Result<Vec<u8>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        if local {
            let mut buf = vec![0; (range.end - range.start) as usize];
            self.file
                .read_exact_at(&mut buf, range.start)
                .map_err(|source| Error::Io {
                    path: self.partial.to_path_buf(),
                    action: "read",
                    source,
                })?;
            return Ok(buf);
        }
        self.retrying(move || self.get(range.clone(), true, |_| Ok(())))
            .await
    }

    /// Runs `once` until it succeeds, fails for good, or has been retried
    /// [`CacheOptions::retries`](crate::CacheOptions::retries) times, waiting between tries from
    /// [`CacheOptions::backoff`](crate::CacheOptions::backoff), doubling: for a body that failed
    /// midway, which object_store's own retries (before the body starts) do not cover.
    async fn retrying<T, F>(&self, mut once: impl FnMut() -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match once().await {
                Err(e) if e.is_transient() && attempt < self.cache.options.retries => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn backoff(&self, attempt: usize) -> Duration {
        self.cache
            .options
            .backoff
            .saturating_mul(1 << attempt.min(10))
    }

    /// One ranged GET, each chunk passed to `check` as it arrives; returns the bytes if `keep`
    /// (the head and the tail), or nothing (a data part, written as it streams).
    async fn get(
        &self,
        range: Range<u64>,
        keep: bool,
        mut check: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<Vec<u8>> {
        let counters = &self.cache.counters;
        counters.get();
        let action = || format!("GET bytes {}..{}", range.start, range.end);
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..self.conditions.clone()
        };
        let result = self
            .store
            .get_opts(&self.location, options)
            .await
            .map_err(|e| Error::request(self.url, action(), e))?;
        let mut stream = result.into_stream();
        let mut out = Vec::new();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::request(self.url, action(), e))?;
            counters.received(chunk.len() as u64);
            got += chunk.len() as u64;
            if got > range.end - range.start {
                break;
            }
            check(&chunk)?;
            if keep {
                out.extend_from_slice(&chunk);
            }
        }
        if got != range.end - range.start {
            return Err(Error::ShortRead {
                url: self.url.into(),
                start: range.start,
                end: range.end,
                got,
            });
        }
        Ok(out)
    }

    /// Streams one data part into the partial file, checking every block before it is written.
    async fn part(&self, layout: &FileLayout, table: &[u64], part: &plan::Part) -> Result<()> {
        let mut verifier = PartVerifier::new(self.url, layout, table, part);
        self.get(part.range.clone(), false, |chunk| {
            let at = verifier.position();
            verifier.update(chunk)?;
            self.write_at(chunk, at)
        })
        .await?;
        // `get` checked the length, and the segments tile the part: this holds by construction.
        if !verifier.is_complete() {
            return Err(Error::ShortRead {
                url: self.url.into(),
                start: part.range.start,
                end: part.range.end,
                got: verifier.position() - part.range.start,
            });
        }
        Ok(())
    }
}
