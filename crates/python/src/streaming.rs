//! `mmtensor.StreamingDataset`: a dataset on object storage read while it downloads, through a
//! cache smaller than the data (`open_dataset(url, cache=..., cache_size=..., stream=True)`).
//! Its rows are read by a `Loader` only; the fetch schedule and eviction are
//! `mmtensor_remote::StreamingDataset`'s.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::remote_error;

/// A sharded dataset on object storage, streamed: its rows are fetched as a `Loader`'s batches
/// need them, ahead and in the epoch's order, and evicted by next use, within the cache's size.
/// Made by `open_dataset(url, cache=..., cache_size=..., stream=True)`; read it with
/// `Loader(streamed, batch_size, ...)`.
#[pyclass(module = "mmtensor", frozen)]
pub(crate) struct StreamingDataset {
    pub(crate) inner: mmtensor_remote::StreamingDataset,
}

/// Opens the dataset at `url` for streaming through the cache folder `dir` of `capacity` bytes.
pub(crate) fn open(
    py: Python<'_>,
    url: String,
    dir: PathBuf,
    capacity: u64,
    options: mmtensor_remote::StreamOptions,
) -> PyResult<StreamingDataset> {
    let inner = py
        .detach(|| {
            let cache = mmtensor_remote::Cache::new(&dir, capacity)?;
            mmtensor_remote::StreamingDataset::open(Arc::new(cache), &url, options)
        })
        .map_err(|e| remote_error(py, e))?;
    Ok(StreamingDataset { inner })
}

#[pymethods]
impl StreamingDataset {
    /// The dataset's URL.
    #[getter]
    fn path(&self) -> String {
        self.inner.url().to_owned()
    }

    /// The number of rows of every column.
    #[getter]
    fn num_rows(&self) -> u64 {
        self.inner.num_rows()
    }

    /// The column names, in manifest order.
    fn keys(&self) -> Vec<String> {
        self.inner
            .manifest()
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect()
    }

    /// The number of columns.
    fn __len__(&self) -> usize {
        self.inner.manifest().columns().len()
    }

    /// The cache's folder.
    #[getter]
    fn cache(&self) -> String {
        self.inner.cache().dir().display().to_string()
    }

    /// The cache's capacity in bytes.
    #[getter]
    fn cache_size(&self) -> u64 {
        self.inner.cache().capacity()
    }

    /// The requests sent so far: `{"heads": ..., "gets": ..., "bytes_downloaded": ...}`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.cache().stats();
        let d = PyDict::new(py);
        d.set_item("heads", s.heads)?;
        d.set_item("gets", s.gets)?;
        d.set_item("bytes_downloaded", s.bytes_downloaded)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "StreamingDataset({:?}, num_rows={}, columns={:?}, cache={:?}, cache_size={})",
            self.inner.url(),
            self.inner.num_rows(),
            self.keys(),
            self.cache(),
            self.cache_size()
        )
    }
}
