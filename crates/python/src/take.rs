//! `Tensor.take` / `Store.take` / `Dataset.take`: the loader's parallel gather into a new (or the
//! caller's) NumPy array, with the GIL released while the rows are copied.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use std::path::Path;

use mmtensor::Dtype;

use crate::errors::{load_error, raise};
use crate::tensor::{shape_text, Tensor, NUMPY_DTYPE};

/// What a gather reads, for its Python side: the file (or dataset folder) and the tensor (or
/// column) that errors name, the dtype, the rows and the shape of one row.
pub(crate) struct Gather<'a> {
    pub(crate) path: &'a Path,
    pub(crate) name: &'a str,
    pub(crate) dtype: Dtype,
    pub(crate) rows: u64,
    pub(crate) row_shape: &'a [u64],
}

impl Tensor {
    /// `take(indices, out=None)`: see the pymethod's docstring in tensor.rs.
    pub(crate) fn take_impl<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // A 0-dimensional tensor has no rows: the loader's Scalar error (a RowRangeError).
        self.t.row_bytes().map_err(|e| load_error(py, e))?;
        let t = self.t.clone();
        let g = Gather {
            path: self.t.store().path(),
            name: self.t.name(),
            dtype: self.t.dtype(),
            rows: self.t.shape()[0],
            row_shape: &self.t.shape()[1..],
        };
        g.take(py, indices, out, move |p, o| t.take_into(p, o))
    }
}

impl Gather<'_> {
    /// The NumPy dtype of the tensor's typed arrays: the `__array_interface__` type, or the
    /// ml_dtypes type for BF16 and fp8 (UnsupportedDtypeError without ml_dtypes, as `numpy()`).
    fn numpy_dtype_object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dtype = self.dtype;
        let numpy = mmtensor::interop::numpy(dtype).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "tensor `{}` has dtype {dtype}, which this version of the binding does not know",
                self.name
            ))
        })?;
        let np_dtype = NUMPY_DTYPE
            .get_or_try_init(py, || {
                py.import("numpy")?.getattr("dtype").map(Bound::unbind)
            })?
            .bind(py);
        let Some(ml) = numpy.ml_dtypes else {
            return np_dtype.call1((numpy.typestr,));
        };
        match py.import("ml_dtypes") {
            Ok(m) => np_dtype.call1((m.getattr(ml)?,)),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyImportError>(py) => Err(raise(
                py,
                "UnsupportedDtypeError",
                format!(
                    "{}: tensor `{}` holds {dtype}, which NumPy has no type for without ml_dtypes: \
                     `pip install ml_dtypes`, or gather its raw bits with `.raw()[indices]`",
                    self.path.display(),
                    self.name,
                ),
                Some(self.path),
                Some(self.name),
                None,
            )),
            Err(e) => Err(e),
        }
    }

    /// `indices` (any 1-d integer array-like) as row positions of this view: negative ones count
    /// from the end, as in NumPy; one outside `-n..n` is a RowRangeError naming it as given.
    fn positions(&self, py: Python<'_>, indices: &Bound<'_, PyAny>, n: u64) -> PyResult<Vec<u64>> {
        let np = py.import("numpy")?;
        let arr = np.getattr("asarray")?.call1((indices,))?;
        let ndim: usize = arr.getattr("ndim")?.extract()?;
        if ndim != 1 {
            return Err(PyValueError::new_err(format!(
                "tensor `{}`: take needs a 1-d array of row indices, not one of {ndim} dimensions",
                self.name
            )));
        }
        let size: usize = arr.getattr("size")?.extract()?;
        if size == 0 {
            // `np.asarray([])` is float64: an empty list is still an empty set of rows.
            return Ok(Vec::new());
        }
        let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
        let unsigned = match kind.as_str() {
            "u" => true,
            "i" => false,
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "tensor `{}`: take needs integer row indices, not an array of dtype {} \
                     (boolean masks are not indices: use np.flatnonzero(mask))",
                    self.name,
                    arr.getattr("dtype")?.str()?
                )))
            }
        };
        // One copy of the indices as little-endian 64-bit integers; a few bytes per row gathered.
        let wide = arr.call_method1("astype", (if unsigned { "<u8" } else { "<i8" },))?;
        let bytes = wide.call_method0("tobytes")?;
        let bytes = bytes.cast::<PyBytes>()?.as_bytes();
        let out_of_range = |shown: String| {
            raise(
                py,
                "RowRangeError",
                format!(
                    "{}: tensor `{}`: index {shown} is out of range for {n} rows (indices run \
                     from -{n} to {}; negative ones count from the end)",
                    self.path.display(),
                    self.name,
                    n as i128 - 1,
                ),
                Some(self.path),
                Some(self.name),
                None,
            )
        };
        bytes
            .chunks_exact(8)
            .map(|b| {
                let mut word = [0u8; 8];
                word.copy_from_slice(b);
                let b = word;
                if unsigned {
                    let i = u64::from_le_bytes(b);
                    return if i < n {
                        Ok(i)
                    } else {
                        Err(out_of_range(i.to_string()))
                    };
                }
                let i = i64::from_le_bytes(b);
                let p = if i < 0 {
                    n.checked_sub(i.unsigned_abs())
                } else {
                    Some(i.unsigned_abs())
                };
                match p {
                    Some(p) if p < n => Ok(p),
                    _ => Err(out_of_range(i.to_string())),
                }
            })
            .collect()
    }

    /// Gathers the rows `indices` (NumPy's index rules) into a new array or `out`, with `fill`
    /// (the Rust gather: positions, output bytes) running without the GIL.
    pub(crate) fn take<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
        fill: impl FnOnce(&[u64], &mut [u8]) -> mmtensor::Result<()> + Send,
    ) -> PyResult<Bound<'py, PyAny>> {
        let positions = self.positions(py, indices, self.rows)?;
        let dtype = self.numpy_dtype_object(py)?;
        let mut shape = vec![positions.len() as u64];
        shape.extend_from_slice(self.row_shape);
        let np = py.import("numpy")?;
        let array = match out {
            None => np
                .getattr("empty")?
                .call1((PyTuple::new(py, &shape)?, &dtype))?,
            Some(out) => {
                self.check_out(py, out, &shape, &dtype)?;
                out.clone()
            }
        };
        let interface = array.getattr("__array_interface__")?;
        let (address, _read_only): (usize, bool) = interface.get_item("data")?.extract()?;
        let len: usize = array.getattr("nbytes")?.extract()?;
        let result = py.detach(move || {
            if len == 0 {
                return fill(&positions, &mut []);
            }
            // SAFETY: `array` is a C-contiguous, writeable NumPy array (made here by np.empty, or
            // checked by `check_out`) of exactly `len` bytes at `address`, and this function holds
            // a reference to it until the copy ends, so the memory stays allocated (NumPy refuses
            // to resize an array that is referenced). Its memory cannot be a store's bytes: those
            // are read-only pages, and every array mmtensor makes of them is read-only. Other
            // Python threads writing the same array meanwhile race, as they do with any NumPy
            // operation that releases the GIL.
            let out = unsafe { std::slice::from_raw_parts_mut(address as *mut u8, len) };
            fill(&positions, out)
        });
        result.map_err(|e| load_error(py, e))?;
        Ok(array)
    }

    /// Refuses an `out` that is not a C-contiguous, writeable NumPy array of exactly `shape` and
    /// `dtype`.
    fn check_out(
        &self,
        py: Python<'_>,
        out: &Bound<'_, PyAny>,
        shape: &[u64],
        dtype: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let name = self.name;
        let ndarray = py.import("numpy")?.getattr("ndarray")?;
        if !out.is_instance(&ndarray)? {
            return Err(PyTypeError::new_err(format!(
                "tensor `{name}`: out must be a NumPy array, not {}",
                out.get_type().name()?
            )));
        }
        let have = out.getattr("dtype")?;
        if !have.eq(dtype)? {
            return Err(PyTypeError::new_err(format!(
                "tensor `{name}`: out has dtype {}, but the tensor's rows are {}",
                have.str()?,
                dtype.str()?
            )));
        }
        let have_shape: Vec<u64> = out.getattr("shape")?.extract()?;
        if have_shape != shape {
            return Err(PyValueError::new_err(format!(
                "tensor `{name}`: out has shape {}, but {} rows need shape {}",
                shape_text(&have_shape),
                shape[0],
                shape_text(shape)
            )));
        }
        let flags = out.getattr("flags")?;
        if !flags.getattr("c_contiguous")?.extract::<bool>()? {
            return Err(PyValueError::new_err(format!(
                "tensor `{name}`: out must be C-contiguous (np.ascontiguousarray makes a copy that is)"
            )));
        }
        if !flags.getattr("writeable")?.extract::<bool>()? {
            return Err(PyValueError::new_err(format!(
                "tensor `{name}`: out is read-only"
            )));
        }
        Ok(())
    }
}
