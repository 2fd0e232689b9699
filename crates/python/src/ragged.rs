//! Ragged tensors (format 1.1: rows of different lengths, as values and row offsets) for Python:
//! the `RaggedTensor` class over `mmtensor::RaggedColumn` (a store's ragged tensor or a dataset's
//! ragged column: zero-copy rows, gathers as values and offsets or as a padded batch), and
//! [`RaggedInput`], ragged data given by Python (a list of row arrays, values and lengths) read
//! for `save` and `DatasetWriter.write`.
//!
//! Everything about the layout is the loader's and the converter's: this module reads arguments,
//! releases the GIL around the Rust calls and hands their bytes out as arrays.

use std::path::{Path, PathBuf};

use mmtensor::{Dtype, Pad, RaggedColumn};
use pyo3::exceptions::{PyImportError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyComplex, PyDict, PyFloat, PyInt, PyList, PyModule, PyTuple};

use crate::args::non_negative;
use crate::arrays::ArrayBytes;
use crate::errors::{load_error, message, no_ml_dtypes, raise};
use crate::exported::{writable_typed, Writable};
use crate::take::{target_dtype, Gather};
use crate::tensor::Tensor;

/// A ragged tensor of a store (`Store.ragged(name)`) or a ragged column of a dataset
/// (`Dataset.ragged(name)`): `len(t)` rows of different lengths, row `i` of shape
/// `(length_i,) + item_shape`.
///
/// `t[i]` (or `t.row(i)`; negative indices count from the end) is row `i` as a read-only NumPy
/// array viewing the file's bytes, no copy (`output="torch"`: a copy-on-write torch tensor, as
/// `Store.torch` gives); iterating gives every row so. `lengths()` is every row's length;
/// `take(indices)` gathers rows into `(values, offsets)`, `take_padded(indices, ...)` into one
/// padded `(batch, lengths)`, both new writable arrays, with the GIL released. A RaggedTensor
/// keeps the store's (or the shards') bytes alive by itself, so it stays usable after
/// `Store.close()`.
#[pyclass(frozen, sequence, module = "mmtensor", name = "RaggedTensor")]
pub(crate) struct RaggedTensor {
    pub(crate) col: RaggedColumn,
    /// The store's file or the dataset's folder, for messages.
    path: PathBuf,
}

impl RaggedTensor {
    /// The ragged tensor or column `col` of the store or dataset at `path`.
    pub(crate) fn new(col: RaggedColumn, path: &Path) -> RaggedTensor {
        RaggedTensor {
            col,
            path: path.to_owned(),
        }
    }

    /// Row index `i` as a row, Python's way: a negative index counts from the end; one outside
    /// `-n..n` is a RowRangeError (an IndexError, which also ends iteration).
    fn position(&self, py: Python<'_>, i: i64) -> PyResult<u64> {
        let n = self.col.num_rows();
        let p = if i < 0 {
            n.checked_sub(i.unsigned_abs())
        } else {
            Some(i.unsigned_abs())
        };
        match p {
            Some(p) if p < n => Ok(p),
            _ => Err(raise(
                py,
                "RowRangeError",
                format!(
                    "{}: ragged tensor `{}`: row index {i} is out of range for {n} rows (indices \
                     run from -{n} to {}; negative ones count from the end)",
                    self.path.display(),
                    self.col.name(),
                    n as i128 - 1
                ),
                Some(&self.path),
                Some(self.col.name()),
                None,
            )),
        }
    }

    /// The gather of this column's rows, for its index rules and NumPy dtype.
    fn gather(&self, dtype: Dtype) -> Gather<'_> {
        Gather {
            path: &self.path,
            name: self.col.name(),
            dtype,
            rows: self.col.num_rows(),
            row_shape: self.col.item_shape(),
        }
    }

    /// `bytes` as a new writable array (or torch tensor) of `dtype` and `shape`.
    fn array<'py>(
        &self,
        py: Python<'py>,
        bytes: Vec<u8>,
        shape: Vec<u64>,
        dtype: Dtype,
        torch: Option<&Bound<'py, PyModule>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let name = self.col.name();
        writable_typed(py, Writable::Heap(bytes), shape, dtype, torch, name, || {
            no_ml_dtypes(py, &self.path, name, dtype)
        })
    }

    /// Lengths or offsets as a new writable int64 array: the index type NumPy and torch compute
    /// with (torch has almost no uint64 arithmetic), like the loader's `NAME.lengths`. Every
    /// value counts items of one file, so it fits.
    fn u64_array<'py>(&self, py: Python<'py>, values: &[u64]) -> PyResult<Bound<'py, PyAny>> {
        let bytes = values
            .iter()
            .flat_map(|&v| (v.min(i64::MAX as u64) as i64).to_le_bytes())
            .collect();
        self.array(py, bytes, vec![values.len() as u64], Dtype::I64, None)
    }
}

/// `output=`: None for "numpy", the torch module for "torch".
fn output<'py>(py: Python<'py>, output: &str) -> PyResult<Option<Bound<'py, PyModule>>> {
    match output {
        "numpy" => Ok(None),
        "torch" => py.import("torch").map(Some).map_err(|e| {
            if e.is_instance_of::<PyImportError>(py) {
                PyImportError::new_err(
                    "output=\"torch\" needs PyTorch (`pip install torch`); output=\"numpy\" needs \
                     only NumPy",
                )
            } else {
                e
            }
        }),
        other => Err(PyValueError::new_err(format!(
            "output must be \"numpy\" or \"torch\", not {other:?}"
        ))),
    }
}

/// A `take_padded` error: its refusals of the padding asked for (`Error::Windows` from a gather,
/// never from a loader here) are RaggedErrors; the rest as the loader's are.
fn padded_error(py: Python<'_>, err: mmtensor::Error) -> PyErr {
    match &err {
        mmtensor::Error::Windows { path, column, .. } => raise(
            py,
            "RaggedError",
            message(&err),
            Some(path),
            Some(column),
            None,
        ),
        _ => load_error(py, err),
    }
}

#[pymethods]
impl RaggedTensor {
    /// The tensor's (or column's) name.
    #[getter]
    fn name(&self) -> &str {
        self.col.name()
    }

    /// The values' dtype as the file names it: "U16", "F32", ...
    #[getter]
    fn dtype(&self) -> &'static str {
        self.col.dtype().name()
    }

    /// The NumPy (or ml_dtypes) name of the dtype: "uint16", "float32", "bfloat16", ...
    #[getter]
    fn numpy_dtype(&self) -> &'static str {
        self.col.dtype().numpy_name()
    }

    /// The shape of one item of a row: row `i` has shape `(length_i,) + item_shape` (`()` for
    /// token ids).
    #[getter]
    fn item_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.col.item_shape())
    }

    /// The number of rows (as `len(t)`).
    #[getter]
    fn num_rows(&self) -> u64 {
        self.col.num_rows()
    }

    /// The number of items of every row together (of the open shards, for a dataset opened for
    /// one rank).
    #[getter]
    fn num_values(&self) -> u64 {
        self.col.num_values()
    }

    /// The store's file, or the dataset's folder.
    #[getter]
    fn path(&self) -> String {
        self.path.display().to_string()
    }

    fn __len__(&self) -> PyResult<usize> {
        usize::try_from(self.col.num_rows()).map_err(|_| PyValueError::new_err("too many rows"))
    }

    /// Row `i` (negative ones count from the end) as a read-only NumPy array of shape
    /// `(length,) + item_shape` viewing the file's bytes: no copy (`output="torch"`: a
    /// copy-on-write torch tensor over them, as `Store.torch` gives). RowRangeError (an
    /// IndexError) out of range; ShardNotOpenError for a row of a shard the dataset was opened
    /// without.
    #[pyo3(signature = (i, output="numpy"))]
    pub(crate) fn row<'py>(
        &self,
        py: Python<'py>,
        i: i64,
        output: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let torch = self::output(py, output)?;
        let p = self.position(py, i)?;
        let t = Tensor {
            t: self.col.row(p).map_err(|e| load_error(py, e))?,
        };
        match torch {
            Some(_) => t.torch(py),
            None => t.numpy(py, None),
        }
    }

    /// `t[i]`: row `i` as `row(i)` gives it (a zero-copy read-only NumPy array).
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let i: i64 = key.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "ragged tensor `{}`: an index is one row's number (an int), not {}: \
                 take(indices) gathers several rows",
                self.col.name(),
                key.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        self.row(py, i, "numpy")
    }

    /// Every row's length, as a new int64 array of `len(t)` entries.
    fn lengths<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let col = self.col.clone();
        let lengths = py
            .detach(move || {
                (0..col.num_rows())
                    .map(|r| col.row_len(r))
                    .collect::<mmtensor::Result<Vec<u64>>>()
            })
            .map_err(|e| load_error(py, e))?;
        self.u64_array(py, &lengths)
    }

    /// Gathers rows `indices` (a 1-d integer array-like, any order, repeats; negative ones count
    /// from the end) into `(values, offsets)`: the rows' items back to back, a new writable array
    /// of shape `(items,) + item_shape`, and `len(indices) + 1` int64 offsets into it (row `k` is
    /// `values[offsets[k]:offsets[k + 1]]`), as Arrow lays out a list array. The GIL is released
    /// while the rows are copied. `output="torch"` gives torch tensors.
    #[pyo3(signature = (indices, output="numpy"))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        output: &str,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let torch = self::output(py, output)?;
        let positions =
            self.gather(self.col.dtype())
                .positions(py, indices, self.col.num_rows())?;
        let col = self.col.clone();
        let batch = py
            .detach(move || col.take(&positions))
            .map_err(|e| load_error(py, e))?;
        let items = batch.offsets.last().copied().unwrap_or(0);
        let mut shape = vec![items];
        shape.extend_from_slice(self.col.item_shape());
        let values = self.array(py, batch.values, shape, batch.dtype, torch.as_ref())?;
        let mut offsets = self.u64_array(py, &batch.offsets)?;
        if let Some(torch) = &torch {
            offsets = torch.getattr("from_numpy")?.call1((offsets,))?;
        }
        PyTuple::new(py, [values, offsets])
    }

    /// Gathers rows `indices` (as `take` reads them) into one batch of shape
    /// `(len(indices), length) + item_shape`, each row's items then `pad_value` up to `length`,
    /// and returns `(batch, lengths)`: the batch and each row's length before padding (int64).
    ///
    /// `length` is the longest row of the batch, or `pad_to`, rounded up to a multiple of
    /// `multiple_of` (8 suits tensor cores). A row longer than `pad_to` raises RaggedError
    /// naming it, unless `truncate=True` cuts it (its length is then `pad_to`). `dtype` ("int64",
    /// a NumPy or torch dtype) casts the items as they are copied (only casts that cannot fail on
    /// a value, else UnsupportedDtypeError); `pad_value` (default 0) must be one number, and one an
    /// integer or bool dtype holds exactly (ValueError otherwise: -1 is no uint16). New writable arrays, the GIL released while the
    /// rows are copied; `output="torch"` gives torch tensors.
    #[pyo3(signature = (indices, pad_value=None, pad_to=None, multiple_of=None, truncate=false, dtype=None, output="numpy"))]
    #[allow(clippy::too_many_arguments)]
    fn take_padded<'py>(
        &self,
        py: Python<'py>,
        indices: &Bound<'py, PyAny>,
        pad_value: Option<&Bound<'py, PyAny>>,
        pad_to: Option<&Bound<'py, PyAny>>,
        multiple_of: Option<&Bound<'py, PyAny>>,
        truncate: bool,
        dtype: Option<&Bound<'py, PyAny>>,
        output: &str,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let torch = self::output(py, output)?;
        let name = self.col.name();
        let to = target_dtype(name, self.col.dtype(), dtype)?;
        let gather = self.gather(to);
        let positions = gather.positions(py, indices, self.col.num_rows())?;
        let value = pad_bytes(py, name, pad_value, &gather.numpy_dtype_object(py)?)?;
        let pad = Pad {
            value,
            to: pad_to
                .filter(|v| !v.is_none())
                .map(|v| non_negative("pad_to", v))
                .transpose()?,
            multiple_of: match multiple_of {
                Some(m) => non_negative("multiple_of", m)?,
                None => 1,
            },
            truncate,
            dtype: Some(to),
        };
        let col = self.col.clone();
        let batch = py
            .detach(move || col.take_padded(&positions, &pad))
            .map_err(|e| padded_error(py, e))?;
        let data = self.array(py, batch.data, batch.shape, batch.dtype, torch.as_ref())?;
        let mut lengths = self.u64_array(py, &batch.lengths)?;
        if let Some(torch) = &torch {
            lengths = torch.getattr("from_numpy")?.call1((lengths,))?;
        }
        PyTuple::new(py, [data, lengths])
    }

    fn __repr__(&self) -> String {
        let item: Vec<String> = std::iter::once("*".to_owned())
            .chain(self.col.item_shape().iter().map(u64::to_string))
            .collect();
        format!(
            "<mmtensor.RaggedTensor `{}`: {} rows of {}[{}], {} values in {}>",
            self.col.name(),
            self.col.num_rows(),
            self.col.dtype(),
            item.join(", "),
            self.col.num_values(),
            self.path.display()
        )
    }
}

/// `pad_value` (default 0) as one little-endian element of `dtype` (a NumPy dtype object), or a
/// ValueError naming the tensor when it is not one number, or not one that an integer or bool
/// `dtype` holds exactly (a float one rounds it).
pub(crate) fn pad_bytes(
    py: Python<'_>,
    name: &str,
    pad_value: Option<&Bound<'_, PyAny>>,
    dtype: &Bound<'_, PyAny>,
) -> PyResult<Vec<u8>> {
    let np = py.import("numpy")?;
    let zero = 0i64.into_pyobject(py)?.into_any();
    let given = pad_value.filter(|v| !v.is_none()).unwrap_or(&zero);
    let refuse = |why: String| {
        PyValueError::new_err(format!(
            "take_padded of `{name}`: pad_value {} is not a {} value{why}",
            given.repr().map(|r| r.to_string()).unwrap_or_default(),
            dtype.str().map(|s| s.to_string()).unwrap_or_default(),
        ))
    };
    let exact = || -> PyResult<Result<Vec<u8>, String>> {
        let original = match np.call_method1("asarray", (given,)) {
            Ok(a) => a,
            Err(e) => return Ok(Err(format!(": {}", e.value(py)))),
        };
        if original.getattr("ndim")?.extract::<usize>()? != 0 {
            return Ok(Err(": give one number".into()));
        }
        let value = match np.call_method1("asarray", (given, dtype)) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!(": {}", e.value(py)))),
        };
        // An integer or bool value must come back as given (-1 is no uint16, 0.5 no int); a
        // float rounds to the nearest.
        let kind: String = dtype.getattr("kind")?.extract()?;
        if !matches!(kind.as_str(), "i" | "u" | "b") {
            let bytes = value.call_method0("tobytes")?;
            return Ok(Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec()));
        }
        let back = value.call_method1("astype", (original.getattr("dtype")?,))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("equal_nan", true)?;
        let same = np
            .getattr("array_equal")?
            .call((&back, &original), Some(&kwargs))
            .and_then(|s| s.is_truthy())
            .unwrap_or(false);
        if !same {
            return Ok(Err(String::new()));
        }
        let bytes = value.call_method0("tobytes")?;
        Ok(Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec()))
    };
    match exact() {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(why)) => Err(refuse(why)),
        // A NumPy conversion that raised something else (an object NumPy cannot read).
        Err(e) => Err(refuse(format!(": {}", e.value(py)))),
    }
}

// ---------------------------------------------------------------------------------------------
// Ragged data given by Python
// ---------------------------------------------------------------------------------------------

/// The values of a [`RaggedInput`]: the caller's array, borrowed, or rows copied into one.
enum Values<'py> {
    Borrowed(ArrayBytes<'py>),
    Owned(Vec<u8>),
}

/// Ragged data given by Python for a tensor or column: its values (C order, little-endian), their
/// shape `[items] + item_shape`, their dtype and each row's length.
pub(crate) struct RaggedInput<'py> {
    values: Values<'py>,
    shape: Vec<u64>,
    dtype: Dtype,
    lengths: Vec<u64>,
}

/// What a column given as ragged must be: its dtype and item shape.
pub(crate) type Expect<'a> = Option<(Dtype, &'a [u64])>;

/// How [`RaggedInput::of`] names what it reads in errors: `what` starts each message ("save:
/// tensor `x`"), `name` is the exception's `tensor`, `tail` ends each message ("; nothing was
/// written").
#[derive(Clone, Copy)]
pub(crate) struct Named<'a> {
    pub(crate) what: &'a str,
    pub(crate) name: &'a str,
    pub(crate) tail: &'a str,
}

impl Named<'_> {
    fn error(&self, py: Python<'_>, class: &str, reason: String) -> PyErr {
        raise(
            py,
            class,
            format!("{}: {reason}{}", self.what, self.tail),
            None,
            Some(self.name),
            None,
        )
    }
}

impl<'py> RaggedInput<'py> {
    /// `value` as ragged data, or `None` when it is not given as such: a list of arrays (one per
    /// row, each of shape `(length,) + item_shape`; anything `save` takes as an array), a
    /// `(values, lengths)` pair (the rows' items back to back, and each row's length: 1-d
    /// non-negative integers adding up to `len(values)`), or a RaggedTensor (its rows, copied).
    ///
    /// With `expect`, the values must have that dtype (DtypeMismatchError otherwise) and item
    /// shape; without, a list's rows must agree with its first row (and an empty list is refused:
    /// its dtype is unknown). Every other refusal is a ConvertError (a ValueError).
    pub(crate) fn of(
        named: Named<'_>,
        value: &Bound<'py, PyAny>,
        expect: Expect<'_>,
    ) -> PyResult<Option<RaggedInput<'py>>> {
        let py = value.py();
        let input = if let Ok(list) = value.cast::<PyList>() {
            RaggedInput::of_rows(named, list, expect)?
        } else if let Ok(pair) = value.cast::<PyTuple>() {
            RaggedInput::of_pair(named, pair)?
        } else if let Ok(t) = value.cast::<RaggedTensor>() {
            let col = t.get().col.clone();
            let all: Vec<u64> = (0..col.num_rows()).collect();
            let batch = py
                .detach(move || col.take(&all))
                .map_err(|e| load_error(py, e))?;
            let mut shape = vec![batch.offsets.last().copied().unwrap_or(0)];
            shape.extend_from_slice(t.get().col.item_shape());
            RaggedInput {
                lengths: batch.offsets.windows(2).map(|w| w[1] - w[0]).collect(),
                values: Values::Owned(batch.values),
                shape,
                dtype: batch.dtype,
            }
        } else {
            return Ok(None);
        };
        if let Some((dtype, item_shape)) = expect {
            input.check(named, py, dtype, item_shape, "the column")?;
        }
        Ok(Some(input))
    }

    /// Refuses values of another dtype or item shape than `dtype` and `item_shape`, `whose`
    /// (the column, row 0).
    fn check(
        &self,
        named: Named<'_>,
        py: Python<'_>,
        dtype: Dtype,
        item_shape: &[u64],
        whose: &str,
    ) -> PyResult<()> {
        if self.dtype != dtype {
            return Err(named.error(
                py,
                "DtypeMismatchError",
                format!(
                    "its values are {}, but {whose} is {}: cast them first (e.g. x.astype(...))",
                    self.dtype.name(),
                    dtype.name()
                ),
            ));
        }
        if self.item_shape() != item_shape {
            return Err(named.error(
                py,
                "ConvertError",
                format!(
                    "its items have shape {}, but {whose} has items of shape {}",
                    tuple_text(self.item_shape()),
                    tuple_text(item_shape)
                ),
            ));
        }
        Ok(())
    }

    /// A list of row arrays, concatenated (without the GIL).
    fn of_rows(
        named: Named<'_>,
        list: &Bound<'py, PyList>,
        expect: Expect<'_>,
    ) -> PyResult<RaggedInput<'py>> {
        let py = list.py();
        let mut rows = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            if item.is_instance_of::<PyInt>()
                || item.is_instance_of::<PyFloat>()
                || item.is_instance_of::<PyComplex>()
            {
                return Err(PyTypeError::new_err(format!(
                    "{}: a list is a ragged tensor's rows, one array each, but item {i} is a \
                     number ({}): for a tensor of these numbers give np.array([...])",
                    named.what,
                    item.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                )));
            }
            let row = ArrayBytes::of(&format!("{}: row {i}", named.what), &item)?;
            if row.shape().is_empty() {
                return Err(named.error(
                    py,
                    "ConvertError",
                    format!(
                        "row {i} is a 0-d array: each row is an array of shape (length,) + \
                         item_shape"
                    ),
                ));
            }
            let (dtype, item_shape, whose) = match (expect, rows.first()) {
                (Some((d, s)), _) => (d, s, "the column".to_owned()),
                (None, Some(first)) => {
                    let first: &ArrayBytes<'_> = first;
                    (first.dtype(), &first.shape()[1..], "row 0".to_owned())
                }
                (None, None) => (row.dtype(), &row.shape()[1..], String::new()),
            };
            if row.dtype() != dtype {
                return Err(named.error(
                    py,
                    "DtypeMismatchError",
                    format!(
                        "row {i} is {}, but {whose} is {}: every row has the column's dtype (cast \
                         it first, e.g. x.astype(...))",
                        row.dtype().name(),
                        dtype.name()
                    ),
                ));
            }
            if &row.shape()[1..] != item_shape {
                return Err(named.error(
                    py,
                    "ConvertError",
                    format!(
                        "row {i} has shape {}, so items of shape {}, but {whose} has items of \
                         shape {}",
                        tuple_text(row.shape()),
                        tuple_text(&row.shape()[1..]),
                        tuple_text(item_shape)
                    ),
                ));
            }
            rows.push(row);
        }
        let (dtype, item_shape) =
            match (expect, rows.first()) {
                (Some((d, s)), _) => (d, s.to_vec()),
                (None, Some(first)) => (first.dtype(), first.shape()[1..].to_vec()),
                (None, None) => return Err(named.error(
                    py,
                    "ConvertError",
                    "is an empty list of rows, whose dtype and item shape cannot be known: give \
                     them (DatasetWriter's columns=), or give (values, lengths) arrays"
                        .into(),
                )),
            };
        let lengths: Vec<u64> = rows.iter().map(|r| r.shape()[0]).collect();
        let slices: Vec<&[u8]> = rows.iter().map(ArrayBytes::bytes).collect();
        let values = py.detach(|| slices.concat());
        drop(rows);
        let mut shape = vec![lengths.iter().sum()];
        shape.extend(item_shape);
        Ok(RaggedInput {
            values: Values::Owned(values),
            shape,
            dtype,
            lengths,
        })
    }

    /// A `(values, lengths)` pair: the values borrowed, the lengths read as u64s.
    fn of_pair(named: Named<'_>, pair: &Bound<'py, PyTuple>) -> PyResult<RaggedInput<'py>> {
        let py = pair.py();
        if pair.len() != 2 {
            return Err(named.error(
                py,
                "ConvertError",
                format!(
                    "is a tuple of {} items; ragged rows are a list of arrays (one per row) or a \
                     (values, lengths) pair",
                    pair.len()
                ),
            ));
        }
        let values = ArrayBytes::of(&format!("{}: values", named.what), &pair.get_item(0)?)?;
        if values.shape().is_empty() {
            return Err(named.error(
                py,
                "ConvertError",
                "its values are a 0-d array: they are the rows' items back to back, an array of \
                 shape (items,) + item_shape"
                    .into(),
            ));
        }
        let lengths = lengths_of(named, &pair.get_item(1)?)?;
        let total = lengths.iter().try_fold(0u64, |a, &l| a.checked_add(l));
        if total != Some(values.shape()[0]) {
            return Err(named.error(
                py,
                "ConvertError",
                format!(
                    "its {} lengths add up to {} items, but its values have {} (their first axis)",
                    lengths.len(),
                    total.map_or("more than 2^64".to_owned(), |t| t.to_string()),
                    values.shape()[0]
                ),
            ));
        }
        Ok(RaggedInput {
            shape: values.shape().to_vec(),
            dtype: values.dtype(),
            values: Values::Borrowed(values),
            lengths,
        })
    }

    /// The rows' items back to back, C order, little-endian.
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.values {
            Values::Borrowed(a) => a.bytes(),
            Values::Owned(v) => v,
        }
    }

    /// The values' shape: `[items] + item_shape`.
    pub(crate) fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The shape of one item.
    pub(crate) fn item_shape(&self) -> &[u64] {
        &self.shape[1..]
    }

    pub(crate) fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Each row's length.
    pub(crate) fn lengths(&self) -> &[u64] {
        &self.lengths
    }
}

/// A lengths argument: a 1-d array-like of non-negative integers, as u64s.
fn lengths_of(named: Named<'_>, value: &Bound<'_, PyAny>) -> PyResult<Vec<u64>> {
    let py = value.py();
    let refuse = |reason: String| {
        named.error(
            py,
            "ConvertError",
            format!(
                "its lengths {reason}: they are a 1-d array of non-negative integers, one per row"
            ),
        )
    };
    let np = py.import("numpy")?;
    let arr = np
        .call_method1("asarray", (value,))
        .map_err(|e| refuse(format!("cannot be read as an array ({})", e.value(py))))?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    if ndim != 1 {
        return Err(refuse(format!("are an array of {ndim} dimensions")));
    }
    if arr.getattr("size")?.extract::<usize>()? == 0 {
        return Ok(Vec::new());
    }
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    match kind.as_str() {
        "u" => {}
        "i" => {
            if arr.call_method0("min")?.extract::<i64>()? < 0 {
                return Err(refuse(format!(
                    "hold {}",
                    arr.call_method0("min")?.extract::<i64>()?
                )));
            }
        }
        _ => {
            return Err(refuse(format!(
                "are of dtype {}",
                arr.getattr("dtype")?.str()?
            )))
        }
    }
    let wide = arr.call_method1("astype", ("<u8",))?;
    let bytes = wide.call_method0("tobytes")?;
    Ok(bytes
        .cast::<PyBytes>()?
        .as_bytes()
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect())
}

/// A shape as Python writes it: `(3,)`, `(2, 4)`, `()`.
pub(crate) fn tuple_text(shape: &[u64]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
