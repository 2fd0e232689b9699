//! The `Tensor` class: one tensor of a store, or a range of its rows, and every way to get its data
//! without copying (NumPy arrays, torch tensors, DLPack capsules), its row ranges and gathers,
//! and its pickling (as its store, name and rows). The dtype tables are `mmtensor::interop`'s; the
//! memory lent is owned by `exported.rs`.

use mmtensor::interop;
use pyo3::exceptions::{PyImportError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySlice, PyTuple};

use crate::args;
use crate::dlpack::{self, DataType};
use crate::errors::{load_error, raise, shape_text};
use crate::exported::{MappedBuffer, TypedBytes};
use crate::open::{reduce_tensor, Store};
use crate::take::{target_dtype, Gather};

/// `ml_dtypes.NAME`, or None when ml_dtypes is not installed.
fn ml_dtype<'py>(py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    match py.import("ml_dtypes") {
        Ok(m) => Ok(Some(m.getattr(name)?)),
        Err(e) if e.is_instance_of::<PyImportError>(py) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One tensor of a store, or a range of its rows: its name, dtype and shape, and the ways to get its
/// data without copying (`numpy()`, `torch()`, DLPack, `np.asarray`).
///
/// Making a `Tensor` reads no data. It keeps the store's bytes alive by itself, so it stays usable
/// after `Store.close()`.
#[pyclass(frozen, module = "mmtensor", name = "Tensor")]
pub(crate) struct Tensor {
    /// The loader's owned view: the store reference, the tensor and the row range.
    pub(crate) t: mmtensor::OwnedTensor,
}

impl Tensor {
    /// The whole tensor `name` of `store`.
    pub(crate) fn lookup(store: &mmtensor::Store, name: &str) -> Result<Tensor, mmtensor::Error> {
        Ok(Tensor {
            t: store.tensor_owned(name)?,
        })
    }

    fn path_text(&self) -> String {
        self.t.store().path().display().to_string()
    }

    /// The bytes for a typed export (a NumPy array in the tensor's own dtype, a torch tensor, a
    /// DLPack capsule), checked for the dtype by `TypedBytes::of`: every typed export takes its
    /// bytes from here, so none can skip the check. Only `raw()` takes its bytes unchecked.
    fn typed_bytes(&self, py: Python<'_>) -> PyResult<TypedBytes<'_>> {
        TypedBytes::of(py, &self.t)
    }

    fn unsupported(&self) -> PyErr {
        PyTypeError::new_err(format!(
            "{}: tensor `{}` has dtype {}, which this version of the binding does not know",
            self.path_text(),
            self.t.name(),
            self.t.dtype()
        ))
    }

    /// The array in its own dtype (ml_dtypes for BF16 and fp8), or an UnsupportedDtypeError.
    fn typed_array<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let numpy = interop::numpy(self.t.dtype()).ok_or_else(|| self.unsupported())?;
        // Fails here, not in NumPy's call, for data that has no view (a big-endian .npy array) or
        // that is not what the type says (a BOOL byte other than 0 or 1).
        let checked = self.typed_bytes(py)?;
        let size = self.t.dtype().size() as u64;
        let array = MappedBuffer::typed_array(py, checked, numpy.typestr, size)?;
        let Some(ml) = numpy.ml_dtypes else {
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
                    self.t.name(),
                    self.t.dtype(),
                    match self.t.dtype().size() {
                        2 => "uint16",
                        _ => "uint8",
                    }
                ),
                Some(self.t.store().path()),
                Some(self.t.name()),
                None,
            )),
        }
    }

    /// Refuses to hand `consumer` (PyTorch or a DLPack consumer) bytes at an address that is not a
    /// multiple of `align`, the alignment it assumes for this dtype (from `mmtensor::interop`).
    /// `.mmt` tensors are always aligned; safetensors tensors usually are. The advice is Python's:
    /// the loader's own `Error::Unaligned` text names Rust's `to_vec`.
    fn check_aligned(
        &self,
        py: Python<'_>,
        bytes: &[u8],
        align: usize,
        consumer: &'static str,
    ) -> PyResult<()> {
        if (bytes.as_ptr() as usize).is_multiple_of(align) {
            return Ok(());
        }
        Err(raise(
            py,
            "UnalignedError",
            format!(
                "{}: tensor `{}` ({}) starts at byte {}, which is not aligned to {align} bytes as \
                 {consumer} needs, so it has no zero-copy {consumer}: copy it \
                 (`torch.from_numpy(tensor.numpy().copy())`, `np.from_dlpack(tensor, copy=True)`; \
                 `tensor.numpy()` itself works unaligned), or run `mmtensor.convert` to make an \
                 aligned .mmt store",
                self.path_text(),
                self.t.name(),
                self.t.dtype(),
                self.t.byte_range().start
            ),
            Some(self.t.store().path()),
            Some(self.t.name()),
            None,
        ))
    }

    /// Row index `i` of `rows` as a position in `0..=rows`, Python's way: a negative index counts
    /// from the end (`-rows` is row 0). An index outside `-rows..=rows` is a RowRangeError, never
    /// clamped (defect 5 of issue 10: `rows(-100)` on 10 rows used to give all rows).
    fn row_position(&self, py: Python<'_>, i: i64, rows: u64) -> PyResult<u64> {
        let position = if i < 0 {
            rows.checked_sub(i.unsigned_abs())
        } else {
            Some(i.unsigned_abs())
        };
        match position {
            Some(p) if p <= rows => Ok(p),
            _ => Err(raise(
                py,
                "RowRangeError",
                format!(
                    "{}: tensor `{}`: row index {i} is out of range for {rows} rows (indices run \
                     from -{rows} to {rows}; negative ones count from the end)",
                    self.path_text(),
                    self.t.name()
                ),
                Some(self.t.store().path()),
                Some(self.t.name()),
                None,
            )),
        }
    }

    /// Rows `start..stop` of this tensor (positions already in `0..=rows`) as a new Tensor; the
    /// loader refuses a reversed range and 0-dimensional tensors with its own message.
    fn sub_rows(&self, py: Python<'_>, start: u64, stop: u64) -> PyResult<Tensor> {
        let t = self.t.rows(start..stop).map_err(|e| load_error(py, e))?;
        Ok(Tensor { t })
    }
}

#[pymethods]
impl Tensor {
    /// The tensor's name in its store.
    #[getter]
    fn name(&self) -> &str {
        self.t.name()
    }

    /// The dtype as the file names it: "F32", "BF16", "F8_E4M3", ...
    #[getter]
    fn dtype(&self) -> &'static str {
        self.t.dtype().name()
    }

    /// The NumPy (or ml_dtypes) name of the dtype: "float32", "bfloat16", "float8_e4m3fn", ...
    #[getter]
    fn numpy_dtype(&self) -> &'static str {
        self.t.dtype().numpy_name()
    }

    /// The shape (for a row range, axis 0 is the number of rows in it).
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.t.shape())
    }

    /// The number of axes.
    #[getter]
    fn ndim(&self) -> usize {
        self.t.shape().len()
    }

    /// The number of elements.
    #[getter]
    fn size(&self) -> u64 {
        // The loader's count: checked (it saturates, and cannot overflow for a validated view).
        self.t.numel()
    }

    /// The number of bytes.
    #[getter]
    fn nbytes(&self) -> u64 {
        let r = self.t.byte_range();
        r.end - r.start
    }

    /// The absolute byte range `(start, end)` of the data in the file.
    #[getter]
    fn byte_range(&self) -> (u64, u64) {
        let r = self.t.byte_range();
        (r.start, r.end)
    }

    /// The number of rows (the length of axis 0).
    fn __len__(&self) -> PyResult<usize> {
        match self.t.shape().first() {
            Some(&n) => usize::try_from(n).map_err(|_| PyValueError::new_err("too many rows")),
            None => Err(PyTypeError::new_err(format!(
                "len() of tensor `{}`, which is 0-dimensional",
                self.t.name()
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
    ///
    /// A BOOL tensor is read once to check that every byte is 0 or 1 (NumPy and PyTorch assume
    /// it); any other byte raises CorruptedFileError. This holds for every typed export (`numpy()`,
    /// `np.asarray`, indexing, `torch()`, DLPack); only `raw()` skips it.
    #[pyo3(signature = (dtype=None))]
    pub(crate) fn numpy<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let array = self.typed_array(py)?;
        if let Some(want) = dtype {
            let want = args::numpy_dtype(py)?.call1((want,))?;
            let have = array.getattr("dtype")?;
            if !have.eq(&want)? {
                return Err(raise(
                    py,
                    "DtypeMismatchError",
                    format!(
                        "{}: tensor `{}` holds {}, which cannot be viewed as `{}` (view it as `{}`)",
                        self.path_text(),
                        self.t.name(),
                        self.t.dtype(),
                        want.str()?,
                        have.str()?
                    ),
                    Some(self.t.store().path()),
                    Some(self.t.name()),
                    None,
                ));
            }
        }
        Ok(array)
    }

    /// The raw bits as a read-only unsigned-integer NumPy array of the element size (uint16 for
    /// BF16 and F16, uint8 for fp8 and BOOL, ...; C128 as uint64 with a trailing axis of 2). No copy,
    /// and no check of the values: a BOOL tensor's bytes come as they are in the file.
    pub(crate) fn raw<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (typestr, per_element) = interop::numpy_raw(self.t.dtype());
        let mut shape = self.t.shape().to_vec();
        if per_element > 1 {
            shape.push(per_element);
        }
        let itemsize = self.t.dtype().size() as u64 / per_element;
        MappedBuffer::raw_array(py, &self.t, shape, typestr, itemsize)
    }

    /// The data as a `torch.Tensor` over the file's bytes, in its own dtype (torch.bfloat16,
    /// torch.float8_e4m3fn, ...): no copy, no warning.
    ///
    /// PyTorch has no read-only tensors, so the tensor is copy-on-write, as with
    /// `torch.load(mmap=True)`: a private mapping of the tensor's bytes, which reads share with the
    /// page cache. An in-place op (`t[:10] -= 1`) copies only the pages it writes, into this
    /// tensor alone: the file, the store's NumPy views, other `torch()` tensors and other
    /// processes see the bytes as they are in the file. (For a store opened with `copy=True`, the
    /// tensor is a copy of the store's bytes.) The tensor keeps them alive for as long as it lives. A BOOL tensor is read once
    /// to check its bytes are 0 or 1 (CorruptedFileError otherwise), as for `numpy()`.
    pub(crate) fn torch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let torch = py.import("torch").map_err(|e| {
            if e.is_instance_of::<PyImportError>(py) {
                PyImportError::new_err(
                    "`.torch()` needs PyTorch (`pip install torch`); `.numpy()` needs only NumPy",
                )
            } else {
                e
            }
        })?;
        let to = interop::torch(self.t.dtype()).ok_or_else(|| self.unsupported())?;
        let bytes = self.typed_bytes(py)?;
        self.check_aligned(py, bytes.get(), to.align, "torch.Tensor")?;
        let capsule = dlpack::capsule(py, bytes, DataType::from(to.dlpack), dlpack::Kind::Legacy)?;
        let tensor = torch.getattr("from_dlpack")?.call1((capsule,))?;
        if to.needs_view {
            tensor.call_method1("view", (torch.getattr(to.name)?,))
        } else {
            Ok(tensor)
        }
    }

    /// The rows `start..stop` along axis 0 (relative to this tensor; `stop=None` means to the
    /// end), as a Tensor. No data is read.
    ///
    /// Strict, unlike slicing: a negative index counts from the end as in Python (`-n` is row 0
    /// of `n` rows), and any index outside `-n..=n` or a reversed range (after that) raises
    /// RowRangeError (an IndexError), as does a 0-dimensional tensor. `t[a:b]` clamps as NumPy does.
    #[pyo3(signature = (start, stop=None))]
    pub(crate) fn rows(&self, py: Python<'_>, start: i64, stop: Option<i64>) -> PyResult<Tensor> {
        let Some(&n) = self.t.shape().first() else {
            // 0-dimensional: the loader's Scalar error.
            return self.sub_rows(py, 0, 0);
        };
        let start = self.row_position(py, start, n)?;
        let stop = match stop {
            Some(stop) => self.row_position(py, stop, n)?,
            None => n,
        };
        self.sub_rows(py, start, stop)
    }

    /// The rows `indices` along axis 0 (relative to this tensor), gathered into a new writable
    /// NumPy array of shape `(len(indices),) + shape[1:]` in the tensor's dtype (ml_dtypes for BF16
    /// and fp8), or into `out`, which is then returned.
    ///
    /// What `t.numpy()[indices]` gives, without holding the GIL: the rows are sorted into file
    /// order, neighbours are copied in one piece, and the copies run on the loader's worker
    /// threads. `indices` is any 1-d integer array-like (NumPy int or uint array, list), in any
    /// order, with repeats; negative ones count from the end, as in NumPy. An index outside
    /// `-n..n` raises RowRangeError (an IndexError) naming it, before anything is written.
    ///
    /// `out`, to reuse one buffer from batch to batch, must be a C-contiguous, writeable NumPy
    /// array (or ndarray subclass; for a torch tensor pass `tensor.numpy()`) of exactly that shape
    /// (ValueError otherwise) and dtype (TypeError otherwise). These facts, and where the rows are
    /// written, are read from the array itself (a plain ndarray view of it), never from attributes
    /// a subclass may override. A BOOL row holding a byte other than 0 or 1 raises
    /// CorruptedFileError, after which `out`'s contents are unspecified.
    ///
    /// `dtype` (a name such as "int64", a NumPy or a torch dtype) casts the rows as they are
    /// copied, in the same pass: the array (and `out`, checked against it) then has that dtype,
    /// e.g. `tokens.take(idx, dtype="int64")` for uint16 token ids that `nn.Embedding` refuses.
    /// Only casts that cannot fail on any value are made: integer widening, integers into a
    /// float that holds them all (uint8 to float32), bool to numbers, float widening, and float
    /// narrowing (float32 to bfloat16, rounding to nearest even). Any other (int64 to int32, float
    /// to int) raises UnsupportedDtypeError naming the tensor and both dtypes, before anything is
    /// written; narrow such data once with `mmtensor.convert(..., dtype={name: dt})`, which checks
    /// every value.
    #[pyo3(signature = (indices, out=None, dtype=None))]
    pub(crate) fn take<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // A 0-dimensional tensor has no rows: the loader's Scalar error (a RowRangeError).
        self.t.row_bytes().map_err(|e| load_error(py, e))?;
        let to = target_dtype(self.t.name(), self.t.dtype(), dtype)?;
        let t = self.t.clone();
        let g = Gather {
            path: self.t.store().path(),
            name: self.t.name(),
            dtype: to,
            rows: self.t.shape()[0],
            row_shape: &self.t.shape()[1..],
        };
        g.take(py, indices, out, move |p, o| t.take_into_as(p, o, to))
    }

    /// `tensor[key]`, with exactly NumPy's indexing semantics along axis 0 (and beyond).
    ///
    /// A slice with step 1 (`t[a:b]`, `t[a:]`, `t[:-1]`) gives a Tensor of those rows: no data is
    /// read, and it can still give `.torch()`, `.prefetch()`, `.verify()`. Like NumPy (and unlike
    /// `rows()`), the bounds are clamped: `t[-100:5]` is `t[0:5]`, `t[8:2]` and `t[20:]` are empty.
    /// Every other key (an int, a slice with another step, a tuple, an array) gives exactly what
    /// `t.numpy()[key]` gives: a read-only NumPy view where NumPy makes a view (`t[3]`,
    /// `t[::2]`, `t[:, 1]`), a copy where NumPy copies (an index array), IndexError out of range.
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let (Ok(slice), Some(&n)) = (key.cast::<PySlice>(), self.t.shape().first()) {
            let n = isize::try_from(n).map_err(|_| PyValueError::new_err("too many rows"))?;
            let range = slice.indices(n)?;
            if range.step == 1 {
                // slice.indices clamps `start` into 0..=n; the length is 0 for a reversed slice.
                let start = range.start.unsigned_abs() as u64;
                let stop = start + range.slicelength as u64;
                return Ok(Bound::new(py, self.sub_rows(py, start, stop)?)?.into_any());
            }
        }
        self.numpy(py, None)?.get_item(key)
    }

    /// Checks the checksums of the blocks holding this tensor's (or row range's) bytes, in parallel,
    /// without holding the GIL.
    ///
    /// Raises ChecksumMismatchError naming the tensor, the block and its byte range;
    /// NoChecksumsError for .safetensors and .npy files.
    pub(crate) fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.t.verify()).map_err(|e| load_error(py, e))
    }

    /// Starts reading this tensor's bytes into the page cache in background threads. With
    /// `wait=True`, returns when they are resident (without holding the GIL). A no-op for a copy.
    ///
    /// At most 16 prefetch threads run in the process at once, so `for k in store:
    /// store.prefetch(k)` over many tensors is fine: past the cap a prefetch asks the kernel for
    /// readahead instead of starting a thread (and `wait=True` reads the bytes in itself).
    #[pyo3(signature = (*, wait=false))]
    pub(crate) fn prefetch(&self, py: Python<'_>, wait: bool) -> PyResult<()> {
        let handle = self.t.prefetch();
        if wait {
            py.detach(|| handle.wait()).map_err(|e| load_error(py, e))?;
        }
        Ok(())
    }

    /// Tells the kernel how this tensor's bytes will be read: "normal", "sequential", "random" or
    /// "willneed" (madvise). A no-op for a copy.
    pub(crate) fn advise(&self, py: Python<'_>, advice: &str) -> PyResult<()> {
        let advice = args::advice(advice)?;
        self.t.advise(advice).map_err(|e| load_error(py, e))
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
                        self.t.name(),
                        self.t.dtype(),
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

    /// DLPack export (the Python array API's `__dlpack__`): a capsule over a private
    /// copy-on-write view of the tensor's bytes, which keeps them alive until the consumer
    /// releases it. No byte is copied until the consumer writes; a write (an in-place op of
    /// `torch.from_dlpack(t)`) copies only the pages it touches and changes neither the file nor
    /// any other view. (For a store opened with `copy=True`, the view is a copy.)
    ///
    /// A consumer that speaks DLPack 1.0 (`max_version >= (1, 0)`: NumPy 2.1+, PyTorch, JAX) gets
    /// a `dltensor_versioned` capsule marked read-only (NumPy then makes a read-only array); one of
    /// the older protocol, a legacy capsule. fp8 needs DLPack 1.1. A BOOL tensor is read once to
    /// check its bytes are 0 or 1 (CorruptedFileError otherwise), as for `numpy()`.
    #[pyo3(signature = (*, stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = dlpack::request(stream, max_version, dl_device)?;
        if copy == Some(true) {
            // A copy is writable and owned by NumPy: let NumPy export it.
            let copied = self.typed_array(py)?.call_method0("copy")?;
            let kwargs = PyDict::new(py);
            if let Some(v) = max_version {
                kwargs.set_item("max_version", v)?;
            }
            return copied.call_method("__dlpack__", (), Some(&kwargs));
        }
        let exported = interop::dlpack(self.t.dtype()).ok_or_else(|| self.unsupported())?;
        let kind = request.kind_for(&exported, self.t.name(), self.t.dtype())?;
        let bytes = self.typed_bytes(py)?;
        self.check_aligned(py, bytes.get(), exported.align, "DLPack")?;
        dlpack::capsule(py, bytes, DataType::from(exported.dtype), kind)
    }

    /// `(kDLCPU, 0)`: the data is in host memory.
    fn __dlpack_device__(&self) -> (i32, i32) {
        dlpack::device()
    }

    /// Pickling: a tensor pickles as its store (path, copy or not, fingerprint: see
    /// `Store.__reduce__`), its name and its row range, never its data. Unpickling reopens the
    /// store and raises StoreChangedError if the file changed.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        reduce_tensor(py, &self.t)
    }

    fn __repr__(&self) -> String {
        // A row range shows its rows within the whole tensor.
        let whole = self.t.store().tensor(self.t.name()).ok();
        let all_rows = whole.as_ref().and_then(|w| w.shape().first().copied());
        let rows = match (self.t.shape().first(), all_rows) {
            (Some(&n), Some(all)) if n != all => {
                let first = self.t.first_row();
                format!(" rows {first}..{}", first + n)
            }
            _ => String::new(),
        };
        format!(
            "<mmtensor.Tensor `{}`{rows}: {} {} in {}>",
            self.t.name(),
            self.t.dtype(),
            shape_text(self.t.shape()),
            self.path_text()
        )
    }
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
