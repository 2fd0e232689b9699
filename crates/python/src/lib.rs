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

mod dlpack;
mod errors;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use mmtensor::{Advice, Dtype, Format};
use mmtensor_convert::{ConvertOptions, DtypeRules, Input, Progress};
use pyo3::exceptions::{PyBufferError, PyImportError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyMapping, PyString, PyTuple};

use crate::dlpack::{code, DataType};
use crate::errors::{convert_error, load_error, raise};

// ---------------------------------------------------------------------------------------------
// dtypes
// ---------------------------------------------------------------------------------------------

/// How a dtype becomes a NumPy array: the `__array_interface__` type string of the bytes, and the
/// `ml_dtypes` type to view them as (for dtypes NumPy itself lacks).
fn numpy_type(dtype: Dtype) -> Option<(&'static str, Option<&'static str>)> {
    Some(match dtype {
        Dtype::Bool => ("|b1", None),
        Dtype::U8 => ("|u1", None),
        Dtype::U16 => ("<u2", None),
        Dtype::U32 => ("<u4", None),
        Dtype::U64 => ("<u8", None),
        Dtype::I8 => ("|i1", None),
        Dtype::I16 => ("<i2", None),
        Dtype::I32 => ("<i4", None),
        Dtype::I64 => ("<i8", None),
        Dtype::F16 => ("<f2", None),
        Dtype::BF16 => ("<u2", Some("bfloat16")),
        Dtype::F32 => ("<f4", None),
        Dtype::F64 => ("<f8", None),
        Dtype::C64 => ("<c8", None),
        Dtype::C128 => ("<c16", None),
        Dtype::F8E4M3 => ("|u1", Some("float8_e4m3fn")),
        Dtype::F8E5M2 => ("|u1", Some("float8_e5m2")),
        _ => return None,
    })
}

/// The unsigned-integer type string for a dtype's raw bits, and how many of them make one element
/// (2 for C128, whose 16 bytes have no integer type: its raw view gets a trailing axis of 2).
fn raw_type(dtype: Dtype) -> (&'static str, u64) {
    match dtype.size() {
        1 => ("|u1", 1),
        2 => ("<u2", 1),
        4 => ("<u4", 1),
        8 => ("<u8", 1),
        n => ("<u8", (n / 8) as u64),
    }
}

/// The DLPack type of a dtype, and the `torch` dtype attribute to view the tensor as afterwards
/// (fp8 goes to PyTorch as uint8 bytes and is viewed there, which works on every PyTorch that has
/// the fp8 types, whatever DLPack version it speaks).
fn dlpack_type(dtype: Dtype, for_torch: bool) -> Option<(DataType, Option<&'static str>)> {
    let bits = (dtype.size() * 8) as u8;
    Some(match dtype {
        Dtype::Bool => (DataType::new(code::BOOL, 8), None),
        Dtype::U8 | Dtype::U16 | Dtype::U32 | Dtype::U64 => (DataType::new(code::UINT, bits), None),
        Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64 => (DataType::new(code::INT, bits), None),
        Dtype::F16 | Dtype::F32 | Dtype::F64 => (DataType::new(code::FLOAT, bits), None),
        Dtype::BF16 => (DataType::new(code::BFLOAT, 16), None),
        Dtype::C64 | Dtype::C128 => (DataType::new(code::COMPLEX, bits), None),
        Dtype::F8E4M3 if for_torch => (DataType::new(code::UINT, 8), Some("float8_e4m3fn")),
        Dtype::F8E5M2 if for_torch => (DataType::new(code::UINT, 8), Some("float8_e5m2")),
        Dtype::F8E4M3 => (DataType::new(code::FLOAT8_E4M3FN, 8), None),
        Dtype::F8E5M2 => (DataType::new(code::FLOAT8_E5M2, 8), None),
        _ => return None,
    })
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Mmt => "mmt",
        Format::Safetensors => "safetensors",
        Format::Npy => "npy",
        _ => "unknown",
    }
}

fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn parse_advice(text: &str) -> PyResult<Advice> {
    Ok(match text.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
        "normal" => Advice::Normal,
        "sequential" => Advice::Sequential,
        "random" => Advice::Random,
        "willneed" => Advice::WillNeed,
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown advice {text:?}: use \"normal\", \"sequential\", \"random\" or \"willneed\""
            )))
        }
    })
}

static NUMPY_ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static NUMPY_DTYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `ml_dtypes.NAME`, or None when ml_dtypes is not installed.
fn ml_dtype<'py>(py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    match py.import("ml_dtypes") {
        Ok(m) => Ok(Some(m.getattr(name)?)),
        Err(e) if e.is_instance_of::<PyImportError>(py) => Ok(None),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// MappedBuffer: the owner object at the bottom of every array's `.base` chain
// ---------------------------------------------------------------------------------------------

/// The owner of a NumPy array's memory: a read-only span of a store's bytes.
///
/// Every array from mmtensor has one at the end of its `.base` chain. It holds a clone of the store,
/// so the mapping stays alive while any array made from it lives, even after `Store.close()` or
/// after the `Store` object is garbage-collected. It exposes the span through NumPy's
/// `__array_interface__` (read-only), which is how the arrays are made without a copy.
#[pyclass(frozen, module = "mmtensor", name = "MappedBuffer")]
struct MappedBuffer {
    store: mmtensor::Store,
    tensor: String,
    ptr: usize,
    len: usize,
    shape: Vec<u64>,
    typestr: &'static str,
}

#[pymethods]
impl MappedBuffer {
    /// NumPy's array interface (version 3): shape, type string and a read-only data pointer.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", self.typestr)?;
        d.set_item("data", (self.ptr, true))?;
        d.set_item("strides", py.None())?;
        Ok(d)
    }

    /// The number of bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    /// Whether the bytes are a memory mapping (False for a store opened with `copy=True`).
    #[getter]
    fn mapped(&self) -> bool {
        self.store.is_mapped()
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmtensor.MappedBuffer: {} bytes of tensor `{}` in {}{}>",
            self.len,
            self.tensor,
            self.store.path().display(),
            if self.store.is_mapped() {
                " (mapped)"
            } else {
                " (copy)"
            }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor
// ---------------------------------------------------------------------------------------------

/// One tensor of a store, or a range of its rows: its name, dtype and shape, and the ways to get its
/// data without copying (`numpy()`, `torch()`, DLPack, `np.asarray`).
///
/// Making a `Tensor` reads no data. It keeps the store's bytes alive by itself, so it stays usable
/// after `Store.close()`.
#[pyclass(frozen, module = "mmtensor", name = "Tensor")]
struct Tensor {
    store: mmtensor::Store,
    name: String,
    /// Rows along axis 0 within the whole tensor, for a row range.
    rows: Option<Range<u64>>,
    dtype: Dtype,
    shape: Vec<u64>,
    byte_range: Range<u64>,
}

impl Tensor {
    fn make(
        store: mmtensor::Store,
        name: &str,
        rows: Option<Range<u64>>,
    ) -> Result<Tensor, mmtensor::Error> {
        let (dtype, shape, byte_range) = {
            let t = store.tensor(name)?;
            let t = match &rows {
                Some(r) => t.rows(r.clone())?,
                None => t,
            };
            (t.dtype(), t.shape().to_vec(), t.byte_range())
        };
        Ok(Tensor {
            store,
            name: name.to_owned(),
            rows,
            dtype,
            shape,
            byte_range,
        })
    }

    /// The loader's view of this tensor (cheap: a name lookup).
    fn view(&self) -> Result<mmtensor::Tensor<'_>, mmtensor::Error> {
        let t = self.store.tensor(&self.name)?;
        match &self.rows {
            Some(r) => t.rows(r.clone()),
            None => Ok(t),
        }
    }

    /// The bytes, borrowed from the store (errors for big-endian or Fortran-order `.npy` files).
    fn bytes(&self, py: Python<'_>) -> PyResult<&[u8]> {
        self.view()
            .and_then(|v| v.bytes())
            .map_err(|e| load_error(py, e))
    }

    fn path_text(&self) -> String {
        self.store.path().display().to_string()
    }

    /// A NumPy array of the bytes, typed `typestr` with shape `shape`, owned by a new MappedBuffer.
    fn array_of<'py>(
        &self,
        py: Python<'py>,
        typestr: &'static str,
        shape: Vec<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let bytes = self.bytes(py)?;
        let owner = Bound::new(
            py,
            MappedBuffer {
                store: self.store.clone(),
                tensor: self.name.clone(),
                ptr: bytes.as_ptr() as usize,
                len: bytes.len(),
                shape,
                typestr,
            },
        )?;
        let asarray = NUMPY_ASARRAY.get_or_try_init(py, || {
            py.import("numpy")?.getattr("asarray").map(Bound::unbind)
        })?;
        asarray.bind(py).call1((owner,))
    }

    fn unsupported(&self) -> PyErr {
        PyTypeError::new_err(format!(
            "{}: tensor `{}` has dtype {}, which this version of the binding does not know",
            self.path_text(),
            self.name,
            self.dtype
        ))
    }

    /// The array in its own dtype (ml_dtypes for BF16 and fp8), or an UnsupportedDtypeError.
    fn typed_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (typestr, ml) = numpy_type(self.dtype).ok_or_else(|| self.unsupported())?;
        let array = self.array_of(py, typestr, self.shape.clone())?;
        let Some(ml) = ml else {
            return Ok(array);
        };
        match ml_dtype(py, ml)? {
            Some(dt) => array.call_method1("view", (dt,)),
            None => Err(raise(
                py,
                "UnsupportedDtypeError",
                format!(
                    "{}: tensor `{}` holds {}, which NumPy has no type for without ml_dtypes: \
                     `pip install ml_dtypes`, or read its raw bits with `.raw()` ({}), or use `.torch()`",
                    self.path_text(),
                    self.name,
                    self.dtype,
                    match self.dtype.size() {
                        2 => "uint16",
                        _ => "uint8",
                    }
                ),
                Some(self.store.path()),
                Some(&self.name),
                None,
            )),
        }
    }

    fn numpy_impl<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let array = self.typed_array(py)?;
        if let Some(want) = dtype {
            let np_dtype = NUMPY_DTYPE.get_or_try_init(py, || {
                py.import("numpy")?.getattr("dtype").map(Bound::unbind)
            })?;
            let want = np_dtype.bind(py).call1((want,))?;
            let have = array.getattr("dtype")?;
            if !have.eq(&want)? {
                return Err(raise(
                    py,
                    "DtypeMismatchError",
                    format!(
                        "{}: tensor `{}` holds {}, which cannot be viewed as `{}` (view it as `{}`)",
                        self.path_text(),
                        self.name,
                        self.dtype,
                        want.str()?,
                        have.str()?
                    ),
                    Some(self.store.path()),
                    Some(&self.name),
                    None,
                ));
            }
        }
        Ok(array)
    }

    fn raw_impl<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (typestr, per_element) = raw_type(self.dtype);
        let mut shape = self.shape.clone();
        if per_element > 1 {
            shape.push(per_element);
        }
        self.array_of(py, typestr, shape)
    }

    fn torch_impl<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let torch = py.import("torch").map_err(|e| {
            if e.is_instance_of::<PyImportError>(py) {
                PyImportError::new_err(
                    "`.torch()` needs PyTorch (`pip install torch`); `.numpy()` needs only NumPy",
                )
            } else {
                e
            }
        })?;
        let (dl_type, view_as) = dlpack_type(self.dtype, true).ok_or_else(|| self.unsupported())?;
        let bytes = self.bytes(py)?;
        self.check_aligned(py, bytes, "torch.Tensor")?;
        let capsule = dlpack::capsule(
            py,
            self.store.clone(),
            bytes.as_ptr(),
            &self.shape,
            dl_type,
            dlpack::Kind::Legacy,
        )?;
        let tensor = torch.getattr("from_dlpack")?.call1((capsule,))?;
        match view_as {
            Some(attr) => tensor.call_method1("view", (torch.getattr(attr)?,)),
            None => Ok(tensor),
        }
    }

    /// DLPack consumers and PyTorch may assume element alignment; `.mmt` tensors always have it,
    /// safetensors tensors usually do.
    fn check_aligned(&self, py: Python<'_>, bytes: &[u8], requested: &'static str) -> PyResult<()> {
        let align = self.dtype.align();
        if (bytes.as_ptr() as usize) % align == 0 {
            return Ok(());
        }
        Err(load_error(
            py,
            mmtensor::Error::Unaligned {
                path: self.store.path().to_owned(),
                tensor: self.name.clone(),
                offset: self.byte_range.start,
                align,
                requested,
            },
        ))
    }

    /// Row index `i` (negative counts from the end) as an absolute position in 0..=rows.
    fn row_index(&self, i: i64, rows: u64) -> u64 {
        if i < 0 {
            rows.saturating_sub(i.unsigned_abs())
        } else {
            i as u64
        }
    }

    fn rows_impl(&self, py: Python<'_>, start: i64, stop: Option<i64>) -> PyResult<Tensor> {
        let view = self.view().map_err(|e| load_error(py, e))?;
        let n = view.shape().first().copied().unwrap_or(0);
        let start = self.row_index(start, n);
        let stop = stop.map_or(n, |s| self.row_index(s, n));
        // The loader checks the range (and refuses 0-d tensors) with its own message.
        view.rows(start..stop).map_err(|e| load_error(py, e))?;
        let first = self.rows.as_ref().map_or(0, |r| r.start);
        Tensor::make(
            self.store.clone(),
            &self.name,
            Some(first + start..first + stop),
        )
        .map_err(|e| load_error(py, e))
    }
}

#[pymethods]
impl Tensor {
    /// The tensor's name in its store.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The dtype as the file names it: "F32", "BF16", "F8_E4M3", ...
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    /// The NumPy (or ml_dtypes) name of the dtype: "float32", "bfloat16", "float8_e4m3fn", ...
    #[getter]
    fn numpy_dtype(&self) -> &'static str {
        self.dtype.numpy_name()
    }

    /// The shape (for a row range, axis 0 is the number of rows in it).
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }

    /// The number of axes.
    #[getter]
    fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    #[getter]
    fn size(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The number of bytes.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.byte_range.end - self.byte_range.start
    }

    /// The absolute byte range `(start, end)` of the data in the file.
    #[getter]
    fn byte_range(&self) -> (u64, u64) {
        (self.byte_range.start, self.byte_range.end)
    }

    /// The number of rows (the length of axis 0).
    fn __len__(&self) -> PyResult<usize> {
        match self.shape.first() {
            Some(&n) => usize::try_from(n).map_err(|_| PyValueError::new_err("too many rows")),
            None => Err(PyTypeError::new_err(format!(
                "len() of tensor `{}`, which is 0-dimensional",
                self.name
            ))),
        }
    }

    /// The data as a read-only NumPy array that views the store's bytes: no copy.
    ///
    /// BF16 and fp8 tensors come as `ml_dtypes` arrays (bfloat16, float8_e4m3fn, float8_e5m2) when
    /// ml_dtypes is installed; without it they raise UnsupportedDtypeError (use `raw()` for their
    /// bits). With `dtype`, raise DtypeMismatchError unless the tensor has exactly that dtype.
    ///
    /// The array's `.base` chain ends in a MappedBuffer that keeps the store's bytes alive.
    #[pyo3(signature = (dtype=None))]
    fn numpy<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.numpy_impl(py, dtype)
    }

    /// The raw bits as a read-only unsigned-integer NumPy array of the element size (uint16 for
    /// BF16 and F16, uint8 for fp8 and BOOL, ...; C128 as uint64 with a trailing axis of 2). No copy.
    fn raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.raw_impl(py)
    }

    /// The data as a `torch.Tensor` sharing the store's bytes (no copy, no warning), in its own
    /// dtype (torch.bfloat16, torch.float8_e4m3fn, ...).
    ///
    /// PyTorch has no read-only tensors: treat the tensor as read-only. Writing into it in place
    /// writes into a read-only mapping, which kills the process (SIGSEGV); `.clone()` it first.
    /// The tensor keeps the store's bytes alive for as long as it lives.
    fn torch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.torch_impl(py)
    }

    /// The rows `start..stop` along axis 0 (relative to this tensor; negative counts from the
    /// end; `stop=None` means to the end), as a Tensor. No data is read.
    ///
    /// Raises RowRangeError (an IndexError) when the range is reversed or out of bounds, or for a
    /// 0-dimensional tensor.
    #[pyo3(signature = (start, stop=None))]
    fn rows(&self, py: Python<'_>, start: i64, stop: Option<i64>) -> PyResult<Tensor> {
        self.rows_impl(py, start, stop)
    }

    /// Checks the checksums of the blocks holding this tensor's (or row range's) bytes, in parallel,
    /// without holding the GIL.
    ///
    /// Raises ChecksumMismatchError naming the tensor, the block and its byte range;
    /// NoChecksumsError for .safetensors and .npy files.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.view().and_then(|v| v.verify()))
            .map_err(|e| load_error(py, e))
    }

    /// Starts reading this tensor's bytes into the page cache in background threads. With
    /// `wait=True`, returns when they are resident (without holding the GIL). A no-op for a copy.
    #[pyo3(signature = (*, wait=false))]
    fn prefetch(&self, py: Python<'_>, wait: bool) -> PyResult<()> {
        let view = self.view().map_err(|e| load_error(py, e))?;
        let handle = view.prefetch();
        if wait {
            py.detach(|| handle.wait()).map_err(|e| load_error(py, e))?;
        }
        Ok(())
    }

    /// Tells the kernel how this tensor's bytes will be read: "normal", "sequential", "random" or
    /// "willneed" (madvise). A no-op for a copy.
    fn advise(&self, py: Python<'_>, advice: &str) -> PyResult<()> {
        let advice = parse_advice(advice)?;
        self.view()
            .and_then(|v| v.advise(advice))
            .map_err(|e| load_error(py, e))
    }

    /// `np.asarray(tensor)`: the same zero-copy array as `numpy()`. `copy=True` or a different
    /// `dtype` make a copy; `copy=False` with a different dtype raises ValueError.
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let array = self.typed_array(py)?;
        let array = match dtype {
            Some(dt) if !dt.is_none() => {
                let same = array.getattr("dtype")?.eq(dt)?;
                if !same && copy == Some(false) {
                    return Err(PyValueError::new_err(format!(
                        "tensor `{}` is {}: a {} array needs a copy, but copy=False",
                        self.name,
                        self.dtype,
                        dt.str()?
                    )));
                }
                if same {
                    array
                } else {
                    array.call_method1("astype", (dt,))?
                }
            }
            _ => array,
        };
        if copy == Some(true) {
            array.call_method0("copy")
        } else {
            Ok(array)
        }
    }

    /// DLPack export (the Python array API's `__dlpack__`): a `dltensor_versioned` capsule over the
    /// store's bytes, marked read-only, that keeps the bytes alive until the consumer releases it.
    ///
    /// Works with `np.from_dlpack` (NumPy 2.1+), PyTorch, JAX and other consumers that speak
    /// DLPack 1.0 (`max_version >= (1, 0)`); fp8 needs DLPack 1.1. A consumer of the older,
    /// unversioned protocol could not be told that the data is read-only, so it gets BufferError
    /// (as NumPy does for read-only arrays) unless it asks for `copy=True`; use `torch()` for
    /// PyTorch versions that only speak the old protocol.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Some(s) = stream {
            if !s.is_none() && s.extract::<i64>().ok() != Some(-1) {
                return Err(PyBufferError::new_err(
                    "mmtensor data is on the CPU: `stream` must be None",
                ));
            }
        }
        if let Some(device) = dl_device {
            if device != (dlpack::DEVICE_CPU, 0) {
                return Err(PyBufferError::new_err(format!(
                    "mmtensor data is on the CPU (device (1, 0)), not on device {device:?}"
                )));
            }
        }
        if copy == Some(true) {
            // A copy is writable and owned by NumPy: let NumPy export it.
            let copied = self.typed_array(py)?.call_method0("copy")?;
            let kwargs = PyDict::new(py);
            if let Some(v) = max_version {
                kwargs.set_item("max_version", v)?;
            }
            return copied.call_method("__dlpack__", (), Some(&kwargs));
        }
        let minor = match max_version {
            Some((major, minor)) if major >= 1 => {
                if major > 1 {
                    1
                } else {
                    minor.min(1)
                }
            }
            _ => {
                return Err(PyBufferError::new_err(format!(
                    "tensor `{}` is read-only (it views {}), and the unversioned DLPack protocol \
                     the consumer asked for cannot say so: use a consumer that passes \
                     max_version=(1, 0) or newer (NumPy >= 2.1, recent PyTorch or JAX), \
                     `.torch()` for PyTorch, or copy=True",
                    self.name,
                    self.path_text()
                )))
            }
        };
        let (dl_type, _) = dlpack_type(self.dtype, false).ok_or_else(|| self.unsupported())?;
        if matches!(self.dtype, Dtype::F8E4M3 | Dtype::F8E5M2) && minor < 1 {
            return Err(PyBufferError::new_err(format!(
                "tensor `{}` is {}, which DLPack names only from version 1.1, but the consumer \
                 accepts at most 1.{minor}: use `.numpy()` (ml_dtypes) or `.torch()`",
                self.name, self.dtype
            )));
        }
        let bytes = self.bytes(py)?;
        self.check_aligned(py, bytes, "DLPack")?;
        dlpack::capsule(
            py,
            self.store.clone(),
            bytes.as_ptr(),
            &self.shape,
            dl_type,
            dlpack::Kind::Versioned { minor },
        )
    }

    /// `(kDLCPU, 0)`: the data is in host memory.
    fn __dlpack_device__(&self) -> (i32, i32) {
        (dlpack::DEVICE_CPU, 0)
    }

    fn __repr__(&self) -> String {
        let rows = match &self.rows {
            Some(r) => format!(" rows {}..{}", r.start, r.end),
            None => String::new(),
        };
        format!(
            "<mmtensor.Tensor `{}`{rows}: {} {} in {}>",
            self.name,
            self.dtype,
            shape_text(&self.shape),
            self.path_text()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------------

/// An open tensor file (.mmt, .safetensors or .npy): a mapping of tensor names to read-only,
/// zero-copy NumPy arrays. Made by `mmtensor.open`.
///
/// `store[name]` is a NumPy array viewing the file's bytes; `keys()`, `in`, `len()`, iteration,
/// `items()`, `metadata`, `dtype(name)` and `shape(name)` read only the header. Use it in a `with`
/// block or call `close()`: closing drops the store's own reference to the bytes, and the mapping
/// goes away when the last array, tensor or DLPack capsule made from it is gone too.
#[pyclass(frozen, module = "mmtensor", name = "Store", mapping)]
struct Store {
    store: RwLock<Option<mmtensor::Store>>,
    path: PathBuf,
    format: Format,
    mapped: bool,
}

impl Store {
    fn handle(&self, py: Python<'_>) -> PyResult<mmtensor::Store> {
        let guard = self.store.read().unwrap_or_else(|e| e.into_inner());
        guard.clone().ok_or_else(|| {
            raise(
                py,
                "StoreClosedError",
                format!("{}: the store is closed", self.path.display()),
                Some(&self.path),
                None,
                None,
            )
        })
    }

    fn tensor_impl(&self, py: Python<'_>, name: &str) -> PyResult<Tensor> {
        Tensor::make(self.handle(py)?, name, None).map_err(|e| load_error(py, e))
    }
}

#[pymethods]
impl Store {
    /// The Tensor handle called `name` (dtype, shape, rows, numpy(), torch(), DLPack).
    fn tensor(&self, py: Python<'_>, name: &str) -> PyResult<Tensor> {
        self.tensor_impl(py, name)
    }

    /// `store[name]`: the tensor as a read-only NumPy array viewing the file's bytes (no copy).
    /// Raises TensorNotFoundError (a KeyError) for an unknown name.
    fn __getitem__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.tensor_impl(py, name)?.numpy_impl(py, None)
    }

    /// The tensor as a read-only NumPy array (no copy); with `dtype`, raise DtypeMismatchError
    /// unless the tensor has exactly that dtype. See `Tensor.numpy`.
    #[pyo3(signature = (name, dtype=None))]
    fn numpy<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.tensor_impl(py, name)?.numpy_impl(py, dtype)
    }

    /// The tensor's raw bits as a read-only unsigned-integer array (uint16 for BF16, uint8 for
    /// fp8, ...), for when ml_dtypes is not installed. See `Tensor.raw`.
    fn raw<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.tensor_impl(py, name)?.raw_impl(py)
    }

    /// Rows `start..stop` of the tensor along axis 0 as a read-only NumPy array (no copy).
    /// Negative indices count from the end; `stop=None` means to the end. Raises RowRangeError
    /// (an IndexError) for a range outside the tensor.
    #[pyo3(signature = (name, start, stop=None))]
    fn rows<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        start: i64,
        stop: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.tensor_impl(py, name)?
            .rows_impl(py, start, stop)?
            .numpy_impl(py, None)
    }

    /// The tensor as a torch.Tensor sharing the file's bytes (no copy, no warning). Treat it as
    /// read-only: see `Tensor.torch`.
    fn torch<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.tensor_impl(py, name)?.torch_impl(py)
    }

    /// The dtype of tensor `name` as the file names it ("F32", "BF16", ...), from the header.
    fn dtype(&self, py: Python<'_>, name: &str) -> PyResult<&'static str> {
        Ok(self.tensor_impl(py, name)?.dtype.name())
    }

    /// The shape of tensor `name`, from the header.
    fn shape<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.tensor_impl(py, name)?.shape)
    }

    /// The tensor names, in file order.
    fn keys(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(self.handle(py)?.names().map(str::to_owned).collect())
    }

    /// `(name, array)` pairs for every tensor, in file order (zero-copy arrays).
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for name in self.keys(py)? {
            let array = self.tensor_impl(py, &name)?.numpy_impl(py, None)?;
            list.append((name, array))?;
        }
        Ok(list)
    }

    /// The array for `name`, or `default` when there is no such tensor.
    #[pyo3(signature = (name, default=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let store = self.handle(py)?;
        if store.tensor(name).is_err() {
            return Ok(default.unwrap_or_else(|| py.None().into_bound(py)));
        }
        self.__getitem__(py, name)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.keys(py)?)?
            .try_iter()
            .map(Bound::into_any)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.names().len())
    }

    fn __contains__(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<bool> {
        let store = self.handle(py)?;
        let Ok(name) = name.cast::<PyString>() else {
            return Ok(false);
        };
        Ok(store.tensor(&name.to_cow()?).is_ok())
    }

    /// The store's string metadata (safetensors' `__metadata__`; empty for .npy), as a new dict.
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<BTreeMap<String, String>> {
        Ok(self.handle(py)?.metadata().clone())
    }

    /// The path the store was opened from.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// The detected format: "mmt", "safetensors" or "npy".
    #[getter]
    fn format(&self) -> &'static str {
        format_name(self.format)
    }

    /// True when the bytes are a memory mapping, False for `open(path, copy=True)`.
    #[getter]
    fn mapped(&self) -> bool {
        self.mapped
    }

    /// True after `close()`.
    #[getter]
    fn closed(&self) -> bool {
        self.store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Checks the store's block checksums (all tensors, or only `name`) and zero padding, in
    /// parallel and without holding the GIL.
    ///
    /// Raises ChecksumMismatchError naming the tensor, the block and its byte range (the CLI's
    /// `mmt verify` message), CorruptedFileError for nonzero padding, NoChecksumsError for
    /// .safetensors and .npy files.
    #[pyo3(signature = (name=None))]
    fn verify(&self, py: Python<'_>, name: Option<&str>) -> PyResult<()> {
        match name {
            Some(name) => self.tensor_impl(py, name)?.verify(py),
            None => {
                let store = self.handle(py)?;
                py.detach(|| store.verify()).map_err(|e| load_error(py, e))
            }
        }
    }

    /// Starts reading the whole file (or tensor `name`) into the page cache in background threads;
    /// with `wait=True`, returns when it is resident (without holding the GIL).
    #[pyo3(signature = (name=None, *, wait=false))]
    fn prefetch(&self, py: Python<'_>, name: Option<&str>, wait: bool) -> PyResult<()> {
        match name {
            Some(name) => self.tensor_impl(py, name)?.prefetch(py, wait),
            None => {
                let handle = self.handle(py)?.prefetch();
                if wait {
                    py.detach(|| handle.wait()).map_err(|e| load_error(py, e))?;
                }
                Ok(())
            }
        }
    }

    /// Tells the kernel how the file (or tensor `name`) will be read: "normal", "sequential",
    /// "random" or "willneed" (madvise).
    #[pyo3(signature = (advice, name=None))]
    fn advise(&self, py: Python<'_>, advice: &str, name: Option<&str>) -> PyResult<()> {
        match name {
            Some(name) => self.tensor_impl(py, name)?.advise(py, advice),
            None => {
                let advice = parse_advice(advice)?;
                self.handle(py)?
                    .advise(advice)
                    .map_err(|e| load_error(py, e))
            }
        }
    }

    /// Drops this object's reference to the file's bytes. Arrays, tensors and capsules made from the
    /// store keep working (each holds its own reference); the mapping is unmapped when the last of
    /// them is gone. Further lookups raise StoreClosedError. Closing twice is fine.
    fn close(&self) {
        let old = self.store.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        let guard = self.store.read().unwrap_or_else(|e| e.into_inner());
        let head = format!(
            "<mmtensor.Store {:?} ({}, {}",
            self.path.display().to_string(),
            format_name(self.format),
            if self.mapped { "mapped" } else { "copy" }
        );
        let Some(store) = guard.as_ref() else {
            return format!("{head}, closed)>");
        };
        const SHOWN: usize = 8;
        let n = store.names().len();
        let mut parts: Vec<String> = store
            .tensors()
            .take(SHOWN)
            .map(|t| format!("{} {}{}", t.name(), t.dtype(), shape_text(t.shape())))
            .collect();
        if n > SHOWN {
            parts.push(format!("... {} more", n - SHOWN));
        }
        format!(
            "{head}, {n} tensor{}: {})>",
            if n == 1 { "" } else { "s" },
            parts.join(", ")
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Module functions
// ---------------------------------------------------------------------------------------------

/// Opens a tensor file and returns a Store. The format (.mmt, .safetensors or .npy) is detected
/// from the first bytes; only the header is read, so opening costs the same for any data size.
///
/// By default the file is memory-mapped, and arrays view the mapping without copying. The mapping
/// is only as stable as the file: while the store or any array made from it lives, the file must
/// not be modified in place or truncated, by this process or another (a truncated file makes the
/// next read of a vanished page kill the process with SIGBUS, and an in-place write changes the
/// arrays under you). Replacing the file by a rename is safe, and that is how mmtensor's own
/// writer (`mmtensor.convert`, `mmt convert`) always replaces files: it never truncates or
/// rewrites in place. Tools such as `cp new.mmt old.mmt`, editors and `truncate` do.
///
/// If you cannot rule that out, pass `copy=True`: the file is read into private memory (costing
/// its size in RAM and a full read), and nothing done to the file afterwards affects the store.
///
/// Raises StoreNotFoundError (a FileNotFoundError), InvalidFileError for a file that is not a
/// valid .mmt, .safetensors or .npy file, UnsupportedDtypeError, MmtOSError.
#[pyfunction]
#[pyo3(signature = (path, *, copy=false))]
fn open(py: Python<'_>, path: PathBuf, copy: bool) -> PyResult<Store> {
    let opened = py.detach(|| {
        if copy {
            mmtensor::Store::read(&path)
        } else {
            // SAFETY: Python has no `unsafe`, so the contract of Store::open (nobody modifies or
            // truncates the file while it is mapped) is handed to the Python caller the way
            // numpy.memmap and np.load(mmap_mode="r") hand it over: in this function's docstring,
            // with `copy=True` as the safe alternative.
            unsafe { mmtensor::Store::open(&path) }
        }
    });
    let store = opened.map_err(|e| load_error(py, e))?;
    Ok(Store {
        path,
        format: store.format(),
        mapped: store.is_mapped(),
        store: RwLock::new(Some(store)),
    })
}

/// Ctrl-C during `convert`: the conversion runs without the GIL, and this progress sink looks at
/// Python's signal handlers between chunks, cancelling the conversion if one raised.
struct Signals<'a> {
    cancel: &'a AtomicBool,
    error: Mutex<Option<PyErr>>,
}

impl Progress for Signals<'_> {
    fn advance(&self, _bytes: u64) {
        if self.cancel.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = Python::attach(|py| py.check_signals()) {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// One input argument: a str is parsed like the CLI's INPUT (`PATH`, `GLOB`, `NAME=PATH`), an
/// os.PathLike is a path.
fn input_of(py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<Input> {
    if let Ok(text) = item.cast::<PyString>() {
        return Input::parse(&text.to_cow()?).map_err(|e| convert_error(py, e));
    }
    let path: PathBuf = item.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "convert: each input must be a str or os.PathLike, not {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    Ok(Input::path(path))
}

fn inputs_of(py: Python<'_>, inputs: &Bound<'_, PyAny>) -> PyResult<Vec<Input>> {
    if inputs.is_instance_of::<PyString>() || inputs.hasattr("__fspath__")? {
        return Ok(vec![input_of(py, inputs)?]);
    }
    if let Ok(map) = inputs.cast::<PyMapping>() {
        let mut out = Vec::new();
        for item in map.items()?.iter() {
            let (name, path): (String, Bound<'_, PyAny>) = item.extract()?;
            let path: PathBuf = path.extract()?;
            out.push(Input::path(path).named(name));
        }
        return Ok(out);
    }
    inputs
        .try_iter()?
        .map(|item| input_of(py, &item?))
        .collect()
}

/// A dtype given as a str, or as anything `numpy.dtype()` accepts (np.float16, ml_dtypes.bfloat16).
fn dtype_text(dt: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = dt.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    let py = dt.py();
    let np_dtype = NUMPY_DTYPE.get_or_try_init(py, || {
        py.import("numpy")?.getattr("dtype").map(Bound::unbind)
    })?;
    np_dtype.bind(py).call1((dt,))?.getattr("name")?.extract()
}

/// Dtype rules from None, "bf16", "w=f16", {"w": "f16"} or a list of rule strings.
fn rules_of(py: Python<'_>, what: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<DtypeRules> {
    let mut rules = DtypeRules::default();
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(rules);
    };
    let mut add = |rule: String| -> PyResult<()> {
        rules.add(&rule).map(|_| ()).map_err(|e| {
            raise(
                py,
                "ConvertError",
                format!("{what}: {}", errors::message(&e)),
                None,
                None,
                None,
            )
        })
    };
    if value.is_instance_of::<PyString>() {
        add(dtype_text(value)?)?;
    } else if let Ok(map) = value.cast::<PyMapping>() {
        for item in map.items()?.iter() {
            let (name, dt): (String, Bound<'_, PyAny>) = item.extract()?;
            add(format!("{name}={}", dtype_text(&dt)?))?;
        }
    } else if let Ok(iter) = value.try_iter() {
        for rule in iter {
            add(dtype_text(&rule?)?)?;
        }
    } else {
        add(dtype_text(value)?)?;
    }
    Ok(rules)
}

/// Converts .npy, .npz, .safetensors files and folders or globs of .npy shards into one .mmt store,
/// exactly as `mmt convert` does, and returns a summary dict (`path`, `tensors`, `input_bytes`,
/// `file_len`).
///
/// `inputs`: a path, or a list of them; a str is read like the CLI's INPUT (`PATH`, `'GLOB'`,
/// `NAME=PATH`); a dict maps tensor names to paths. `dtype`: the output dtype of every
/// floating-point tensor ("bf16", np.float16, ...), or per tensor as {"w": "f16"} or ["w=f16"].
/// `input_dtype`: the real dtype of raw void (ml_dtypes) .npy data, "bf16" or {"emb": "bf16"}.
/// `alignment`: of every tensor, a power of two from 64 to 2**30. `block_size`: checksum block
/// size (default 1 MiB). `metadata`: extra str -> str entries.
///
/// The GIL is released while it runs; Ctrl-C cancels it (KeyboardInterrupt). The output appears only
/// when complete (temp file, fsync, rename); on error or cancellation nothing is left under its name.
///
/// Raises StoreNotFoundError, InvalidFileError (a damaged or unsupported input, naming the file,
/// member and tensor), UnsupportedDtypeError (void data without input_dtype), ConvertError (bad
/// arguments, name collisions, impossible casts), MmtOSError.
#[pyfunction]
#[pyo3(signature = (inputs, output, dtype=None, input_dtype=None, alignment=4096, metadata=None, *, block_size=None))]
#[allow(clippy::too_many_arguments)]
fn convert<'py>(
    py: Python<'py>,
    inputs: &Bound<'py, PyAny>,
    output: PathBuf,
    dtype: Option<&Bound<'py, PyAny>>,
    input_dtype: Option<&Bound<'py, PyAny>>,
    alignment: u64,
    metadata: Option<BTreeMap<String, String>>,
    block_size: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    let inputs = inputs_of(py, inputs)?;
    let mut options = ConvertOptions::default();
    options.dtype = rules_of(py, "dtype", dtype)?;
    options.input_dtype = rules_of(py, "input_dtype", input_dtype)?;
    options.alignment = alignment;
    if let Some(b) = block_size {
        options.block_size = b;
    }
    options.metadata = metadata.unwrap_or_default();
    let cancel = AtomicBool::new(false);
    let signals = Signals {
        cancel: &cancel,
        error: Mutex::new(None),
    };
    let result =
        py.detach(|| mmtensor_convert::convert(&inputs, &output, &options, &signals, &cancel));
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            if let Some(interrupt) = signals
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                return Err(interrupt);
            }
            return Err(convert_error(py, e));
        }
    };
    let d = PyDict::new(py);
    d.set_item("path", summary.path.display().to_string())?;
    d.set_item("tensors", summary.tensors)?;
    d.set_item("input_bytes", summary.input_bytes)?;
    d.set_item("file_len", summary.file_len)?;
    Ok(d)
}

/// The native module; `mmtensor/__init__.py` re-exports it.
#[pymodule]
fn _mmtensor(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Store>()?;
    m.add_class::<Tensor>()?;
    m.add_class::<MappedBuffer>()?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
