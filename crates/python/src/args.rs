//! Arguments from Python read as Rust values: counts, sizes, dtypes, column lists and advice, one
//! reader each, so that every function that takes one accepts the same spellings and refuses the
//! rest with the same message.

use mmtensor::{Advice, Dtype};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyString};

use crate::errors::raise;

/// `numpy.dtype`, looked up once.
static NUMPY_DTYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `numpy.dtype`: what reads a dtype argument the way NumPy does (and makes the dtype object of a
/// type string).
pub(crate) fn numpy_dtype(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    let np_dtype = NUMPY_DTYPE.get_or_try_init(py, || {
        py.import("numpy")?.getattr("dtype").map(Bound::unbind)
    })?;
    Ok(np_dtype.bind(py))
}

/// A non-negative integer argument `name` as a u64: a TypeError for a bool or a non-integer, a
/// LoaderError (a ValueError) naming it for a negative or too large number. The Loader's counts
/// and `open_dataset`'s rank take it.
pub(crate) fn non_negative(name: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    if value.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an integer, not a bool"
        )));
    }
    let v: i128 = value
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be an integer")))?;
    u64::try_from(v).map_err(|_| {
        raise(
            value.py(),
            "LoaderError",
            format!("{name} must be an integer from 0 to 2**64 - 1, not {v}"),
            None,
            None,
            None,
        )
    })
}

/// A size argument `name`: an int of bytes, or a string of a number and a unit, read as the CLI
/// reads one (`mmtensor_format::parse_size`: KB = 10^3, KiB = K = 2^10, case-insensitive).
pub(crate) fn parse_size(name: &str, v: &Bound<'_, PyAny>) -> PyResult<u64> {
    // A bool is an int to Python (and to `extract`): `shard_size=True` would be one byte.
    if v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a number of bytes or a string such as \"200GiB\", not a bool"
        )));
    }
    if let Ok(n) = v.extract::<u64>() {
        return Ok(n);
    }
    let bad = || {
        PyValueError::new_err(format!(
            "{name} must be a number of bytes or a string such as \"200GiB\", not {}",
            v.repr().map(|r| r.to_string()).unwrap_or_default()
        ))
    };
    let s: String = v.extract().map_err(|_| bad())?;
    // The one parser of every interface: `shard_size="1GB"` is `--shard-size 1GB`.
    mmtensor_format::parse_size(&s).map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

/// A `columns=` argument: None (every tensor, or the default columns) or a sequence of tensor
/// names. One str is refused (it would be a list of its characters), as RowDataset refuses it.
pub(crate) fn columns(columns: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<String>>> {
    let Some(cols) = columns.filter(|c| !c.is_none()) else {
        return Ok(None);
    };
    if cols.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "columns must be a list of tensor names, not one string (write [{}])",
            cols.repr()?
        )));
    }
    let refuse = || PyTypeError::new_err("columns must be a list of tensor names");
    cols.try_iter()
        .map_err(|_| refuse())?
        .map(|c| c.and_then(|c| c.extract::<String>()).map_err(|_| refuse()))
        .collect::<PyResult<_>>()
        .map(Some)
}

/// An `advice` argument: "normal", "sequential", "random" or "willneed" (madvise), in any case,
/// with or without `_` and `-`.
pub(crate) fn advice(text: &str) -> PyResult<Advice> {
    Ok(match text.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
        "normal" => Advice::Normal,
        "sequential" => Advice::Sequential,
        "random" => Advice::Random,
        "willneed" => Advice::WillNeed,
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown advice {text:?}: use \"normal\", \"sequential\", \"random\" or \"willneed\""
            )))
        }
    })
}

/// A dtype given as a str, a torch dtype (`torch.float16`), or anything `numpy.dtype()` accepts
/// (np.float16, ml_dtypes.bfloat16), as its name. `what` names the argument in the error for
/// anything else. `convert(dtype=...)`, `take(..., dtype=...)` and `Loader(..., dtype=...)` all
/// read theirs here, so that they accept the same spellings.
pub(crate) fn dtype_text(what: &str, dt: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = dt.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    let py = dt.py();
    // `str(torch.float16)` is "torch.float16", and torch's names are NumPy's (ml_dtypes' for
    // bfloat16 and fp8), which the dtype parser knows, so torch need not be imported to read one.
    let class = dt.get_type();
    if class.name()?.to_cow()? == "dtype" && class.module()?.to_cow()? == "torch" {
        let text = dt.str()?.to_cow()?.into_owned();
        return Ok(text.strip_prefix("torch.").unwrap_or(&text).to_owned());
    }
    match numpy_dtype(py)?.call1((dt,)) {
        Ok(d) => d.getattr("name")?.extract(),
        Err(e) => Err(PyTypeError::new_err(format!(
            "{what}: cannot read {} as a dtype: give a name such as \"bf16\" or \"float32\", or a \
             NumPy or torch dtype ({})",
            dt.repr()?,
            e.value(py)
        ))),
    }
}

/// `dt` as a dtype: read by [`dtype_text`], then parsed as `Dtype::parse_loose` parses a name,
/// so "int64", "<i8", `np.int64` and `torch.int64` are all `I64` (and "i8" is the 8-bit `I8`, as
/// in `.mmt` names). `what` names the argument in errors: TypeError for an object that is not a
/// dtype, UnsupportedDtypeError (a TypeError too) for a name mmtensor has no dtype for.
pub(crate) fn dtype(what: &str, dt: &Bound<'_, PyAny>) -> PyResult<Dtype> {
    let text = dtype_text(what, dt)?;
    Dtype::parse_loose(&text).ok_or_else(|| {
        raise(
            dt.py(),
            "UnsupportedDtypeError",
            format!(
                "{what}: {text:?} is not a dtype mmtensor has: give a name such as \"int64\", \
                 \"float32\" or \"bf16\", or a NumPy or torch dtype"
            ),
            None,
            None,
            None,
        )
    })
}
