//! `mmtensor.open_dataset` and the `Dataset` pyclass: a sharded dataset folder (a manifest and its
//! `.mmt` shards) as one index space of rows, for `take` and the `Loader`.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::load_error;
use crate::take::Gather;

/// A sharded dataset: a folder holding `manifest.mmtm` and `.mmt` shards (made by `mmt convert
/// --shard-size` and grown by `mmt append`), read as one index space of rows. Made by
/// `mmtensor.open_dataset`.
///
/// `ds.rows` (and `len(ds)`) is the rows of every shard; `ds.columns` the column names;
/// `ds.take(name, indices, out=None)` one parallel gather from any shards; `mmtensor.Loader(ds,
/// ...)` batches over it. Every shard is mapped, with `mmtensor.open`'s contract for each.
#[pyclass(frozen, module = "mmtensor", name = "Dataset")]
pub(crate) struct Dataset {
    pub(crate) ds: mmtensor::Dataset,
}

impl Dataset {
    fn column(&self, py: Python<'_>, name: &str) -> PyResult<mmtensor::Column> {
        self.ds.column(name).map_err(|e| load_error(py, e))
    }
}

/// Opens the sharded dataset in the folder `path`: reads its manifest and maps every shard,
/// checking each against the manifest (its length, header checksum and columns).
///
/// The shards are memory-mapped: as for `mmtensor.open`, nobody may modify or truncate a shard file
/// while the dataset (or an array of it) is open. `mmt append` never does: it adds shards and
/// replaces the manifest by a rename, so an open dataset keeps the rows it had.
#[pyfunction]
pub(crate) fn open_dataset(py: Python<'_>, path: PathBuf) -> PyResult<Dataset> {
    // SAFETY: Python has no `unsafe`, so the contract of Dataset::open (nobody modifies or truncates
    // a shard while it is mapped) is handed to the Python caller as `open`'s is, in this function's
    // docstring and the README.
    let ds = py
        .detach(|| unsafe { mmtensor::Dataset::open(&path) })
        .map_err(|e| load_error(py, e))?;
    Ok(Dataset { ds })
}

#[pymethods]
impl Dataset {
    /// The dataset's folder.
    #[getter]
    fn path(&self) -> String {
        self.ds.dir().display().to_string()
    }

    /// The rows of every shard.
    #[getter]
    fn rows(&self) -> u64 {
        self.ds.rows()
    }

    fn __len__(&self) -> usize {
        usize::try_from(self.ds.rows()).unwrap_or(usize::MAX)
    }

    /// The column names, in manifest order.
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.ds
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect()
    }

    /// The number of shards.
    #[getter]
    fn shards(&self) -> usize {
        self.ds.shards().len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.ds.columns().iter().any(|c| c.name() == name)
    }

    /// The dtype of column `name`, as mmtensor names it ("f32", "bf16", ...).
    fn dtype(&self, py: Python<'_>, name: &str) -> PyResult<String> {
        Ok(self.column(py, name)?.dtype().to_string())
    }

    /// The shape of column `name`: the dataset's rows, then the shape of one row.
    fn shape<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.column(py, name)?.shape())
    }

    /// Gathers the rows `indices` (a 1-d integer array-like; negative ones count from the end) of
    /// column `name`, from whichever shards hold them, into a new writable NumPy array, or into
    /// `out` (a C-contiguous, writeable array of the right shape and dtype), in one parallel
    /// gather with the GIL released.
    #[pyo3(signature = (name, indices, out=None))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        indices: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let column = self.column(py, name)?;
        let g = Gather {
            path: self.ds.dir(),
            name,
            dtype: column.dtype(),
            rows: column.num_rows(),
            row_shape: column.row_shape(),
        };
        let c = column.clone();
        g.take(py, indices, out, move |p, o| c.take_into(p, o))
    }

    /// Checks every block checksum and padding byte of every shard (CorruptedFileError naming the
    /// shard).
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        let ds = self.ds.clone();
        py.detach(move || ds.verify())
            .map_err(|e| load_error(py, e))
    }

    fn __repr__(&self) -> String {
        format!(
            "<mmtensor.Dataset {}: {} rows in {} shards, columns {:?}>",
            self.ds.dir().display(),
            self.ds.rows(),
            self.ds.shards().len(),
            self.columns()
        )
    }
}
