//! The `Store` class's Python methods: an open file as a mapping of tensor names to `Tensor`s and
//! zero-copy arrays. The object itself (its handle, closing, the lock rule) and `open` are in
//! `open.rs`, which `tensor.rs` also needs, to pickle a tensor as its store.

use std::collections::BTreeMap;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::args;
use crate::errors::{load_error, shape_text};
use crate::open::{format_name, reduce_store, Store};
use crate::ragged::RaggedTensor;
use crate::tensor::Tensor;

/// The names of `store`'s ragged tensors, in file order: those `Store::ragged` reads.
pub(crate) fn ragged_names(store: &mmtensor::Store) -> Vec<String> {
    store.ragged_names().map(str::to_owned).collect()
}

impl Store {
    /// RaggedError for a ragged tensor asked for by rows (its rows are documents, not the items
    /// of its values): `take` and `rows` read rows, `ragged(name)` reads a ragged tensor's.
    fn refuse_ragged(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let store = self.handle(py)?;
        if store.tensor(name).is_ok_and(|t| t.is_ragged()) {
            return Err(load_error(
                py,
                mmtensor::Error::RaggedColumn {
                    path: store.path().to_owned(),
                    column: name.to_owned(),
                },
            ));
        }
        Ok(())
    }
}

#[pymethods]
impl Store {
    /// The Tensor handle called `name` (dtype, shape, rows, numpy(), torch(), DLPack).
    fn tensor(&self, py: Python<'_>, name: &str) -> PyResult<Tensor> {
        Tensor::lookup(&self.handle(py)?, name).map_err(|e| load_error(py, e))
    }

    /// `store[name]`: the tensor as a read-only NumPy array viewing the file's bytes (no copy).
    /// Raises TensorNotFoundError (a KeyError) for an unknown name.
    fn __getitem__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.tensor(py, name)?.numpy(py, None)
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
        self.tensor(py, name)?.numpy(py, dtype)
    }

    /// The tensor's raw bits as a read-only unsigned-integer array (uint16 for BF16, uint8 for
    /// fp8, ...), for when ml_dtypes is not installed. See `Tensor.raw`.
    fn raw<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.tensor(py, name)?.raw(py)
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
        self.refuse_ragged(py, name)?;
        self.tensor(py, name)?
            .rows(py, start, stop)?
            .numpy(py, None)
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
        self.refuse_ragged(py, name)?;
        self.tensor(py, name)?.take(py, indices, out, dtype)
    }

    /// The tensor as a torch.Tensor over the file's bytes (no copy, no warning), copy-on-write:
    /// an in-place op changes this tensor alone, never the file or the store's other views (see
    /// `Tensor.torch`).
    fn torch<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.tensor(py, name)?.torch(py)
    }

    /// The ragged tensor `name` (rows of different lengths, format 1.1) as a RaggedTensor:
    /// zero-copy rows, `lengths()`, `take`, `take_padded`. `store[name]` is its values, all rows
    /// back to back. RaggedError (a ValueError) for a fixed-shape tensor; TensorNotFoundError.
    fn ragged(&self, py: Python<'_>, name: &str) -> PyResult<RaggedTensor> {
        let store = self.handle(py)?;
        let col = store.ragged(name).map_err(|e| load_error(py, e))?;
        Ok(RaggedTensor::new(col, &self.path))
    }

    /// Row `i` of ragged tensor `name`: `ragged(name).row(i, output)`, a zero-copy view of the
    /// file's bytes.
    #[pyo3(signature = (name, i, output="numpy"))]
    fn row<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        i: i64,
        output: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.ragged(py, name)?.row(py, i, output)
    }

    /// The names of the ragged tensors, in file order (each also in `keys()`, as its values, with
    /// its row offsets `NAME.offsets` after it).
    fn ragged_keys(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let store = self.handle(py)?;
        Ok(ragged_names(&store))
    }

    /// The dtype of tensor `name` as the file names it ("F32", "BF16", ...), from the header.
    fn dtype(&self, py: Python<'_>, name: &str) -> PyResult<&'static str> {
        Ok(self.tensor(py, name)?.t.dtype().name())
    }

    /// The shape of tensor `name`, from the header.
    fn shape<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.tensor(py, name)?.t.shape())
    }

    /// The tensor names, in file order.
    fn keys(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(self.handle(py)?.names().map(str::to_owned).collect())
    }

    /// `(name, array)` pairs for every tensor, in file order (zero-copy arrays).
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for name in self.keys(py)? {
            let array = self.tensor(py, &name)?.numpy(py, None)?;
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
        self.is_closed()
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
            Some(name) => self.tensor(py, name)?.verify(py),
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
            Some(name) => self.tensor(py, name)?.prefetch(py, wait),
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
            Some(name) => self.tensor(py, name)?.advise(py, advice),
            None => {
                let advice = args::advice(advice)?;
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
        let old = self.take_handle();
        // The last reference unmaps the file, which can take a while for a big mapping: without
        // the GIL, and after the lock was released (`take_handle` returns with it released).
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
        reduce_store(py, &self.handle(py)?)
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
