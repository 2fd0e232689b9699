//! Torch buffers: a batch gathered straight into torch tensors (pinned memory with
//! `pin_memory=True`), allocated by the consumer (holding the GIL), filled by the worker (without
//! it). The memory is torch's, lent to the loader until the batch is handed out: the worker writes
//! only at addresses read from the C fields of each buffer's DLPack capsule (`host_span`), and
//! the buffers are made with PyTorch's Python modes switched off (`without_torch_modes`).

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Mutex;

use mmtensor::loader::{Allocate, Buffers};
use mmtensor::{interop, Dtype};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::dlpack;

use super::shared::Shared;

/// One batch's torch tensors, full batch size, fresh from `torch.empty`: nobody but the loader
/// has seen them until the batch is handed out.
pub(super) struct TorchSet {
    /// The column tensors handed out: each a typed view of one byte buffer.
    tensors: Vec<Py<PyAny>>,
    /// Each buffer's unconsumed DLPack capsule, whose managed tensor holds the buffer's storage:
    /// the memory `spans` name stays allocated while the set lives, whatever the typed views are.
    _capsules: Vec<Py<PyAny>>,
    /// Each buffer's data pointer and byte length, read from its capsule (`dlpack::host_bytes`).
    spans: Vec<(usize, usize)>,
}

impl Buffers for TorchSet {
    fn column_mut(&mut self, column: usize) -> &mut [u8] {
        match self.spans.get(column) {
            // SAFETY: the span is the data of a byte buffer made by `torch.empty` for this set
            // (`Refill::send`), as the `DLTensor` of its capsule describes it (`host_bytes`: host
            // memory, compact, exactly `len` bytes, non-null, aligned), not as any Python method
            // answered. The set holds the capsule, whose managed tensor holds the storage, so the
            // memory stays allocated while this borrow (of the set) lives. The buffer has not been
            // handed out: no code of mmtensor's or the caller's has a reference to it. (Python code
            // that walks `gc.get_objects()` can find any object, and writing through what it finds
            // there races with this write as it would with any tensor another thread owns.)
            Some(&(ptr, len)) if len > 0 => unsafe {
                std::slice::from_raw_parts_mut(ptr as *mut u8, len)
            },
            _ => &mut [],
        }
    }

    fn column(&self, column: usize) -> &[u8] {
        match self.spans.get(column) {
            // SAFETY: as in `column_mut`; shared borrows of the set only read.
            Some(&(ptr, len)) if len > 0 => unsafe {
                std::slice::from_raw_parts(ptr as *const u8, len)
            },
            _ => &[],
        }
    }
}

/// The worker's side: takes the sets the consumer made.
pub(super) struct TorchAlloc {
    /// In a mutex only so that the iterator holding the stream is `Sync`, as PyO3 requires.
    rx: Mutex<Receiver<TorchSet>>,
}

impl TorchAlloc {
    pub(super) fn new(rx: Receiver<TorchSet>) -> TorchAlloc {
        TorchAlloc { rx: Mutex::new(rx) }
    }
}

impl Allocate for TorchAlloc {
    type Buffers = TorchSet;

    fn allocate(
        &mut self,
        _: &[usize],
    ) -> Result<TorchSet, Box<dyn std::error::Error + Send + Sync>> {
        self.rx
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .recv()
            .map_err(|_| "the iteration was stopped before the batch was gathered".into())
    }
}

/// The consumer's side: makes one set per batch the worker will gather.
pub(super) struct Refill {
    tx: Sender<TorchSet>,
    pinned: bool,
    /// Sets sent and not yet consumed by a handed-out batch (for prefetch 0, which sends one per
    /// request).
    pub(super) queued: usize,
    /// Sets the stream will still take: one per batch it has yet to gather. None is made past it.
    pub(super) needed: usize,
}

impl Refill {
    /// The consumer's side of a stream that takes `needed` more sets from `tx`'s receiver.
    pub(super) fn new(tx: Sender<TorchSet>, pinned: bool, needed: usize) -> Refill {
        Refill {
            tx,
            pinned,
            queued: 0,
            needed,
        }
    }

    /// Makes one batch's set and sends it to the worker.
    pub(super) fn send(&mut self, py: Python<'_>, loader: &Shared) -> PyResult<()> {
        if self.needed == 0 {
            return Ok(());
        }
        let torch = py.import("torch")?;
        let to_dlpack = py.import("torch.utils.dlpack")?.getattr("to_dlpack")?;
        let (columns, batch_size): (Vec<(Dtype, Vec<u64>)>, u64) =
            loader.with_core(py, |core| {
                let columns = core
                    .columns()
                    .map(|c| (c.dtype(), c.row_shape().to_vec()))
                    .collect();
                // A mixture's batches are all full, whatever its rows.
                let rows = match core.mix() {
                    Some(_) => core.batch_rows(),
                    None => loader.spec.batch_size.min(loader.spec.num_rows.max(1)),
                };
                (columns, rows)
            })?;
        // No Python code of the caller's runs while the buffers are made: a TorchFunctionMode or
        // a TorchDispatchMode active in this thread could otherwise hand back memory of its
        // choosing from `torch.empty` (read-only pages, an immutable `bytes`), or free the
        // storage under the capsule from a `view` (a review reproduced all three).
        let set = without_torch_modes(py, &torch, || {
            self.buffers(py, &torch, &to_dlpack, columns, batch_size)
        })?;
        // A worker that stopped (after an error, which the next batch reports) takes no more.
        if self.tx.send(set).is_ok() {
            self.queued += 1;
            self.needed -= 1;
        }
        Ok(())
    }

    /// One batch's torch buffers, one per column: `(dtype, row shape)` of `batch_size` rows.
    fn buffers<'py>(
        &self,
        py: Python<'py>,
        torch: &Bound<'py, PyModule>,
        to_dlpack: &Bound<'py, PyAny>,
        columns: Vec<(Dtype, Vec<u64>)>,
        batch_size: u64,
    ) -> PyResult<TorchSet> {
        let mut tensors = Vec::with_capacity(columns.len());
        let mut capsules = Vec::with_capacity(columns.len());
        let mut spans = Vec::with_capacity(columns.len());
        for (dtype, row_shape) in columns {
            let to = interop::torch(dtype).ok_or_else(|| {
                PyTypeError::new_err(format!("dtype {dtype} has no torch type in this binding"))
            })?;
            let mut shape = vec![batch_size];
            shape.extend(row_shape);
            let len = shape
                .iter()
                .try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    PyRuntimeError::new_err(format!(
                        "a batch of shape {shape:?} of {dtype} does not fit in memory"
                    ))
                })?;
            // One byte buffer per column, then viewed as the column's type and shape: where the
            // worker writes is the buffer, described by its DLPack capsule.
            let kwargs = PyDict::new(py);
            kwargs.set_item("dtype", torch.getattr("uint8")?)?;
            // Always host memory, whatever default device the program set (`meta`, `cuda`).
            kwargs.set_item("device", "cpu")?;
            kwargs.set_item("pin_memory", self.pinned)?;
            let raw = torch.getattr("empty")?.call(((len,),), Some(&kwargs))?;
            let (address, capsule) = host_span(torch, to_dlpack, &raw, len, to.align, self.pinned)?;
            let t = raw
                .call_method1("view", (torch.getattr(to.name)?,))?
                .call_method1("view", (PyTuple::new(py, &shape)?,))?;
            tensors.push(t.unbind());
            capsules.push(capsule.unbind());
            spans.push((address, len));
        }
        Ok(TorchSet {
            tensors,
            _capsules: capsules,
            spans,
        })
    }
}

/// Runs `f` with PyTorch's `__torch_function__` handling (modes and subclasses:
/// `torch._C.DisableTorchFunction`) and its Python dispatch modes
/// (`torch.utils._python_dispatch._disable_current_modes`) switched off, so that the torch calls
/// in `f` are PyTorch's own, whatever modes the calling thread has entered. Both are restored
/// after, whatever `f` returns.
fn without_torch_modes<'py, R>(
    py: Python<'py>,
    torch: &Bound<'py, PyModule>,
    f: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    let guards = [
        torch
            .getattr("_C")?
            .getattr("DisableTorchFunction")?
            .call0()?,
        py.import("torch.utils._python_dispatch")?
            .getattr("_disable_current_modes")?
            .call0()?,
    ];
    let mut entered = Vec::with_capacity(guards.len());
    let mut result = Ok(());
    for g in &guards {
        match g.call_method0("__enter__") {
            Ok(_) => entered.push(g),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let out = result.and_then(|()| f());
    for g in entered.iter().rev() {
        let exited = g.call_method1("__exit__", (py.None(), py.None(), py.None()));
        if let (Ok(_), Err(e)) = (&out, exited) {
            return Err(e);
        }
    }
    out
}

/// The data pointer of `raw`, a byte buffer just made by `torch.empty((len,), dtype=torch.uint8,
/// device="cpu")`, and the DLPack capsule that keeps its storage alive, after checking everything
/// the worker's writes rely on: a plain `torch.Tensor`, pinned when asked, whose `DLTensor` (from
/// `torch.utils.dlpack.to_dlpack`, PyTorch's C++ reading the tensor itself) is `len` compact bytes
/// of host memory at a non-null address aligned to `align`. Nothing is taken from `data_ptr()`,
/// `shape` or `numel()`: a `TorchFunctionMode` active in this thread answers those. Anything else
/// (a subclass, a mode or default device that bent `torch.empty`) is refused, never written.
fn host_span<'py>(
    torch: &Bound<'py, PyModule>,
    to_dlpack: &Bound<'py, PyAny>,
    raw: &Bound<'py, PyAny>,
    len: usize,
    align: usize,
    pinned: bool,
) -> PyResult<(usize, Bound<'py, PyAny>)> {
    let refuse = |what: &str| {
        PyRuntimeError::new_err(format!(
            "torch.empty(..., device=\"cpu\") gave a tensor the loader cannot gather into: {what}"
        ))
    };
    if !raw.get_type().is(&torch.getattr("Tensor")?) {
        return Err(refuse("not a plain torch.Tensor"));
    }
    // Not a fact the writes rely on (pinned or not, it is host memory): what pin_memory promised.
    if pinned && !raw.call_method0("is_pinned")?.extract::<bool>()? {
        return Err(refuse("it is not pinned"));
    }
    let capsule = to_dlpack.call1((raw,))?;
    let address = dlpack::host_bytes(&capsule, len, align).map_err(|what| refuse(&what))?;
    Ok((address, capsule))
}

impl TorchSet {
    /// The column tensors, to hand out; the capsules go, and with them the loader's hold on the
    /// buffers (the tensors hold their storage).
    pub(super) fn into_tensors(self) -> Vec<Py<PyAny>> {
        self.tensors
    }
}
