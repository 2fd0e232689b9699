//! Arrays from Python read by Rust without the GIL: anything that writes user arrays into a store
//! (`save`, and the streaming writers after it) takes its input here.
//!
//! [`ArrayBytes::of`] accepts what `mmtensor.save` documents (a NumPy array of any byte order and
//! memory order, an ml_dtypes array, a torch CPU tensor, an object with `__array__` or
//! `__dlpack__`), makes it a C-contiguous little-endian NumPy array (a copy only when it is not one
//! already) and borrows its bytes through [`ArrayBytes::borrow`], the one place that turns a NumPy
//! array into a `&[u8]`.
//!
//! Like the gather's `out` (`take.rs`), every fact the borrow relies on (data address, dtype, item
//! size, shape, strides, byte order) is read from a plain `numpy.ndarray` view of the array
//! ([`plain_view`]), never from the caller's object: an ndarray subclass can override any Python
//! attribute, and an object that is not an array can claim `__class__ = np.ndarray`.

use mmtensor::{interop, Dtype};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use crate::args;
use crate::errors::{raise, shape_text};

/// `numpy.ndarray`, looked up and checked once.
static NUMPY_NDARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `numpy.ndarray`, checked to be NumPy's own type: a static (C) type named `ndarray` of module
/// `numpy`. A program that replaced the module attribute (`numpy.ndarray = Fake`) before the
/// first call would otherwise choose the class whose `view` the borrow trusts.
fn numpy_ndarray(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    let ndarray = NUMPY_NDARRAY.get_or_try_init(py, || {
        let ndarray = py.import("numpy")?.getattr("ndarray")?;
        let ty = ndarray.cast::<PyType>().map_err(|_| {
            PyTypeError::new_err("numpy.ndarray is not a type: NumPy's own was replaced")
        })?;
        // SAFETY: `ty` is a live type object (a borrowed `Bound`); PyType_GetFlags only reads it.
        let flags = unsafe { pyo3::ffi::PyType_GetFlags(ty.as_type_ptr()) };
        let own = flags & pyo3::ffi::Py_TPFLAGS_HEAPTYPE == 0
            && ty.name()?.to_cow()? == "ndarray"
            && ty.module()?.to_cow()? == "numpy";
        if !own {
            return Err(PyTypeError::new_err(
                "numpy.ndarray is not NumPy's own array type (it was replaced): mmtensor reads and \
                 writes only NumPy's own arrays",
            ));
        }
        Ok(ndarray.unbind())
    })?;
    Ok(ndarray.bind(py))
}

/// A plain `numpy.ndarray` over the memory of `value`, or `None` when `value`'s real type
/// (`Py_TYPE`, not `__class__`) is not `numpy.ndarray` or a subclass of it.
///
/// The view is made by calling ndarray's own `view` descriptor with `type=np.ndarray`: NumPy's C
/// code checks the object's real type, builds the view from the array's C fields (data pointer,
/// shape, strides, dtype, flags) and runs no subclass code (`__array_finalize__` is not called
/// for a plain ndarray), and an exact `numpy.ndarray` has no Python-level attributes to override.
/// The view holds a reference to `value` (its base), and so to the memory. (The buffer protocol
/// would be the other such source, but its C API is not in the stable ABI this module is built
/// for before Python 3.11, and NumPy exports no buffer for ml_dtypes types.)
pub(crate) fn plain_view<'py>(value: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = value.py();
    let ndarray = numpy_ndarray(py)?;
    if !value.get_type().is_subclass(ndarray)? {
        return Ok(None);
    }
    let kwargs = PyDict::new(py);
    kwargs.set_item("type", ndarray)?;
    let plain = ndarray.getattr("view")?.call((value,), Some(&kwargs))?;
    if !plain.get_type().is(ndarray) {
        return Err(PyTypeError::new_err(format!(
            "a {} could not be viewed as a plain NumPy array",
            value.get_type().name()?
        )));
    }
    Ok(Some(plain))
}

/// The read-only bytes of a C-contiguous little-endian NumPy array, borrowed for Rust to read
/// (without the GIL), with the dtype and shape they hold.
///
/// Made only by [`ArrayBytes::borrow`], which reads every field below from a plain
/// `numpy.ndarray` view and checks them against each other, and holds that view for as long as
/// the borrow lasts: [`ArrayBytes::bytes`] cannot outlive it.
pub(crate) struct ArrayBytes<'py> {
    /// The plain view whose data `address..address + len` is: its reference (through its base)
    /// keeps the memory allocated.
    _plain: Bound<'py, PyAny>,
    dtype: Dtype,
    shape: Vec<u64>,
    address: usize,
    len: usize,
}

impl<'py> ArrayBytes<'py> {
    /// The bytes of `value`, any array `mmtensor.save` accepts, as the store holds them: C order,
    /// little-endian. An array that already is so is borrowed as it is; any other (big-endian,
    /// Fortran order, strided, a torch view that is not contiguous) is first copied into one by
    /// NumPy. `what` starts every error message ("save: tensor `w`").
    ///
    /// - A NumPy array (or ndarray subclass, ml_dtypes arrays included) is used as it is.
    /// - A torch tensor must be a dense tensor in host memory (a CUDA tensor: TypeError saying to
    ///   call `.cpu()`); its dtype is torch's (bfloat16 and the fp8 types included, read as bits,
    ///   so ml_dtypes is not needed); autograd, conjugate and negative bits are resolved first.
    /// - Anything else with `__array__` goes through `numpy.asarray`, then anything with
    ///   `__dlpack__` through `numpy.from_dlpack`. An exception they raise is raised as it is,
    ///   with a note naming the tensor (Python 3.11+).
    ///
    /// # Errors
    /// TypeError for an object none of these, an object array, a torch tensor that is not in
    /// host memory or not dense; UnsupportedDtypeError for a dtype a store cannot hold.
    pub(crate) fn of(what: &str, value: &Bound<'py, PyAny>) -> PyResult<ArrayBytes<'py>> {
        let (array, dtype) = as_ndarray(what, value)?;
        let plain = plain_view(&array)?.ok_or_else(|| {
            PyTypeError::new_err(format!(
                "{what}: its array conversion gave a {}, not a NumPy array",
                array
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        // The dtype first: an array of a dtype no store holds is refused before it is copied.
        let dtype = match dtype {
            Some(d) => d,
            None => dtype_of(what, &plain)?,
        };
        let plain = c_order_little_endian(&plain)?;
        ArrayBytes::borrow(what, &plain, Some(dtype))
    }

    /// Borrows the bytes of `array`, a NumPy array (or ndarray subclass) that must be C-contiguous
    /// and little-endian (native, on a little-endian machine); nothing is copied. `dtype` is what
    /// its bits are (bfloat16 bits in an int16 array, say: the item sizes must agree), or `None`
    /// for the array's own dtype (`numpy.dtype.name` read as the binding reads every dtype name).
    ///
    /// # Errors
    /// TypeError when `array` is not a NumPy array, holds Python objects, or its item size is not
    /// `dtype`'s; ValueError when it is not C-contiguous or not little-endian;
    /// UnsupportedDtypeError for a dtype a store cannot hold.
    pub(crate) fn borrow(
        what: &str,
        array: &Bound<'py, PyAny>,
        dtype: Option<Dtype>,
    ) -> PyResult<ArrayBytes<'py>> {
        let plain = plain_view(array)?.ok_or_else(|| {
            PyTypeError::new_err(format!(
                "{what}: a NumPy array is needed, not {}",
                array
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        // Every attribute from here on is the exact ndarray's (or its descriptor's): C getters.
        let descr = plain.getattr("dtype")?;
        refuse_objects(what, &descr)?;
        let dtype = match dtype {
            Some(d) => d,
            None => dtype_of(what, &plain)?,
        };
        let itemsize: usize = descr.getattr("itemsize")?.extract()?;
        if itemsize != dtype.size() {
            return Err(PyTypeError::new_err(format!(
                "{what}: its NumPy dtype {} has {itemsize}-byte elements, but {dtype} has {}",
                descr.str()?,
                dtype.size()
            )));
        }
        if !is_little_endian(&descr)? {
            return Err(PyValueError::new_err(format!(
                "{what}: the array is big-endian ({}): make a little-endian one with \
                 `a.astype(a.dtype.newbyteorder(\"<\"))`",
                descr.str()?
            )));
        }
        let shape: Vec<u64> = plain.getattr("shape")?.extract()?;
        let strides: Vec<i64> = plain.getattr("strides")?.extract()?;
        let len = interop::byte_extent(&shape, itemsize as u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "{what}: shape {} of {itemsize}-byte elements does not fit in memory",
                    shape_text(&shape)
                ))
            })?;
        if len > 0 && !c_strides(&shape, &strides, itemsize as u64) {
            return Err(PyValueError::new_err(format!(
                "{what}: the array is not C-contiguous (shape {}, strides {strides:?}): make one \
                 that is with `np.ascontiguousarray(a)`",
                shape_text(&shape)
            )));
        }
        let nbytes: usize = plain.getattr("nbytes")?.extract()?;
        if nbytes != len {
            return Err(PyValueError::new_err(format!(
                "{what}: the array holds {nbytes} bytes, but its shape {} of {itemsize}-byte \
                 elements spans {len}",
                shape_text(&shape)
            )));
        }
        let interface = plain.getattr("__array_interface__")?;
        let (address, _read_only): (usize, bool) = interface.get_item("data")?.extract()?;
        if len > 0 && address == 0 {
            return Err(PyValueError::new_err(format!(
                "{what}: the array has no data"
            )));
        }
        Ok(ArrayBytes {
            _plain: plain,
            dtype,
            shape,
            address,
            len,
        })
    }

    /// The dtype the bytes are in.
    pub(crate) fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The shape, C order.
    pub(crate) fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The bytes: `dtype().size()` times the product of `shape()`, C order, little-endian.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            // A zero-size array's address may be anything, even null.
            return &[];
        }
        // SAFETY: `address` and `len` were read by `borrow` from the plain `numpy.ndarray` view
        // that `self._plain` holds (its exact type, so no Python-level attribute of a subclass
        // answered) and checked there: its own C fields say that its elements are C-contiguous
        // (strides checked, not only the flag), little-endian, and span exactly `len` bytes
        // (`nbytes`, and the product of its shape and item size) from the non-null `address`.
        // The returned slice borrows `self`, so `_plain` lives while it does, and with it a
        // reference to the memory's owner (the view's base chain: the caller's array, a copy made
        // by `of`, a torch tensor whose `.numpy()` it is), so the memory stays allocated, as NumPy
        // keeps it for any of its own operations that release the GIL: NumPy refuses to resize or
        // free the data of an array that others reference, and an exporter under it (a
        // bytearray, an mmap) refuses to resize or close while NumPy holds its buffer. (What
        // NumPy itself cannot prevent, `resize(refcheck=False)` from another thread, a torch
        // storage resized under its `.numpy()`, a mapped file truncated by another process,
        // breaks every NumPy operation alike.) Nothing here writes through the pointer. Other
        // Python threads writing the same array while the GIL is released race with the read,
        // as they do with any NumPy operation that releases the GIL; what is saved of those
        // bytes is then unspecified.
        unsafe { std::slice::from_raw_parts(self.address as *const u8, self.len) }
    }
}

/// Whether C order with `itemsize`-byte elements puts the elements of `shape` exactly where
/// `strides` (in bytes) say: each axis longer than 1 steps over one element of the axes after
/// it. (An axis of length 1 may have any stride, as NumPy's contiguity flags allow: it is never
/// stepped over.) Only called for arrays with at least one element.
fn c_strides(shape: &[u64], strides: &[i64], itemsize: u64) -> bool {
    if shape.len() != strides.len() {
        return false;
    }
    let mut step = Some(itemsize);
    for (&n, &s) in shape.iter().zip(strides).rev() {
        let Some(want) = step else {
            return false;
        };
        if n > 1 && u64::try_from(s).ok() != Some(want) {
            return false;
        }
        step = want.checked_mul(n);
    }
    true
}

/// Refuses an array that holds Python objects: its bytes are pointers, not numbers.
fn refuse_objects(what: &str, descr: &Bound<'_, PyAny>) -> PyResult<()> {
    if descr.getattr("hasobject")?.extract::<bool>()? {
        return Err(PyTypeError::new_err(format!(
            "{what}: the array holds Python objects (dtype {}), not numbers: a store holds only \
             numbers (convert it with `.astype(...)`)",
            descr.str()?
        )));
    }
    Ok(())
}

/// Whether an array of descriptor `descr` is little-endian in memory.
fn is_little_endian(descr: &Bound<'_, PyAny>) -> PyResult<bool> {
    let order: String = descr.getattr("byteorder")?.extract()?;
    Ok(matches!(order.as_str(), "<" | "|") || (order == "=" && cfg!(target_endian = "little")))
}

/// The dtype of a plain NumPy array: its descriptor's `name` ("float32", "bfloat16",
/// "float8_e4m3fn"; the byte order is not part of it) read by [`dtype_named`].
fn dtype_of(what: &str, plain: &Bound<'_, PyAny>) -> PyResult<Dtype> {
    let descr = plain.getattr("dtype")?;
    refuse_objects(what, &descr)?;
    let name: String = descr.getattr("name")?.extract()?;
    dtype_named(plain.py(), what, &name)
}

/// The dtype NumPy or torch call `name`, as `Dtype::parse_loose` reads every dtype name the
/// binding is given, or an UnsupportedDtypeError listing the dtypes a store holds.
fn dtype_named(py: Python<'_>, what: &str, name: &str) -> PyResult<Dtype> {
    Dtype::parse_loose(name).ok_or_else(|| {
        let known: Vec<&str> = Dtype::ALL.iter().map(|d| d.numpy_name()).collect();
        raise(
            py,
            "UnsupportedDtypeError",
            format!(
                "{what} has dtype {name}, which a store cannot hold: cast it to one of {}",
                known.join(", ")
            ),
            None,
            None,
            None,
        )
    })
}

/// `plain` (a plain ndarray) if it is C-contiguous and little-endian, else a C-order little-endian
/// copy made by NumPy (`astype` to the little-endian descriptor, or `copy(order="C")`).
fn c_order_little_endian<'py>(plain: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = plain.py();
    let descr = plain.getattr("dtype")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("order", "C")?;
    if !is_little_endian(&descr)? {
        let little = descr.call_method1("newbyteorder", ("<",))?;
        return plain.call_method("astype", (little,), Some(&kwargs));
    }
    let contiguous: bool = plain.getattr("flags")?.getattr("c_contiguous")?.extract()?;
    if contiguous {
        Ok(plain.clone())
    } else {
        plain.call_method("copy", (), Some(&kwargs))
    }
}

/// Whether `value` is a `torch.Tensor` (or subclass: `nn.Parameter`). Torch is not imported for
/// it: a tensor exists only once torch is.
pub(crate) fn is_torch_tensor(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = value.py();
    let torch = py
        .import("sys")?
        .getattr("modules")?
        .call_method1("get", ("torch",))?;
    if torch.is_none() {
        return Ok(false);
    }
    match torch.getattr("Tensor") {
        Ok(class) => value.is_instance(&class),
        Err(_) => Ok(false),
    }
}

/// `value` as something `numpy.ndarray` is the real type of, and the dtype its bits are when
/// that is not the array's own (a torch bfloat16 or fp8 tensor, read as integers of its size).
fn as_ndarray<'py>(
    what: &str,
    value: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Option<Dtype>)> {
    let py = value.py();
    if value.get_type().is_subclass(numpy_ndarray(py)?)? {
        return Ok((value.clone(), None));
    }
    let note = |e: PyErr| {
        // Python 3.11+: the exception is the caller's own, and says which tensor it was about.
        let _ = e
            .value(py)
            .call_method1("add_note", (format!("(raised for {what})"),));
        e
    };
    if is_torch_tensor(value)? {
        return from_torch(what, value)
            .map(|(a, d)| (a, Some(d)))
            .map_err(note);
    }
    let numpy = py.import("numpy")?;
    if value.hasattr("__array__")? {
        return Ok((
            numpy.getattr("asarray")?.call1((value,)).map_err(note)?,
            None,
        ));
    }
    if value.hasattr("__dlpack__")? {
        return Ok((
            numpy
                .getattr("from_dlpack")?
                .call1((value,))
                .map_err(note)?,
            None,
        ));
    }
    Err(PyTypeError::new_err(format!(
        "{what}: a NumPy array, a torch tensor or an object with __array__ or __dlpack__ is \
         needed, not {}",
        value.get_type().name()?
    )))
}

/// A torch tensor in host memory as a NumPy array over the same memory (`Tensor.numpy()`, a copy
/// only where torch must resolve a conjugate or negative bit), and its dtype: torch's, mapped as
/// every torch dtype the binding is given (`args::dtype_text`). bfloat16 and fp8, which NumPy has
/// no type for without ml_dtypes, are viewed as integers of their size first.
fn from_torch<'py>(what: &str, value: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, Dtype)> {
    let py = value.py();
    let device = value.getattr("device")?;
    let kind: String = device.getattr("type")?.extract()?;
    if kind == "meta" {
        return Err(PyTypeError::new_err(format!(
            "{what} is a torch tensor on the meta device, which has no data to save"
        )));
    }
    if kind != "cpu" {
        return Err(PyTypeError::new_err(format!(
            "{what} is a torch tensor on {}: mmtensor saves from host memory, so move it there \
             first with `.cpu()` (for a state dict: `{{k: v.cpu() for k, v in sd.items()}}`)",
            device.str()?
        )));
    }
    let layout = value.getattr("layout")?.str()?.to_cow()?.into_owned();
    if layout != "torch.strided" {
        return Err(PyTypeError::new_err(format!(
            "{what} is a torch tensor of layout {layout}: only dense tensors can be saved (call \
             `.to_dense()` first)"
        )));
    }
    let name = args::dtype_text(what, &value.getattr("dtype")?)?;
    let dtype = dtype_named(py, what, &name)?;
    let mut tensor = value
        .call_method0("detach")?
        .call_method0("resolve_conj")?
        .call_method0("resolve_neg")?;
    let lacks_numpy_type = interop::numpy(dtype).is_none_or(|n| n.ml_dtypes.is_some());
    if lacks_numpy_type {
        let bits = match dtype.size() {
            1 => "uint8",
            2 => "int16",
            4 => "int32",
            _ => "int64",
        };
        let torch = py.import("torch")?;
        tensor = tensor.call_method1("view", (torch.getattr(bits)?,))?;
    }
    Ok((tensor.call_method0("numpy")?, dtype))
}
