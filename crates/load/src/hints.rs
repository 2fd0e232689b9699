//! Access hints: `madvise` advice, and a background prefetch that warms a byte range.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::file::OpenFile;
use crate::{Error, Result};

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

/// Tells the kernel how bytes `range` (absolute) of `file` will be read (`madvise`). A no-op for a
/// private copy, an empty range, or a platform without `madvise`.
pub(crate) fn advise(file: &OpenFile, range: Range<u64>, advice: Advice) -> Result<()> {
    #[cfg(unix)]
    {
        use memmap2::Advice as A;
        let advice = match advice {
            Advice::Normal => A::Normal,
            Advice::Sequential => A::Sequential,
            Advice::Random => A::Random,
            Advice::WillNeed => A::WillNeed,
        };
        file.advise(range, advice)
    }
    #[cfg(not(unix))]
    {
        let _ = (file, range, advice);
        Ok(())
    }
}

/// A running [prefetch](crate::Tensor::prefetch): background threads reading a byte range of a
/// store into the page cache.
///
/// Dropping the handle leaves the threads running to the end of the range; they hold the store's
/// file, so the mapping lives until they finish.
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
    /// For a prefetch that started no worker (the process was at the cap): the file whose range
    /// [`Prefetch::wait`] reads in on the calling thread.
    unstarted: Option<Arc<OpenFile>>,
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
    /// Starts reading bytes `range` (absolute) of `file` in.
    pub(crate) fn start(file: &Arc<OpenFile>, range: Range<u64>) -> Prefetch {
        let state = Arc::new(State {
            next: AtomicU64::new(range.start),
            end: range.end,
            cancelled: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let mut workers = Vec::new();
        let mut unstarted = None;
        // A file that shrank under its mapping would fail every window: say why once, up front.
        if let Err(e) = file.check_len() {
            state.fail(e);
        } else if file.is_mapped() && !range.is_empty() {
            let n = (range.end - range.start).div_ceil(WINDOW).min(WORKERS);
            for _ in 0..n {
                // At the cap, the workers already started (if any) claim every window anyway.
                let Some(slot) = Slot::reserve() else {
                    break;
                };
                let (owner, shared) = (Arc::clone(file), state.clone());
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
                        state.fail(Error::io(file.path(), "start a prefetch thread for")(
                            source,
                        ));
                        break;
                    }
                }
            }
            if workers.is_empty() && state.error().is_none() {
                // Every worker place is taken: readahead without a thread. The kernel starts the
                // reads and returns; nothing waits for them.
                match advise(file, range, Advice::WillNeed) {
                    Ok(()) => unstarted = Some(Arc::clone(file)),
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
        if let Some(file) = self.unstarted.take() {
            // No worker was started: read the range in here, as a worker would have.
            work(&file, &self.state);
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

fn work(file: &OpenFile, state: &State) {
    if !file.is_mapped() {
        return;
    }
    while !state.cancelled.load(Ordering::Relaxed) {
        let start = state.next.fetch_add(WINDOW, Ordering::Relaxed);
        if start >= state.end {
            return;
        }
        let end = state.end.min(start + WINDOW);
        // A truncated file fails as `Error::Shrank`, not as a "Bad address".
        if let Err(e) = file.populate(start..end, "prefetch") {
            state.fail(e);
            return;
        }
    }
}
