//! `DatasetWriter` and `commit`: rows streamed into a dataset from Python, in batches of any size,
//! through `mmtensor_convert::DatasetWriter` (the one sink of rows), with the GIL released while
//! bytes are written.
//!
//! A batch is a dict of column names to arrays (anything `save` accepts: `arrays.rs` borrows
//! their memory, copying only an array that is not C-order little-endian already), or a
//! `pyarrow.Table` / `RecordBatch`, whose columns `mmtensor._arrow` turns into NumPy arrays a
//! column at a time (never a copy per row).

use std::path::PathBuf;

use mmtensor_convert::{ColumnBatch, ConvertOptions, Fill};
use mmtensor_format::{ColumnSpec, Dtype};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PyTuple};

use crate::args::{self, parse_size};
use crate::arrays::ArrayBytes;
use crate::convert::dataset_summary;
use crate::errors::{convert_error, raise};
use crate::ragged::{tuple_text, Named, RaggedInput};

/// How the Rust writer is to be opened, when its columns come from the first batch.
struct Deferred {
    shard_size: Option<u64>,
    options: ConvertOptions,
    part: Option<u64>,
}

/// Where rows go: a dataset folder, or a dataset in object storage (shards staged locally and
/// uploaded as each is complete, the manifest put last, conditionally).
enum Sink {
    Local(mmtensor_convert::DatasetWriter),
    Remote(mmtensor_remote::RemoteDatasetWriter),
}

impl Sink {
    fn writer(&mut self) -> &mut mmtensor_convert::DatasetWriter {
        match self {
            Sink::Local(w) => w,
            Sink::Remote(w) => w.writer(),
        }
    }

    fn columns(&mut self) -> Vec<ColumnSpec> {
        self.writer().columns().to_vec()
    }

    fn rows_written(&mut self) -> u64 {
        self.writer().rows_written()
    }

    fn finish(self, py: Python<'_>) -> PyResult<mmtensor_convert::DatasetSummary> {
        match self {
            Sink::Local(w) => py
                .detach(move || w.finish())
                .map_err(|e| convert_error(py, e)),
            Sink::Remote(w) => py.detach(move || w.finish()).map_err(|e| sink_error(py, e)),
        }
    }

    fn abort(self, py: Python<'_>) {
        match self {
            Sink::Local(w) => py.detach(move || w.abort()),
            Sink::Remote(w) => py.detach(move || w.abort()),
        }
    }
}

/// A remote writer's error as the Python exception: the converter's as its own, the rest as the
/// remote datasets' (`open_dataset("s3://...")`) are.
fn sink_error(py: Python<'_>, e: mmtensor_remote::Error) -> PyErr {
    match e {
        mmtensor_remote::Error::Write(e) => convert_error(py, *e),
        other => crate::errors::remote_error(py, other),
    }
}

/// `path` as an object-storage URL, if it is one.
fn url_of(path: &std::path::Path) -> Option<String> {
    path.to_str()
        .filter(|p| p.contains("://"))
        .map(str::to_owned)
}

/// Where the writer is.
enum State {
    /// Columns to be inferred from the first batch.
    Waiting(Deferred),
    Open(Box<Sink>),
    /// Finished (the summary) or aborted (`None`).
    Closed(Option<Py<PyDict>>),
}

/// Streams rows into a dataset folder, batch by batch, with nothing visible until it finishes.
///
/// ```python
/// with mmtensor.DatasetWriter("train/", columns={"x": ("f32", (1024,)), "y": ("i64", ())},
///                             shard_size="1GiB") as w:
///     for xb, yb in batches():
///         w.write({"x": xb, "y": yb})
/// ```
///
/// `columns`: a dict of names to `(dtype, row_shape)` (or a dtype alone, for one value a row);
/// dtypes as `convert` takes them ("f32", np.float32, torch.bfloat16). A row shape starting with
/// `None` declares a ragged column, rows of different lengths: `("uint16", (None,))` for token
/// ids, `("float32", (None, 4))` for boxes (format 1.1). `None` takes them from the first batch
/// (its arrays' dtypes and shapes after the first axis; a column given as ragged rows is ragged),
/// or from the dataset when appending. `mode`: "create" (a new dataset; the folder may exist but must hold no manifest) or
/// "append" (rows after the dataset's own, checked against its columns; its last shard is filled
/// first, as `append` does; `fill=False` only adds shards). `part`: this writer is part `part` (an
/// int, e.g. a task index or a rank) of a write by many writers at once; `commit(path)` then
/// makes every part's rows visible together, in the order of the part ids. `shard_size`: data
/// bytes a shard holds at most (int or "256MiB"; default: the dataset's own, else 256 MiB).
/// `path` may be a URL (`s3://bucket/train/`, `gs://`, `az://`): shards are staged locally one at a
/// time, uploaded and checked as each is complete, and the manifest is put last with a
/// conditional put (a writer that loses a race raises and leaves nothing of its own); an append to
/// a bucket never rewrites its last shard.
/// `alignment`, `block_size`, `metadata`: as `convert`'s, for every shard.
///
/// `write(batch)`: a dict of every column's name to an array (NumPy of any byte and memory order,
/// torch CPU tensors, ml_dtypes, anything with `__array__` or `__dlpack__`) or a `pyarrow.Table` /
/// `RecordBatch`; each array's first axis is the batch's rows. A ragged column's value is a list of
/// arrays, one per row, each `(length,) + item_shape` (its rows are copied into one buffer), or a
/// `(values, lengths)` pair: the rows' items back to back and each row's length (a pyarrow
/// `list` or `large_list` column becomes one; null rows are refused). Dtypes must be the columns'
/// own (no silent casts) and the row shapes too: anything else raises before a byte of the batch
/// is written, and the writer goes on. Shards are cut at row boundaries and written as they fill;
/// memory stays bounded by the batch and a small buffer per column.
///
/// `finish()` (or the end of a `with` block) makes the rows visible at once: the manifest is
/// written (replaced, when appending) by an atomic rename; a part writer writes its part record
/// instead. It returns a summary dict (`path`, `shards`, `rows`, `shards_written`,
/// `rows_written`, ...). `abort()` (or an exception in the `with` block) deletes the shards
/// written and leaves the dataset exactly as it was; so does a writer that is garbage-collected
/// unfinished. A process killed mid-write leaves the previous dataset readable and complete, and
/// at most unlisted shard files that `prune` deletes.
#[pyclass(module = "mmtensor")]
pub(crate) struct DatasetWriter {
    path: PathBuf,
    state: State,
}

/// A dtype given as `convert` takes them, for column `name`.
fn column_dtype(name: &str, value: &Bound<'_, PyAny>) -> PyResult<Dtype> {
    args::dtype(&format!("DatasetWriter: column `{name}`"), value)
}

/// `columns={"x": ("f32", (3,)), "y": "i64"}` as column specs, in the dict's order.
fn columns_of(given: &Bound<'_, PyAny>) -> PyResult<Vec<ColumnSpec>> {
    let map = given.cast::<PyMapping>().map_err(|_| {
        PyTypeError::new_err(
            "DatasetWriter: columns must be a dict of names to (dtype, row_shape), e.g. {\"x\": (\"f32\", (1024,)), \"y\": (\"i64\", ())}",
        )
    })?;
    let mut columns = Vec::new();
    for item in map.items()?.iter() {
        let (name, spec): (String, Bound<'_, PyAny>) = item
            .extract()
            .map_err(|_| PyTypeError::new_err("DatasetWriter: column names must be str"))?;
        let (dtype, shape) = match spec.cast::<PyTuple>() {
            Ok(t) if t.len() == 2 => {
                let shape: Vec<Option<u64>> = t.get_item(1)?.extract().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "DatasetWriter: column `{name}`: the row shape must be a tuple of ints >= 0 (its first None for a ragged column), not {}",
                        t.get_item(1).and_then(|s| s.repr().map(|r| r.to_string())).unwrap_or_default()
                    ))
                })?;
                (column_dtype(&name, &t.get_item(0)?)?, shape)
            }
            _ => (column_dtype(&name, &spec)?, Vec::new()),
        };
        // `(None,) + item_shape`: a ragged column, rows of any length.
        let ragged = shape.first() == Some(&None);
        let fixed: Option<Vec<u64>> = shape.iter().skip(usize::from(ragged)).copied().collect();
        let Some(fixed) = fixed else {
            return Err(PyTypeError::new_err(format!(
                "DatasetWriter: column `{name}`: only the first axis of a row shape may be None (a ragged column: rows of any length), not {}",
                tuple_text_opt(&shape)
            )));
        };
        let column = if ragged {
            ColumnSpec::ragged(name.clone(), dtype, fixed)
        } else {
            ColumnSpec::new(name.clone(), dtype, fixed)
        }
        .map_err(|e| PyValueError::new_err(format!("DatasetWriter: column `{name}`: {e}")))?;
        columns.push(column);
    }
    Ok(columns)
}

/// The batch as (name, value) pairs: a mapping as it is, a pyarrow table or record batch through
/// `mmtensor._arrow.columns`.
fn batch_items<'py>(batch: &Bound<'py, PyAny>) -> PyResult<Vec<(String, Bound<'py, PyAny>)>> {
    let py = batch.py();
    let class = batch.get_type();
    let module = class.module()?.to_cow()?.into_owned();
    let batch = if module.starts_with("pyarrow") {
        py.import("mmtensor._arrow")?
            .call_method1("columns", (batch,))?
    } else {
        batch.clone()
    };
    let map = batch.cast::<PyMapping>().map_err(|_| {
        PyTypeError::new_err(format!(
            "DatasetWriter.write: a batch is a dict of column names to arrays, or a pyarrow Table or RecordBatch, not {}",
            class.name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    map.items()?
        .iter()
        .map(|item| {
            item.extract()
                .map_err(|_| PyTypeError::new_err("DatasetWriter.write: column names must be str"))
        })
        .collect()
}

impl DatasetWriter {
    fn closed(&self) -> PyErr {
        PyValueError::new_err(format!(
            "DatasetWriter({}) is finished or aborted: open a new one (mode=\"append\") to add rows",
            self.path.display()
        ))
    }

    /// Opens the Rust writer of `columns` (given, or inferred from a first batch).
    fn open(
        &self,
        py: Python<'_>,
        deferred: &Deferred,
        columns: Vec<ColumnSpec>,
    ) -> PyResult<Sink> {
        let path = self.path.clone();
        let options = deferred.options.clone();
        let (shard_size, part) = (deferred.shard_size, deferred.part);
        if let Some(url) = url_of(&path) {
            if part.is_some() {
                return Err(PyValueError::new_err(format!(
                    "DatasetWriter({url}, part=...): part writers write into a shared folder; write the parts to a local folder, commit, then `mmt push` it"
                )));
            }
            let store = mmtensor_remote::CacheOptions::default();
            return py
                .detach(move || {
                    mmtensor_remote::RemoteDatasetWriter::create(
                        &url, columns, shard_size, &options, &store,
                    )
                })
                .map(Sink::Remote)
                .map_err(|e| sink_error(py, e));
        }
        py.detach(move || match part {
            Some(id) => mmtensor_convert::DatasetWriter::part(
                &path,
                id,
                Some(columns),
                shard_size,
                &options,
            ),
            None => mmtensor_convert::DatasetWriter::create(
                &path,
                columns,
                shard_size.unwrap_or(mmtensor_convert::DEFAULT_SHARD_SIZE),
                &options,
            ),
        })
        .map(Sink::Local)
        .map_err(|e| convert_error(py, e))
    }
}

#[pymethods]
impl DatasetWriter {
    #[new]
    #[pyo3(signature = (path, columns=None, *, shard_size=None, mode="create", part=None, fill=true, alignment=4096, block_size=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        columns: Option<&Bound<'_, PyAny>>,
        shard_size: Option<&Bound<'_, PyAny>>,
        mode: &str,
        part: Option<u64>,
        fill: bool,
        alignment: u64,
        block_size: Option<u64>,
        metadata: Option<std::collections::BTreeMap<String, String>>,
    ) -> PyResult<DatasetWriter> {
        let columns = columns.map(columns_of).transpose()?;
        let shard_size = shard_size
            .map(|s| parse_size("shard_size", s))
            .transpose()?;
        let mut options = ConvertOptions::default();
        options.alignment = alignment;
        if let Some(b) = block_size {
            options.block_size = b;
        }
        options.metadata = metadata.unwrap_or_default();
        let deferred = Deferred {
            shard_size,
            options,
            part,
        };
        let mut writer = DatasetWriter {
            path: path.clone(),
            state: State::Closed(None),
        };
        let has_dataset =
            url_of(&path).is_none() && path.join(mmtensor_format::MANIFEST_FILE).exists();
        let state = match (mode, part, columns) {
            ("create" | "append", Some(_), columns) => match columns {
                Some(columns) => State::Open(Box::new(writer.open(py, &deferred, columns)?)),
                None if has_dataset => {
                    let (p, o) = (path.clone(), deferred.options.clone());
                    let id = part.expect("matched");
                    State::Open(Box::new(Sink::Local(
                        py.detach(move || {
                            mmtensor_convert::DatasetWriter::part(&p, id, None, shard_size, &o)
                        })
                        .map_err(|e| convert_error(py, e))?,
                    )))
                }
                None => State::Waiting(deferred),
            },
            ("create", None, Some(columns)) => {
                State::Open(Box::new(writer.open(py, &deferred, columns)?))
            }
            ("create", None, None) => {
                if has_dataset {
                    return Err(convert_error(
                        py,
                        mmtensor_convert::Error::DatasetExists { path },
                    ));
                }
                State::Waiting(deferred)
            }
            ("append", None, columns) => {
                let fill = if fill { Fill::LastShard } else { Fill::Never };
                let (p, o) = (path.clone(), deferred.options.clone());
                let mut sink = match url_of(&path) {
                    Some(url) => {
                        let store = mmtensor_remote::CacheOptions::default();
                        Sink::Remote(
                            py.detach(move || {
                                mmtensor_remote::RemoteDatasetWriter::append(
                                    &url, shard_size, &o, &store,
                                )
                            })
                            .map_err(|e| sink_error(py, e))?,
                        )
                    }
                    None => Sink::Local(
                        py.detach(move || {
                            mmtensor_convert::DatasetWriter::append(&p, shard_size, fill, &o)
                        })
                        .map_err(|e| convert_error(py, e))?,
                    ),
                };
                if let Some(given) = columns {
                    check_same_columns(py, &path, &sink.columns(), &given)?;
                }
                State::Open(Box::new(sink))
            }
            (other, _, _) => {
                return Err(PyValueError::new_err(format!(
                    "DatasetWriter: mode must be \"create\" or \"append\", not {other:?}"
                )))
            }
        };
        writer.state = state;
        Ok(writer)
    }

    /// Writes one batch: a dict of every column's name to an array whose first axis is the rows,
    /// or a pyarrow Table / RecordBatch. Returns the rows written so far.
    fn write(&mut self, py: Python<'_>, batch: &Bound<'_, PyAny>) -> PyResult<u64> {
        if matches!(self.state, State::Closed(_)) {
            return Err(self.closed());
        }
        let items = batch_items(batch)?;
        let known = match &mut self.state {
            State::Open(sink) => Some(sink.columns()),
            _ => None,
        };
        let arrays: Vec<(String, Given<'_>)> = items
            .iter()
            .map(|(name, value)| {
                let spec = known.iter().flatten().find(|c| c.name() == name);
                given(py, name, value, spec).map(|g| (name.clone(), g))
            })
            .collect::<PyResult<_>>()?;
        if let State::Waiting(deferred) = &self.state {
            let mut columns = Vec::with_capacity(arrays.len());
            for (name, g) in &arrays {
                let column = match g {
                    Given::Fixed(a) => {
                        let Some((_, row)) = a.shape().split_first() else {
                            return Err(batch_error(
                                py,
                                name,
                                "is a 0-d array: every column of a batch has the rows along its first axis"
                                    .into(),
                            ));
                        };
                        ColumnSpec::new(name.clone(), a.dtype(), row.to_vec())
                    }
                    Given::Ragged(r) => {
                        ColumnSpec::ragged(name.clone(), r.dtype(), r.item_shape().to_vec())
                    }
                };
                columns.push(column.map_err(|e| {
                    PyValueError::new_err(format!("DatasetWriter: column `{name}`: {e}"))
                })?);
            }
            let w = self.open(py, deferred, columns)?;
            self.state = State::Open(Box::new(w));
        }
        let State::Open(sink) = &mut self.state else {
            return Err(self.closed());
        };
        let writer = sink.writer();
        let (rows, slices) = batch_slices(py, writer.columns(), &arrays)?;
        let result = py.detach(|| writer.write_batch(rows, &slices));
        drop(slices);
        drop(arrays);
        result.map_err(|e| convert_error(py, e))?;
        Ok(writer.rows_written())
    }

    /// Makes every row written visible at once (the manifest, or a part's record) and returns a
    /// summary dict. Finishing twice returns the same summary.
    fn finish(&mut self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let state = std::mem::replace(&mut self.state, State::Closed(None));
        let summary = match state {
            State::Open(w) => {
                let summary = (*w).finish(py)?;
                dataset_summary(py, &summary)?.unbind()
            }
            State::Waiting(deferred) => {
                // No batch came, so no columns are known: there is nothing to write.
                self.state = State::Waiting(deferred);
                return Err(PyValueError::new_err(format!(
                    "DatasetWriter({}): no batch was written and no columns were given, so there is no dataset to make: pass columns= to make an empty one",
                    self.path.display()
                )));
            }
            State::Closed(Some(summary)) => summary,
            State::Closed(None) => return Err(self.closed()),
        };
        self.state = State::Closed(Some(summary.clone_ref(py)));
        Ok(summary)
    }

    /// Gives the write up: deletes the shards written and leaves the dataset as it was.
    fn abort(&mut self, py: Python<'_>) {
        if let State::Open(w) = std::mem::replace(&mut self.state, State::Closed(None)) {
            (*w).abort(py);
        }
    }

    /// The columns, as `{name: (dtype name, row shape)}` (empty until known); a ragged column's
    /// row shape is `(None,) + item_shape`.
    #[getter]
    fn columns<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        if let State::Open(w) = &mut self.state {
            for c in w.columns() {
                let shape = PyTuple::new(py, row_shape(&c))?;
                d.set_item(c.name(), (c.dtype().name(), shape))?;
            }
        }
        Ok(d)
    }

    /// Rows written so far.
    #[getter]
    fn rows_written(&mut self) -> u64 {
        match &mut self.state {
            State::Open(w) => w.rows_written(),
            _ => 0,
        }
    }

    /// The dataset folder.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Finishes the write, or aborts it when the block raised.
    fn __exit__(
        &mut self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if exc_type.is_some_and(|t| !t.is_none()) {
            self.abort(py);
            return Ok(false);
        }
        if matches!(self.state, State::Open(_) | State::Waiting(_)) {
            self.finish(py)?;
        }
        Ok(false)
    }

    fn __repr__(&mut self) -> String {
        let state = match &mut self.state {
            State::Waiting(_) => "waiting for its first batch".to_owned(),
            State::Open(w) => format!("{} rows written", w.rows_written()),
            State::Closed(Some(_)) => "finished".to_owned(),
            State::Closed(None) => "aborted".to_owned(),
        };
        format!(
            "DatasetWriter({:?}, {state})",
            self.path.display().to_string()
        )
    }
}

fn batch_error(py: Python<'_>, column: &str, reason: String) -> PyErr {
    raise(
        py,
        "ConvertError",
        format!(
            "DatasetWriter.write: column `{column}` {reason}; nothing of this batch was written"
        ),
        None,
        Some(column),
        None,
    )
}

/// One column of a batch as given: an array (rows along its first axis), or ragged rows.
enum Given<'py> {
    Fixed(ArrayBytes<'py>),
    Ragged(RaggedInput<'py>),
}

/// The value of column `name` of a batch, read as ragged rows (a list of arrays, a `(values,
/// lengths)` pair) or as an array; `spec` is the column, when the columns are known already: a
/// ragged one is checked against its dtype and item shape, and refuses an array.
fn given<'py>(
    py: Python<'py>,
    name: &str,
    value: &Bound<'py, PyAny>,
    spec: Option<&ColumnSpec>,
) -> PyResult<Given<'py>> {
    let what = format!("DatasetWriter.write: column `{name}`");
    let named = Named {
        what: &what,
        name,
        tail: "; nothing of this batch was written",
    };
    if let Some(c) = spec.filter(|c| !c.is_ragged()) {
        if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>() {
            return Err(batch_error(
                py,
                name,
                format!(
                    "has rows of shape {}: give one array with the rows along its first axis, \
                     not a {} of rows",
                    tuple_text(c.row_shape()),
                    value
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ),
            ));
        }
        return ArrayBytes::of(&what, value).map(Given::Fixed);
    }
    let expect = spec
        .filter(|c| c.is_ragged())
        .map(|c| (c.dtype(), c.row_shape()));
    if let Some(r) = RaggedInput::of(named, value, expect)? {
        return Ok(Given::Ragged(r));
    }
    if expect.is_some() {
        let shape = value
            .getattr("shape")
            .ok()
            .and_then(|s| s.extract::<Vec<u64>>().ok());
        let it = match shape {
            Some(shape) => format!("an array of shape {}", tuple_text(&shape)),
            None => format!(
                "a {}",
                value
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ),
        };
        return Err(batch_error(
            py,
            name,
            format!(
                "is ragged (rows of different lengths): give a list of arrays, one per row, or a \
                 (values, lengths) pair, not {it}"
            ),
        ));
    }
    ArrayBytes::of(&what, value).map(Given::Fixed)
}

/// A column's row shape as Python declares it: `(None,) + item_shape` for a ragged column.
fn row_shape(c: &ColumnSpec) -> Vec<Option<u64>> {
    let ragged = c.is_ragged().then_some(None);
    ragged
        .into_iter()
        .chain(c.row_shape().iter().map(|&d| Some(d)))
        .collect()
}

/// The batch's row count and its columns in the writer's column order, after checking that it
/// gives exactly the columns, each with the column's dtype and row shape (a ragged one as ragged
/// rows), and one row count.
fn batch_slices<'a>(
    py: Python<'_>,
    columns: &[ColumnSpec],
    arrays: &'a [(String, Given<'_>)],
) -> PyResult<(u64, Vec<ColumnBatch<'a>>)> {
    if let Some((name, _)) = arrays
        .iter()
        .find(|(n, _)| !columns.iter().any(|c| c.name() == n))
    {
        let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
        return Err(batch_error(
            py,
            name,
            format!(
                "is not a column of the dataset, whose columns are {}",
                names.join(", ")
            ),
        ));
    }
    let mut rows: Option<(u64, &str)> = None;
    let mut slices = Vec::with_capacity(columns.len());
    for c in columns {
        let Some((_, g)) = arrays.iter().find(|(n, _)| n == c.name()) else {
            return Err(batch_error(
                py,
                c.name(),
                "is missing: every batch gives every column".into(),
            ));
        };
        let a =
            match g {
                Given::Fixed(_) if c.is_ragged() => return Err(batch_error(
                    py,
                    c.name(),
                    "is ragged (rows of different lengths): give a list of arrays, one per row, \
                     or a (values, lengths) pair"
                        .into(),
                )),
                Given::Fixed(a) => a,
                Given::Ragged(_) if !c.is_ragged() => {
                    return Err(batch_error(
                        py,
                        c.name(),
                        format!(
                            "has rows of shape {}: give one array with the rows along its first \
                         axis, not ragged rows",
                            tuple_text(c.row_shape())
                        ),
                    ))
                }
                Given::Ragged(r) => {
                    // Checked against the column by `given` (or the column was made from it).
                    let n = r.lengths().len() as u64;
                    same_rows(py, &mut rows, c.name(), n)?;
                    slices.push(ColumnBatch::Ragged {
                        values: r.bytes(),
                        lengths: r.lengths(),
                    });
                    continue;
                }
            };
        if a.dtype() != c.dtype() {
            return Err(raise(
                py,
                "DtypeMismatchError",
                format!(
                    "DatasetWriter.write: column `{}` is {} in the dataset, but the batch gives {}: cast it first (e.g. x.astype(...)); nothing of this batch was written",
                    c.name(),
                    c.dtype().name(),
                    a.dtype().name()
                ),
                None,
                Some(c.name()),
                None,
            ));
        }
        let Some((&n, row)) = a.shape().split_first() else {
            return Err(batch_error(
                py,
                c.name(),
                "is a 0-d array: every column of a batch has the rows along its first axis".into(),
            ));
        };
        if row != c.row_shape() {
            return Err(batch_error(
                py,
                c.name(),
                format!(
                    "has rows of shape {} in the dataset, but the batch's array has shape {} (rows of shape {})",
                    tuple_text(c.row_shape()),
                    tuple_text(a.shape()),
                    tuple_text(row)
                ),
            ));
        }
        same_rows(py, &mut rows, c.name(), n)?;
        slices.push(ColumnBatch::Fixed(a.bytes()));
    }
    Ok((rows.map_or(0, |(r, _)| r), slices))
}

/// Refuses column `name`'s `n` rows unless they are the batch's first column's.
fn same_rows<'a>(
    py: Python<'_>,
    rows: &mut Option<(u64, &'a str)>,
    name: &'a str,
    n: u64,
) -> PyResult<()> {
    match *rows {
        Some((r, first)) if r != n => Err(batch_error(
            py,
            name,
            format!(
                "has {n} rows, but column `{first}` has {r}: every column of a batch has the same rows"
            ),
        )),
        Some(_) => Ok(()),
        None => {
            *rows = Some((n, name));
            Ok(())
        }
    }
}

/// `columns` given to an appending writer must be the dataset's own.
fn check_same_columns(
    py: Python<'_>,
    path: &std::path::Path,
    own: &[ColumnSpec],
    given: &[ColumnSpec],
) -> PyResult<()> {
    let same = own.len() == given.len() && own.iter().all(|c| given.iter().any(|g| g == c));
    if same {
        return Ok(());
    }
    let text = |cs: &[ColumnSpec]| {
        cs.iter()
            .map(|c| {
                format!(
                    "{}: {} {}",
                    c.name(),
                    c.dtype().name(),
                    tuple_text_opt(&row_shape(c))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(convert_error(
        py,
        mmtensor_convert::Error::SchemaMismatch {
            path: path.to_path_buf(),
            reason: format!(
                "the dataset's columns are {{{}}}, but columns= gives {{{}}}",
                text(own),
                text(given)
            ),
        },
    ))
}

/// Makes the rows of every finished part written into `path` (by `DatasetWriter(path, part=i)`)
/// visible at once, in the order of the part ids, and returns a summary dict. `parts`: the write
/// was made of parts `0..parts`, every one of which must have finished.
///
/// Nothing changes, and ConvertError names the parts, when a part is still being written, when a
/// part's writer died before it finished (write that part again), when an expected part is
/// missing, or when a part's columns are not the dataset's. The spec: docs/FORMAT.md, "Many
/// writers, one commit".
#[pyfunction]
#[pyo3(signature = (path, parts=None))]
pub(crate) fn commit<'py>(
    py: Python<'py>,
    path: PathBuf,
    parts: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    let summary = py
        .detach(|| mmtensor_convert::commit(&path, parts))
        .map_err(|e| convert_error(py, e))?;
    dataset_summary(py, &summary)
}

/// A shape with unknown axes as Python writes it: `(None, 4)`, `(3,)`.
fn tuple_text_opt(shape: &[Option<u64>]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| d.map_or_else(|| "None".to_owned(), |d| d.to_string()))
        .collect();
    match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    }
}
