//! A dtype argument from Python: a name, a NumPy dtype (or anything `numpy.dtype()` reads) or a
//! torch dtype, as `convert(dtype=...)`, `take(..., dtype=...)` and `Loader(..., dtype=...)` take
//! it. One reader for all three, so that they accept the same spellings.

use mmtensor::Dtype;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::raise;
use crate::tensor::NUMPY_DTYPE;

/// A dtype given as a str, a torch dtype (`torch.float16`), or anything `numpy.dtype()` accepts
/// (np.float16, ml_dtypes.bfloat16). `what` names the argument in the error for anything else.
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
    let np_dtype = NUMPY_DTYPE.get_or_try_init(py, || {
        py.import("numpy")?.getattr("dtype").map(Bound::unbind)
    })?;
    match np_dtype.bind(py).call1((dt,)) {
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
pub(crate) fn dtype_arg(what: &str, dt: &Bound<'_, PyAny>) -> PyResult<Dtype> {
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
