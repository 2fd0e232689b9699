//! Pickling, so that stores and tensors reach PyTorch DataLoader workers and other processes.
//!
//! A `Store` pickles as its absolute path, whether it was a copy, and its file's fingerprint
//! (`mmtensor::Fingerprint`: format, length, header xxh3, inode number, modification time); never
//! its bytes. Unpickling calls [`_reopen`], which opens the path again (mapped, or copied) and
//! refuses a file whose fingerprint differs with StoreChangedError. `mmtensor::Fingerprint`'s docs
//! say what that detects and what it cannot. A `Tensor` pickles as its store, its name and its row
//! range.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use mmtensor::{FileStamp, Fingerprint, Format};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::load_error;
use crate::store::{format_name, open_handle, Store};
use crate::tensor::Tensor;

/// A fingerprint as plain Python values: (format name, file length, header xxh3, inode number,
/// modification time in nanoseconds), the last two as `os.stat` gives `st_ino` and `st_mtime_ns`.
type FingerprintState = (String, u64, u64, u64, i128);

fn fingerprint_state(fp: Fingerprint) -> FingerprintState {
    (
        format_name(fp.format()).to_owned(),
        fp.len(),
        fp.header_xxh3(),
        fp.file().inode(),
        fp.file().mtime_ns(),
    )
}

/// The fingerprint pickled as `state`. A 3-tuple (format, length, header xxh3) is a pickle of an
/// mmtensor before the fingerprint held the file's inode and modification time: refused, since it
/// cannot tell a file replaced with the same header from the one pickled.
fn fingerprint_from_state(state: &Bound<'_, PyAny>) -> PyResult<Fingerprint> {
    let state = state.cast::<PyTuple>().map_err(|_| {
        PyValueError::new_err(format!(
            "not an mmtensor store fingerprint: {}",
            state
                .repr()
                .map_or_else(|_| "?".to_owned(), |r| r.to_string())
        ))
    })?;
    if state.len() == 3 {
        return Err(PyValueError::new_err(
            "this store was pickled by an older mmtensor, whose fingerprint (format, length, \
             header xxh3) cannot tell a file replaced with the same header from the one pickled: \
             open the file afresh with mmtensor.open",
        ));
    }
    let (format, len, header, inode, mtime_ns): FingerprintState =
        state.extract().map_err(|_| {
            PyValueError::new_err(format!(
                "not an mmtensor store fingerprint (format, length, header xxh3, inode, \
                 mtime_ns): {}",
                state
                    .repr()
                    .map_or_else(|_| "?".to_owned(), |r| r.to_string())
            ))
        })?;
    let format = match format.as_str() {
        "mmt" => Format::Mmt,
        "safetensors" => Format::Safetensors,
        "npy" => Format::Npy,
        other => {
            return Err(PyValueError::new_err(format!(
                "not an mmtensor store fingerprint: unknown format {other:?}"
            )))
        }
    };
    // `st_mtime_ns` back into `fstat`'s seconds and nanoseconds; a time no file can have is no
    // fingerprint.
    let secs = i64::try_from(mtime_ns.div_euclid(1_000_000_000)).map_err(|_| {
        PyValueError::new_err(format!(
            "not an mmtensor store fingerprint: modification time {mtime_ns} ns is out of range"
        ))
    })?;
    // Below 10^9 after `rem_euclid`: fits a u32.
    let nanos = mtime_ns.rem_euclid(1_000_000_000) as u32;
    Ok(Fingerprint::new(
        format,
        len,
        header,
        FileStamp::new(inode, secs, nanos),
    ))
}

/// The path to pickle: absolute, so that a worker that starts in another directory (or a process
/// that changed directory since the store was opened) finds the same file. A relative path is
/// resolved against the current directory at pickling time; if that fails (the directory is
/// gone), the path is sent as it is.
fn absolute(path: &Path) -> OsString {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .into_os_string()
}

/// `(mmtensor._mmtensor._reopen, (path, copy, fingerprint))` for `store`.
pub(crate) fn reduce_store<'py>(
    py: Python<'py>,
    store: &mmtensor::Store,
) -> PyResult<Bound<'py, PyTuple>> {
    let reopen = py.import("mmtensor._mmtensor")?.getattr("_reopen")?;
    let args = (
        absolute(store.path()),
        !store.is_mapped(),
        fingerprint_state(store.fingerprint()),
    );
    PyTuple::new(py, [reopen, args.into_pyobject(py)?.into_any()])
}

/// `(mmtensor._mmtensor._tensor, (store, name, rows))` for `tensor`: `rows` is `(start, stop)`
/// along axis 0, or None for a 0-dimensional tensor.
pub(crate) fn reduce_tensor<'py>(
    py: Python<'py>,
    tensor: &mmtensor::OwnedTensor,
) -> PyResult<Bound<'py, PyTuple>> {
    let rebuild = py.import("mmtensor._mmtensor")?.getattr("_tensor")?;
    let store = Store::from_handle(tensor.store().clone());
    let rows = tensor.shape().first().map(|&n| {
        let start = tensor.first_row();
        (start, start + n)
    });
    let args = (store, tensor.name(), rows);
    PyTuple::new(py, [rebuild, args.into_pyobject(py)?.into_any()])
}

/// Reopens a pickled Store: the inverse of `Store.__reduce__`. Not meant to be called directly.
///
/// Opens `path` mapped (or, with `copy`, read into memory) and raises StoreChangedError when the
/// file's fingerprint differs from `fingerprint`: the file was replaced, rewritten or truncated
/// since the store was pickled (`mmtensor::Fingerprint` says what is detected and what cannot be).
/// A fingerprint that is not one (a hand-made tuple, an older mmtensor's) is a ValueError. Opening
/// mapped hands the caller the contract of `mmtensor.open`: nobody may modify or truncate the file
/// while the store, or any array made from it, lives.
#[pyfunction]
pub(crate) fn _reopen(
    py: Python<'_>,
    path: PathBuf,
    copy: bool,
    fingerprint: &Bound<'_, PyAny>,
) -> PyResult<Store> {
    let expected = fingerprint_from_state(fingerprint)?;
    let opened = py.detach(|| open_handle(&path, copy, Some(&expected)));
    let store = opened.map_err(|e| load_error(py, e))?;
    Ok(Store::from_handle(store))
}

/// Rebuilds a pickled Tensor: the inverse of `Tensor.__reduce__`. Not meant to be called directly.
///
/// The tensor `name` of `store`, or its rows `start..stop` along axis 0.
#[pyfunction]
#[pyo3(signature = (store, name, rows=None))]
pub(crate) fn _tensor(
    py: Python<'_>,
    store: &Store,
    name: &str,
    rows: Option<(u64, u64)>,
) -> PyResult<Tensor> {
    let whole = store
        .handle(py)?
        .tensor_owned(name)
        .map_err(|e| load_error(py, e))?;
    let t = match rows {
        Some((start, stop)) => whole.rows(start..stop).map_err(|e| load_error(py, e))?,
        None => whole,
    };
    Ok(Tensor { t })
}
