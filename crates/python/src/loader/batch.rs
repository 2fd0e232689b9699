//! A gathered batch as the dict handed to Python: one array (or tensor) per column. A batch in the
//! loader's pool lends each column's buffer to a writable NumPy array (its owner, a `BatchBuffer`,
//! is `exported.rs`'s); a batch gathered into torch buffers hands out the tensors themselves.

use std::path::Path;

use mmtensor::loader::PooledBuffers;
use mmtensor::Dtype;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::no_ml_dtypes;
use crate::exported::{writable_typed, Writable};

use super::options::Output;
use super::torch::TorchSet;

/// A batch in the loader's own buffers as `{column: array}`, NumPy arrays or (`output`) torch
/// tensors made from them; `path` names the source in errors.
pub(super) fn pool_batch<'py>(
    py: Python<'py>,
    output: Output,
    path: &Path,
    batch: mmtensor::Batch<PooledBuffers>,
) -> PyResult<Bound<'py, PyDict>> {
    let columns: Vec<(String, Dtype, Vec<u64>, usize)> = batch
        .columns()
        .map(|c| {
            (
                c.name().to_owned(),
                c.dtype(),
                c.shape().to_vec(),
                c.bytes().len(),
            )
        })
        .collect();
    // One owner per column, so that keeping one column of a batch keeps only its memory.
    let bufs = batch.into_buffers().into_columns();
    let torch = match output {
        Output::Torch => Some(py.import("torch")?),
        Output::Numpy => None,
    };
    let out = PyDict::new(py);
    for ((name, dtype, shape, len), buf) in columns.into_iter().zip(bufs) {
        let value = writable_typed(
            py,
            Writable::Pool { buf, len },
            shape,
            dtype,
            torch.as_ref(),
            &name,
            || no_ml_dtypes(py, path, &name, dtype),
        )?;
        out.set_item(name, value)?;
    }
    Ok(out)
}

/// A batch gathered into torch buffers as `{column: tensor}`, each narrowed to the batch's rows
/// (a last batch may be short).
pub(super) fn torch_batch<'py>(
    py: Python<'py>,
    batch: mmtensor::Batch<TorchSet>,
) -> PyResult<Bound<'py, PyDict>> {
    let rows = batch.len();
    let names: Vec<String> = batch.column_names().map(str::to_owned).collect();
    let tensors = batch.into_buffers().into_tensors();
    let out = PyDict::new(py);
    for (name, t) in names.into_iter().zip(tensors) {
        let t = t.into_bound(py);
        let full: usize = t.call_method0("size")?.get_item(0)?.extract()?;
        let t = if rows < full {
            t.call_method1("narrow", (0, 0, rows))?
        } else {
            t
        };
        out.set_item(name, t)?;
    }
    Ok(out)
}
