//! The gathering stream: the batches of one epoch, gathered on a worker thread up to `prefetch`
//! batches ahead of the caller (or on the caller's thread), each into buffers of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::batch::Batch;
use super::buffers::{Allocate, Buffers, Pool};
use super::column::Shared;
use super::gate::GatePass;
use super::options::LoaderState;
use super::readahead::{self, ReadAhead};
use crate::order::{EpochOrder, Shuffle};
use crate::{Error, Result};

/// The work of gathering batches: done by the worker thread, or by the caller with prefetch 0.
struct Gatherer<A> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    alloc: A,
    ahead: ReadAhead,
    /// What makes each batch's rows readable first, for data that is not all local.
    gate: Option<Box<dyn GatePass>>,
}

impl<A: Allocate> Gatherer<A> {
    /// Asks the kernel to start reading batch `index`'s pages, if there is such a batch.
    fn advise(&mut self, index: usize) {
        self.ahead.advise(&self.shared, &self.order, index);
    }

    /// Gathers batch `index` into a new set of buffers.
    fn gather(&mut self, index: usize) -> Result<Batch<A::Buffers>> {
        if let Some(gate) = &mut self.gate {
            gate.ready(index).map_err(|source| Error::Gate {
                path: self.shared.path.clone(),
                batch: index,
                source,
            })?;
        }
        let batch = self.gather_ready(index);
        if let Some(gate) = &mut self.gate {
            gate.done(index);
        }
        batch
    }

    /// Gathers batch `index`, whose rows are readable.
    fn gather_ready(&mut self, index: usize) -> Result<Batch<A::Buffers>> {
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
        let mut buffers = self
            .alloc
            .allocate(&lens)
            .map_err(|source| Error::Buffers {
                path: self.shared.path.clone(),
                source,
            })?;
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

/// What a stream's worker sends: a batch, or the error that stopped it.
type Sent<B> = Result<Batch<B>>;

/// The batches of one epoch from a starting batch on, gathered ahead by a worker thread (or, with
/// `prefetch` 0, on the calling thread when asked for). It owns everything it reads, so it may
/// outlive the [`Loader`](crate::Loader) that started it.
///
/// Dropping it stops the worker after the batch the worker is gathering, and waits for it.
pub struct Stream<A: Allocate> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    next: usize,
    mode: Mode<A>,
}

enum Mode<A: Allocate> {
    /// Gathering on the calling thread.
    Inline(Gatherer<A>),
    /// A worker thread gathering ahead.
    Worker {
        /// In a mutex only so that a stream is `Sync` (a receiver is not): one caller at a time
        /// receives anyway, through `&mut self`.
        rx: Option<Mutex<Receiver<Sent<A::Buffers>>>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    },
    /// The stream ended early, after an error.
    Done,
}

impl<A: Allocate> Stream<A> {
    /// Starts handing out batches `first..` of `order`, gathered into buffers from `alloc`: on a
    /// worker thread up to `prefetch` batches ahead, or on the caller's thread with `prefetch` 0.
    pub(super) fn start(
        shared: Arc<Shared>,
        order: Arc<EpochOrder>,
        first: usize,
        prefetch: usize,
        alloc: A,
        gate: Option<Box<dyn GatePass>>,
    ) -> Result<Stream<A>> {
        let mut gatherer = Gatherer {
            shared: Arc::clone(&shared),
            order: Arc::clone(&order),
            alloc,
            ahead: ReadAhead::default(),
            gate,
        };
        let mode = if prefetch == 0 {
            gatherer.advise(first);
            Mode::Inline(gatherer)
        } else {
            // The worker holds at most `prefetch - 1` batches in the channel and one more while
            // it waits to send: `prefetch` batches ahead of the caller.
            let (tx, rx) = mpsc::sync_channel::<Sent<A::Buffers>>(prefetch - 1);
            let stop = Arc::new(AtomicBool::new(false));
            let worker_stop = Arc::clone(&stop);
            let handle = std::thread::Builder::new()
                .name("mmtensor-loader".into())
                .spawn(move || work(gatherer, first, &tx, &worker_stop))
                .map_err(Error::io(&shared.path, "start a loader thread for"))?;
            Mode::Worker {
                rx: Some(Mutex::new(rx)),
                stop,
                handle: Some(handle),
            }
        };
        // Counted only once the stream exists, so that its `Drop` always undoes it (a failed thread
        // start left the count, and `MADV_RANDOM`, behind).
        if order.spec().shuffle == Shuffle::Full {
            readahead::random_started(&shared);
        }
        Ok(Stream {
            shared,
            order,
            next: first,
            mode,
        })
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

    /// Stops the worker and waits for it.
    fn finish(&mut self) {
        if let Mode::Worker { rx, stop, handle } = &mut self.mode {
            stop.store(true, Ordering::Release);
            // Dropping the receiver fails the worker's pending send, so it stops even while
            // blocked on a full channel.
            drop(rx.take());
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// The worker: gathers batches `first..` into `tx` until the epoch ends, a gather fails, or the
/// stream stops it.
fn work<A: Allocate>(
    mut g: Gatherer<A>,
    first: usize,
    tx: &SyncSender<Sent<A::Buffers>>,
    stop: &AtomicBool,
) {
    g.advise(first);
    for index in first..g.order.len() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        g.advise(index + 1);
        let batch = g.gather(index);
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return;
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
            Mode::Worker { rx, .. } => match rx
                .as_mut()
                .map(|rx| rx.get_mut().unwrap_or_else(|e| e.into_inner()).recv())
            {
                Some(Ok(sent)) => sent,
                // The worker sends every batch or the error that stopped it; it ended without
                // either only if it panicked.
                _ => Err(Error::LoaderStopped {
                    path: self.shared.path.clone(),
                    batch: self.next,
                }),
            },
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
        if self.order.spec().shuffle == Shuffle::Full {
            readahead::random_ended(&self.shared);
        }
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
