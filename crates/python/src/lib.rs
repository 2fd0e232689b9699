//! The native module `mmtensor._mmtensor` behind the Python package `mmtensor`.
//!
//! A thin layer over the `mmtensor` loader and `mmtensor-convert`: [`Store`] wraps a
//! [`mmtensor::Store`] handle, [`Tensor`] names one tensor (or a row range of it) of a store, and
//! every array or tensor handed to Python is a view of the store's bytes whose owner object holds a
//! clone of the store, so the mapping outlives every view (see `docs/ARCHITECTURE.md`).
//!
//! NumPy arrays are made through NumPy's `__array_interface__` protocol from a [`MappedBuffer`]
//! owner (read-only data pointer, C order), which needs no NumPy C API: the module is built once
//! (abi3) and works with NumPy 1.x and 2.x. PyTorch tensors and DLPack consumers get a DLPack
//! capsule (module `dlpack`).
//!
//! Cargo features: none. Built with maturin (`crates/python/pyproject.toml`).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod convert;
mod dataset;
mod dlpack;
mod dtype;
mod errors;
mod export;
mod loader;
mod pickle;
mod store;
mod take;
mod tensor;

use pyo3::prelude::*;

use crate::store::Store;
use crate::tensor::{MappedBuffer, Tensor};

/// The native module; `mmtensor/__init__.py` re-exports it.
#[pymodule]
fn _mmtensor(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Store>()?;
    m.add_class::<Tensor>()?;
    m.add_class::<MappedBuffer>()?;
    m.add_class::<dataset::Dataset>()?;
    m.add_class::<loader::Loader>()?;
    m.add_class::<loader::LoaderIter>()?;
    m.add_class::<loader::BatchBuffer>()?;
    m.add_function(wrap_pyfunction!(store::open, m)?)?;
    m.add_function(wrap_pyfunction!(dataset::open_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(convert::convert, m)?)?;
    m.add_function(wrap_pyfunction!(convert::append, m)?)?;
    m.add_function(wrap_pyfunction!(convert::compact, m)?)?;
    m.add_function(wrap_pyfunction!(convert::prune, m)?)?;
    m.add_function(wrap_pyfunction!(export::export, m)?)?;
    m.add_function(wrap_pyfunction!(pickle::_reopen, m)?)?;
    m.add_function(wrap_pyfunction!(dataset::_reopen_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(pickle::_tensor, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
