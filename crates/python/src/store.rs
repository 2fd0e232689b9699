//! The `Store` pyclass (an open tensor file as a mapping of names to arrays) and `open`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mmtensor::{Fingerprint, Format};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::errors::{load_error, raise};
use crate::tensor::{parse_advice, shape_text, Tensor};

pub(crate) fn format_name(format: Format) -> &'static str {
    match format {
        Format::Mmt => "mmt",
        Format::Safetensors => "safetensors",
        Format::Npy => "npy",
        _ => "unknown",
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
pub(crate) struct Store {
    /// The handle, `None` after `close()`. The mutex is held only to clone or take the handle
    /// (an `Arc` increment or a move), never across a call into Python or anything that waits,
    /// so a thread that blocks on it while holding the GIL waits for nanoseconds, never for a
    /// thread that needs the GIL (defect 7 of issue 10). `MutexGuard`s are only ever temporaries.
    store: Mutex<Option<mmtensor::Store>>,
    path: PathBuf,
    format: Format,
    mapped: bool,
}

impl Store {
    /// A clone of the handle, or `None` after `close()`; the lock is released before this returns.
    fn current(&self) -> Option<mmtensor::Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The handle, or StoreClosedError (built after the lock is released: it runs Python code).
    pub(crate) fn handle(&self, py: Python<'_>) -> PyResult<mmtensor::Store> {
        self.current().ok_or_else(|| {
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

    /// A Store object for `store`, a handle opened (or reopened) elsewhere.
    pub(crate) fn from_handle(store: mmtensor::Store) -> Store {
        Store {
            path: store.path().to_owned(),
            format: store.format(),
            mapped: store.is_mapped(),
            store: Mutex::new(Some(store)),
        }
    }

    fn tensor_impl(&self, py: Python<'_>, name: &str) -> PyResult<Tensor> {
        Tensor::lookup(&self.handle(py)?, name).map_err(|e| load_error(py, e))
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

    /// Rows `start..stop` of the tensor along axis 0 as a read-only NumPy array (no copy);
    /// `stop=None` means to the end. Strict: negative indices count from the end as in Python
    /// (`-n` is row 0), and an index outside `-n..=n`, a reversed range or a 0-dimensional tensor
    /// raises RowRangeError (an IndexError). See `Tensor.rows`; `store.tensor(name)[a:b]` clamps
    /// as NumPy slicing does.
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

    /// The rows `indices` of tensor `name` gathered into a new writable NumPy array, or into
    /// `out`, with the GIL released, cast to `dtype` if given. See `Tensor.take`.
    #[pyo3(signature = (name, indices, out=None, dtype=None))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        indices: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.tensor_impl(py, name)?
            .take_impl(py, indices, out, dtype)
    }

    /// The tensor as a torch.Tensor over the file's bytes (no copy, no warning), copy-on-write:
    /// an in-place op changes this tensor alone, never the file or the store's other views (see
    /// `Tensor.torch`).
    fn torch<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.tensor_impl(py, name)?.torch_impl(py)
    }

    /// The dtype of tensor `name` as the file names it ("F32", "BF16", ...), from the header.
    fn dtype(&self, py: Python<'_>, name: &str) -> PyResult<&'static str> {
        Ok(self.tensor_impl(py, name)?.t.dtype().name())
    }

    /// The shape of tensor `name`, from the header.
    fn shape<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.tensor_impl(py, name)?.t.shape())
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
            .lock()
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
    /// them is gone. Further lookups raise StoreClosedError. Closing twice is fine, and so is
    /// closing while other threads use the store (they see it open or closed, never half).
    fn close(&self, py: Python<'_>) {
        let old = self.store.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The last reference unmaps the file, which can take a while for a big mapping: without
        // the GIL, and after the lock was released (the guard above is a temporary).
        py.detach(move || drop(old));
    }

    /// Pickling (for PyTorch DataLoader workers, `multiprocessing`, `copy.copy`): a store pickles
    /// as its absolute path, whether it was opened with `copy=True`, and its file's fingerprint
    /// (format, length, header xxh3, inode number, modification time), never its data. Unpickling
    /// opens the path again, mapped or copied as the original was, and raises StoreChangedError if
    /// the file there is not the one the store was opened from, as it was (replaced, rewritten or
    /// truncated; `mmtensor::Fingerprint` says what is detected and what cannot be). A closed
    /// store raises StoreClosedError.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        crate::pickle::reduce_store(py, &self.handle(py)?)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let current = self.current();
        let head = format!(
            "<mmtensor.Store {:?} ({}, {}",
            self.path.display().to_string(),
            format_name(self.format),
            if self.mapped { "mapped" } else { "copy" }
        );
        let Some(store) = current.as_ref() else {
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

/// Opens a tensor file and returns a Store. The format (.mmt, .safetensors or .npy) is detected
/// from the first bytes; only the header is read, so opening costs the same for any data size.
///
/// By default the file is memory-mapped, and arrays view the mapping without copying. The mapping
/// is only as stable as the file: while the store or any array made from it lives, the file must
/// not be modified in place or truncated, by this process or another. Writing the same path
/// while it is open destroys data: `np.save(path, a)`, `open(path, "wb")`, `cp new.mmt path`,
/// `truncate` and most editors truncate the file and rewrite it, so the arrays you hold change
/// under you, and reading a page that is gone kills the process with SIGBUS (`verify()` and
/// `prefetch()` check the length first and raise MmtOSError, "the file shrank").
///
/// To replace a file that may be open, write the new one under another name in the same folder
/// and rename it over the old one (`os.replace(tmp, path)`): open stores keep the old bytes, new
/// opens see the new file. `mmtensor.convert` and `mmt convert` always do exactly that (temp
/// file, fsync, rename), so converting onto an open store's path is safe.
///
/// If you cannot rule out in-place writes, pass `copy=True`: the file is read into private,
/// read-only memory (costing its size in RAM and a full read), and nothing done to the file
/// afterwards affects the store.
///
/// Raises StoreNotFoundError (a FileNotFoundError), StoreIsADirectoryError (an
/// IsADirectoryError) for a folder, InvalidFileError for a file that is not a valid .mmt,
/// .safetensors or .npy file, UnsupportedDtypeError, MmtOSError.
#[pyfunction]
#[pyo3(signature = (path, *, copy=false))]
pub(crate) fn open(py: Python<'_>, path: PathBuf, copy: bool) -> PyResult<Store> {
    let opened = py.detach(|| open_handle(&path, copy, None));
    let store = opened.map_err(|e| load_error(py, e))?;
    Ok(Store {
        path,
        format: store.format(),
        mapped: store.is_mapped(),
        store: Mutex::new(Some(store)),
    })
}

/// Opens `path` for a Python caller: a private, read-only copy when `copy`, else a mapping; when
/// `expected` is given, a file that is not the one with that fingerprint is refused
/// (`Error::Changed`). The one place the binding calls the loader's unsafe opens (`open`,
/// `export` of a path and unpickling all come here).
pub(crate) fn open_handle(
    path: &Path,
    copy: bool,
    expected: Option<&Fingerprint>,
) -> Result<mmtensor::Store, mmtensor::Error> {
    match (copy, expected) {
        (true, None) => mmtensor::Store::read(path),
        (true, Some(f)) => mmtensor::Store::read_expecting(path, f),
        // SAFETY: Python has no `unsafe`, so the contract of Store::open (nobody modifies or
        // truncates the file while it is mapped) is handed to the Python caller the way
        // numpy.memmap and np.load(mmap_mode="r") hand it over: in `open`'s docstring and the
        // README (also for stores pickled into workers), with `copy=True` as the safe alternative.
        (false, None) => unsafe { mmtensor::Store::open(path) },
        // SAFETY: as above.
        (false, Some(f)) => unsafe { mmtensor::Store::open_expecting(path, f) },
    }
}
