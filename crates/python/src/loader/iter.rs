//! One iteration over a Loader's epoch (`iter(loader)`): the Rust stream whose worker gathers
//! ahead without the GIL, the torch sets it is fed (with `pin_memory`), and the batches handed out.
//! Only the newest generation's iterator moves the loader's position, and only for batches handed
//! out; an iterator used in a forked child refuses (its worker thread is not there) and is leaked
//! rather than joined.

use std::sync::Arc;
use std::time::Duration;

use mmtensor::loader::{Pool, PooledBuffers, Stream};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::load_error;

use super::batch::{pool_batch, torch_batch};
use super::shared::Shared;
use super::torch::{Refill, TorchAlloc, TorchSet};

/// How long `next` waits for a batch with the GIL released before it looks, holding it again, for
/// a signal (Ctrl-C raises `KeyboardInterrupt` then, not once the batch arrives: the first batch of
/// a cold epoch may wait for a read of the whole file) and for a loader closed or restarted by
/// another thread meanwhile.
const WAIT_SLICE: Duration = Duration::from_millis(50);

pub(super) enum Streams {
    Pool(Stream<Pool>),
    Torch(Stream<TorchAlloc>),
}

/// One iteration over a Loader's epoch; made by `iter(loader)`.
#[pyclass(module = "mmtensor", name = "LoaderIterator")]
pub(crate) struct LoaderIter {
    loader: Arc<Shared>,
    generation: u64,
    /// The process that started the worker (`mmtensor::forks::generation`): a forked child has
    /// the stream's memory but not its threads, so it must neither use nor join it.
    process: u64,
    /// Declared before `stream`: dropped first, so a worker waiting for a torch set sees the
    /// channel close and stops.
    refill: Option<Refill>,
    stream: Option<Streams>,
}

impl LoaderIter {
    /// An iteration of generation `generation` over `stream`, fed by `refill` when it gathers
    /// into torch buffers.
    pub(super) fn new(
        loader: Arc<Shared>,
        generation: u64,
        stream: Streams,
        refill: Option<Refill>,
    ) -> LoaderIter {
        LoaderIter {
            loader,
            generation,
            process: mmtensor::forks::generation(),
            refill,
            stream: Some(stream),
        }
    }

    /// Waits, in slices of [`WAIT_SLICE`] with the GIL released, until the stream's next call
    /// returns without waiting. Between slices: a pending signal's handler runs (its exception,
    /// `KeyboardInterrupt`, is returned with no batch taken: the loader's state stays before it,
    /// and the iteration may go on); a loader closed or restarted meanwhile stops the iteration.
    fn wait_for_next(&mut self, py: Python<'_>) -> PyResult<()> {
        loop {
            let ready = match self.stream.as_mut() {
                Some(Streams::Pool(s)) => s.is_ready() || py.detach(|| s.wait_ready(WAIT_SLICE)),
                Some(Streams::Torch(s)) => s.is_ready() || py.detach(|| s.wait_ready(WAIT_SLICE)),
                None => true,
            };
            if ready {
                return Ok(());
            }
            py.check_signals()?;
            self.check_live(py)?;
        }
    }

    /// Whether the iteration may go on: its loader is open and has started no newer iteration
    /// (or `set_epoch`, `load_state_dict`, `close`). Otherwise the iteration stops, with the error.
    fn check_live(&mut self, py: Python<'_>) -> PyResult<()> {
        if let Err(e) = self.loader.check_open(py) {
            self.stop(py);
            return Err(e);
        }
        if !self.loader.is_current(self.generation) {
            self.stop(py);
            return Err(PyRuntimeError::new_err(
                "this iteration was stopped: the loader started another iteration, or set_epoch, \
                 load_state_dict or close was called",
            ));
        }
        Ok(())
    }

    /// The next batch of the iteration, as `__next__` returns it.
    fn next_batch<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let loader = Arc::clone(&self.loader);
        if self.stream.is_none() {
            return Ok(None);
        }
        if self.process != mmtensor::forks::generation() {
            self.stop(py);
            return Err(PyRuntimeError::new_err(
                "this loader iterator was started in another process (before a fork): start a \
                 new iteration in this process with iter(loader)",
            ));
        }
        self.check_live(py)?;
        // The worker needs a set for each batch it is to gather (with prefetch 0, the one gathered
        // now). Made before a batch is taken, so a failure here (out of pinned memory) leaves the
        // state and the stream where they were.
        if let Some(refill) = &mut self.refill {
            while refill.queued < loader.prefetch.max(1) && refill.needed > 0 {
                let sent = refill.queued;
                refill.send(py, &loader)?;
                if refill.queued == sent {
                    break; // the worker has stopped; its error or end comes next
                }
            }
        }
        self.wait_for_next(py)?;
        // A batch already gathered is taken holding the GIL: letting go of it and taking it back
        // costs more than the take (and another Python thread may hold it meanwhile).
        let next = match self.stream.as_mut() {
            Some(Streams::Pool(s)) if s.is_ready() => s.next().map(|r| r.map(Got::Pool)),
            Some(Streams::Pool(s)) => py.detach(|| s.next()).map(|r| r.map(Got::Pool)),
            Some(Streams::Torch(s)) if s.is_ready() => s.next().map(|r| r.map(Got::Torch)),
            Some(Streams::Torch(s)) => py.detach(|| s.next()).map(|r| r.map(Got::Torch)),
            None => None,
        };
        let got = match next {
            None => {
                self.stop(py);
                return Ok(None);
            }
            Some(Err(e)) => {
                self.stop(py);
                return Err(load_error(py, e));
            }
            Some(Ok(got)) => got,
        };
        let (state, dict) = match got {
            Got::Pool(batch) => (
                batch.state_after(),
                pool_batch(py, loader.output, &loader.path, batch),
            ),
            Got::Torch(batch) => (batch.state_after(), torch_batch(py, batch)),
        };
        // A batch taken from the stream but not handed out: stop, so that the caller's next
        // iteration starts from the state, which still names that batch, rather than skip it.
        let dict = match dict {
            Ok(d) => d,
            Err(e) => {
                self.stop(py);
                return Err(e);
            }
        };
        // Only this generation's iterator moves the state, and only for batches handed out.
        if loader.is_current(self.generation) {
            loader
                .with_core(py, |core| core.set_state(state))?
                .map_err(|e| load_error(py, e))?;
        }
        if let Some(refill) = &mut self.refill {
            refill.queued = refill.queued.saturating_sub(1);
            // One new set for the batch just handed out, keeping the worker `prefetch` ahead. The
            // batch is the caller's now: a failure here is not raised with it, and the next call
            // tries again (and raises) before it takes a batch.
            if loader.prefetch > 0 {
                let _ = refill.send(py, &loader);
            }
        }
        Ok(Some(dict))
    }

    /// Stops the worker (waiting for it with the GIL released), unless this is a forked child
    /// where the worker does not exist: then the stream is leaked, never joined.
    fn stop(&mut self, py: Python<'_>) {
        drop(self.refill.take());
        if let Some(stream) = self.stream.take() {
            if self.process == mmtensor::forks::generation() {
                py.detach(move || drop(stream));
            } else {
                std::mem::forget(stream);
            }
        }
    }
}

impl Drop for LoaderIter {
    fn drop(&mut self) {
        if self.stream.is_some() {
            Python::attach(|py| self.stop(py));
        }
    }
}

#[pymethods]
impl LoaderIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyDict>>> {
        // While one thread's `next` waits (the GIL released), the iterator is borrowed: a second
        // thread's `next` gets this rather than PyO3's bare "Already borrowed".
        let mut this = slf.try_borrow_mut().map_err(|_| {
            PyRuntimeError::new_err(
                "this loader iterator is in use: another thread is in its next(); an iterator \
                 serves one thread at a time (hand its batches to other threads through a \
                 queue.Queue)",
            )
        })?;
        this.next_batch(slf.py())
    }

    fn __repr__(&self) -> String {
        "<mmtensor.LoaderIterator>".to_owned()
    }
}

enum Got {
    Pool(mmtensor::Batch<PooledBuffers>),
    Torch(mmtensor::Batch<TorchSet>),
}
