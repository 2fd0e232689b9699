//! Access hints: `madvise` advice, and a background prefetch that warms a byte range.

use std::hint::black_box;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::store::Inner;
use crate::{Error, Result, Store};

/// How a range of a store will be read, passed to the kernel with `madvise`.
///
/// Advice changes only the kernel's readahead and eviction choices, never what the bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Advice {
    /// No special treatment (the default readahead).
    Normal,
    /// Read front to back: read ahead aggressively, and pages behind the reader may go early.
    Sequential,
    /// Read in no particular order: do not read ahead beyond what is asked.
    Random,
    /// Will be needed soon: start reading it now, without waiting. For large ranges prefer
    /// [`crate::Tensor::prefetch`], which does not block the caller while the reads are queued.
    WillNeed,
}

/// Bytes each prefetch worker faults in at a time. Large enough that the disk sees long sequential
/// requests; small enough that several workers share a range of tens of MiB.
const WINDOW: u64 = 16 << 20;
/// Workers per prefetch. Each one has about one readahead request in flight, so several keep the
/// disk's queue deeper than a single reader's page faults do (measured in the crate's
/// `cold_pass` example: 4 beat 1 and 2 with the common 128 KiB readahead, and tie with 8 MiB). They
/// mostly sleep on I/O, so they cost the caller little CPU.
const WORKERS: u64 = 4;
/// Prefetch workers alive at once in the whole process. A loop that prefetches every tensor of a
/// store (`for k in store: store.prefetch(k)`) would otherwise start up to four threads per call,
/// so 100,000 tensors would mean 100,000 threads. Past the cap, a prefetch asks the kernel for
/// asynchronous readahead instead (`MADV_WILLNEED`), which needs no thread.
pub(crate) const MAX_LIVE_WORKERS: usize = 16;

/// The number of prefetch workers alive in the process; never above [`MAX_LIVE_WORKERS`].
static LIVE_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// The number of prefetch workers alive now (never above 16). For tests: not part of the API.
#[doc(hidden)]
pub fn live_prefetch_workers() -> usize {
    LIVE_WORKERS.load(Ordering::Acquire)
}

/// A reserved place under [`MAX_LIVE_WORKERS`]; dropping it (when its worker ends, or when the
/// thread could not be started) frees the place.
struct Slot;

impl Slot {
    /// Reserves a place, or `None` when [`MAX_LIVE_WORKERS`] are alive.
    fn reserve() -> Option<Slot> {
        LIVE_WORKERS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LIVE_WORKERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        LIVE_WORKERS.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) fn advise(inner: &Inner, range: Range<u64>, advice: Advice) -> Result<()> {
    let Some(map) = inner.backing.file_map() else {
        return Ok(());
    };
    if range.is_empty() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use memmap2::Advice as A;
        let advice = match advice {
            Advice::Normal => A::Normal,
            Advice::Sequential => A::Sequential,
            Advice::Random => A::Random,
            Advice::WillNeed => A::WillNeed,
        };
        // Ranges come from validated views of this mapping, so they fit in usize and in the map.
        map.advise_range(
            advice,
            range.start as usize,
            (range.end - range.start) as usize,
        )
        .map_err(|source| Error::Io {
            path: inner.path.clone(),
            action: "madvise",
            source,
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (map, advice);
        Ok(())
    }
}

/// Whether the page holding byte `offset` of the store is in memory (`mincore`), or `None` when
/// that cannot be told: a copied store (always in memory, so `Some(true)`), a platform without
/// `mincore`, or a failed call.
pub(crate) fn resident(inner: &Inner, offset: u64) -> Option<bool> {
    let Some(map) = inner.backing.file_map() else {
        return Some(true);
    };
    #[cfg(target_os = "linux")]
    {
        let page = page_size()?;
        let offset = usize::try_from(offset).ok()?;
        if offset >= map.len() {
            return None;
        }
        // The mapping starts on a page boundary, so rounding the offset down stays inside it.
        let start = offset - offset % page;
        let mut vec = [0u8; 1];
        // SAFETY: `start` is page-aligned and `map.as_ptr() + start` lies inside the mapping,
        // which this store keeps alive for the call; one page of it is asked about, so the kernel
        // writes one byte into `vec`. mincore reads no memory of ours and changes no mapping.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr().add(start) as *mut libc::c_void,
                1,
                vec.as_mut_ptr(),
            )
        };
        (rc == 0).then_some(vec[0] & 1 == 1)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (map, offset);
        None
    }
}

#[cfg(target_os = "linux")]
fn page_size() -> Option<usize> {
    use std::sync::OnceLock;
    static PAGE: OnceLock<Option<usize>> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant; it has no memory arguments.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n.is_power_of_two())
    })
}

/// A running [prefetch](crate::Tensor::prefetch): background threads reading a byte range of a
/// store into the page cache.
///
/// Dropping the handle leaves the threads running to the end of the range; they hold a clone of the
/// store, so the mapping lives until they finish.
///
/// At most 16 prefetch threads live in the process at once, however many prefetches are started.
/// A prefetch started while all 16 are busy starts none: it asks the kernel to read the range
/// ahead asynchronously (`madvise(MADV_WILLNEED)`) and reports itself finished at once
/// ([`is_finished`](Prefetch::is_finished)); its [`wait`](Prefetch::wait) keeps its meaning by
/// reading in, on the calling thread, whatever the readahead has not.
#[derive(Debug)]
pub struct Prefetch {
    state: Arc<State>,
    workers: Vec<JoinHandle<()>>,
    /// For a prefetch that started no worker (the process was at the cap): the store whose range
    /// [`Prefetch::wait`] reads in on the calling thread.
    unstarted: Option<Store>,
}

#[derive(Debug)]
struct State {
    /// The next absolute offset a worker claims.
    next: AtomicU64,
    end: u64,
    cancelled: AtomicBool,
    error: Mutex<Option<Error>>,
}

impl Prefetch {
    pub(crate) fn start(store: &Store, range: Range<u64>) -> Prefetch {
        let state = Arc::new(State {
            next: AtomicU64::new(range.start),
            end: range.end,
            cancelled: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let mut workers = Vec::new();
        let mut unstarted = None;
        // A file that shrank under its mapping would fail every window: say why once, up front.
        if let Err(e) = store.inner.backing.check_len(&store.inner.path) {
            state.fail(e);
        } else if store.is_mapped() && !range.is_empty() {
            let n = (range.end - range.start).div_ceil(WINDOW).min(WORKERS);
            for _ in 0..n {
                // At the cap, the workers already started (if any) claim every window anyway.
                let Some(slot) = Slot::reserve() else {
                    break;
                };
                let (owner, shared) = (store.clone(), state.clone());
                let spawned = std::thread::Builder::new()
                    .name("mmtensor-prefetch".into())
                    .spawn(move || {
                        // Freed when the worker ends, however it ends.
                        let _slot = slot;
                        work(&owner, &shared);
                    });
                match spawned {
                    Ok(handle) => workers.push(handle),
                    Err(source) => {
                        // Without a thread the reads just do not happen early: record why.
                        state.fail(Error::Io {
                            path: store.inner.path.clone(),
                            action: "start a prefetch thread for",
                            source,
                        });
                        break;
                    }
                }
            }
            if workers.is_empty() && state.error().is_none() {
                // Every worker place is taken: readahead without a thread. The kernel starts the
                // reads and returns; nothing waits for them.
                match advise(&store.inner, range, Advice::WillNeed) {
                    Ok(()) => unstarted = Some(store.clone()),
                    Err(e) => state.fail(e),
                }
            }
        }
        Prefetch {
            state,
            workers,
            unstarted,
        }
    }

    /// True when no background work is left: every byte of the range has been read in, or the
    /// prefetch stopped, or it started no worker (at the process's cap it only asked the kernel for
    /// readahead).
    pub fn is_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Asks the workers to stop after the window each is reading.
    pub fn cancel(&self) {
        self.state.cancelled.store(true, Ordering::Relaxed);
    }

    /// Blocks until the range is resident (or the prefetch was cancelled).
    ///
    /// # Errors
    ///
    /// [`Error::Shrank`] when the file is shorter than its mapping (it was truncated while open);
    /// [`Error::Io`] when the kernel refused to read a window (for example `EIO`), or a worker
    /// thread could not be started.
    pub fn wait(mut self) -> Result<()> {
        for w in self.workers.drain(..) {
            // A worker does not panic (it only calls madvise and reads bytes of a live mapping).
            let _ = w.join();
        }
        if let Some(store) = self.unstarted.take() {
            // No worker was started: read the range in here, as a worker would have.
            work(&store, &self.state);
        }
        let error = self
            .state
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        error.map_or(Ok(()), Err)
    }
}

impl State {
    /// Whether a failure has been recorded.
    fn error(&self) -> Option<()> {
        let slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|_| ())
    }

    fn fail(&self, e: Error) {
        self.cancelled.store(true, Ordering::Relaxed);
        let mut slot = self.error.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(e);
    }
}

fn work(store: &Store, state: &State) {
    let Some(map) = store.inner.backing.file_map() else {
        return;
    };
    while !state.cancelled.load(Ordering::Relaxed) {
        let start = state.next.fetch_add(WINDOW, Ordering::Relaxed);
        if start >= state.end {
            return;
        }
        let end = state.end.min(start + WINDOW);
        // Offsets are within a validated view of this mapping, so they fit in usize.
        if let Err(source) = populate(map, start as usize..end as usize) {
            // EFAULT from a truncated file reads "Bad address": say that the file shrank instead.
            let e = match store.inner.backing.check_len(&store.inner.path) {
                Err(shrank) => shrank,
                Ok(()) => Error::Io {
                    path: store.inner.path.clone(),
                    action: "prefetch",
                    source,
                },
            };
            state.fail(e);
            return;
        }
    }
}

/// Reads `range` of the mapping into memory, blocking until it is resident.
pub(crate) fn populate(map: &memmap2::Mmap, range: Range<usize>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::sync::atomic::AtomicBool;
        // MADV_POPULATE_READ (Linux 5.14) faults the whole range in one call and reports a
        // truncated file as EFAULT instead of SIGBUS; older kernels answer EINVAL.
        static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
        if !UNSUPPORTED.load(Ordering::Relaxed) {
            match map.advise_range(memmap2::Advice::PopulateRead, range.start, range.len()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    UNSUPPORTED.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
    }
    // Touch one byte per page: each fault reads its page (and the kernel's readahead beyond it).
    for i in range.step_by(4096) {
        black_box(map[i]);
    }
    Ok(())
}
