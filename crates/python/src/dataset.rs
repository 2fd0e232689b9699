//! `mmtensor.open_dataset` and the `Dataset` pyclass: a sharded dataset folder (a manifest and its
//! `.mmt` shards) as one index space of rows, for `take` and the `Loader`.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::args::{non_negative, parse_size};
use crate::errors::load_error;
use crate::open::{open_dataset_at, reduce_dataset, reopen_dataset, Origin};
use crate::ragged::RaggedTensor;
use crate::take::{target_dtype, Gather};

/// A sharded dataset: a folder holding `manifest.mmtm` and `.mmt` shards (made by `mmt convert
/// --shard-size` and grown by `mmt append`), read as one index space of rows. Made by
/// `mmtensor.open_dataset`.
///
/// A container of columns, as a Store is of tensors: `len(ds)` is the number of columns, `name in
/// ds` checks a column name, `ds.keys()` (and `ds.columns`) lists them. `ds.num_rows` is the rows
/// of every shard together; `ds.take(name, indices, out=None)` one parallel gather from any
/// shards; `mmtensor.Loader(ds, ...)` batches over it. A ragged column (rows of different
/// lengths; `ds.ragged_columns` names them) is read with `ds.ragged(name)`, a RaggedTensor over
/// every shard, or a Loader with `seq_len`; `take` and `shape` of one raise RaggedError. Every shard is mapped, with
/// `mmtensor.open`'s contract for each; a dataset opened for one rank (`open_dataset(...,
/// rank=r, world_size=w)`) maps only that rank's shards (`ds.opened_shards`, `ds.rank`,
/// `ds.world_size`), and its rows in other shards raise ShardNotOpenError.
#[pyclass(frozen, module = "mmtensor", name = "Dataset")]
pub(crate) struct Dataset {
    pub(crate) ds: mmtensor::Dataset,
    /// Where the shards come from, to open the dataset again in another process (pickling).
    origin: Origin,
}

/// Unpickles a Dataset (not meant to be called directly): opens `path` again as it was opened
/// (the same rank's shards; a URL through the same cache folder and size), and raises
/// StoreChangedError when its manifest is not the one pickled (rows were appended, or the dataset
/// was rewritten), so that a DataLoader worker never reads other rows than its parent planned.
#[pyfunction]
#[pyo3(signature = (path, rank, world_size, cache, cache_size, manifest_xxh3))]
pub(crate) fn _reopen_dataset(
    py: Python<'_>,
    path: String,
    rank: Option<u64>,
    world_size: Option<u64>,
    cache: Option<PathBuf>,
    cache_size: Option<u64>,
    manifest_xxh3: u64,
) -> PyResult<Dataset> {
    let part = rank.zip(world_size);
    let (ds, origin) = reopen_dataset(py, path, part, cache.zip(cache_size), manifest_xxh3)?;
    Ok(Dataset { ds, origin })
}

impl Dataset {
    fn column(&self, py: Python<'_>, name: &str) -> PyResult<mmtensor::Column> {
        self.ds.column(name).map_err(|e| load_error(py, e))
    }
}

/// Opens a sharded dataset: a folder, or an object-storage URL (`s3://`, `gs://`, `az://`,
/// `http(s)://`, `file://`) under which its manifest and shards lie.
///
/// A folder's shards are mapped in place: as for `mmtensor.open`, nobody may modify or truncate a
/// shard file while the dataset (or an array of it) is open. `mmt append` never does: it adds
/// shards and replaces the manifest by a rename, so an open dataset keeps the rows it had.
///
/// A URL's shards are fetched into the folder `cache` (required for a URL), with parallel ranged
/// GETs, every block checked against its checksum before the shard is placed, and at most
/// `cache_size` bytes kept (an int, or a string such as "200GiB"; least recently used shards are
/// evicted), then mapped from there: a second opening fetches only the manifest. Endpoints and
/// credentials come from the standard environment variables (AWS_ENDPOINT_URL,
/// AWS_ACCESS_KEY_ID, ...).
///
/// `rank` and `world_size` (both or neither) open only the shards that rank owns when a loader
/// reads whole shards per rank (`Loader(ds, split="shards", rank=rank, world_size=world_size)`):
/// from a URL only those shards are fetched. Rows keep their indices; reading a row of another
/// rank's shard raises ShardNotOpenError.
///
/// `stream=True` (a URL only) fetches no shard up front: it returns a `StreamingDataset`, whose
/// `Loader` fetches each batch's parts (`part_size` bytes of whole checksum blocks, default 1 MiB)
/// ahead of it in the epoch's order, up to `ahead` bytes (default half the cache), and evicts
/// by next use, so the first batch waits for its own data only and a dataset larger than
/// `cache_size` trains within it (docs/LOADER.md, "Streaming from object storage").
#[pyfunction]
#[pyo3(signature = (path, *, cache=None, cache_size=None, rank=None, world_size=None,
                    stream=false, part_size=None, ahead=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_dataset(
    py: Python<'_>,
    path: &Bound<'_, PyAny>,
    cache: Option<PathBuf>,
    cache_size: Option<&Bound<'_, PyAny>>,
    rank: Option<&Bound<'_, PyAny>>,
    world_size: Option<&Bound<'_, PyAny>>,
    stream: bool,
    part_size: Option<&Bound<'_, PyAny>>,
    ahead: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    // As the Loader's: a bool is a TypeError, a negative number a LoaderError naming the argument.
    let rank = rank.map(|r| non_negative("rank", r)).transpose()?;
    let world_size = world_size
        .map(|w| non_negative("world_size", w))
        .transpose()?;
    let text: String = match path.extract::<String>() {
        Ok(s) => s,
        Err(_) => path.extract::<PathBuf>()?.display().to_string(),
    };
    let part = match (rank, world_size) {
        (Some(r), Some(w)) => Some((r, w)),
        (None, None) => None,
        _ => {
            return Err(PyValueError::new_err(format!(
                "{text}: pass rank and world_size together (the shards of rank `rank` out of \
                 `world_size`), or neither (every shard)"
            )))
        }
    };
    if !stream && (part_size.is_some() || ahead.is_some()) {
        return Err(PyValueError::new_err(format!(
            "{text}: part_size and ahead are for a streamed dataset: pass stream=True too"
        )));
    }
    if text.contains("://") {
        let capacity = match cache_size {
            None => DEFAULT_CACHE_SIZE,
            Some(v) => parse_size("cache_size", v)?,
        };
        if stream {
            let Some(dir) = cache else {
                return Err(PyValueError::new_err(format!(
                    "{text}: a streamed dataset needs a cache folder: open_dataset(url, \
                     cache=\"/path\", cache_size=\"10GiB\", stream=True)"
                )));
            };
            if part.is_some() {
                return Err(PyValueError::new_err(format!(
                    "{text}: a streamed dataset fetches only what a rank's batches read: pass \
                     rank and world_size to the Loader, not to open_dataset"
                )));
            }
            let mut options = mmtensor_remote::StreamOptions::default();
            if let Some(v) = part_size {
                options.part_size = parse_size("part_size", v)?;
            }
            if let Some(v) = ahead {
                options.ahead = Some(parse_size("ahead", v)?);
            }
            let ds = crate::streaming::open(py, text, dir, capacity, options)?;
            return Ok(Py::new(py, ds)?.into_any());
        }
        return open(py, text, cache.map(|c| (c, capacity)), part)
            .and_then(|d| Ok(Py::new(py, d)?.into_any()));
    }
    if stream {
        return Err(PyValueError::new_err(format!(
            "{text}: stream=True is for a remote dataset (a URL); a folder is mapped in place"
        )));
    }
    if cache.is_some() || cache_size.is_some() {
        return Err(PyValueError::new_err(format!(
            "{text}: cache and cache_size are for a remote dataset (a URL); a folder is mapped in place"
        )));
    }
    open(py, text, None, part).and_then(|d| Ok(Py::new(py, d)?.into_any()))
}

/// Opens the dataset at `text` (a folder, or a URL through `cache`) as a Dataset object.
fn open(
    py: Python<'_>,
    text: String,
    cache: Option<(PathBuf, u64)>,
    part: Option<(u64, u64)>,
) -> PyResult<Dataset> {
    let (ds, origin) = open_dataset_at(py, text, cache, part)?;
    Ok(Dataset { ds, origin })
}

/// The cache's size when `cache_size` is not given.
const DEFAULT_CACHE_SIZE: u64 = 100 << 30;

#[pymethods]
impl Dataset {
    /// The dataset's folder, or the URL it was opened from.
    #[getter]
    fn path(&self) -> String {
        self.ds.path().display().to_string()
    }

    /// The number of rows of every column (the rows of every shard together).
    #[getter]
    fn num_rows(&self) -> u64 {
        self.ds.num_rows()
    }

    /// The number of columns, ragged ones included, as `len(store)` is the number of tensors
    /// (`num_rows` counts rows).
    fn __len__(&self) -> usize {
        self.ds.manifest().columns().len()
    }

    /// The column names, in manifest order, as `Store.keys()` gives tensor names.
    fn keys(&self) -> Vec<String> {
        self.columns()
    }

    /// The column names, ragged ones included, in manifest order.
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.ds
            .manifest()
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect()
    }

    /// The names of the ragged columns (rows of different lengths), in manifest order: read them
    /// with `ragged(name)` or a Loader with `seq_len`.
    #[getter]
    fn ragged_columns(&self) -> Vec<String> {
        self.ds
            .ragged_columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect()
    }

    /// The ragged column `name` as a RaggedTensor over every shard: zero-copy rows, `lengths()`,
    /// `take`, `take_padded`. RaggedError (a ValueError) for a fixed-shape column;
    /// TensorNotFoundError.
    fn ragged(&self, py: Python<'_>, name: &str) -> PyResult<RaggedTensor> {
        let col = self.ds.ragged(name).map_err(|e| load_error(py, e))?;
        Ok(RaggedTensor::new(col, self.ds.path()))
    }

    /// Row `i` of ragged column `name`: `ragged(name).row(i, output)`, a zero-copy view of the
    /// shard's bytes.
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

    /// The number of shards in the manifest (opened or not: see `opened_shards`).
    #[getter]
    fn num_shards(&self) -> usize {
        self.ds.shards().len()
    }

    /// The rank this dataset was opened for (`open_dataset(..., rank=, world_size=)`), or None
    /// when every shard is open.
    #[getter]
    fn rank(&self) -> Option<u64> {
        self.ds.rank().map(|r| r.0)
    }

    /// The world size this dataset was opened for, or None when every shard is open.
    #[getter]
    fn world_size(&self) -> Option<u64> {
        self.ds.rank().map(|r| r.1)
    }

    /// The indices of the shards this dataset opened: all of them, unless it was opened for one
    /// rank (`open_dataset(..., rank=, world_size=)`).
    #[getter]
    fn opened_shards(&self) -> Vec<usize> {
        (0..self.ds.shards().len())
            .filter(|&i| self.ds.shards()[i].is_some())
            .collect()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.ds.manifest().column(name).is_some()
    }

    /// The dtype of column `name` as the format names it ("F32", "BF16", ...), as `Store.dtype`
    /// (a ragged column's values' dtype).
    fn dtype(&self, py: Python<'_>, name: &str) -> PyResult<&'static str> {
        match self.ds.manifest().column(name) {
            Some(spec) => Ok(spec.dtype().name()),
            None => Ok(self.column(py, name)?.dtype().name()),
        }
    }

    /// The shape of column `name`: the dataset's rows, then the shape of one row.
    fn shape<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.column(py, name)?.shape())
    }

    /// Gathers the rows `indices` (a 1-d integer array-like; negative ones count from the end) of
    /// column `name`, from whichever shards hold them, into a new writable NumPy array, or into
    /// `out` (a C-contiguous, writeable array of the right shape and dtype), in one parallel
    /// gather with the GIL released. `dtype` casts the rows as they are copied, as `Tensor.take`
    /// does.
    #[pyo3(signature = (name, indices, out=None, dtype=None))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        indices: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
        dtype: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let column = self.column(py, name)?;
        let to = target_dtype(name, column.dtype(), dtype)?;
        let g = Gather {
            path: self.ds.path(),
            name,
            dtype: to,
            rows: column.num_rows(),
            row_shape: column.row_shape(),
        };
        let c = column.clone();
        g.take(py, indices, out, move |p, o| c.take_into_as(p, o, to))
    }

    /// Checks every block checksum and padding byte of every open shard (CorruptedFileError
    /// naming the shard).
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        let ds = self.ds.clone();
        py.detach(move || ds.verify())
            .map_err(|e| load_error(py, e))
    }

    /// Pickling, for DataLoader workers (spawn or fork): the dataset's path (or URL, with its
    /// cache folder and size), the rank it was opened for, and its manifest's xxh3, never its
    /// data. Unpickling opens it again and raises StoreChangedError if the manifest changed.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        reduce_dataset(py, &self.ds, &self.origin)
    }

    fn __repr__(&self) -> String {
        let part = match self.ds.rank() {
            Some((r, w)) => format!(
                " (rank {r} of {w}: {} shards open)",
                self.ds.shards().iter().flatten().count()
            ),
            None => String::new(),
        };
        format!(
            "<mmtensor.Dataset {}: {} rows in {} shards{part}, columns {:?}>",
            self.ds.path().display(),
            self.ds.num_rows(),
            self.ds.shards().len(),
            self.columns()
        )
    }
}
