//! Memory lent to foreign code: the one owner of every span of bytes that NumPy, PyTorch or a
//! DLPack consumer points into, after the manner of arrow's `Buffer::from_custom_allocation` (a
//! pointer and a length beside the owner that keeps them allocated).
//!
//! A [`Lent`] is made once, when the memory is lent, from the owner it keeps: a store's bytes
//! (read-only NumPy arrays), a private copy-on-write view of a tensor (`torch()` and DLPack), a
//! column of a loader batch in the loader's pool, or bytes a gather made (`RaggedTensor.take`)
//! (writable NumPy arrays). Its constructor takes the
//! address from the owner's own accessor (the `&mut` one where the consumer may write) and refuses
//! a shape and item size that do not span exactly those bytes ([`check_extent`]). Nothing changes it
//! afterwards, and the address leaves only from it: through NumPy's `__array_interface__` of the
//! Python owner objects below ([`MappedBuffer`], [`BatchBuffer`]) or a DLPack capsule's manager
//! context (`dlpack.rs`). The one lifetime rule: the `Lent`, and with it the memory, lives as long
//! as the object the consumer holds (the array's `.base`, the capsule's context) and no longer.
//!
//! Memory lent the other way, a torch buffer the loader gathers into, is the loader's
//! (`loader/torch.rs`): torch owns it, and the loader only borrows it until the batch is handed out.

use std::ptr::NonNull;

use mmtensor::loader::PooledBuffer;
use mmtensor::{interop, Dtype};
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyTuple};

use crate::errors::{load_error, shape_text};

/// What keeps lent memory allocated.
enum Memory {
    /// A view of a store's own bytes: read-only pages, lent only to read-only NumPy arrays.
    Store(mmtensor::OwnedTensor),
    /// A private copy-on-write view of a tensor (`OwnedTensor::private_bytes`): a consumer that
    /// writes changes only its own copy of the pages it writes. Held, never read.
    Private { _bytes: mmtensor::PrivateBytes },
    /// One column's buffer of a loader batch, back to the loader's pool when dropped. Held, never
    /// read.
    Batch { _buf: PooledBuffer },
    /// Bytes Rust gathered and handed over whole (a ragged gather's values, offsets or padded
    /// batch). Held, never read.
    Heap { _bytes: Vec<u8> },
}

// What `Lent`'s `Send` and `Sync` rest on: its owner is both.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Memory>();
};

/// A span of memory lent to foreign code, and its owner. See the module docs.
pub(crate) struct Lent {
    memory: Memory,
    /// The first byte, taken from `memory` when it was lent: for a writable owner from its `&mut`
    /// access, so that the consumer's writes are the owner's own. The owner's bytes never move
    /// while it lives (a store's mapping or copy, a private mapping, a pool buffer's heap block).
    data: NonNull<u8>,
    len: usize,
    /// The consumer's shape, C order; `shape` of the item size given at construction spans
    /// exactly `len` bytes.
    shape: Vec<u64>,
}

// SAFETY: `data` points into memory that `memory` owns, and `memory` is `Send + Sync` (asserted
// above). Rust never reads or writes through `data`: it only hands the address to a consumer, so
// sharing or sending a `Lent` shares or sends nothing `memory` does not already allow.
unsafe impl Send for Lent {}
// SAFETY: as for `Send`.
unsafe impl Sync for Lent {}

impl Lent {
    /// `span` of `memory`, as `shape` of `itemsize`-byte elements for the consumer, once
    /// [`check_extent`] has found that they span exactly `span`. `what` names the tensor or
    /// column in the error.
    fn new(
        memory: Memory,
        span: NonNull<[u8]>,
        shape: Vec<u64>,
        itemsize: u64,
        what: Named<'_>,
    ) -> PyResult<Lent> {
        check_extent(what, &shape, itemsize, span.len())?;
        Ok(Lent {
            memory,
            data: span.cast(),
            len: span.len(),
            shape,
        })
    }

    /// The tensor's bytes, checked for its dtype, read-only, in the tensor's shape.
    fn typed(checked: TypedBytes<'_>, itemsize: u64) -> PyResult<Lent> {
        let tensor = checked.tensor;
        Lent::new(
            Memory::Store(tensor.clone()),
            NonNull::from(checked.bytes),
            tensor.shape().to_vec(),
            itemsize,
            Named::Tensor(tensor.name()),
        )
    }

    /// The tensor's raw bits, unchecked, read-only, as `shape` of `itemsize`-byte elements.
    fn raw(
        py: Python<'_>,
        tensor: &mmtensor::OwnedTensor,
        shape: Vec<u64>,
        itemsize: u64,
    ) -> PyResult<Lent> {
        let bytes = tensor.bytes().map_err(|e| load_error(py, e))?;
        Lent::new(
            Memory::Store(tensor.clone()),
            NonNull::from(bytes),
            shape,
            itemsize,
            Named::Tensor(tensor.name()),
        )
    }

    /// A private copy-on-write view of the checked tensor (`OwnedTensor::private_bytes`), never
    /// the store's own read-only mapping: for consumers that may write (PyTorch has no read-only
    /// tensors and ignores DLPack's read-only flag, so an in-place op on a view of the store's
    /// mapping would kill the process). A write copies only the pages it touches, and reaches
    /// neither the file, nor the store's other views, nor other processes. (For a store opened
    /// with `copy=True` the view is a copy.)
    pub(crate) fn private(
        py: Python<'_>,
        checked: TypedBytes<'_>,
        itemsize: u64,
    ) -> PyResult<Lent> {
        let tensor = checked.tensor;
        let mut private = tensor.private_bytes().map_err(|e| load_error(py, e))?;
        // The private view holds the same bytes as the checked ones (the same range of the same
        // file).
        if private.len() != checked.bytes.len() {
            return Err(PyBufferError::new_err(format!(
                "tensor `{}`: the private view is not this view's length (an mmtensor bug: please \
                 report it)",
                tensor.name()
            )));
        }
        let span = NonNull::from(private.as_mut_slice());
        Lent::new(
            Memory::Private { _bytes: private },
            span,
            tensor.shape().to_vec(),
            itemsize,
            Named::Tensor(tensor.name()),
        )
    }

    /// The first `len` bytes of a batch's column buffer, writable, as `shape` of `itemsize`-byte
    /// elements.
    fn batch(
        mut buf: PooledBuffer,
        len: usize,
        shape: Vec<u64>,
        itemsize: u64,
        column: &str,
    ) -> PyResult<Lent> {
        let too_long = || {
            PyBufferError::new_err(format!(
                "column `{column}`: its batch holds {len} bytes, more than its buffer (an mmtensor \
                 bug: please report it)"
            ))
        };
        let span = NonNull::from(buf.bytes_mut().get_mut(..len).ok_or_else(too_long)?);
        Lent::new(
            Memory::Batch { _buf: buf },
            span,
            shape,
            itemsize,
            Named::Column(column),
        )
    }

    /// `bytes`, writable, as `shape` of `itemsize`-byte elements.
    fn heap(mut bytes: Vec<u8>, shape: Vec<u64>, itemsize: u64, column: &str) -> PyResult<Lent> {
        // A Vec's heap block does not move when the Vec is moved into `Memory`.
        let span = NonNull::from(bytes.as_mut_slice());
        Lent::new(
            Memory::Heap { _bytes: bytes },
            span,
            shape,
            itemsize,
            Named::Column(column),
        )
    }

    /// Whether the consumer must not write: a store's own bytes.
    fn read_only(&self) -> bool {
        matches!(self.memory, Memory::Store(_))
    }

    /// The first byte, for a consumer that may write; `None` for a store's own bytes, which are
    /// never lent to one.
    pub(crate) fn writable_data(&self) -> Option<NonNull<u8>> {
        (!self.read_only()).then_some(self.data)
    }

    /// The consumer's shape.
    pub(crate) fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// NumPy's array interface (version 3) of the span: C order, typed `typestr`, read-only for a
    /// store's bytes. NumPy keeps the object it asked (the owner holding this `Lent`) as the
    /// array's base.
    fn array_interface<'py>(
        &self,
        py: Python<'py>,
        typestr: &'static str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", typestr)?;
        // The address goes to NumPy as an int, as the protocol wants.
        d.set_item("data", (self.data.as_ptr() as usize, self.read_only()))?;
        d.set_item("strides", py.None())?;
        Ok(d)
    }
}

/// What lent bytes are, for an error message.
#[derive(Clone, Copy)]
enum Named<'a> {
    Tensor(&'a str),
    Column(&'a str),
}

impl std::fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Named::Tensor(name) => write!(f, "tensor `{name}`"),
            Named::Column(name) => write!(f, "column `{name}`"),
        }
    }
}

/// Refuses to hand a foreign array `len` bytes as `shape` of `itemsize`-byte elements unless that
/// is exactly their length (checked arithmetic): the consumer reads `prod(shape) * itemsize` bytes
/// from the pointer. The loader's views and batches always agree; this holds the boundary on its
/// own (defence in depth) so that no mistake elsewhere becomes an out-of-bounds read or write in
/// NumPy, PyTorch or JAX.
fn check_extent(what: Named<'_>, shape: &[u64], itemsize: u64, len: usize) -> PyResult<()> {
    match interop::byte_extent(shape, itemsize) {
        Some(n) if usize::try_from(n).is_ok_and(|n| n == len) => Ok(()),
        extent => Err(PyBufferError::new_err(format!(
            "{what}: shape {} of {itemsize}-byte elements spans {} bytes, but its view has {len} \
             (an mmtensor bug: please report it)",
            shape_text(shape),
            extent.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string()),
        ))),
    }
}

/// A tensor whose bytes were checked for its dtype (a BOOL tensor's bytes are all 0 or 1): what
/// every typed export (a NumPy array in the tensor's own dtype, a torch tensor, a DLPack capsule)
/// is made from. Only [`TypedBytes::of`] makes one (the fields are private to this module), so no
/// typed export can skip the check; only `raw()` lends bytes without one.
#[derive(Clone, Copy)]
pub(crate) struct TypedBytes<'a> {
    tensor: &'a mmtensor::OwnedTensor,
    bytes: &'a [u8],
}

impl<'a> TypedBytes<'a> {
    /// The bytes of `tensor`, checked: a BOOL tensor is read once, through the loader's
    /// `as_slice::<bool>`, and a byte other than 0 or 1 is a CorruptedFileError naming the tensor
    /// and the byte (NumPy, PyTorch and DLPack consumers assume a bool byte is 0 or 1; torch
    /// kernels have undefined behaviour otherwise). Errors for data that has no view (big-endian or
    /// Fortran-order `.npy` files).
    pub(crate) fn of(py: Python<'_>, tensor: &'a mmtensor::OwnedTensor) -> PyResult<Self> {
        let bytes = tensor.bytes().map_err(|e| load_error(py, e))?;
        if tensor.dtype() == Dtype::Bool {
            tensor.as_slice::<bool>().map_err(|e| load_error(py, e))?;
        }
        Ok(TypedBytes { tensor, bytes })
    }

    /// The checked bytes.
    pub(crate) fn get(self) -> &'a [u8] {
        self.bytes
    }
}

/// `numpy.asarray`, looked up once.
static NUMPY_ASARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `numpy.asarray(owner)`: an array over the memory `owner` lends, with `owner` as its base.
fn asarray<'py>(owner: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = owner.py();
    let asarray = NUMPY_ASARRAY.get_or_try_init(py, || {
        py.import("numpy")?.getattr("asarray").map(Bound::unbind)
    })?;
    asarray.bind(py).call1((owner,))
}

/// The owner of a NumPy array's memory: a read-only span of a store's bytes.
///
/// Every array from mmtensor has one at the end of its `.base` chain. It holds an owned tensor
/// handle (and with it a reference to the store), so the bytes stay alive while any array made
/// from it lives, even after `Store.close()` or after the `Store` object is
/// garbage-collected. It exposes the span through NumPy's `__array_interface__` (read-only), which
/// is how the arrays are made without a copy.
#[pyclass(frozen, module = "mmtensor", name = "MappedBuffer")]
pub(crate) struct MappedBuffer {
    lent: Lent,
    typestr: &'static str,
}

impl MappedBuffer {
    /// A read-only NumPy array of the checked tensor in its own dtype: `typestr` of
    /// `itemsize`-byte elements, the tensor's shape.
    pub(crate) fn typed_array<'py>(
        py: Python<'py>,
        checked: TypedBytes<'_>,
        typestr: &'static str,
        itemsize: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        MappedBuffer::array(py, Lent::typed(checked, itemsize)?, typestr)
    }

    /// A read-only NumPy array of the tensor's raw bits, unchecked: `shape` of `typestr`, whose
    /// elements are `itemsize` bytes.
    pub(crate) fn raw_array<'py>(
        py: Python<'py>,
        tensor: &mmtensor::OwnedTensor,
        shape: Vec<u64>,
        typestr: &'static str,
        itemsize: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        MappedBuffer::array(py, Lent::raw(py, tensor, shape, itemsize)?, typestr)
    }

    fn array<'py>(
        py: Python<'py>,
        lent: Lent,
        typestr: &'static str,
    ) -> PyResult<Bound<'py, PyAny>> {
        asarray(Bound::new(py, MappedBuffer { lent, typestr })?.into_any())
    }

    /// The tensor view whose bytes these are: always one, since both constructors lend a
    /// store's bytes.
    fn tensor(&self) -> Option<&mmtensor::OwnedTensor> {
        match &self.lent.memory {
            Memory::Store(tensor) => Some(tensor),
            Memory::Private { .. } | Memory::Batch { .. } | Memory::Heap { .. } => None,
        }
    }
}

#[pymethods]
impl MappedBuffer {
    /// NumPy's array interface (version 3): shape, type string and a read-only data pointer.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.lent.array_interface(py, self.typestr)
    }

    /// The number of bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.lent.len
    }

    /// Whether the bytes are a memory mapping (False for a store opened with `copy=True`).
    #[getter]
    fn mapped(&self) -> bool {
        self.tensor().is_some_and(|t| t.store().is_mapped())
    }

    fn __repr__(&self) -> String {
        let Some(tensor) = self.tensor() else {
            return format!("<mmtensor.MappedBuffer: {} bytes>", self.lent.len);
        };
        let store = tensor.store();
        format!(
            "<mmtensor.MappedBuffer: {} bytes of tensor `{}` in {}{}>",
            self.lent.len,
            tensor.name(),
            store.path().display(),
            if store.is_mapped() {
                " (mapped)"
            } else {
                " (copy)"
            }
        )
    }
}

/// The owner of one column of a batch in the loader's own buffers, or of the bytes a ragged
/// gather made: the base of the writable NumPy array (and the torch tensor made from it). When the
/// last array over it is gone, a loader buffer goes back to the loader for reuse (a gather's bytes
/// are freed); Rust never reads or writes it while it is here.
#[pyclass(frozen, module = "mmtensor", name = "BatchBuffer")]
pub(crate) struct BatchBuffer {
    lent: Lent,
    typestr: &'static str,
}

impl BatchBuffer {
    /// A writable NumPy array over the first `len` bytes of `buf`, the batch's column `column`:
    /// `shape` of `typestr`, whose elements are `itemsize` bytes.
    pub(crate) fn array<'py>(
        py: Python<'py>,
        buf: PooledBuffer,
        len: usize,
        shape: Vec<u64>,
        typestr: &'static str,
        itemsize: u64,
        column: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let lent = Lent::batch(buf, len, shape, itemsize, column)?;
        asarray(Bound::new(py, BatchBuffer { lent, typestr })?.into_any())
    }

    /// A writable NumPy array over `bytes`, made for column `column`: `shape` of `typestr`, whose
    /// elements are `itemsize` bytes.
    fn heap_array<'py>(
        py: Python<'py>,
        bytes: Vec<u8>,
        shape: Vec<u64>,
        typestr: &'static str,
        itemsize: u64,
        column: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let lent = Lent::heap(bytes, shape, itemsize, column)?;
        asarray(Bound::new(py, BatchBuffer { lent, typestr })?.into_any())
    }
}

/// Writable memory to hand out as an array: a loader batch's column (the first `len` bytes of a
/// pool buffer), or bytes a gather made.
pub(crate) enum Writable {
    Pool { buf: PooledBuffer, len: usize },
    Heap(Vec<u8>),
}

/// `memory` as a writable NumPy array of `dtype` and `shape` (bf16 and fp8 as ml_dtypes types), or,
/// with `torch` (the module), a torch tensor made from it without a copy. `column` names it in
/// errors; `no_ml_dtypes` is the error when NumPy needs ml_dtypes for `dtype` and it is missing.
pub(crate) fn writable_typed<'py>(
    py: Python<'py>,
    memory: Writable,
    shape: Vec<u64>,
    dtype: Dtype,
    torch: Option<&Bound<'py, PyModule>>,
    column: &str,
    no_ml_dtypes: impl FnOnce() -> PyErr,
) -> PyResult<Bound<'py, PyAny>> {
    let to_torch = torch.and_then(|_| interop::torch(dtype));
    let numpy = interop::numpy(dtype).ok_or_else(|| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "dtype {dtype} has no NumPy type in this binding"
        ))
    })?;
    // Types NumPy lacks (bf16, fp8: `ml_dtypes` types) and those torch must view go over to
    // torch as their bits, and torch views them as the column's type.
    let torch_view = to_torch.is_some_and(|t| t.needs_view || numpy.ml_dtypes.is_some());
    let typestr = if torch_view {
        interop::numpy_raw(dtype).0
    } else {
        numpy.typestr
    };
    let itemsize = dtype.size() as u64;
    let array = match memory {
        Writable::Pool { buf, len } => {
            BatchBuffer::array(py, buf, len, shape, typestr, itemsize, column)?
        }
        Writable::Heap(bytes) => {
            BatchBuffer::heap_array(py, bytes, shape, typestr, itemsize, column)?
        }
    };
    match (torch, to_torch) {
        (Some(torch), Some(to)) => {
            let t = torch.getattr("from_numpy")?.call1((array,))?;
            if torch_view {
                t.call_method1("view", (torch.getattr(to.name)?,))
            } else {
                Ok(t)
            }
        }
        (Some(_), None) => Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "column `{column}` has dtype {dtype}, which has no torch type"
        ))),
        (None, _) => match numpy.ml_dtypes {
            Some(ml) => match py.import("ml_dtypes") {
                Ok(m) => array.call_method1("view", (m.getattr(ml)?,)),
                Err(_) => Err(no_ml_dtypes()),
            },
            None => Ok(array),
        },
    }
}

#[pymethods]
impl BatchBuffer {
    /// NumPy's array interface (version 3): a writable C-contiguous array over the column.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.lent.array_interface(py, self.typestr)
    }

    /// The number of bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.lent.len
    }

    fn __repr__(&self) -> String {
        format!("<mmtensor.BatchBuffer: {} bytes>", self.lent.len)
    }
}
