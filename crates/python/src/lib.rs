//! The native module `mmtensor._mmtensor` behind the Python package `mmtensor`.
//!
//! A thin layer over the `mmtensor` loader and `mmtensor-convert`: [`Store`] wraps a
//! [`mmtensor::Store`] handle, [`Tensor`] names one tensor (or a row range of it) of a store, and
//! every NumPy array and DLPack capsule (so every `torch()` tensor) handed to Python points into
//! memory owned by an `exported::Lent`, which the array's base or the capsule keeps with what
//! holds the memory (a tensor of the store, a private view of one, a loader buffer), so the memory
//! outlives every view (see `docs/ARCHITECTURE.md`).
//!
//! NumPy arrays are made through NumPy's `__array_interface__` protocol from a [`MappedBuffer`]
//! owner (read-only data pointer, C order), which needs no NumPy C API: the module is built once
//! (abi3) and works with NumPy 1.x and 2.x. PyTorch tensors and DLPack consumers get a DLPack
//! capsule (module `dlpack`).
//!
//! The modules, each used only by those after it, so that no two import each other: `errors`
//! (exceptions) and `args` (arguments); `arrays` (memory borrowed from NumPy arrays and torch
//! tensors, for Rust to read); `exported` (memory lent to foreign code) and `dlpack`; `open`
//! (opening and reopening, the `Store` object); `take` (gathers); `tensor`; `ragged` (ragged tensors,
//! and ragged data given by Python); `store` and `dataset`;
//! `export`, `convert`, `save` (`save` and `load`) and `loader`.
//!
//! Cargo features: none. Built with maturin (`crates/python/pyproject.toml`).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod args;
mod arrays;
mod convert;
mod dataset;
mod dlpack;
mod errors;
mod export;
mod exported;
mod loader;
mod open;
mod ragged;
mod save;
mod store;
mod streaming;
mod take;
mod tensor;
mod writer;

use pyo3::prelude::*;

use crate::exported::{BatchBuffer, MappedBuffer};
use crate::open::Store;
use crate::tensor::Tensor;

/// The native module; `mmtensor/__init__.py` re-exports it.
#[pymodule]
fn _mmtensor(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Store>()?;
    m.add_class::<Tensor>()?;
    m.add_class::<ragged::RaggedTensor>()?;
    m.add_class::<MappedBuffer>()?;
    m.add_class::<dataset::Dataset>()?;
    m.add_class::<streaming::StreamingDataset>()?;
    m.add_class::<loader::Loader>()?;
    m.add_class::<loader::LoaderIter>()?;
    m.add_class::<loader::Mix>()?;
    m.add_class::<BatchBuffer>()?;
    m.add_class::<writer::DatasetWriter>()?;
    m.add_function(wrap_pyfunction!(open::open, m)?)?;
    m.add_function(wrap_pyfunction!(dataset::open_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(convert::convert, m)?)?;
    m.add_function(wrap_pyfunction!(convert::convert_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(convert::append, m)?)?;
    m.add_function(wrap_pyfunction!(convert::compact, m)?)?;
    m.add_function(wrap_pyfunction!(convert::prune, m)?)?;
    m.add_function(wrap_pyfunction!(writer::commit, m)?)?;
    m.add_function(wrap_pyfunction!(export::export, m)?)?;
    m.add_function(wrap_pyfunction!(save::save, m)?)?;
    m.add_function(wrap_pyfunction!(save::load, m)?)?;
    m.add_function(wrap_pyfunction!(open::_reopen, m)?)?;
    m.add_function(wrap_pyfunction!(dataset::_reopen_dataset, m)?)?;
    m.add_function(wrap_pyfunction!(tensor::_tensor, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
