//! The gathering stream: the batches of one epoch, gathered up to `prefetch` batches ahead of the
//! caller by gather threads (or on the caller's thread), each into buffers of its own.
//!
//! With `prefetch` >= 2 and more than one core, several gather threads (as many as `prefetch`
//! and the cores allow) each gather whole batches, side by side, on their own: batch `i` on one,
//! `i + 1` on another. One thread's gather copies its batch's rows in file order, alone; the
//! batches come out in order. A thread with nothing to do (the caller is `prefetch` batches
//! behind) sleeps on a condition variable: no thread spins or yields waiting for work, so the CPU
//! time of an epoch is its copies. With one gather thread (`prefetch` 1, one core, or a gate that
//! makes batches readable one after the other), that thread splits each batch over the process's
//! pool ([`crate::pool`]) as `take` does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::batch::Batch;
use super::buffers::{Allocate, Buffers, Pool};
use super::column::Shared;
use super::gate::GatePass;
use super::options::LoaderState;
use super::plan::{self, Hold};
use super::readahead::ReadAhead;
use super::sweep::Progress;
use super::waits::{lock, wait_until};
use crate::order::EpochOrder;
use crate::{take, Error, Result};

/// Gather threads a stream starts at most.
const MAX_GATHER_THREADS: usize = 8;

/// The work of gathering batches: shared by the gather threads, or done by the caller with
/// prefetch 0. Each lock is held only for its own step, never across a gather.
struct Gatherer<A> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    /// The allocator, and the batch whose turn it is to allocate: buffers are asked for in batch
    /// order, whichever thread gathers which batch, so an allocator that fails after N sets fails
    /// the same batch every time.
    alloc: Mutex<(usize, A)>,
    /// Signalled when a batch's turn to allocate has passed.
    turn: Condvar,
    ahead: Mutex<ReadAhead>,
    /// What makes each batch's rows readable first, for data that is not all local. A stream
    /// with a gate has one gather thread: a gate is asked for its batches in order.
    gate: Option<Mutex<Box<dyn GatePass>>>,
    /// The epoch's sweep ([`plan`]): a batch is gathered once the sweep has passed every row it
    /// reads (a shuffled batch's rows lie all over the columns, so about the whole sweep), rather
    /// than fault them in, one page at a time, against the sweep's long reads.
    sweep: Option<Arc<Progress>>,
    /// Set when the stream stops: a gather thread waiting for the sweep or for its turn to
    /// allocate gives up (each looks every [`POLL`]), so that dropping a stream never waits for a
    /// sweep of the whole columns.
    stop: AtomicBool,
}

/// How often a waiting gather thread looks at [`Gatherer::stop`].
const POLL: Duration = Duration::from_millis(10);

impl<A: Allocate> Gatherer<A> {
    /// Asks the kernel to start reading batch `index`'s pages, if there is such a batch: not under
    /// a sweep, which reads them all, in order, and would only be raced by those reads.
    fn advise(&self, index: usize) {
        if self.sweep.is_some() {
            return;
        }
        lock(&self.ahead).advise(&self.shared, &self.order, index);
    }

    /// Gathers batch `index` into a new set of buffers.
    fn gather(&self, index: usize) -> Result<Batch<A::Buffers>> {
        if let Some(sweep) = &self.sweep {
            if !sweep.wait_for(self.swept_past(index), &self.stop, POLL)? {
                return Err(self.stopped(index));
            }
        }
        if let Some(gate) = &self.gate {
            lock(gate).ready(index).map_err(|source| Error::Gate {
                path: self.shared.path.clone(),
                batch: index,
                source,
            })?;
        }
        let batch = self.gather_ready(index);
        if let Some(gate) = &self.gate {
            lock(gate).done(index);
        }
        batch
    }

    /// How far the sweep must have got for batch `index`: past its last row.
    fn swept_past(&self, index: usize) -> u64 {
        let rows = self.order.batch(index).unwrap_or(&[]);
        rows.iter().max().map_or(0, |&r| r + 1)
    }

    /// Whether batch `index` needs no more of the sweep within `timeout`: its rows are swept,
    /// the sweep has ended, or there is none.
    fn swept_within(&self, index: usize, timeout: Duration) -> bool {
        self.sweep
            .as_ref()
            .is_none_or(|s| s.passed_within(self.swept_past(index), timeout))
    }

    /// The error of a batch not gathered because the stream stopped (never handed out: the
    /// stream is being dropped, or stopped at an earlier batch's error).
    fn stopped(&self, index: usize) -> Error {
        Error::LoaderStopped {
            path: self.shared.path.clone(),
            batch: index,
        }
    }

    /// Gathers batch `index`, whose rows are readable.
    fn gather_ready(&self, index: usize) -> Result<Batch<A::Buffers>> {
        // Waits for the batches before this one to have their buffers, and passes the turn on
        // when dropped, whether this batch gets its buffers or fails first.
        let Some(mut turn) = Turn::wait(self, index) else {
            return Err(self.stopped(index));
        };
        let rows = self.order.batch(index).unwrap_or(&[]);
        // A padded column's rows are as long as this batch's longest (see `padded.rs`).
        let widths = self
            .shared
            .columns
            .iter()
            .map(|c| c.source.padded_length(rows).transpose())
            .collect::<Result<Box<[Option<u64>]>>>()?;
        let lens: Vec<usize> = self
            .shared
            .columns
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| c.batch_bytes(rows.len(), *w))
            .collect();
        let mut buffers = turn
            .allocator()
            .allocate(&lens)
            .map_err(|source| Error::Buffers {
                path: self.shared.path.clone(),
                source,
            })?;
        drop(turn);
        for (c, col) in self.shared.columns.iter().enumerate() {
            let out = buffers.column_mut(c);
            let have = out.len();
            let out = out.get_mut(..lens[c]).ok_or_else(|| Error::TakeOutput {
                path: self.shared.path.clone(),
                tensor: col.name.to_string(),
                rows: rows.len(),
                row_bytes: (lens[c] / rows.len().max(1)) as u64,
                actual: have,
            })?;
            col.source.take_into(rows, out, col.out_dtype)?;
        }
        Ok(Batch::new(
            Arc::clone(&self.shared),
            Arc::clone(&self.order),
            index,
            buffers,
            widths,
        ))
    }
}

/// Batch `index`'s turn to allocate (see [`Gatherer::alloc`]).
struct Turn<'g, A> {
    slot: MutexGuard<'g, (usize, A)>,
    turn: &'g Condvar,
    index: usize,
}

impl<'g, A: Allocate> Turn<'g, A> {
    /// Waits until the batches before `index` (from the stream's first) have had their turn;
    /// `None` when the stream stops first (a batch before it will never have its turn then).
    fn wait(g: &'g Gatherer<A>, index: usize) -> Option<Turn<'g, A>> {
        let mut slot = lock(&g.alloc);
        loop {
            let (s, ready) = wait_until(&g.turn, slot, POLL, |s| s.0 >= index);
            slot = s;
            if ready {
                return Some(Turn {
                    slot,
                    turn: &g.turn,
                    index,
                });
            }
            if g.stop.load(Ordering::Acquire) {
                return None;
            }
        }
    }

    fn allocator(&mut self) -> &mut A {
        &mut self.slot.1
    }
}

impl<A> Drop for Turn<'_, A> {
    fn drop(&mut self) {
        self.slot.0 = self.slot.0.max(self.index + 1);
        self.turn.notify_all();
    }
}

/// What a gather thread hands over: a batch, or the error that stopped the stream.
type Sent<B> = Result<Batch<B>>;

/// Where the gather threads and the caller meet.
struct Queue<B: Buffers> {
    state: Mutex<Slots<B>>,
    /// Signalled when a batch is handed over, or a gather thread ends.
    handed: Condvar,
    /// Signalled when the caller takes a batch (a gather may start), or the stream stops.
    room: Condvar,
}

impl<B: Buffers> Queue<B> {
    /// Waits at most `timeout` (`Duration::MAX`: as long as it takes) for batch `index` to be
    /// handed over or every gather thread to have ended: the state, and whether either happened.
    fn wait_handed(&self, index: usize, timeout: Duration) -> (MutexGuard<'_, Slots<B>>, bool) {
        let mut s = lock(&self.state);
        // Set while the caller holds the lock or waits: the threads look only under the lock.
        s.caller_waits = true;
        let (mut s, done) = wait_until(&self.handed, s, timeout, |s| {
            s.ready.contains_key(&index) || s.threads == 0
        });
        s.caller_waits = false;
        (s, done)
    }
}

struct Slots<B: Buffers> {
    /// The next batch a gather thread claims.
    claim: usize,
    /// The batch after the epoch's last.
    end: usize,
    /// Batches that may still be claimed before the caller takes one: `prefetch` at first, one
    /// back with each batch taken, so no thread runs more than `prefetch` batches ahead.
    permits: usize,
    /// Batches gathered and not yet taken, by index (they may finish out of order).
    ready: BTreeMap<usize, Sent<B>>,
    /// No more batches are claimed: a gather failed, or the stream is stopping.
    stopped: bool,
    /// Gather threads alive.
    threads: usize,
    /// Gather threads waiting for a permit, and whether the caller waits for a batch: a condition
    /// variable is signalled only when someone waits on it (a signal is a system call).
    idle: usize,
    caller_waits: bool,
}

/// The batches of one epoch from a starting batch on, gathered ahead by gather threads (or, with
/// `prefetch` 0, on the calling thread when asked for). It owns everything it reads, so it may
/// outlive the [`Loader`](crate::Loader) that started it.
///
/// Dropping it stops the gather threads after the batches they are gathering, and waits for them.
pub struct Stream<A: Allocate> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    next: usize,
    mode: Mode<A>,
    /// The advice this stream put in force for the epoch ([`plan`]), given back when it ends.
    hold: Hold,
}

enum Mode<A: Allocate> {
    /// Gathering on the calling thread.
    Inline(Gatherer<A>),
    /// Gather threads gathering ahead.
    Threads {
        gatherer: Arc<Gatherer<A>>,
        queue: Arc<Queue<A::Buffers>>,
        handles: Vec<JoinHandle<()>>,
    },
    /// The stream ended early, after an error.
    Done,
}

impl<A: Allocate> Stream<A> {
    /// Starts handing out batches `first..` of `order`, gathered into buffers from `alloc`: by
    /// gather threads up to `prefetch` batches ahead, or on the caller's thread with `prefetch` 0.
    pub(super) fn start(
        shared: Arc<Shared>,
        order: Arc<EpochOrder>,
        first: usize,
        prefetch: usize,
        alloc: A,
        gate: Option<Box<dyn GatePass>>,
    ) -> Result<Stream<A>> {
        let gated = gate.is_some();
        // The epoch's advice first, so that the first batch's reads already follow it. Given
        // back by `Drop` from here on, whatever fails below.
        let hold = plan::begin(&shared, &order, first, gated);
        let gatherer = Gatherer {
            shared: Arc::clone(&shared),
            order: Arc::clone(&order),
            alloc: Mutex::new((first, alloc)),
            turn: Condvar::new(),
            ahead: Mutex::new(ReadAhead::default()),
            gate: gate.map(Mutex::new),
            sweep: hold.sweep(),
            stop: AtomicBool::new(false),
        };
        let mut stream = Stream {
            shared: Arc::clone(&shared),
            order: Arc::clone(&order),
            next: first,
            mode: Mode::Done,
            hold,
        };
        if prefetch == 0 {
            gatherer.advise(first);
            stream.mode = Mode::Inline(gatherer);
            return Ok(stream);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = if gated {
            1
        } else {
            prefetch.min(cores).clamp(1, MAX_GATHER_THREADS)
        };
        // The batches the threads start on; each then advises the batch `threads` past its own.
        for k in 0..threads {
            gatherer.advise(first + k);
        }
        let queue = Arc::new(Queue {
            state: Mutex::new(Slots {
                claim: first,
                end: order.len(),
                permits: prefetch,
                ready: BTreeMap::new(),
                stopped: false,
                threads,
                idle: 0,
                caller_waits: false,
            }),
            handed: Condvar::new(),
            room: Condvar::new(),
        });
        let gatherer = Arc::new(gatherer);
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (g, q) = (Arc::clone(&gatherer), Arc::clone(&queue));
            let spawned = std::thread::Builder::new()
                .name("mmtensor-loader".into())
                .spawn(move || work(&g, &q, threads));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stream.mode = Mode::Threads {
                        gatherer,
                        queue,
                        handles,
                    };
                    stream.finish();
                    return Err(Error::io(&shared.path, "start a loader thread for")(e));
                }
            }
        }
        stream.mode = Mode::Threads {
            gatherer,
            queue,
            handles,
        };
        Ok(stream)
    }

    /// The number of batches of the epoch, on this rank.
    pub fn epoch_len(&self) -> usize {
        self.order.len()
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.order.epoch()
    }

    /// The index of the batch the next call to `next` yields.
    pub fn next_batch(&self) -> usize {
        self.next
    }

    /// Whether the next call to `next` returns at once with a batch: it is gathered (or the
    /// stream has ended). A binding can then take the batch without first letting go of its
    /// interpreter lock (a hand-off that costs more than taking a gathered batch).
    pub fn is_ready(&self) -> bool {
        if self.next >= self.order.len() {
            return true;
        }
        match &self.mode {
            Mode::Done => true,
            Mode::Inline(_) => false,
            Mode::Threads { queue, .. } => {
                // An error is not "ready": taking it stops the stream, which waits for the gather
                // threads, and that wait is better made without the caller's lock.
                let s = lock(&queue.state);
                matches!(s.ready.get(&self.next), Some(Ok(_)))
            }
        }
    }

    /// Waits at most `timeout` (any length) for the next call to `next` to be able to return
    /// without waiting (a batch, the error or the end it would return); true when it can. With
    /// `prefetch` 0 the batch is gathered by `next` itself: this waits only for the sweep of a
    /// cold epoch to reach the batch's rows, and `next` still gathers (faults, a gate's fetches).
    /// A binding waits in slices with it, to answer a signal (Ctrl-C) or a closed store between
    /// them rather than only after the wait.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        if self.next >= self.order.len() {
            return true;
        }
        match &self.mode {
            Mode::Done => true,
            Mode::Inline(g) => g.swept_within(self.next, timeout),
            Mode::Threads { queue, .. } => queue.wait_handed(self.next, timeout).1,
        }
    }

    /// Stops the gather threads and waits for them.
    fn finish(&mut self) {
        if let Mode::Threads {
            gatherer,
            queue,
            handles,
        } = &mut self.mode
        {
            gatherer.stop.store(true, Ordering::Release);
            {
                let mut s = lock(&queue.state);
                s.stopped = true;
                // Batches gathered and never taken go back to the loader's pool now.
                s.ready.clear();
                queue.room.notify_all();
            }
            for h in handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}

/// How much lower than its creator's a gather thread's priority is (`nice`).
const NICER: i32 = 10;

/// Lowers the calling gather thread's priority by [`NICER`] (Linux, where a thread's nice value is
/// its own): when the training loop's thread and the gathers that feed it both want a core, the
/// loop gets it first, and the gathers take whatever cores are idle, as fast as before. On a
/// 2-core machine with a step that sleeps (as one waiting on a GPU does) an epoch took 1.19x
/// max(step, load) with the gathers at the caller's priority, 0.98x at +10 (docs/BENCHMARKS.md).
fn yield_to_the_caller() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority and setpriority take integers only; on Linux `who == 0` with
        // PRIO_PROCESS names the calling thread alone. A failure leaves the priority as it was
        // (getpriority's -1 is also a valid nice value: then the thread becomes 9, still nicer
        // than its caller).
        unsafe {
            let now = libc::getpriority(libc::PRIO_PROCESS, 0);
            let _ = libc::setpriority(libc::PRIO_PROCESS, 0, (now + NICER).min(19));
        }
    }
}

/// Counts a gather thread out when it ends, however it ends, and wakes the caller. A thread that
/// panics (in a caller's `Allocate`, say) hands over `LoaderStopped` for the batch it claimed and
/// stops the stream: the caller waits for that batch, and the other threads would otherwise fill
/// the permits and sleep.
struct Alive<'q, A: Allocate> {
    queue: &'q Queue<A::Buffers>,
    gatherer: &'q Gatherer<A>,
    /// The batch this thread claimed and has not handed over.
    claimed: Option<usize>,
}

impl<A: Allocate> Drop for Alive<'_, A> {
    fn drop(&mut self) {
        let mut s = lock(&self.queue.state);
        s.threads -= 1;
        if let Some(batch) = self.claimed.take() {
            s.ready
                .entry(batch)
                .or_insert_with(|| Err(self.gatherer.stopped(batch)));
            s.stopped = true;
            self.queue.room.notify_all();
        }
        self.queue.handed.notify_all();
    }
}

/// A gather thread, one of `threads`: claims the next batch while the caller is fewer than
/// `prefetch` batches behind, gathers it (alone on this thread when there are several), hands it
/// over; until the epoch ends, a gather fails, or the stream stops.
fn work<A: Allocate>(g: &Gatherer<A>, q: &Queue<A::Buffers>, threads: usize) {
    yield_to_the_caller();
    let mut alive = Alive {
        queue: q,
        gatherer: g,
        claimed: None,
    };
    loop {
        let index = {
            let mut s = lock(&q.state);
            loop {
                if s.stopped || s.claim >= s.end {
                    return;
                }
                if s.permits > 0 {
                    break;
                }
                s.idle += 1;
                s = q.room.wait(s).unwrap_or_else(|e| e.into_inner());
                s.idle -= 1;
            }
            s.permits -= 1;
            s.claim += 1;
            s.claim - 1
        };
        alive.claimed = Some(index);
        // The batch after those the other threads are gathering.
        g.advise(index + threads);
        let batch = if threads > 1 {
            take::serially(|| g.gather(index))
        } else {
            g.gather(index)
        };
        let mut s = lock(&q.state);
        if batch.is_err() {
            // Batches after a failed one are not gathered: the caller stops at it.
            s.stopped = true;
            q.room.notify_all();
        }
        s.ready.insert(index, batch);
        alive.claimed = None;
        if s.caller_waits {
            q.handed.notify_all();
        }
    }
}

impl<A: Allocate> Iterator for Stream<A> {
    type Item = Result<Batch<A::Buffers>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.order.len() {
            return None;
        }
        let sent = match &mut self.mode {
            Mode::Done => return None,
            Mode::Inline(g) => {
                g.advise(self.next + 1);
                g.gather(self.next)
            }
            Mode::Threads {
                gatherer, queue, ..
            } => {
                let (mut s, _) = queue.wait_handed(self.next, Duration::MAX);
                match s.ready.remove(&self.next) {
                    Some(sent) => {
                        s.permits += 1;
                        if s.idle > 0 {
                            queue.room.notify_one();
                        }
                        sent
                    }
                    // A guard: every batch up to the one that stopped the stream is handed over
                    // before the threads end (a thread that panics hands over an error).
                    None => Err(gatherer.stopped(self.next)),
                }
            }
        };
        match sent {
            Ok(batch) => {
                self.next += 1;
                Some(Ok(batch))
            }
            Err(e) => {
                self.finish();
                self.mode = Mode::Done;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match self.mode {
            Mode::Done => 0,
            _ => self.order.len().saturating_sub(self.next),
        };
        (0, Some(n))
    }
}

impl<A: Allocate> std::iter::FusedIterator for Stream<A> {}

impl<A: Allocate> Drop for Stream<A> {
    fn drop(&mut self) {
        self.finish();
        plan::end(&self.shared, &mut self.hold);
    }
}

/// The rest of a [`Loader`](crate::Loader)'s epoch, in the loader's own buffers; each batch handed
/// out advances the loader's state.
pub struct Iter<'l> {
    state: &'l mut LoaderState,
    stream: Stream<Pool>,
}

impl<'l> Iter<'l> {
    /// `stream`, whose batches move `state` as they are handed out.
    pub(super) fn new(state: &'l mut LoaderState, stream: Stream<Pool>) -> Iter<'l> {
        Iter { state, stream }
    }
}

impl Iter<'_> {
    /// The underlying stream (its epoch, its next batch).
    pub fn stream(&self) -> &Stream<Pool> {
        &self.stream
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let batch = self.stream.next()?;
        if let Ok(b) = &batch {
            *self.state = b.state_after();
        }
        Some(batch)
    }
}

impl std::iter::FusedIterator for Iter<'_> {}
