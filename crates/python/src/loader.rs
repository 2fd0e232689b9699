//! `mmtensor.Loader`: the Rust training loader (`mmtensor::Loader`) for Python, handing out each
//! batch as a dict of writable NumPy arrays or torch tensors over the loader's own buffers, or
//! over torch buffers (pinned memory) it gathers into directly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;

use mmtensor::loader::{Allocate, Buffers, Pool, PooledBuffer, PooledBuffers, Stream};
use mmtensor::order::{Shuffle, DEFAULT_BLOCK_ROWS, DEFAULT_WINDOW_BLOCKS};
use mmtensor::{interop, Dtype, LoaderOptions, LoaderState, RankSplit};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PyTuple};

use crate::dtype::dtype_arg;
use crate::errors::{load_error, raise};
use crate::store::{open_handle, Store};

/// What a batch's columns come out as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Numpy,
    Torch,
}

/// Where batches are gathered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The loader's own pool.
    Pool,
    /// Torch tensors the binding allocates: pinned (`pin_memory=True`), or not (a test of the
    /// same path on a machine without CUDA).
    Torch { pinned: bool },
}

/// Loader(source, batch_size, *, columns=None, shuffle=False, seed=0, rank=0, world_size=1,
///        drop_last=False, split="rows", prefetch=2, output="numpy", pin_memory=False,
///        block_rows=None, window_blocks=None, dtype=None)
///
/// Shuffled, rank-split batches of rows of a store, gathered ahead in Rust threads.
///
/// `source` is a path (the loader maps the file itself; a dataset folder is opened as by
/// `open_dataset`), an open `Store`, or a `Dataset` from `open_dataset` (one index space over its
/// shards). `columns` names the tensors to read (default: every tensor whose first dimension equals the first tensor's); a batch
/// is a dict of the same rows of each: `{"x": array[batch_size, ...], "y": array[batch_size]}`.
///
/// `shuffle`: False (rows in order), True or "full" (a permutation seeded by (seed, epoch)), or
/// "block" (blocks of `block_rows` consecutive rows permuted, then rows shuffled within windows of
/// `window_blocks` blocks: a cold epoch reads the disk nearly sequentially; defaults 256 and 64).
/// `rank` / `world_size` split each epoch as torch's DistributedSampler does (padding by repeating
/// rows from the start, or `drop_last`, which also drops a final short batch). With
/// `split="shards"` each rank instead reads only the whole shards it owns (a dataset's shards
/// balanced over ranks by rows, the same every epoch), shuffled among themselves, so a rank reads
/// and downloads only its part: open a remote dataset with `open_dataset(url, rank=r,
/// world_size=w)` to fetch just those shards. docs/LOADER.md specifies the order exactly: it is
/// the same on every run, machine, thread count and prefetch. A dataset opened for one rank
/// (`open_dataset(..., rank=r, world_size=w)`) is read as that rank with `split="shards"` unless
/// told otherwise.
///
/// A worker thread gathers up to `prefetch` batches ahead, without the GIL, reading each batch's
/// rows in file order. `output="numpy"` gives writable NumPy arrays (bf16 and fp8 as ml_dtypes
/// types), `output="torch"` torch tensors; both own the loader's copy of the rows. A batch's buffers
/// are reused for a later batch only once every array of it is gone: while you drop each batch
/// before the next, the loader's memory stays at about (prefetch + 1) batches. `pin_memory=True`
/// (with `output="torch"`, where torch has CUDA) gathers straight into pinned tensors, so that
/// `.to("cuda", non_blocking=True)` overlaps the copy.
///
/// `dtype` casts columns as they are gathered, in the same pass: a dict of column name to dtype (a
/// name such as "int64", a NumPy or a torch dtype), e.g. `dtype={"tokens": "int64"}` for uint16
/// token ids that `nn.Embedding` refuses; the arrays (or tensors, pinned ones too) of those columns
/// then have that dtype. Columns not named keep theirs; the order and the state do not change.
/// Only casts that cannot fail on any value are made (integer widening, integers into a float that
/// holds them all, bool to numbers, float widening and narrowing): any other raises
/// UnsupportedDtypeError, and a name that is not one of the loader's columns LoaderError, when the
/// loader is made. One dtype for every column is not accepted: name the columns.
///
/// `len(loader)` is the number of batches per epoch. Iterating runs the rest of the current epoch;
/// after its last batch the loader stands at the next epoch. `set_epoch(e)` moves to the start of
/// epoch `e` (unless it already stands in `e`); `state_dict()` / `load_state_dict(d)` save and
/// restore the position (epoch, next batch) to resume mid-epoch with exactly the remaining
/// batches.
#[pyclass(frozen, module = "mmtensor", name = "Loader")]
pub(crate) struct Loader {
    /// The Rust loader, `None` after `close()` (which so lets go of the loader's reference to the
    /// store's bytes). Locked only to read or change its state or start a stream: never across a
    /// call into Python or a wait.
    core: Mutex<Option<mmtensor::Loader>>,
    /// Where the loader stood when it was closed, for `state_dict()` after `close()`.
    closed_state: Mutex<LoaderState>,
    /// The position `load_state_dict` restored, until an iteration starts: a `set_epoch` that
    /// would discard it warns (the loop `for e in range(10): set_epoch(e)` after a restore would
    /// otherwise silently start over at epoch 0).
    restored: Mutex<Option<LoaderState>>,
    /// What does not change: the order's parameters, the columns, batches per epoch, prefetch.
    spec: mmtensor::order::OrderSpec,
    column_names: Vec<String>,
    len: usize,
    prefetch: usize,
    /// The Store object the loader was made from, whose `close()` the loader honours; `None`
    /// when made from a path (then `close()` on the loader closes it).
    store: Option<Py<Store>>,
    /// Bumped by every `iter()`, `set_epoch`, `load_state_dict` and `close()`: an iterator from an
    /// older generation refuses to go on, so two iterators never both move the state.
    generation: AtomicU64,
    output: Output,
    target: Target,
    path: PathBuf,
}

impl Loader {
    fn check_open(&self, py: Python<'_>) -> PyResult<()> {
        // `close()` took the core. The guard is dropped at the end of this statement, before the
        // Store is asked (which may run Python code).
        let taken = self
            .core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none();
        let closed = taken
            || match &self.store {
                Some(s) => s.get().handle(py).is_err(),
                None => false,
            };
        if closed {
            return Err(self.closed_error(py));
        }
        Ok(())
    }

    fn from_core(
        core: mmtensor::Loader,
        store: Option<Py<Store>>,
        output: Output,
        target: Target,
        path: PathBuf,
    ) -> Loader {
        Loader {
            closed_state: Mutex::new(core.state()),
            restored: Mutex::new(None),
            spec: core.spec().clone(),
            column_names: core.column_names().map(str::to_owned).collect(),
            len: core.len(),
            prefetch: core.prefetch(),
            core: Mutex::new(Some(core)),
            store,
            generation: AtomicU64::new(0),
            output,
            target,
            path,
        }
    }

    /// Runs `f` on the Rust loader, or raises StoreClosedError after `close()`.
    fn with_core<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut mmtensor::Loader) -> R,
    ) -> PyResult<R> {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        match core.as_mut() {
            Some(core) => Ok(f(core)),
            None => {
                drop(core);
                Err(self.closed_error(py))
            }
        }
    }

    fn state(&self) -> LoaderState {
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        match core.as_ref() {
            Some(core) => core.state(),
            None => *self.closed_state.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn closed_error(&self, py: Python<'_>) -> PyErr {
        raise(
            py,
            "StoreClosedError",
            format!(
                "{}: the store under this loader is closed",
                self.path.display()
            ),
            Some(&self.path),
            None,
            None,
        )
    }

    fn bump(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn spec_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let spec = &self.spec;
        let d = PyDict::new(py);
        d.set_item("rows", spec.rows)?;
        d.set_item("batch_size", spec.batch_size)?;
        match spec.shuffle {
            Shuffle::None => d.set_item("shuffle", "none")?,
            Shuffle::Full => d.set_item("shuffle", "full")?,
            Shuffle::Block {
                block_rows,
                window_blocks,
            } => {
                d.set_item("shuffle", "block")?;
                d.set_item("block_rows", block_rows)?;
                d.set_item("window_blocks", window_blocks)?;
            }
            _ => d.set_item("shuffle", "unknown")?,
        }
        d.set_item("seed", spec.seed)?;
        d.set_item("world_size", spec.world_size)?;
        d.set_item("drop_last", spec.drop_last)?;
        d.set_item("split", split_name(&spec.split))?;
        // Whole shards per rank: the order depends on every shard's rows, not only their sum.
        if let mmtensor::order::Split::Shards(shards) = &spec.split {
            d.set_item("shard_rows", PyList::new(py, shards.iter())?)?;
        }
        d.set_item("columns", PyList::new(py, &self.column_names)?)?;
        Ok(d)
    }
}

/// `value`'s repr, cut short for an error message (a state's `shard_rows` may list thousands).
fn short_repr(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let r = value.repr()?.to_string();
    Ok(match r.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &r[..i]),
        None => r,
    })
}

/// The `split` argument's value for an order's split.
fn split_name(split: &mmtensor::order::Split) -> &'static str {
    match split {
        mmtensor::order::Split::Shards(_) => "shards",
        _ => "rows",
    }
}

/// A LoaderError (a ValueError) with `message`: an option the loader cannot work with.
fn loader_error(message: impl Into<String>) -> PyErr {
    Python::attach(|py| raise(py, "LoaderError", message.into(), None, None, None))
}

/// With `output="numpy"`, a bf16 or fp8 column needs ml_dtypes for its arrays: refused when the
/// loader is made, rather than at every batch.
fn check_numpy_types(
    py: Python<'_>,
    core: &mmtensor::Loader,
    output: Output,
    path: &std::path::Path,
) -> PyResult<()> {
    if output != Output::Numpy {
        return Ok(());
    }
    for c in core.columns() {
        let needs = interop::numpy(c.dtype())
            .and_then(|n| n.ml_dtypes)
            .is_some();
        if needs && py.import("ml_dtypes").is_err() {
            return Err(raise(
                py,
                "UnsupportedDtypeError",
                format!(
                    "{}: column `{}` holds {}, which NumPy has no type for without ml_dtypes: \
                     `pip install ml_dtypes`, or use output=\"torch\"",
                    path.display(),
                    c.name(),
                    c.dtype()
                ),
                Some(path),
                Some(c.name()),
                None,
            ));
        }
    }
    Ok(())
}

/// The `dtype` argument: a dict of column name to dtype (anything `dtype_arg` reads).
fn output_dtypes(dtype: &Bound<'_, PyAny>) -> PyResult<std::collections::BTreeMap<String, Dtype>> {
    let refuse = || {
        PyTypeError::new_err(format!(
            "dtype must be a dict of column name to dtype, such as {{\"tokens\": \"int64\"}}, \
             not {}",
            dtype
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    };
    let map = dtype.cast::<PyMapping>().map_err(|_| refuse())?;
    let mut out = std::collections::BTreeMap::new();
    for item in map.items()?.iter() {
        let (name, dt): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
        let name: String = name
            .extract()
            .map_err(|_| PyTypeError::new_err("dtype's keys must be column names (str)"))?;
        let what = format!("dtype of column `{name}`");
        out.insert(name, dtype_arg(&what, &dt)?);
    }
    Ok(out)
}

/// A non-negative integer argument as a u64, or a LoaderError naming it.
pub(crate) fn non_negative(name: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an integer, not a bool"
        )));
    }
    let v: i128 = value
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be an integer")))?;
    u64::try_from(v).map_err(|_| {
        loader_error(format!(
            "{name} must be an integer from 0 to 2**64 - 1, not {v}"
        ))
    })
}

fn parse_shuffle(
    shuffle: Option<&Bound<'_, PyAny>>,
    block_rows: Option<&Bound<'_, PyAny>>,
    window_blocks: Option<&Bound<'_, PyAny>>,
) -> PyResult<Shuffle> {
    let kind: String = if let Some(shuffle) = shuffle.filter(|s| !s.is_none()) {
        if let Ok(b) = shuffle.extract::<bool>() {
            if b { "full" } else { "none" }.to_owned()
        } else if let Ok(s) = shuffle.extract::<String>() {
            s
        } else {
            return Err(PyTypeError::new_err(
                "shuffle must be False, True, \"full\", \"block\" or \"none\"",
            ));
        }
    } else {
        "none".to_owned()
    };
    let block = kind == "block";
    if !block && (block_rows.is_some() || window_blocks.is_some()) {
        return Err(loader_error(
            "block_rows and window_blocks set the block shuffle: pass them with shuffle=\"block\"",
        ));
    }
    Ok(match kind.as_str() {
        "none" => Shuffle::None,
        "full" => Shuffle::Full,
        "block" => Shuffle::Block {
            block_rows: match block_rows {
                Some(v) => non_negative("block_rows", v)?,
                None => DEFAULT_BLOCK_ROWS,
            },
            window_blocks: match window_blocks {
                Some(v) => non_negative("window_blocks", v)?,
                None => DEFAULT_WINDOW_BLOCKS,
            },
        },
        other => {
            return Err(loader_error(format!(
                "shuffle must be False, True, \"full\", \"block\" or \"none\", not {other:?}"
            )))
        }
    })
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (source, batch_size, *, columns=None, shuffle=None, seed=None, rank=None,
                        world_size=None, drop_last=false, split=None, prefetch=None, output="numpy",
                        pin_memory=false, block_rows=None, window_blocks=None, dtype=None,
                        _torch_buffers=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        batch_size: &Bound<'_, PyAny>,
        columns: Option<&Bound<'_, PyAny>>,
        shuffle: Option<&Bound<'_, PyAny>>,
        seed: Option<&Bound<'_, PyAny>>,
        rank: Option<&Bound<'_, PyAny>>,
        world_size: Option<&Bound<'_, PyAny>>,
        drop_last: bool,
        split: Option<&str>,
        prefetch: Option<&Bound<'_, PyAny>>,
        output: &str,
        pin_memory: bool,
        block_rows: Option<&Bound<'_, PyAny>>,
        window_blocks: Option<&Bound<'_, PyAny>>,
        dtype: Option<&Bound<'_, PyAny>>,
        _torch_buffers: bool,
    ) -> PyResult<Loader> {
        let output = match output {
            "numpy" => Output::Numpy,
            "torch" => Output::Torch,
            other => {
                return Err(loader_error(format!(
                    "output must be \"numpy\" or \"torch\", not {other:?}"
                )))
            }
        };
        let target = if pin_memory {
            if output != Output::Torch {
                return Err(loader_error(
                    "pin_memory=True gathers into pinned torch tensors: pass output=\"torch\" too",
                ));
            }
            let torch = py.import("torch").map_err(|_| {
                PyRuntimeError::new_err(
                    "pin_memory=True needs PyTorch with CUDA; PyTorch is not installed",
                )
            })?;
            let cuda: bool = torch
                .getattr("cuda")?
                .call_method0("is_available")?
                .extract()?;
            if !cuda {
                return Err(PyRuntimeError::new_err(
                    "pin_memory=True needs a CUDA device, and torch.cuda.is_available() is False \
                     on this machine: leave pin_memory off (batches are still gathered ahead)",
                ));
            }
            Target::Torch { pinned: true }
        } else if _torch_buffers {
            if output != Output::Torch {
                return Err(loader_error("_torch_buffers needs output=\"torch\""));
            }
            Target::Torch { pinned: false }
        } else {
            Target::Pool
        };
        if output == Output::Torch {
            py.import("torch").map_err(|_| {
                pyo3::exceptions::PyImportError::new_err(
                    "output=\"torch\" needs PyTorch (`pip install torch`); output=\"numpy\" needs only NumPy",
                )
            })?;
        }
        let batch_size = non_negative("batch_size", batch_size)?;
        let mut options = LoaderOptions::new(batch_size);
        options.shuffle = parse_shuffle(shuffle, block_rows, window_blocks)?;
        if let Some(s) = seed {
            options.seed = non_negative("seed", s)?;
        }
        let rank = rank.map(|r| non_negative("rank", r)).transpose()?;
        let world_size = world_size
            .map(|w| non_negative("world_size", w))
            .transpose()?;
        let split = split
            .map(|split| match split {
                "rows" => Ok(RankSplit::Rows),
                "shards" => Ok(RankSplit::Shards),
                other => Err(loader_error(format!(
                    "split must be \"rows\" or \"shards\", not {other:?}"
                ))),
            })
            .transpose()?;
        options.drop_last = drop_last;
        if let Some(p) = prefetch {
            let p = non_negative("prefetch", p)?;
            options.prefetch = usize::try_from(p)
                .ok()
                .filter(|&p| p <= 1 << 16)
                .ok_or_else(|| loader_error(format!("prefetch must be at most 65536, not {p}")))?;
        }
        if let Some(cols) = columns {
            if cols.is_instance_of::<pyo3::types::PyString>() {
                return Err(PyTypeError::new_err(
                    "columns must be a list of tensor names, not one string (write [\"x\"])",
                ));
            }
            let names: Vec<String> = cols
                .try_iter()
                .map_err(|_| PyTypeError::new_err("columns must be a list of tensor names"))?
                .map(|c| {
                    c.and_then(|c| c.extract::<String>())
                        .map_err(|_| PyTypeError::new_err("columns must be a list of tensor names"))
                })
                .collect::<PyResult<_>>()?;
            options.columns = Some(names);
        }
        if let Some(dtype) = dtype.filter(|d| !d.is_none()) {
            options.dtypes = output_dtypes(dtype)?;
        }

        // A dataset folder given by path is opened here, as `open_dataset(path)` would.
        let folder = match source.cast::<crate::dataset::Dataset>() {
            Ok(_) => None,
            Err(_) => source
                .extract::<PathBuf>()
                .ok()
                .filter(|p| p.join(mmtensor_format::MANIFEST_FILE).is_file()),
        };
        let opened;
        let dataset = match (source.cast::<crate::dataset::Dataset>(), folder) {
            (Ok(ds), _) => Some(&ds.get().ds),
            (Err(_), Some(dir)) => {
                opened = py
                    // SAFETY: as `mmtensor.open_dataset` (dataset.rs): Python has no `unsafe`, so
                    // the mapping contract is handed to the caller, in the docstrings and README.
                    .detach(|| unsafe { mmtensor::Dataset::open(&dir) })
                    .map_err(|e| load_error(py, e))?;
                Some(&opened)
            }
            (Err(_), None) => None,
        };
        if let Some(ds) = dataset {
            // A dataset opened for one rank is read as that rank, with whole shards, unless the
            // caller says otherwise (and then gets an error naming the rank it was opened for).
            let own = ds.rank();
            options.split = split.unwrap_or(if own.is_some() {
                RankSplit::Shards
            } else {
                RankSplit::Rows
            });
            // The dataset's rank stands in only for both at once: one given alone keeps the
            // usual default for the other, and a mismatch is reported against the dataset's.
            (options.rank, options.world_size) = match (rank, world_size, own) {
                (None, None, Some(own)) => own,
                (r, w, _) => (r.unwrap_or(0), w.unwrap_or(1)),
            };
            let path = ds.dir().to_path_buf();
            let core =
                mmtensor::Loader::from_dataset(ds, options).map_err(|e| load_error(py, e))?;
            check_numpy_types(py, &core, output, &path)?;
            return Ok(Loader::from_core(core, None, output, target, path));
        }
        options.split = split.unwrap_or(RankSplit::Rows);
        options.rank = rank.unwrap_or(0);
        options.world_size = world_size.unwrap_or(1);
        let (handle, store) = match source.cast::<Store>() {
            Ok(store) => (store.get().handle(py)?, Some(store.clone().unbind())),
            Err(_) => {
                let path: PathBuf = source.extract().map_err(|_| {
                    PyTypeError::new_err(
                        "source must be a path (str or os.PathLike), an mmtensor.Store or an \
                         mmtensor.Dataset",
                    )
                })?;
                let handle = py
                    .detach(|| open_handle(&path, false, None))
                    .map_err(|e| load_error(py, e))?;
                (handle, None)
            }
        };
        let path = handle.path().to_path_buf();
        let chosen = options.columns.is_none();
        let core = mmtensor::Loader::new(&handle, options).map_err(|e| load_error(py, e))?;
        if chosen {
            warn_left_out(py, &handle, core.spec().rows, "Loader")?;
        }
        check_numpy_types(py, &core, output, &path)?;
        Ok(Loader::from_core(core, store, output, target, path))
    }

    /// The number of batches in an epoch on this rank.
    fn __len__(&self) -> usize {
        self.len
    }

    /// The columns, in the order batches hold them.
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.column_names.clone()
    }

    /// The epoch the loader stands in.
    #[getter]
    fn epoch(&self) -> u64 {
        self.state().epoch
    }

    /// The index of the next batch the loader hands out in its epoch.
    #[getter]
    fn next_batch(&self) -> u64 {
        self.state().next_batch
    }

    /// Rows per batch.
    #[getter]
    fn batch_size(&self) -> u64 {
        self.spec.batch_size
    }

    /// The number of rows the columns have.
    #[getter]
    fn rows(&self) -> u64 {
        self.spec.rows
    }

    /// The store's path.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// Moves to the start of `epoch`, unless the loader already stands in that epoch (a loader
    /// restored mid-epoch by `load_state_dict` then resumes instead of restarting). Stops any
    /// iteration in progress.
    ///
    /// After `load_state_dict`, loop from the restored epoch, `for epoch in range(loader.epoch,
    /// n): loader.set_epoch(epoch)`: a `set_epoch` to another epoch before any iteration discards
    /// the restored position, and warns (UserWarning) that it does.
    fn set_epoch(&self, py: Python<'_>, epoch: &Bound<'_, PyAny>) -> PyResult<()> {
        let epoch = non_negative("epoch", epoch)?;
        self.check_open(py)?;
        let restored = self
            .restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_if(|s| s.epoch != epoch);
        if let Some(s) = restored {
            let text = format!(
                "{}: set_epoch({epoch}) discards the position load_state_dict restored (epoch {}, \
                 batch {}): to resume, loop from the restored epoch, as in \
                 `for epoch in range(loader.epoch, n): loader.set_epoch(epoch)`",
                self.path.display(),
                s.epoch,
                s.next_batch
            );
            let text = std::ffi::CString::new(text).unwrap_or_default();
            let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
            PyErr::warn(py, category.as_any(), &text, 1)?;
        }
        self.bump();
        self.with_core(py, |core| core.set_epoch(epoch))
    }

    /// The loader's position and the parameters of its order, as a dict of ints, strings and
    /// lists (picklable, JSON-able): `epoch`, `next_batch`, then what `load_state_dict` checks.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = self.spec_dict(py)?;
        let state = self.state();
        d.set_item("epoch", state.epoch)?;
        d.set_item("next_batch", state.next_batch)?;
        d.set_item("rank", self.spec.rank)?;
        Ok(d)
    }

    /// Restores a position saved by `state_dict`: the next iteration hands out exactly the
    /// batches that remained. Refuses (ValueError naming the key) a state of a loader with a
    /// different order: other rows, batch size, shuffle, seed, world size, drop_last, split (and,
    /// with split="shards", each shard's rows) or columns. A state saved by another rank is
    /// accepted (every rank has the same number of batches).
    fn load_state_dict(&self, py: Python<'_>, state: &Bound<'_, PyDict>) -> PyResult<()> {
        let mine = self.spec_dict(py)?;
        for (key, want) in mine.iter() {
            let mut got = state.get_item(&key)?;
            // States saved before `split` existed split by rows.
            if got.is_none() && key.eq("split")? {
                got = Some(pyo3::types::PyString::new(py, "rows").into_any());
            }
            match got {
                Some(got) if got.eq(&want)? => {}
                got => {
                    let changed = got.is_some() && (key.eq("rows")? || key.eq("shard_rows")?);
                    return Err(loader_error(format!(
                        "{}: the state is of another loader: its {} is {}, this loader's is {}{}",
                        self.path.display(),
                        key.str()?,
                        match got {
                            Some(g) => short_repr(&g)?,
                            None => "missing".to_owned(),
                        },
                        short_repr(&want)?,
                        if changed {
                            " (the data changed since the state was saved: an append adds rows \
                             and shards, and the order of an epoch depends on them)"
                        } else {
                            ""
                        }
                    )));
                }
            }
        }
        let get = |key: &str| -> PyResult<u64> {
            match state.get_item(key)? {
                Some(v) => non_negative(key, &v),
                None => Err(loader_error(format!("the state has no `{key}`"))),
            }
        };
        let new = LoaderState {
            epoch: get("epoch")?,
            next_batch: get("next_batch")?,
        };
        self.bump();
        self.with_core(py, |core| core.set_state(new))?
            .map_err(|e| load_error(py, e))?;
        // Where it now stands (a finished epoch's state stands at the next one's start).
        let now = self.state();
        *self.restored.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        Ok(())
    }

    /// A new iteration over the rest of the current epoch; an older iterator of this loader stops.
    fn __iter__(slf: &Bound<'_, Self>) -> PyResult<LoaderIter> {
        let py = slf.py();
        let this = slf.get();
        this.check_open(py)?;
        let generation = this.bump();
        // Iterating takes up the restored position: `set_epoch` no longer has one to discard.
        *this.restored.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // A copy of the loader (cheap: shared columns and buffers) builds the epoch's order, which
        // is linear in the rows, without the GIL and without the loader's lock.
        let core = this.with_core(py, |core| core.clone())?;
        let (stream, refill) = match this.target {
            Target::Pool => {
                let stream = py
                    .detach(|| core.stream(core.pool()))
                    .map_err(|e| load_error(py, e))?;
                (Streams::Pool(stream), None)
            }
            Target::Torch { pinned } => {
                let (tx, rx) = mpsc::channel();
                let stream = py
                    .detach(|| core.stream(TorchAlloc { rx: Mutex::new(rx) }))
                    .map_err(|e| load_error(py, e))?;
                // Sets are sent by `__next__`, before it waits for a batch.
                let refill = Refill {
                    tx,
                    pinned,
                    queued: 0,
                    needed: stream.epoch_len().saturating_sub(stream.next_batch()),
                };
                (Streams::Torch(stream), Some(refill))
            }
        };
        Ok(LoaderIter {
            loader: slf.clone().unbind(),
            generation,
            pid: std::process::id(),
            refill,
            stream: Some(stream),
        })
    }

    /// Stops iteration and lets go of the loader's reference to the store's bytes (the mapping
    /// goes when nothing else holds it: a Store, an array, a running iteration). The loader then
    /// refuses to iterate, set_epoch or load_state_dict (StoreClosedError); `state_dict()` still
    /// gives where it stood, and batches already handed out stay valid.
    fn close(&self) {
        self.bump();
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(core) = core {
            *self.closed_state.lock().unwrap_or_else(|e| e.into_inner()) = core.state();
        }
    }

    /// Whether `close()` was called, or the Store the loader was made from is closed.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.check_open(py).is_err()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) {
        self.close();
    }

    fn __repr__(&self) -> String {
        let spec = &self.spec;
        let state = self.state();
        format!(
            "<mmtensor.Loader {} columns={:?} rows={} batch_size={} shuffle={:?} rank={}/{} \
             epoch={} next_batch={}/{}>",
            self.path.display(),
            self.column_names,
            spec.rows,
            spec.batch_size,
            spec.shuffle,
            spec.rank,
            spec.world_size,
            state.epoch,
            state.next_batch,
            self.len
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Torch buffers: allocated by the consumer (holding the GIL), filled by the worker (without it)
// ---------------------------------------------------------------------------------------------

/// One batch's torch tensors, full batch size, fresh from `torch.empty`: nobody but the loader
/// has seen them until the batch is handed out.
struct TorchSet {
    /// The column tensors handed out: each a typed view of one byte buffer.
    tensors: Vec<Py<PyAny>>,
    /// Each buffer's unconsumed DLPack capsule, whose managed tensor holds the buffer's storage:
    /// the memory `spans` name stays allocated while the set lives, whatever the typed views are.
    _capsules: Vec<Py<PyAny>>,
    /// Each buffer's data pointer and byte length, read from its capsule (`dlpack::host_bytes`).
    spans: Vec<(usize, usize)>,
}

impl Buffers for TorchSet {
    fn column_mut(&mut self, column: usize) -> &mut [u8] {
        match self.spans.get(column) {
            // SAFETY: the span is the data of a byte buffer made by `torch.empty` for this set
            // (`Refill::send`), as the `DLTensor` of its capsule describes it (`host_bytes`: host
            // memory, compact, exactly `len` bytes, non-null, aligned), not as any Python method
            // answered. The set holds the capsule, whose managed tensor holds the storage, so the
            // memory stays allocated while this borrow (of the set) lives. The buffer has not been
            // handed out: no code of mmtensor's or the caller's has a reference to it. (Python code
            // that walks `gc.get_objects()` can find any object, and writing through what it finds
            // there races with this write as it would with any tensor another thread owns.)
            Some(&(ptr, len)) if len > 0 => unsafe {
                std::slice::from_raw_parts_mut(ptr as *mut u8, len)
            },
            _ => &mut [],
        }
    }

    fn column(&self, column: usize) -> &[u8] {
        match self.spans.get(column) {
            // SAFETY: as in `column_mut`; shared borrows of the set only read.
            Some(&(ptr, len)) if len > 0 => unsafe {
                std::slice::from_raw_parts(ptr as *const u8, len)
            },
            _ => &[],
        }
    }
}

/// The worker's side: takes the sets the consumer made.
struct TorchAlloc {
    /// In a mutex only so that the iterator holding the stream is `Sync`, as PyO3 requires.
    rx: Mutex<Receiver<TorchSet>>,
}

impl Allocate for TorchAlloc {
    type Buffers = TorchSet;

    fn allocate(
        &mut self,
        _: &[usize],
    ) -> Result<TorchSet, Box<dyn std::error::Error + Send + Sync>> {
        self.rx
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .recv()
            .map_err(|_| "the iteration was stopped before the batch was gathered".into())
    }
}

/// The consumer's side: makes one set per batch the worker will gather.
struct Refill {
    tx: Sender<TorchSet>,
    pinned: bool,
    /// Sets sent and not yet consumed by a handed-out batch (for prefetch 0, which sends one per
    /// request).
    queued: usize,
    /// Sets the stream will still take: one per batch it has yet to gather. None is made past it.
    needed: usize,
}

impl Refill {
    fn send(&mut self, py: Python<'_>, loader: &Loader) -> PyResult<()> {
        if self.needed == 0 {
            return Ok(());
        }
        let torch = py.import("torch")?;
        let to_dlpack = py.import("torch.utils.dlpack")?.getattr("to_dlpack")?;
        let columns: Vec<(Dtype, Vec<u64>)> = loader.with_core(py, |core| {
            core.columns()
                .map(|c| (c.dtype(), c.row_shape().to_vec()))
                .collect()
        })?;
        let batch_size = loader.spec.batch_size.min(loader.spec.rows.max(1));
        // No Python code of the caller's runs while the buffers are made: a TorchFunctionMode or
        // a TorchDispatchMode active in this thread could otherwise hand back memory of its
        // choosing from `torch.empty` (read-only pages, an immutable `bytes`), or free the
        // storage under the capsule from a `view` (a review reproduced all three).
        let set = without_torch_modes(py, &torch, || {
            self.buffers(py, &torch, &to_dlpack, columns, batch_size)
        })?;
        // A worker that stopped (after an error, which the next batch reports) takes no more.
        if self.tx.send(set).is_ok() {
            self.queued += 1;
            self.needed -= 1;
        }
        Ok(())
    }

    /// One batch's torch buffers, one per column: `(dtype, row shape)` of `batch_size` rows.
    fn buffers<'py>(
        &self,
        py: Python<'py>,
        torch: &Bound<'py, PyModule>,
        to_dlpack: &Bound<'py, PyAny>,
        columns: Vec<(Dtype, Vec<u64>)>,
        batch_size: u64,
    ) -> PyResult<TorchSet> {
        let mut tensors = Vec::with_capacity(columns.len());
        let mut capsules = Vec::with_capacity(columns.len());
        let mut spans = Vec::with_capacity(columns.len());
        for (dtype, row_shape) in columns {
            let to = interop::torch(dtype).ok_or_else(|| {
                PyTypeError::new_err(format!("dtype {dtype} has no torch type in this binding"))
            })?;
            let mut shape = vec![batch_size];
            shape.extend(row_shape);
            let len = shape
                .iter()
                .try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    PyRuntimeError::new_err(format!(
                        "a batch of shape {shape:?} of {dtype} does not fit in memory"
                    ))
                })?;
            // One byte buffer per column, then viewed as the column's type and shape: where the
            // worker writes is the buffer, described by its DLPack capsule.
            let kwargs = PyDict::new(py);
            kwargs.set_item("dtype", torch.getattr("uint8")?)?;
            // Always host memory, whatever default device the program set (`meta`, `cuda`).
            kwargs.set_item("device", "cpu")?;
            kwargs.set_item("pin_memory", self.pinned)?;
            let raw = torch.getattr("empty")?.call(((len,),), Some(&kwargs))?;
            let (address, capsule) = host_span(torch, to_dlpack, &raw, len, to.align, self.pinned)?;
            let t = raw
                .call_method1("view", (torch.getattr(to.name)?,))?
                .call_method1("view", (PyTuple::new(py, &shape)?,))?;
            tensors.push(t.unbind());
            capsules.push(capsule.unbind());
            spans.push((address, len));
        }
        Ok(TorchSet {
            tensors,
            _capsules: capsules,
            spans,
        })
    }
}

/// Runs `f` with PyTorch's `__torch_function__` handling (modes and subclasses:
/// `torch._C.DisableTorchFunction`) and its Python dispatch modes
/// (`torch.utils._python_dispatch._disable_current_modes`) switched off, so that the torch calls
/// in `f` are PyTorch's own, whatever modes the calling thread has entered. Both are restored
/// after, whatever `f` returns.
fn without_torch_modes<'py, R>(
    py: Python<'py>,
    torch: &Bound<'py, PyModule>,
    f: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    let guards = [
        torch
            .getattr("_C")?
            .getattr("DisableTorchFunction")?
            .call0()?,
        py.import("torch.utils._python_dispatch")?
            .getattr("_disable_current_modes")?
            .call0()?,
    ];
    let mut entered = Vec::with_capacity(guards.len());
    let mut result = Ok(());
    for g in &guards {
        match g.call_method0("__enter__") {
            Ok(_) => entered.push(g),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let out = result.and_then(|()| f());
    for g in entered.iter().rev() {
        let exited = g.call_method1("__exit__", (py.None(), py.None(), py.None()));
        if let (Ok(_), Err(e)) = (&out, exited) {
            return Err(e);
        }
    }
    out
}

/// The data pointer of `raw`, a byte buffer just made by `torch.empty((len,), dtype=torch.uint8,
/// device="cpu")`, and the DLPack capsule that keeps its storage alive, after checking everything
/// the worker's writes rely on: a plain `torch.Tensor`, pinned when asked, whose `DLTensor` (from
/// `torch.utils.dlpack.to_dlpack`, PyTorch's C++ reading the tensor itself) is `len` compact bytes
/// of host memory at a non-null address aligned to `align`. Nothing is taken from `data_ptr()`,
/// `shape` or `numel()`: a `TorchFunctionMode` active in this thread answers those. Anything else
/// (a subclass, a mode or default device that bent `torch.empty`) is refused, never written.
fn host_span<'py>(
    torch: &Bound<'py, PyModule>,
    to_dlpack: &Bound<'py, PyAny>,
    raw: &Bound<'py, PyAny>,
    len: usize,
    align: usize,
    pinned: bool,
) -> PyResult<(usize, Bound<'py, PyAny>)> {
    let refuse = |what: &str| {
        PyRuntimeError::new_err(format!(
            "torch.empty(..., device=\"cpu\") gave a tensor the loader cannot gather into: {what}"
        ))
    };
    if !raw.get_type().is(&torch.getattr("Tensor")?) {
        return Err(refuse("not a plain torch.Tensor"));
    }
    // Not a fact the writes rely on (pinned or not, it is host memory): what pin_memory promised.
    if pinned && !raw.call_method0("is_pinned")?.extract::<bool>()? {
        return Err(refuse("it is not pinned"));
    }
    let capsule = to_dlpack.call1((raw,))?;
    let address = crate::dlpack::host_bytes(&capsule, len, align).map_err(|what| refuse(&what))?;
    Ok((address, capsule))
}

// ---------------------------------------------------------------------------------------------
// The iterator
// ---------------------------------------------------------------------------------------------

enum Streams {
    Pool(Stream<Pool>),
    Torch(Stream<TorchAlloc>),
}

/// One iteration over a Loader's epoch; made by `iter(loader)`.
#[pyclass(module = "mmtensor", name = "LoaderIterator")]
pub(crate) struct LoaderIter {
    loader: Py<Loader>,
    generation: u64,
    /// The process that started the worker: a forked child has the stream's memory but not its
    /// thread, so it must neither use nor join it.
    pid: u32,
    /// Declared before `stream`: dropped first, so a worker waiting for a torch set sees the
    /// channel close and stops.
    refill: Option<Refill>,
    stream: Option<Streams>,
}

impl LoaderIter {
    /// Stops the worker (waiting for it with the GIL released), unless this is a forked child
    /// where the worker does not exist: then the stream is leaked, never joined.
    fn stop(&mut self, py: Python<'_>) {
        drop(self.refill.take());
        if let Some(stream) = self.stream.take() {
            if self.pid == std::process::id() {
                py.detach(move || drop(stream));
            } else {
                std::mem::forget(stream);
            }
        }
    }
}

impl Drop for LoaderIter {
    fn drop(&mut self) {
        if self.stream.is_some() {
            Python::attach(|py| self.stop(py));
        }
    }
}

#[pymethods]
impl LoaderIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let loader = self.loader.clone_ref(py);
        let loader = loader.get();
        if self.stream.is_none() {
            return Ok(None);
        }
        if self.pid != std::process::id() {
            self.stop(py);
            return Err(PyRuntimeError::new_err(
                "this loader iterator was started in another process (before a fork): start a \
                 new iteration in this process with iter(loader)",
            ));
        }
        if let Err(e) = loader.check_open(py) {
            self.stop(py);
            return Err(e);
        }
        if loader.generation.load(Ordering::Acquire) != self.generation {
            self.stop(py);
            return Err(PyRuntimeError::new_err(
                "this iteration was stopped: the loader started another iteration, or set_epoch, \
                 load_state_dict or close was called",
            ));
        }
        // The worker needs a set for each batch it is to gather (with prefetch 0, the one gathered
        // now). Made before a batch is taken, so a failure here (out of pinned memory) leaves the
        // state and the stream where they were.
        if let Some(refill) = &mut self.refill {
            while refill.queued < loader.prefetch.max(1) && refill.needed > 0 {
                let sent = refill.queued;
                refill.send(py, loader)?;
                if refill.queued == sent {
                    break; // the worker has stopped; its error or end comes next
                }
            }
        }
        let next = match self.stream.as_mut() {
            Some(Streams::Pool(s)) => py.detach(|| s.next()).map(|r| r.map(Got::Pool)),
            Some(Streams::Torch(s)) => py.detach(|| s.next()).map(|r| r.map(Got::Torch)),
            None => None,
        };
        let got = match next {
            None => {
                self.stop(py);
                return Ok(None);
            }
            Some(Err(e)) => {
                self.stop(py);
                return Err(load_error(py, e));
            }
            Some(Ok(got)) => got,
        };
        let (state, dict) = match got {
            Got::Pool(batch) => (batch.state_after(), pool_batch(py, loader, batch)),
            Got::Torch(batch) => (batch.state_after(), torch_batch(py, batch)),
        };
        // A batch taken from the stream but not handed out: stop, so that the caller's next
        // iteration starts from the state, which still names that batch, rather than skip it.
        let dict = match dict {
            Ok(d) => d,
            Err(e) => {
                self.stop(py);
                return Err(e);
            }
        };
        // Only this generation's iterator moves the state, and only for batches handed out.
        if loader.generation.load(Ordering::Acquire) == self.generation {
            loader
                .with_core(py, |core| core.set_state(state))?
                .map_err(|e| load_error(py, e))?;
        }
        if let Some(refill) = &mut self.refill {
            refill.queued = refill.queued.saturating_sub(1);
            // One new set for the batch just handed out, keeping the worker `prefetch` ahead. The
            // batch is the caller's now: a failure here is not raised with it, and the next call
            // tries again (and raises) before it takes a batch.
            if loader.prefetch > 0 {
                let _ = refill.send(py, loader);
            }
        }
        Ok(Some(dict))
    }

    fn __repr__(&self) -> String {
        "<mmtensor.LoaderIterator>".to_owned()
    }
}

enum Got {
    Pool(mmtensor::Batch<PooledBuffers>),
    Torch(mmtensor::Batch<TorchSet>),
}

// ---------------------------------------------------------------------------------------------
// Batches as Python objects
// ---------------------------------------------------------------------------------------------

/// The owner of one column of a batch in the loader's own buffers: the base of the writable NumPy
/// array (and the torch tensor made from it). When the last array over it is gone, the buffer
/// goes back to the loader for reuse.
#[pyclass(frozen, module = "mmtensor", name = "BatchBuffer")]
pub(crate) struct BatchBuffer {
    /// The column's buffer (back to the loader's pool when this owner goes); never read or
    /// written by Rust again while it is here.
    _buf: PooledBuffer,
    /// The column's first byte (derived from the buffers' `&mut` access, so writes through it
    /// are the buffers' own) and its length.
    ptr: usize,
    len: usize,
    shape: Vec<u64>,
    typestr: &'static str,
}

#[pymethods]
impl BatchBuffer {
    /// NumPy's array interface (version 3): a writable C-contiguous array over the column.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", self.typestr)?;
        d.set_item("data", (self.ptr, false))?;
        d.set_item("strides", py.None())?;
        Ok(d)
    }

    /// The number of bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        format!("<mmtensor.BatchBuffer: {} bytes>", self.len)
    }
}

fn numpy_type(dtype: Dtype) -> PyResult<interop::NumpyType> {
    interop::numpy(dtype).ok_or_else(|| {
        PyTypeError::new_err(format!("dtype {dtype} has no NumPy type in this binding"))
    })
}

fn pool_batch<'py>(
    py: Python<'py>,
    loader: &Loader,
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
    let mut bufs = batch.into_buffers().into_columns();
    let ptrs: Vec<usize> = bufs
        .iter_mut()
        .map(|b| b.bytes_mut().as_mut_ptr() as usize)
        .collect();
    let np = py.import("numpy")?;
    let asarray = np.getattr("asarray")?;
    let torch = match loader.output {
        Output::Torch => Some(py.import("torch")?),
        Output::Numpy => None,
    };
    let out = PyDict::new(py);
    for (((name, dtype, shape, len), ptr), buf) in columns.into_iter().zip(ptrs).zip(bufs) {
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
        let owner = Bound::new(
            py,
            BatchBuffer {
                _buf: buf,
                ptr,
                len,
                shape,
                typestr,
            },
        )?;
        let array = asarray.call1((owner,))?;
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
                    Err(_) => {
                        return Err(raise(
                            py,
                            "UnsupportedDtypeError",
                            format!(
                                "{}: column `{name}` holds {dtype}, which NumPy has no type for \
                                 without ml_dtypes: `pip install ml_dtypes`, or use output=\"torch\"",
                                loader.path.display()
                            ),
                            Some(&loader.path),
                            Some(&name),
                            None,
                        ))
                    }
                },
                None => array,
            },
        };
        out.set_item(name, value)?;
    }
    Ok(out)
}

fn torch_batch<'py>(
    py: Python<'py>,
    batch: mmtensor::Batch<TorchSet>,
) -> PyResult<Bound<'py, PyDict>> {
    let rows = batch.len();
    let names: Vec<String> = batch.column_names().map(str::to_owned).collect();
    let set = batch.into_buffers();
    let out = PyDict::new(py);
    for (name, t) in names.into_iter().zip(set.tensors) {
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

/// Warns (UserWarning) when the columns chosen by default, the tensors whose first dimension is
/// the first tensor's `rows`, leave out tensors that have rows too, but another number of them:
/// a column silently missing from every batch would be found only at training time.
pub(crate) fn warn_left_out(
    py: Python<'_>,
    store: &mmtensor::Store,
    rows: u64,
    who: &str,
) -> PyResult<()> {
    let left: Vec<String> = store
        .tensors()
        .filter_map(|t| match t.shape().first() {
            Some(&n) if n != rows => Some(format!("`{}` ({n} rows)", t.name())),
            _ => None,
        })
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    let text = format!(
        "{}: {who} reads the tensors with {rows} rows (the first tensor's) and leaves out {}: \
         pass columns=[...] to choose",
        store.path().display(),
        left.join(", ")
    );
    let text = std::ffi::CString::new(text).unwrap_or_default();
    PyErr::warn(
        py,
        py.get_type::<pyo3::exceptions::PyUserWarning>().as_any(),
        &text,
        1,
    )
}
