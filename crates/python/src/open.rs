//! Opening and reopening: `mmtensor.open` and the `Store` object it returns (the handle, closable,
//! and the lock rule that guards it), the opening of dataset folders and URLs, and the pickle
//! protocol that opens both again in another process.
//!
//! This is the one place the binding calls the loader's unsafe opens (`Store::open`,
//! `Dataset::open`), and it hands their contract to the Python caller as `numpy.memmap` does (in
//! `open`'s and `open_dataset`'s docstrings and the README), with `copy=True` as the safe
//! alternative for a single file.
//!
//! A `Store` pickles as its absolute path, whether it was a copy, and its file's fingerprint
//! (`mmtensor::Fingerprint`: format, length, header xxh3, inode number, modification time); never
//! its bytes. Unpickling calls [`_reopen`], which opens the path again (mapped, or copied) and
//! refuses a file whose fingerprint differs with StoreChangedError. `mmtensor::Fingerprint`'s docs
//! say what that detects and what it cannot. A `Dataset` pickles as its path (or URL, cache folder
//! and size), the rank it was opened for and its manifest's xxh3 ([`reduce_dataset`]), and is
//! refused the same way when its manifest changed ([`reopen_dataset`]). The methods of `Store` are
//! in `store.rs`, a `Dataset`'s in `dataset.rs`; a `Tensor` pickles as its `Store` (`tensor.rs`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mmtensor::{FileStamp, Fingerprint, Format};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::IntoPyObjectExt;

use crate::errors::{load_error, raise, remote_error};

// ---------------------------------------------------------------------------------------------
// Store: an opened file as Python holds it
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
    /// The handle, `None` after `close()`. Private to this module, whose methods below are the
    /// only ones that lock it: each holds the mutex only to clone or take the handle (an `Arc`
    /// increment or a move), never across a call into Python or anything that waits, so a thread
    /// that blocks on it while holding the GIL waits for nanoseconds, never for a thread that
    /// needs the GIL (defect 7 of issue 10). `MutexGuard`s are only ever temporaries.
    store: Mutex<Option<mmtensor::Store>>,
    /// The path the store was opened from.
    pub(crate) path: PathBuf,
    pub(crate) format: Format,
    /// Whether the bytes are a mapping (not a `copy=True` read).
    pub(crate) mapped: bool,
}

impl Store {
    /// A clone of the handle, or `None` after `close()`; the lock is released before this returns.
    pub(crate) fn current(&self) -> Option<mmtensor::Store> {
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

    /// Whether `close()` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Takes the handle out (`close()`), for the caller to drop without the GIL; the lock is
    /// released before this returns.
    pub(crate) fn take_handle(&self) -> Option<mmtensor::Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).take()
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
/// afterwards affects the store. This is the Rust crate's `mmtensor::Store::read`.
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
/// (`Error::Changed`). The one place the binding calls the loader's unsafe store opens (`open`,
/// `export` and `Loader` of a path, and unpickling all come here).
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

// ---------------------------------------------------------------------------------------------
// Formats by name, and a store's fingerprint as plain Python values
// ---------------------------------------------------------------------------------------------

/// The formats by the names Python reads (`Store.format`) and pickles (the fingerprint): the one
/// table of both directions.
const FORMAT_NAMES: [(Format, &str); 3] = [
    (Format::Mmt, "mmt"),
    (Format::Safetensors, "safetensors"),
    (Format::Npy, "npy"),
];

/// The name of `format`: "mmt", "safetensors" or "npy" ("unknown" for one a newer loader added).
pub(crate) fn format_name(format: Format) -> &'static str {
    FORMAT_NAMES
        .iter()
        .find(|(f, _)| *f == format)
        .map_or("unknown", |&(_, name)| name)
}

/// The format called `name`.
fn format_named(name: &str) -> Option<Format> {
    FORMAT_NAMES
        .iter()
        .find(|&&(_, n)| n == name)
        .map(|&(format, _)| format)
}

/// A fingerprint as plain Python values: (format name, file length, header xxh3, inode number,
/// modification time in nanoseconds), the last two as `os.stat` gives `st_ino` and `st_mtime_ns`.
type FingerprintState = (String, u64, u64, u64, i128);

fn fingerprint_state(fp: Fingerprint) -> FingerprintState {
    (
        format_name(fp.format()).to_owned(),
        fp.len(),
        fp.header_xxh3(),
        fp.file().inode(),
        fp.file().mtime_ns(),
    )
}

/// The fingerprint pickled as `state`. A 3-tuple (format, length, header xxh3) is a pickle of an
/// mmtensor before the fingerprint held the file's inode and modification time: refused, since it
/// cannot tell a file replaced with the same header from the one pickled.
fn fingerprint_from_state(state: &Bound<'_, PyAny>) -> PyResult<Fingerprint> {
    let shown = || {
        state
            .repr()
            .map_or_else(|_| "?".to_owned(), |r| r.to_string())
    };
    let state = state.cast::<PyTuple>().map_err(|_| {
        PyValueError::new_err(format!("not an mmtensor store fingerprint: {}", shown()))
    })?;
    if state.len() == 3 {
        return Err(PyValueError::new_err(
            "this store was pickled by an older mmtensor, whose fingerprint (format, length, \
             header xxh3) cannot tell a file replaced with the same header from the one pickled: \
             open the file afresh with mmtensor.open",
        ));
    }
    let (format, len, header, inode, mtime_ns): FingerprintState =
        state.extract().map_err(|_| {
            PyValueError::new_err(format!(
                "not an mmtensor store fingerprint (format, length, header xxh3, inode, \
                 mtime_ns): {}",
                shown()
            ))
        })?;
    let format = format_named(&format).ok_or_else(|| {
        PyValueError::new_err(format!(
            "not an mmtensor store fingerprint: unknown format {format:?}"
        ))
    })?;
    // `st_mtime_ns` back into `fstat`'s seconds and nanoseconds; a time no file can have is no
    // fingerprint.
    let secs = i64::try_from(mtime_ns.div_euclid(1_000_000_000)).map_err(|_| {
        PyValueError::new_err(format!(
            "not an mmtensor store fingerprint: modification time {mtime_ns} ns is out of range"
        ))
    })?;
    // Below 10^9 after `rem_euclid`: fits a u32.
    let nanos = mtime_ns.rem_euclid(1_000_000_000) as u32;
    Ok(Fingerprint::new(
        format,
        len,
        header,
        FileStamp::new(inode, secs, nanos),
    ))
}

/// The path to pickle: absolute, so that a worker that starts in another directory (or a process
/// that changed directory since the store was opened) finds the same file. A relative path is
/// resolved against the current directory at pickling time; if that fails (the directory is
/// gone), the path is sent as it is.
fn absolute(path: &Path) -> OsString {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .into_os_string()
}

/// `(callable, args)`, what `__reduce__` returns: the reconstructor `name` of this module (found
/// by name, as pickle will find it) and its arguments.
fn reduce<'py>(
    py: Python<'py>,
    name: &str,
    args: impl IntoPyObject<'py>,
) -> PyResult<Bound<'py, PyTuple>> {
    let rebuild = py.import("mmtensor._mmtensor")?.getattr(name)?;
    let args = args.into_bound_py_any(py)?;
    PyTuple::new(py, [rebuild, args])
}

/// `(mmtensor._mmtensor._reopen, (path, copy, fingerprint))` for `store`.
pub(crate) fn reduce_store<'py>(
    py: Python<'py>,
    store: &mmtensor::Store,
) -> PyResult<Bound<'py, PyTuple>> {
    let args = (
        absolute(store.path()),
        !store.is_mapped(),
        fingerprint_state(store.fingerprint()),
    );
    reduce(py, "_reopen", args)
}

/// `(mmtensor._mmtensor._tensor, (store, name, rows))` for `tensor`: `rows` is `(start, stop)`
/// along axis 0, or None for a 0-dimensional tensor. The store is a new `Store` object over the
/// tensor's handle, which pickles as [`reduce_store`] says.
pub(crate) fn reduce_tensor<'py>(
    py: Python<'py>,
    tensor: &mmtensor::OwnedTensor,
) -> PyResult<Bound<'py, PyTuple>> {
    let store = Store::from_handle(tensor.store().clone());
    let rows = tensor.shape().first().map(|&n| {
        let start = tensor.first_row();
        (start, start + n)
    });
    reduce(py, "_tensor", (store, tensor.name(), rows))
}

/// Reopens a pickled Store: the inverse of `Store.__reduce__`. Not meant to be called directly.
///
/// Opens `path` mapped (or, with `copy`, read into memory) and raises StoreChangedError when the
/// file's fingerprint differs from `fingerprint`: the file was replaced, rewritten or truncated
/// since the store was pickled (`mmtensor::Fingerprint` says what is detected and what cannot be).
/// A fingerprint that is not one (a hand-made tuple, an older mmtensor's) is a ValueError. Opening
/// mapped hands the caller the contract of `mmtensor.open`: nobody may modify or truncate the file
/// while the store, or any array made from it, lives.
#[pyfunction]
pub(crate) fn _reopen(
    py: Python<'_>,
    path: PathBuf,
    copy: bool,
    fingerprint: &Bound<'_, PyAny>,
) -> PyResult<Store> {
    let expected = fingerprint_from_state(fingerprint)?;
    let opened = py.detach(|| open_handle(&path, copy, Some(&expected)));
    let store = opened.map_err(|e| load_error(py, e))?;
    Ok(Store::from_handle(store))
}

// ---------------------------------------------------------------------------------------------
// Datasets: a folder or a URL, opened and reopened
// ---------------------------------------------------------------------------------------------

/// Where a dataset's shards come from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    /// A folder, mapped in place.
    Folder,
    /// An object-storage URL, through a cache folder of `capacity` bytes.
    Remote { cache: PathBuf, capacity: u64 },
}

/// Opens the dataset folder `dir`, all shards or the shards of rank `part.0` of `part.1`. The one
/// place the binding calls the loader's unsafe dataset opens: `open_dataset` and `Loader` of a
/// folder, and unpickling one, come here (a URL's cached shards are mapped by `mmtensor_remote`).
pub(crate) fn open_folder(
    dir: &Path,
    part: Option<(u64, u64)>,
) -> Result<mmtensor::Dataset, mmtensor::Error> {
    // SAFETY: Python has no `unsafe`, so the contract of Dataset::open (nobody modifies or
    // truncates a shard while it is mapped) is handed to the Python caller as `open`'s is, in
    // open_dataset's docstring and the README.
    unsafe {
        match part {
            Some((r, w)) => mmtensor::Dataset::open_rank(dir, r, w),
            None => mmtensor::Dataset::open(dir),
        }
    }
}

/// Opens the dataset at `text` (a folder or a URL; a URL through `cache`, a folder and its size
/// in bytes), all shards or one rank's.
pub(crate) fn open_dataset_at(
    py: Python<'_>,
    text: String,
    cache: Option<(PathBuf, u64)>,
    part: Option<(u64, u64)>,
) -> PyResult<(mmtensor::Dataset, Origin)> {
    if text.contains("://") {
        let Some((dir, capacity)) = cache else {
            return Err(PyValueError::new_err(format!(
                "{text}: a remote dataset needs a cache folder: open_dataset(url, cache=\"/path\", \
                 cache_size=\"100GiB\")"
            )));
        };
        let ds = py.detach(|| {
            let cache = mmtensor_remote::Cache::new(&dir, capacity)?;
            match part {
                Some((r, w)) => mmtensor_remote::open_dataset_rank(&cache, &text, r, w),
                None => mmtensor_remote::open_dataset(&cache, &text),
            }
        });
        let origin = Origin::Remote {
            cache: dir,
            capacity,
        };
        return ds.map(|ds| (ds, origin)).map_err(|e| remote_error(py, e));
    }
    let path = PathBuf::from(text);
    let ds = py
        .detach(|| open_folder(&path, part))
        .map_err(|e| load_error(py, e))?;
    Ok((ds, Origin::Folder))
}

/// The xxh3-64 of a manifest's canonical bytes: a dataset's identity across processes (it names
/// every shard by its header checksum, which covers every byte of its data).
fn manifest_sum(ds: &mmtensor::Dataset) -> u64 {
    mmtensor_format::block_checksum(&ds.manifest().encode())
}

/// `(mmtensor._mmtensor._reopen_dataset, (path, rank, world_size, cache, cache_size,
/// manifest_xxh3))` for `ds`, opened from `origin`: what [`reopen_dataset`] takes back.
pub(crate) fn reduce_dataset<'py>(
    py: Python<'py>,
    ds: &mmtensor::Dataset,
    origin: &Origin,
) -> PyResult<Bound<'py, PyTuple>> {
    let (cache, size) = match origin {
        Origin::Folder => (None, None),
        Origin::Remote { cache, capacity } => (Some(cache.clone()), Some(*capacity)),
    };
    let rank = ds.rank();
    let args = (
        ds.path().display().to_string(),
        rank.map(|r| r.0),
        rank.map(|r| r.1),
        cache,
        size,
        manifest_sum(ds),
    );
    reduce(py, "_reopen_dataset", args)
}

/// Opens a pickled dataset again as it was opened (the same rank's shards; a URL through the same
/// cache folder and size), and raises StoreChangedError when its manifest is not the one pickled
/// (rows were appended, or the dataset was rewritten), so that a DataLoader worker never reads
/// other rows than its parent planned.
pub(crate) fn reopen_dataset(
    py: Python<'_>,
    path: String,
    part: Option<(u64, u64)>,
    cache: Option<(PathBuf, u64)>,
    manifest_xxh3: u64,
) -> PyResult<(mmtensor::Dataset, Origin)> {
    let (ds, origin) = open_dataset_at(py, path, cache, part)?;
    let now = manifest_sum(&ds);
    if now != manifest_xxh3 {
        return Err(raise(
            py,
            "StoreChangedError",
            format!(
                "{}: the dataset's manifest changed since the dataset was pickled (xxh3 \
                 {manifest_xxh3:016x}, now {now:016x}): rows were appended or it was rewritten; \
                 open it afresh",
                ds.path().display()
            ),
            Some(ds.path()),
            None,
            None,
        ));
    }
    Ok((ds, origin))
}
