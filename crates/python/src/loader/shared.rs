//! What a `Loader` and its iterations share: the Rust loader behind its lock, the position it
//! stood at when closed, and the generation counter that lets only the newest iteration move the
//! position. A `Loader` object and each `LoaderIterator` hold it by `Arc`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mmtensor::order::OrderSpec;
use mmtensor::LoaderState;
use pyo3::prelude::*;

use crate::errors::raise;
use crate::open::Store;

use super::options::{Output, Target};

pub(super) struct Shared {
    /// The Rust loader, `None` after `close()` (which so lets go of the loader's reference to the
    /// store's bytes). Locked only to read or change its state or start a stream: never across a
    /// call into Python or a wait.
    core: Mutex<Option<mmtensor::Loader>>,
    /// Where the loader stood when it was closed, for `state_dict()` after `close()`.
    closed_state: Mutex<LoaderState>,
    /// The Store object the loader was made from, whose `close()` the loader honours; `None`
    /// when made from a path (then `close()` on the loader closes it).
    store: Option<Py<Store>>,
    /// Bumped by every `iter()`, `set_epoch`, `load_state_dict` and `close()`: an iterator from an
    /// older generation refuses to go on, so two iterators never both move the state.
    generation: AtomicU64,
    /// What does not change: the order's parameters, the columns, batches per epoch, prefetch.
    pub(super) spec: OrderSpec,
    pub(super) column_names: Vec<String>,
    /// Batches per whole epoch on this rank, for `len()` after `close()`.
    whole_len: usize,
    pub(super) prefetch: usize,
    pub(super) output: Output,
    pub(super) target: Target,
    pub(super) path: PathBuf,
}

impl Shared {
    pub(super) fn new(
        core: mmtensor::Loader,
        store: Option<Py<Store>>,
        output: Output,
        target: Target,
        path: PathBuf,
    ) -> Shared {
        Shared {
            closed_state: Mutex::new(core.state()),
            spec: core.spec().clone(),
            column_names: core.column_names().map(str::to_owned).collect(),
            whole_len: core.len(),
            prefetch: core.prefetch(),
            core: Mutex::new(Some(core)),
            store,
            generation: AtomicU64::new(0),
            output,
            target,
            path,
        }
    }

    /// StoreClosedError after `close()`, or when the Store the loader was made from is closed.
    pub(super) fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        // `close()` took the core. The guard is dropped at the end of this statement, before the
        // Store is asked (which takes its own lock).
        let taken = self
            .core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        let closed = taken
            || match &self.store {
                Some(s) => s.get().is_closed(),
                None => false,
            };
        if closed {
            return Err(self.closed_error(py));
        }
        Ok(())
    }

    /// Runs `f` on the Rust loader, or raises StoreClosedError after `close()`.
    pub(super) fn with_core<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut mmtensor::Loader) -> R,
    ) -> PyResult<R> {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        match core.as_mut() {
            Some(core) => Ok(f(core)),
            None => {
                drop(core);
                Err(self.closed_error(py))
            }
        }
    }

    /// Where the loader stands (where it stood, after `close()`).
    pub(super) fn state(&self) -> LoaderState {
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        match core.as_ref() {
            Some(core) => core.state(),
            None => *self.closed_state.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Batches of the epoch the loader stands in, on this rank (of a whole epoch, after
    /// `close()`).
    pub(super) fn len(&self) -> usize {
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        core.as_ref().map_or(self.whole_len, mmtensor::Loader::len)
    }

    /// Takes the Rust loader out, keeping where it stood; further use raises StoreClosedError.
    pub(super) fn close(&self) {
        self.bump();
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(core) = core {
            *self.closed_state.lock().unwrap_or_else(|e| e.into_inner()) = core.state();
        }
    }

    fn closed_error(&self, py: Python<'_>) -> PyErr {
        raise(
            py,
            "StoreClosedError",
            format!(
                "{}: the store under this loader is closed",
                self.path.display()
            ),
            Some(&self.path),
            None,
            None,
        )
    }

    /// Starts a new generation (stopping every iteration of older ones) and returns it.
    pub(super) fn bump(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether `generation` is the newest: only its iteration may move the state.
    pub(super) fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }
}
