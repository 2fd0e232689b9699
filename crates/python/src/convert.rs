//! `convert`: the Python arguments (inputs, dtype rules) turned into the converter's, and Ctrl-C
//! handling while it runs without the GIL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use mmtensor_convert::{ConvertOptions, DtypeRules, Fill, Input, InputSource, Progress};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping, PyString};

use crate::args::{self, dtype_text, parse_size};
use crate::errors::{self, convert_error, raise};

/// Ctrl-C during `convert`: the conversion runs without the GIL, and this progress sink looks at
/// Python's signal handlers between chunks, cancelling the conversion if one raised.
struct Signals<'a> {
    cancel: &'a AtomicBool,
    error: Mutex<Option<PyErr>>,
}

impl Progress for Signals<'_> {
    fn advance(&self, _bytes: u64) {
        if self.cancel.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = Python::attach(|py| py.check_signals()) {
            // Dropping a replaced PyErr may run Python code: do it after the guard (a temporary of
            // this statement) is gone, so no lock is held across a call into Python.
            let replaced = self
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .replace(e);
            self.cancel.store(true, Ordering::Relaxed);
            drop(replaced);
        }
    }
}

/// One input argument: a str is parsed like the CLI's INPUT (`PATH`, `GLOB`, `NAME=PATH`), an
/// os.PathLike is a path.
fn input_of(py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<Input> {
    if let Ok(text) = item.cast::<PyString>() {
        return Input::parse(&text.to_cow()?).map_err(|e| convert_error(py, e));
    }
    let path: PathBuf = item.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "convert: each input must be a str or os.PathLike, not {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    Ok(Input::path(path))
}

fn inputs_of(py: Python<'_>, inputs: &Bound<'_, PyAny>) -> PyResult<Vec<Input>> {
    if inputs.is_instance_of::<PyString>() || inputs.hasattr("__fspath__")? {
        return Ok(vec![input_of(py, inputs)?]);
    }
    if let Ok(map) = inputs.cast::<PyMapping>() {
        let mut out = Vec::new();
        for item in map.items()?.iter() {
            let (name, value): (String, Bound<'_, PyAny>) = item.extract()?;
            // A str value follows the rule of "NAME=PATH" texts (a glob when it is not an
            // existing path); an os.PathLike is a path.
            let source = match value.cast::<PyString>() {
                Ok(text) => {
                    let text = text.to_cow()?;
                    if text.is_empty() {
                        return Err(PyValueError::new_err(format!(
                            "convert: the input of `{name}` is empty: give a file, a folder or a glob"
                        )));
                    }
                    InputSource::from_text(&text)
                }
                Err(_) => InputSource::Path(value.extract().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "convert: the input of `{name}` must be a str or os.PathLike, not {}",
                        value
                            .get_type()
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_default()
                    ))
                })?),
            };
            out.push(Input {
                name: Some(name),
                source,
            });
        }
        return Ok(out);
    }
    inputs
        .try_iter()?
        .map(|item| input_of(py, &item?))
        .collect()
}

/// Dtype rules from None, "bf16", "w=f16", {"w": "f16"} or a list of rule strings.
fn rules_of(py: Python<'_>, what: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<DtypeRules> {
    let mut rules = DtypeRules::default();
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(rules);
    };
    let mut add = |rule: String| -> PyResult<()> {
        rules.add(&rule).map(|_| ()).map_err(|e| {
            raise(
                py,
                "ConvertError",
                format!("{what}: {}", errors::message(&e)),
                None,
                None,
                None,
            )
        })
    };
    if value.is_instance_of::<PyString>() {
        add(dtype_text(what, value)?)?;
    } else if let Ok(map) = value.cast::<PyMapping>() {
        for item in map.items()?.iter() {
            let (name, dt): (String, Bound<'_, PyAny>) = item.extract()?;
            add(format!("{name}={}", dtype_text(what, &dt)?))?;
        }
    } else if let Ok(iter) = value.try_iter() {
        for rule in iter {
            add(dtype_text(what, &rule?)?)?;
        }
    } else {
        add(dtype_text(what, value)?)?;
    }
    Ok(rules)
}

/// Converts .npy, .npz, .safetensors, Parquet and Arrow IPC files and folders or globs of .npy
/// shards into one .mmt store, exactly as `mmt convert` does, and returns a summary dict (`path`,
/// `tensors`, `input_bytes`, `file_len`).
///
/// `inputs`: a path, or a list of them; a str is read like the CLI's INPUT (`PATH`, `'GLOB'`,
/// `NAME=PATH`); a dict maps tensor names to paths. `dtype`: the output dtype of every
/// floating-point tensor ("bf16", np.float16, ...), or per tensor as {"w": "f16"} or ["w=f16"].
/// `input_dtype`: the real dtype of raw void (ml_dtypes) .npy data, "bf16" or {"emb": "bf16"}.
/// `alignment`: of every tensor, a power of two from 64 to 2**30. `block_size`: checksum block
/// size (default 1 MiB). `metadata`: extra str -> str entries (keys starting `mmt.` are
/// reserved). `normalize_bools`: store every nonzero byte of a bool tensor as 1; by default a bool
/// byte other than 0 and 1 is refused (InvalidFileError naming the tensor and element), since
/// NumPy and PyTorch assume bools are 0 or 1.
///
/// Inputs may also be `.mmt` stores and dataset folders (each column one tensor, its shards in
/// order): merge a dataset into one store, cut it again with another `shard_size`, cast it with
/// `dtype`. Their blocks are checked against their checksums as they stream (a corrupt one raises
/// CorruptedFileError naming the file, tensor and bytes). `columns`: keep only these tensors
/// (output names), e.g. `convert("train/", "x.mmt", columns=["x"])`.
///
/// Parquet files (`.parquet`) and Arrow IPC files and streams (`.arrow`, `.feather`, `.arrows`)
/// give one tensor per column, rows first: numbers and bools, FixedSizeList columns (nested too)
/// and fixed_shape_tensor columns as rows of their shape, read a row group or record batch at a
/// time. Other column types and nulls raise InvalidFileError naming the file and column, unless
/// `columns` leaves them out.
///
/// `shard_size` (an int of bytes, or a string such as "1GiB"): write a sharded dataset into the
/// folder `output` instead, as `mmt convert --shard-size` does: `.mmt` shards of at most that many
/// data bytes (whole rows of every input, which must share their first dimension), then
/// `manifest.mmtm`. Open it with `open_dataset`, grow it with `append`. The summary is then
/// `path`, `shards`, `rows` (the dataset's), `shards_written`, `rows_written`, `input_bytes`,
/// `bytes_written`.
///
/// The GIL is released while it runs; Ctrl-C cancels it (KeyboardInterrupt). The output appears only
/// when complete (temp file, fsync, rename); on error or cancellation nothing is left under its name.
///
/// Raises StoreNotFoundError, InvalidFileError (a damaged or unsupported input, naming the file,
/// member and tensor; a bool byte other than 0 and 1), UnsupportedDtypeError (void data without
/// input_dtype), ConvertError (bad arguments, name collisions, impossible casts), MmtOSError.
#[pyfunction]
#[pyo3(signature = (inputs, output, dtype=None, input_dtype=None, alignment=4096, metadata=None, *, block_size=None, normalize_bools=false, shard_size=None, columns=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn convert<'py>(
    py: Python<'py>,
    inputs: &Bound<'py, PyAny>,
    output: PathBuf,
    dtype: Option<&Bound<'py, PyAny>>,
    input_dtype: Option<&Bound<'py, PyAny>>,
    alignment: u64,
    metadata: Option<BTreeMap<String, String>>,
    block_size: Option<u64>,
    normalize_bools: bool,
    shard_size: Option<&Bound<'py, PyAny>>,
    columns: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let inputs = inputs_of(py, inputs)?;
    let mut options = options_of(
        py,
        dtype,
        input_dtype,
        alignment,
        metadata,
        block_size,
        normalize_bools,
    )?;
    options.columns = args::columns(columns)?.unwrap_or_default();
    if let Some(size) = shard_size {
        let size = parse_size("shard_size", size)?;
        let summary = run(py, |signals, cancel| {
            mmtensor_convert::convert_dataset(&inputs, &output, &options, size, signals, cancel)
        })?;
        return dataset_summary(py, &summary);
    }
    let summary = run(py, |signals, cancel| {
        mmtensor_convert::convert(&inputs, &output, &options, signals, cancel)
    })?;
    let d = PyDict::new(py);
    d.set_item("path", summary.path.display().to_string())?;
    d.set_item("tensors", summary.tensors)?;
    d.set_item("input_bytes", summary.input_bytes)?;
    d.set_item("file_len", summary.file_len)?;
    Ok(d)
}

/// Converts a token stream into a dataset with one ragged `tokens` column, a row per document, as
/// `mmt convert` of a token file does, and returns the dataset summary dict.
///
/// `source`: a Megatron-LM / NeMo indexed dataset's `PREFIX.idx` (its `PREFIX.bin` beside it; a
/// `document` column is added when the index groups sequences into documents), or a flat token
/// file: a raw file of `raw_dtype` token ids (nanoGPT's `train.bin`: "uint16") or a 1-D `.npy`.
/// `eot`: split a flat stream into documents after each token of this id (GPT-2's is 50256);
/// without it, rows of at most `row_tokens` tokens (default 2**20). `shard_size` (int or "256MiB",
/// default 256 MiB) bounds each shard's tokens. `mode="append"` adds the documents to the existing
/// dataset `output` as new shards (same token dtype). The GIL is released; Ctrl-C cancels it and
/// leaves nothing visible.
///
/// Raises InvalidFileError (an index that does not describe its .bin, a raw file that is not whole
/// tokens, an `eot` the dtype cannot hold, naming the file), ConvertError, MmtOSError.
#[pyfunction]
#[pyo3(signature = (source, output, *, raw_dtype=None, eot=None, row_tokens=None, shard_size=None, mode="create"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn convert_tokens<'py>(
    py: Python<'py>,
    source: PathBuf,
    output: PathBuf,
    raw_dtype: Option<&Bound<'py, PyAny>>,
    eot: Option<u64>,
    row_tokens: Option<u64>,
    shard_size: Option<&Bound<'py, PyAny>>,
    mode: &str,
) -> PyResult<Bound<'py, PyDict>> {
    use mmtensor_convert::tokens::{append_tokens, import_tokens, TokenSource, DEFAULT_ROW_TOKENS};
    let megatron = source.extension().is_some_and(|e| e == "idx");
    let token_source = if megatron {
        if raw_dtype.is_some() || eot.is_some() || row_tokens.is_some() {
            return Err(PyValueError::new_err(
                "convert_tokens: raw_dtype, eot and row_tokens are for flat token files; a Megatron index says its dtype and documents itself",
            ));
        }
        TokenSource::Megatron { idx: source }
    } else {
        let dtype = raw_dtype
            .filter(|d| !d.is_none())
            .map(|d| args::dtype("convert_tokens: raw_dtype", d))
            .transpose()?;
        if dtype.is_none() && source.extension().is_none_or(|e| e != "npy") {
            return Err(PyValueError::new_err(format!(
                "convert_tokens: {} is a raw token file (say its dtype with raw_dtype=\"uint16\") or a 1-D .npy",
                source.display()
            )));
        }
        if eot.is_some() && row_tokens.is_some() {
            return Err(PyValueError::new_err(
                "convert_tokens: row_tokens cuts a stream without documents; with eot the rows are the documents",
            ));
        }
        TokenSource::Flat {
            path: source,
            dtype,
            eot,
            row_tokens: row_tokens.unwrap_or(DEFAULT_ROW_TOKENS),
        }
    };
    let size = shard_size
        .map(|s| parse_size("shard_size", s))
        .transpose()?;
    let options = ConvertOptions::default();
    let summary = match mode {
        "create" => run(py, |signals, cancel| {
            import_tokens(
                &token_source,
                &output,
                size.unwrap_or(mmtensor_convert::DEFAULT_SHARD_SIZE),
                &options,
                signals,
                cancel,
            )
        })?,
        "append" => run(py, |signals, cancel| {
            append_tokens(&token_source, &output, size, &options, signals, cancel)
        })?,
        other => {
            return Err(PyValueError::new_err(format!(
                "convert_tokens: mode {other:?}: use \"create\" or \"append\""
            )))
        }
    };
    dataset_summary(py, &summary)
}

/// Appends the rows of `inputs` to the sharded dataset in the folder `dataset`, as `mmt append`
/// does, and returns a summary dict (`path`, `shards`, `rows`, `shards_written`, `rows_written`,
/// `rows_rewritten`, `replaced`, `input_bytes`, `bytes_written`).
///
/// The inputs must give exactly the dataset's columns (names, dtypes after `dtype`, row shapes;
/// in any order): anything else raises ConvertError before a byte is written. Rows are cut into
/// shards of at most `shard_size` data bytes (an int, or a string such as "1GiB"; default: the
/// dataset's own shard size, recorded in its last shard, else as many rows as its largest shard).
///
/// `fill=True` (the default): when the last shard holds fewer rows than that, a new shard holds
/// its rows followed by new rows up to the size and replaces it in the manifest, under a new name
/// (`rows_rewritten` rows, the file named in `replaced`), so appending in a loop leaves full shards
/// rather than a shard per call. `fill=False` only adds shards (merge them later with `compact`).
/// Listed shards are never modified or deleted: a reader holding the old manifest keeps working
/// (the replaced shard stays on disk, unlisted, until `prune`), and an error, Ctrl-C or a kill
/// leaves the dataset as it was. A second writer to the same folder at once raises ConvertError.
/// The other arguments are `convert`'s.
#[pyfunction]
#[pyo3(signature = (dataset, inputs, dtype=None, input_dtype=None, alignment=4096, metadata=None, *, block_size=None, normalize_bools=false, shard_size=None, columns=None, fill=true))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn append<'py>(
    py: Python<'py>,
    dataset: PathBuf,
    inputs: &Bound<'py, PyAny>,
    dtype: Option<&Bound<'py, PyAny>>,
    input_dtype: Option<&Bound<'py, PyAny>>,
    alignment: u64,
    metadata: Option<BTreeMap<String, String>>,
    block_size: Option<u64>,
    normalize_bools: bool,
    shard_size: Option<&Bound<'py, PyAny>>,
    columns: Option<&Bound<'py, PyAny>>,
    fill: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let inputs = inputs_of(py, inputs)?;
    let mut options = options_of(
        py,
        dtype,
        input_dtype,
        alignment,
        metadata,
        block_size,
        normalize_bools,
    )?;
    options.columns = args::columns(columns)?.unwrap_or_default();
    let size = shard_size
        .map(|s| parse_size("shard_size", s))
        .transpose()?;
    let fill = if fill { Fill::LastShard } else { Fill::Never };
    let summary = run(py, |signals, cancel| {
        mmtensor_convert::append_with(&dataset, &inputs, &options, size, fill, signals, cancel)
    })?;
    dataset_summary(py, &summary)
}

/// Merges runs of small shards of the dataset in the folder `dataset` into full ones, in place,
/// as `mmt compact` does, and returns the summary dict of `append` (`rows_rewritten` rows of the
/// shards named in `replaced`; `shards_written` 0 when there was nothing to merge).
///
/// Each run of consecutive shards smaller than `shard_size` data bytes (default: the dataset's own
/// shard size) is rewritten as full shards and one partial, when that makes fewer shards; rows
/// keep their order and indices. The replaced shards stay on disk, unlisted, for readers of the
/// old manifest, until `prune`. Ctrl-C or a kill leaves the dataset as it was.
#[pyfunction]
#[pyo3(signature = (dataset, shard_size=None))]
pub(crate) fn compact<'py>(
    py: Python<'py>,
    dataset: PathBuf,
    shard_size: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let size = shard_size
        .map(|s| parse_size("shard_size", s))
        .transpose()?;
    let summary = run(py, |signals, cancel| {
        mmtensor_convert::compact(&dataset, size, signals, cancel)
    })?;
    dataset_summary(py, &summary)
}

/// Deletes the files of the dataset folder `dataset` that its manifest does not list: shards
/// replaced by `append` or `compact`, and what killed writers left. Returns a dict: `path`,
/// `removed` (file names), `bytes`, `kept` (unlisted `.mmt` files under other names, left alone).
/// `dry_run=True` deletes nothing and says what it would delete.
///
/// Run it when no reader holds an older manifest (a process that has the dataset open keeps
/// reading; one that read an older manifest but has not opened its shards yet would miss them).
/// Raises ConvertError while another writer holds the folder.
#[pyfunction]
#[pyo3(signature = (dataset, *, dry_run=false))]
pub(crate) fn prune<'py>(
    py: Python<'py>,
    dataset: PathBuf,
    dry_run: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let pruned = py
        .detach(|| mmtensor_convert::prune(&dataset, dry_run))
        .map_err(|e| convert_error(py, e))?;
    let d = PyDict::new(py);
    d.set_item("path", pruned.dir.display().to_string())?;
    let removed: Vec<&str> = pruned.removed.iter().map(|(n, _)| n.as_str()).collect();
    d.set_item("removed", removed)?;
    d.set_item("bytes", pruned.bytes)?;
    d.set_item("kept", &pruned.kept)?;
    Ok(d)
}

/// The converter's options from `convert`'s and `append`'s arguments.
fn options_of(
    py: Python<'_>,
    dtype: Option<&Bound<'_, PyAny>>,
    input_dtype: Option<&Bound<'_, PyAny>>,
    alignment: u64,
    metadata: Option<BTreeMap<String, String>>,
    block_size: Option<u64>,
    normalize_bools: bool,
) -> PyResult<ConvertOptions> {
    let mut options = ConvertOptions::default();
    options.dtype = rules_of(py, "dtype", dtype)?;
    options.input_dtype = rules_of(py, "input_dtype", input_dtype)?;
    options.alignment = alignment;
    if let Some(b) = block_size {
        options.block_size = b;
    }
    options.metadata = metadata.unwrap_or_default();
    options.normalize_bools = normalize_bools;
    Ok(options)
}

/// Runs a conversion without the GIL, Ctrl-C cancelling it: its error as the Python exception
/// (KeyboardInterrupt when a signal handler raised).
fn run<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(&Signals<'_>, &AtomicBool) -> mmtensor_convert::Result<T> + Send,
) -> PyResult<T> {
    let cancel = AtomicBool::new(false);
    let signals = Signals {
        cancel: &cancel,
        error: Mutex::new(None),
    };
    match py.detach(|| f(&signals, &cancel)) {
        Ok(v) => Ok(v),
        Err(e) => {
            // Taken in its own statement so that the guard is not alive inside the `if let`.
            let interrupt = signals
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(interrupt) = interrupt {
                return Err(interrupt);
            }
            Err(convert_error(py, e))
        }
    }
}

/// A sharded write's summary as a dict.
pub(crate) fn dataset_summary<'py>(
    py: Python<'py>,
    s: &mmtensor_convert::DatasetSummary,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("path", s.dir.display().to_string())?;
    d.set_item("shards", s.manifest.shards().len())?;
    d.set_item("rows", s.manifest.num_rows())?;
    d.set_item("shards_written", s.shards_written)?;
    d.set_item("rows_written", s.rows_written)?;
    d.set_item("rows_rewritten", s.rows_rewritten)?;
    d.set_item("replaced", &s.replaced)?;
    d.set_item("input_bytes", s.input_bytes)?;
    d.set_item("bytes_written", s.bytes_written)?;
    Ok(d)
}
