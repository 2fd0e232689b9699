//! `export`: a store's tensors back out as `.npy` files or one `.safetensors` file, through the
//! converter's `mmtensor_convert::export` (the one `mmt export` uses).

use std::path::PathBuf;

use mmtensor_convert::export::ExportFormat;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{convert_error, load_error};
use crate::open::{open_handle, Store};

/// Writes every tensor of a store to `output`, exactly as `mmt export` does, and returns a summary
/// dict (`path`, `tensors`, `bytes`: the tensor data bytes written).
///
/// `source`: an open Store, or the path of a .mmt, .safetensors or .npy file, opened as
/// `open(source, copy=copy)` does (mapped by default, with the same contract: nobody may write
/// the file while it is open). `to="npy"`: `output` is a folder (created if missing) holding one
/// `NAME.npy` per tensor (`/` and other unsafe characters in names percent-encoded);
/// `to="safetensors"`: one file, with the store's metadata as `__metadata__`.
///
/// Every file appears only when complete (temp file, fsync, rename over the target), so exporting
/// onto a path that is open elsewhere is safe. The GIL is released while it runs.
///
/// `to="megatron"`: the ragged column `column` (default "tokens") of a dataset folder or `.mmt`
/// file `source` (a path) as the Megatron-LM indexed dataset `output.bin` + `output.idx`, as `mmt
/// export --to megatron` writes it (the summary is then `bin`, `idx`, `sequences`, `tokens`).
///
/// Raises StoreClosedError, StoreNotFoundError, UnsupportedDtypeError (a dtype safetensors cannot
/// hold, such as C128: export it as .npy), NeedsConvertError, MmtOSError, ValueError for an
/// unknown `to`.
#[pyfunction]
#[pyo3(signature = (source, output, to="npy", *, copy=false, column="tokens"))]
pub(crate) fn export<'py>(
    py: Python<'py>,
    source: &Bound<'py, PyAny>,
    output: PathBuf,
    to: &str,
    copy: bool,
    column: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let format = match to.to_ascii_lowercase().as_str() {
        "npy" => ExportFormat::Npy,
        "safetensors" => ExportFormat::Safetensors,
        "megatron" => {
            let path: PathBuf = source.extract().map_err(|_| {
                PyTypeError::new_err(
                    "export to megatron: `source` must be the path of a dataset folder or .mmt file",
                )
            })?;
            let done = py
                .detach(|| mmtensor_convert::tokens::export_megatron(&path, column, &output))
                .map_err(|e| convert_error(py, e))?;
            let d = PyDict::new(py);
            d.set_item("bin", done.bin.display().to_string())?;
            d.set_item("idx", done.idx.display().to_string())?;
            d.set_item("sequences", done.sequences)?;
            d.set_item("tokens", done.tokens)?;
            return Ok(d);
        }
        _ => {
            return Err(PyValueError::new_err(format!(
                "export: unknown format {to:?}: use to=\"npy\", \"safetensors\" or \"megatron\""
            )))
        }
    };
    let store = match source.cast::<Store>() {
        Ok(store) => store.get().handle(py)?,
        Err(_) => {
            let path: PathBuf = source.extract().map_err(|_| {
                PyTypeError::new_err(
                    "export: `source` must be a Store or a path (str or os.PathLike)",
                )
            })?;
            py.detach(|| open_handle(&path, copy, None))
                .map_err(|e| load_error(py, e))?
        }
    };
    let summary = py
        .detach(|| mmtensor_convert::export::export(&store, format, &output))
        .map_err(|e| convert_error(py, e))?;
    let d = PyDict::new(py);
    d.set_item("path", summary.path.display().to_string())?;
    d.set_item("tensors", summary.tensors)?;
    d.set_item("bytes", summary.bytes)?;
    Ok(d)
}
