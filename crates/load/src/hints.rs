//! Access hints: `madvise` advice, and a background prefetch that warms a byte range.

use std::hint::black_box;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// A running [prefetch](crate::Tensor::prefetch): background threads reading a byte range of a
/// store into the page cache.
///
/// Dropping the handle leaves the threads running to the end of the range; they hold a clone of the
/// store, so the mapping lives until they finish.
#[derive(Debug)]
pub struct Prefetch {
    state: Arc<State>,
    workers: Vec<JoinHandle<()>>,
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
        // A file that shrank under its mapping would fail every window: say why once, up front.
        if let Err(e) = store.inner.backing.check_len(&store.inner.path) {
            state.fail(e);
        } else if store.is_mapped() && !range.is_empty() {
            let n = (range.end - range.start).div_ceil(WINDOW).min(WORKERS);
            for _ in 0..n {
                let (owner, shared) = (store.clone(), state.clone());
                let spawned = std::thread::Builder::new()
                    .name("mmtensor-prefetch".into())
                    .spawn(move || work(&owner, &shared));
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
        }
        Prefetch { state, workers }
    }

    /// True when every byte of the range has been read in, or the prefetch stopped.
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
