//! The Python side of every gather (`Tensor.take`, `Store.take`, `Dataset.take`): the index rules,
//! the output array (a new one, or the caller's `out`, checked from NumPy's own C fields) and the
//! GIL released while the loader's parallel gather copies the rows, cast to another dtype as they
//! are copied when `dtype=` asks.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use std::path::Path;

use mmtensor::Dtype;

use crate::args;
use crate::arrays;
use crate::errors::{load_error, raise, shape_text};

/// What a gather reads, for its Python side: the file (or dataset folder) and the tensor (or
/// column) that errors name, the dtype of the rows it writes (the tensor's, or the one `dtype=`
/// casts them to: what a new array is made of and what `out` is checked against), the rows and the
/// shape of one row.
pub(crate) struct Gather<'a> {
    pub(crate) path: &'a Path,
    pub(crate) name: &'a str,
    pub(crate) dtype: Dtype,
    pub(crate) rows: u64,
    pub(crate) row_shape: &'a [u64],
}

/// The dtype a gather writes: the stored one, or `dtype=` read as a dtype (an error naming the
/// argument and the tensor otherwise). Whether the rows are cast to it is the loader's to say,
/// before anything is copied (UnsupportedDtypeError naming both dtypes).
pub(crate) fn target_dtype(
    name: &str,
    stored: Dtype,
    dtype: Option<&Bound<'_, PyAny>>,
) -> PyResult<Dtype> {
    match dtype.filter(|d| !d.is_none()) {
        None => Ok(stored),
        Some(d) => args::dtype(&format!("take of `{name}`: dtype"), d),
    }
}

impl Gather<'_> {
    /// The NumPy dtype of the rows written: the `__array_interface__` type, or the ml_dtypes type
    /// for BF16 and fp8 (UnsupportedDtypeError without ml_dtypes, as `numpy()`).
    pub(crate) fn numpy_dtype_object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dtype = self.dtype;
        let numpy = mmtensor::interop::numpy(dtype).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "tensor `{}` has dtype {dtype}, which this version of the binding does not know",
                self.name
            ))
        })?;
        let np_dtype = args::numpy_dtype(py)?;
        let Some(ml) = numpy.ml_dtypes else {
            return np_dtype.call1((numpy.typestr,));
        };
        match py.import("ml_dtypes") {
            Ok(m) => np_dtype.call1((m.getattr(ml)?,)),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyImportError>(py) => Err(raise(
                py,
                "UnsupportedDtypeError",
                format!(
                    "{}: tensor `{}`: its rows are gathered as {dtype}, which NumPy has no type for \
                     without ml_dtypes: `pip install ml_dtypes`, or gather its raw bits with \
                     `.raw()[indices]`",
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
    pub(crate) fn positions(
        &self,
        py: Python<'_>,
        indices: &Bound<'_, PyAny>,
        n: u64,
    ) -> PyResult<Vec<u64>> {
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
        let array = match out {
            None => py
                .import("numpy")?
                .getattr("empty")?
                .call1((PyTuple::new(py, &shape)?, &dtype))?,
            Some(out) => out.clone(),
        };
        // A new array goes through the same checks as the caller's: the facts the write relies
        // on come from one place, whoever made the array.
        let target = self.out_target(&array, &shape, &dtype)?;
        let (address, len) = (target.address, target.len);
        let result = py.detach(move || {
            if len == 0 {
                return fill(&positions, &mut []);
            }
            // SAFETY: `address` and `len` were read by `out_target` from the plain `numpy.ndarray`
            // view (`arrays::plain_view`) that `target` holds (its exact type, so no Python-level
            // attribute of a subclass answered) over the memory of `array`: its own C fields say
            // that it is C-contiguous and writeable and spans exactly `len` bytes at `address`.
            // `target` lives on this frame until the copy ends (it is dropped after), and with it a
            // reference to the memory's owner (the view's base), so the memory stays allocated as
            // NumPy keeps it for any of its own operations that release the GIL: NumPy refuses to
            // resize or free the data of an array that others reference, and an exporter under it
            // (a bytearray, an mmap) refuses to resize or close while NumPy holds its buffer. (What
            // NumPy itself cannot prevent, `resize(refcheck=False)` from another thread or a torch
            // storage resized under `np.from_dlpack`, breaks every NumPy operation alike.) The
            // memory cannot be a store's own bytes: NumPy views of them are read-only, and what
            // goes to consumers that may write (torch, DLPack) is a private copy-on-write view
            // (`OwnedTensor::private_bytes`). Other Python threads writing the same array meanwhile
            // race, as they do with any NumPy operation that releases the GIL.
            let out = unsafe { std::slice::from_raw_parts_mut(address as *mut u8, len) };
            fill(&positions, out)
        });
        drop(target);
        result.map_err(|e| load_error(py, e))?;
        Ok(array)
    }

    /// Where the gather may write for `out`: its address and length, read from a plain
    /// `numpy.ndarray` view of it, after refusing anything but a C-contiguous, writeable NumPy array
    /// of exactly `shape` and `dtype`.
    ///
    /// Nothing is read from `out`'s own attributes: an ndarray subclass can override any of them
    /// (`nbytes`, `shape`, `strides`, `dtype`, `flags`, `__array_interface__`, `ctypes`, `view`),
    /// and an object that is not an array at all can claim `__class__ = np.ndarray`. The view is
    /// `arrays::plain_view`'s (which says why it can be trusted), the one the bytes `save` reads
    /// are borrowed through too.
    fn out_target<'py>(
        &self,
        out: &Bound<'py, PyAny>,
        shape: &[u64],
        dtype: &Bound<'py, PyAny>,
    ) -> PyResult<OutTarget<'py>> {
        let name = self.name;
        let Some(plain) = arrays::plain_view(out)? else {
            let ty = out.get_type();
            let hint = if ty
                .module()
                .is_ok_and(|m| m.to_string().starts_with("torch"))
            {
                " (for a torch tensor, pass tensor.numpy())"
            } else {
                ""
            };
            return Err(PyTypeError::new_err(format!(
                "tensor `{name}`: out must be a NumPy array, not {}{hint}",
                ty.name()?
            )));
        };
        let have = plain.getattr("dtype")?;
        if !have.eq(dtype)? {
            return Err(PyTypeError::new_err(format!(
                "tensor `{name}`: out has dtype {}, but the rows are gathered as {}",
                have.str()?,
                dtype.str()?
            )));
        }
        // The comparison above asked `dtype`, which a replaced `numpy.dtype` may have made. But
        // `plain` is an exact ndarray, so `have` is its own descriptor (a C getter), whatever
        // `numpy.dtype` was replaced with: an object dtype would have the gather write raw bytes
        // where NumPy keeps pointers, and the item size must be the one the rows are written in.
        if have.getattr("hasobject")?.extract::<bool>()? {
            return Err(PyTypeError::new_err(format!(
                "tensor `{name}`: out holds Python objects (dtype {}), not numbers",
                have.str()?
            )));
        }
        if have.getattr("itemsize")?.extract::<usize>()? != self.dtype.size() {
            return Err(PyTypeError::new_err(format!(
                "tensor `{name}`: out has dtype {} of {} bytes, but the rows are gathered as {} \
                 of {} bytes",
                have.str()?,
                have.getattr("itemsize")?,
                dtype.str()?,
                self.dtype.size()
            )));
        }
        let have_shape: Vec<u64> = plain.getattr("shape")?.extract()?;
        if have_shape != shape {
            return Err(PyValueError::new_err(format!(
                "tensor `{name}`: out has shape {}, but {} rows need shape {}",
                shape_text(&have_shape),
                shape[0],
                shape_text(shape)
            )));
        }
        let flags = plain.getattr("flags")?;
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
        // The length the rows need, from the tensor's shape and the dtype they are gathered as,
        // must be the array's:
        // equal dtypes have equal item sizes, so this holds unless NumPy disagrees with itself,
        // and then nothing is written.
        let need = shape
            .iter()
            .try_fold(self.dtype.size() as u64, |n, &d| n.checked_mul(d));
        let len: usize = plain.getattr("nbytes")?.extract()?;
        if need != Some(len as u64) {
            return Err(PyValueError::new_err(format!(
                "tensor `{name}`: out holds {len} bytes, but the rows need {}",
                need.map_or("more than 2^64".to_owned(), |n| n.to_string())
            )));
        }
        let interface = plain.getattr("__array_interface__")?;
        let (address, _read_only): (usize, bool) = interface.get_item("data")?.extract()?;
        if len > 0 && address == 0 {
            return Err(PyValueError::new_err(format!(
                "tensor `{name}`: out has no data"
            )));
        }
        Ok(OutTarget {
            _plain: plain,
            address,
            len,
        })
    }
}

/// The memory a gather writes: `len` bytes at `address`, the data of `_plain`, a plain
/// `numpy.ndarray` over the caller's (or a new) array, whose reference keeps the memory allocated
/// while the GIL is released.
struct OutTarget<'py> {
    _plain: Bound<'py, PyAny>,
    address: usize,
    len: usize,
}
