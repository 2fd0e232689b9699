//! A gathered batch as the dict handed to Python: one array (or tensor) per column. A batch in the
//! loader's pool lends each column's buffer to a writable NumPy array (its owner, a `BatchBuffer`,
//! is `exported.rs`'s); a batch gathered into torch buffers hands out the tensors themselves.

use std::path::Path;

use mmtensor::loader::PooledBuffers;
use mmtensor::{interop, Dtype};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::exported::BatchBuffer;

use super::options::{no_ml_dtypes, Output};
use super::torch::TorchSet;

fn numpy_type(dtype: Dtype) -> PyResult<interop::NumpyType> {
    interop::numpy(dtype).ok_or_else(|| {
        PyTypeError::new_err(format!("dtype {dtype} has no NumPy type in this binding"))
    })
}

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
        let to_torch = torch.as_ref().and_then(|_| interop::torch(dtype));
        let numpy = numpy_type(dtype)?;
        // Types NumPy lacks (bf16, fp8: `ml_dtypes` types) and those torch must view go over to
        // torch as their bits, and torch views them as the column's type.
        let torch_view = to_torch.is_some_and(|t| t.needs_view || numpy.ml_dtypes.is_some());
        let typestr = if torch_view {
            interop::numpy_raw(dtype).0
        } else {
            numpy.typestr
        };
        let itemsize = dtype.size() as u64;
        let array = BatchBuffer::array(py, buf, len, shape, typestr, itemsize, &name)?;
        let value = match (&torch, to_torch) {
            (Some(torch), Some(to)) => {
                let t = torch.getattr("from_numpy")?.call1((array,))?;
                if torch_view {
                    t.call_method1("view", (torch.getattr(to.name)?,))?
                } else {
                    t
                }
            }
            (Some(_), None) => {
                return Err(PyTypeError::new_err(format!(
                    "column `{name}` has dtype {dtype}, which has no torch type"
                )))
            }
            (None, _) => match numpy.ml_dtypes {
                Some(ml) => match py.import("ml_dtypes") {
                    Ok(m) => array.call_method1("view", (m.getattr(ml)?,))?,
                    Err(_) => return Err(no_ml_dtypes(py, path, &name, dtype)),
                },
                None => array,
            },
        };
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
