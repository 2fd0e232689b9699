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

use futures::{StreamExt, TryStreamExt};
use mmtensor_format::FileLayout;
use object_store::{ObjectMeta, ObjectStore};

use crate::folder::touch;
use crate::plan::{self, data_parts, PartVerifier, Skeleton};
use crate::request::{self, Object};
use crate::sidecar::Progress;
use crate::{Cache, Error, Result};

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
        object: Object::new(url, store, location, meta),
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
    /// The object's version the HEAD saw, which every GET is pinned to.
    object: Object,
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
        // The head (preamble, header, padding) and the checksum table, each verified; read from
        // the partial file when a previous try placed them, else fetched.
        let Skeleton {
            head,
            layout,
            table_bytes,
            table,
        } = plan::skeleton(
            self.url,
            self.size,
            self.header_checksum,
            |r| self.read(r, head_done),
            |r| self.read(r, tail_done),
        )
        .await?;
        if !head_done {
            self.write_at(&head, 0)?;
            self.record(|p| p.head = true).await?;
        }
        if !tail_done {
            self.write_at(&table_bytes, layout.checksum_table_range().start)?;
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
            return request::read_at(&self.file, self.partial, range);
        }
        self.object.bytes(self.cache, range).await
    }

    /// Runs `once` until it succeeds, fails for good, or has been retried (see
    /// [`request::retrying`]).
    async fn retrying<T, F>(&self, once: impl FnMut() -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        request::retrying(&self.cache.options, once).await
    }

    /// One ranged GET of the object (see [`Object::get`]).
    async fn get(
        &self,
        range: Range<u64>,
        keep: bool,
        check: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<Vec<u8>> {
        self.object
            .get(&self.cache.counters, range, keep, check)
            .await
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
