//! `Loader(...)`'s arguments: read, checked, and turned into the Rust loader over the source (a
//! path, a `Store` or a `Dataset`). Every refusal names the argument; an option the loader cannot
//! work with is a LoaderError (a ValueError).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mmtensor::order::{Shuffle, DEFAULT_BLOCK_ROWS, DEFAULT_WINDOW_BLOCKS};
use mmtensor::{interop, Dtype, LoaderOptions, RankSplit};
use mmtensor_format::offsets_name;
use pyo3::exceptions::{PyImportError, PyRuntimeError, PyTypeError, PyUserWarning};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyMapping};

use crate::args::{self, non_negative};
use crate::dataset::Dataset;
use crate::errors::{load_error, no_ml_dtypes, raise, remote_error};
use crate::open::{open_folder, open_handle, Store};
use crate::store::ragged_names;

/// What a batch's columns come out as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    Numpy,
    Torch,
}

/// Where batches are gathered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The loader's own pool.
    Pool,
    /// Torch tensors the binding allocates: pinned (`pin_memory=True`), or not (a test of the
    /// same path on a machine without CUDA).
    Torch { pinned: bool },
}

/// A LoaderError (a ValueError) with `message`: an option the loader cannot work with.
pub(super) fn loader_error(message: impl Into<String>) -> PyErr {
    Python::attach(|py| raise(py, "LoaderError", message.into(), None, None, None))
}

/// `output=` and `pin_memory=` (and the tests' `_torch_buffers=`): what batches are made of and
/// where they are gathered. Pinned memory needs PyTorch with CUDA; torch output needs PyTorch.
pub(super) fn output_and_target(
    py: Python<'_>,
    output: &str,
    pin_memory: bool,
    torch_buffers: bool,
) -> PyResult<(Output, Target)> {
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
    } else if torch_buffers {
        if output != Output::Torch {
            return Err(loader_error("_torch_buffers needs output=\"torch\""));
        }
        Target::Torch { pinned: false }
    } else {
        Target::Pool
    };
    if output == Output::Torch {
        py.import("torch").map_err(|_| {
            PyImportError::new_err(
                "output=\"torch\" needs PyTorch (`pip install torch`); output=\"numpy\" needs only NumPy",
            )
        })?;
    }
    Ok((output, target))
}

/// `shuffle=`, with the block shuffle's `block_rows=` and `window_blocks=`.
pub(super) fn shuffle(
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

/// `split=`: "rows" or "shards", or None for the source's default.
pub(super) fn split(split: Option<&str>) -> PyResult<Option<RankSplit>> {
    split
        .map(|split| match split {
            "rows" => Ok(RankSplit::Rows),
            "shards" => Ok(RankSplit::Shards),
            other => Err(loader_error(format!(
                "split must be \"rows\" or \"shards\", not {other:?}"
            ))),
        })
        .transpose()
}

/// `prefetch=`: batches gathered ahead, at most 65536.
pub(super) fn prefetch(p: &Bound<'_, PyAny>) -> PyResult<usize> {
    let p = non_negative("prefetch", p)?;
    usize::try_from(p)
        .ok()
        .filter(|&p| p <= 1 << 16)
        .ok_or_else(|| loader_error(format!("prefetch must be at most 65536, not {p}")))
}

/// The `dtype` argument: a dict of column name to dtype (anything `args::dtype` reads).
pub(super) fn column_dtypes(dtype: &Bound<'_, PyAny>) -> PyResult<BTreeMap<String, Dtype>> {
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
    let mut out = BTreeMap::new();
    for item in map.items()?.iter() {
        let (name, dt): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
        let name: String = name
            .extract()
            .map_err(|_| PyTypeError::new_err("dtype's keys must be column names (str)"))?;
        let what = format!("dtype of column `{name}`");
        out.insert(name, args::dtype(&what, &dt)?);
    }
    Ok(out)
}

/// Which rank reads what: `split=`, `rank=` and `world_size=` as given (None when not).
pub(super) struct Ranks {
    pub(super) split: Option<RankSplit>,
    pub(super) rank: Option<u64>,
    pub(super) world_size: Option<u64>,
}

/// The Rust loader over `source` (a `Dataset`, a dataset folder, a `Store` or a file's path)
/// with `options`, the Store object it was made from (whose `close()` it honours) and the path it
/// reads. A dataset opened for one rank is read as that rank, with whole shards, unless `ranks`
/// says otherwise.
pub(super) fn build(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    mut options: LoaderOptions,
    ranks: Ranks,
    output: Output,
    pads: &[PadArg<'_>],
) -> PyResult<(mmtensor::Loader, Option<Py<Store>>, PathBuf)> {
    let Ranks {
        split,
        rank,
        world_size,
    } = ranks;
    // A dataset folder given by path is opened here, as `open_dataset(path)` would.
    let folder = match source.cast::<Dataset>() {
        Ok(_) => None,
        Err(_) => source
            .extract::<PathBuf>()
            .ok()
            .filter(|p| p.join(mmtensor_format::MANIFEST_FILE).is_file()),
    };
    if let Ok(streamed) = source.cast::<crate::streaming::StreamingDataset>() {
        options.split = split.unwrap_or(RankSplit::Rows);
        options.rank = rank.unwrap_or(0);
        options.world_size = world_size.unwrap_or(1);
        let streamed = &streamed.get().inner;
        let path = PathBuf::from(streamed.url());
        if let Some(p) = pads.first() {
            return Err(loader_error(format!(
                "{}: pad: a streamed dataset has fixed-shape columns only ({:?} is not one)",
                path.display(),
                p.name
            )));
        }
        let core = py
            .detach(|| streamed.loader(options))
            .map_err(|e| remote_error(py, e))?;
        check_numpy_types(py, &core, output, &path)?;
        return Ok((core, None, path));
    }
    let opened;
    let dataset = match (source.cast::<Dataset>(), folder) {
        (Ok(ds), _) => Some(&ds.get().ds),
        (Err(_), Some(dir)) => {
            opened = py
                .detach(|| open_folder(&dir, None))
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
        let path = ds.path().to_path_buf();
        options.pad = pad_options(py, pads, &options, &path, |n| {
            ds.ragged(n)
                .map(|c| c.dtype())
                .map_err(|e| load_error(py, e))
        })?;
        let core = mmtensor::Loader::from_dataset(ds, options).map_err(|e| load_error(py, e))?;
        check_numpy_types(py, &core, output, &path)?;
        return Ok((core, None, path));
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
    // Sequence windows are cut from one ragged column: no other tensor is left out by default.
    let chosen = options.columns.is_none() && options.seq_len.is_none() && pads.is_empty();
    options.pad = pad_options(py, pads, &options, &path, |n| {
        handle
            .ragged(n)
            .map(|c| c.dtype())
            .map_err(|e| load_error(py, e))
    })?;
    let core = mmtensor::Loader::new(&handle, options).map_err(|e| load_error(py, e))?;
    if chosen {
        warn_left_out(py, &handle, core.spec().num_rows, "Loader")?;
    }
    check_numpy_types(py, &core, output, &path)?;
    Ok((core, store, path))
}

/// With `output="numpy"`, a bf16 or fp8 column needs ml_dtypes for its arrays: refused when the
/// loader is made, rather than at every batch.
pub(super) fn check_numpy_types(
    py: Python<'_>,
    core: &mmtensor::Loader,
    output: Output,
    path: &Path,
) -> PyResult<()> {
    if output != Output::Numpy {
        return Ok(());
    }
    for c in core.columns() {
        let needs = interop::numpy(c.dtype())
            .and_then(|n| n.ml_dtypes)
            .is_some();
        if needs && py.import("ml_dtypes").is_err() {
            return Err(no_ml_dtypes(py, path, c.name(), c.dtype()));
        }
    }
    Ok(())
}

/// Warns (UserWarning) when the columns chosen by default, the tensors whose first dimension is
/// the first tensor's `rows`, leave out tensors that have rows too, but another number of them:
/// a column silently missing from every batch would be found only at training time.
fn warn_left_out(py: Python<'_>, store: &mmtensor::Store, rows: u64, who: &str) -> PyResult<()> {
    // A ragged tensor's values and offsets are never rows (a loader reads them with `seq_len`).
    let ragged: Vec<String> = ragged_names(store)
        .into_iter()
        .flat_map(|n| [offsets_name(&n), n])
        .collect();
    let left: Vec<String> = store
        .tensors()
        .filter(|t| !ragged.iter().any(|r| r == t.name()))
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
    PyErr::warn(py, py.get_type::<PyUserWarning>().as_any(), &text, 1)
}

/// One entry of `Loader(pad=...)`: a ragged column, its pad value (a Python number, made one
/// element of the column's output dtype once the source says what that is), and the rest of its
/// `Pad`.
pub(super) struct PadArg<'py> {
    pub(super) name: String,
    pub(super) value: Option<Bound<'py, PyAny>>,
    pub(super) to: Option<u64>,
    pub(super) multiple_of: u64,
    pub(super) truncate: bool,
}

/// `pad={"tokens": 0}` or `pad={"tokens": {"value": 0, "to": 512, "multiple_of": 8,
/// "truncate": True}}` as `PadArg`s; a TypeError or LoaderError naming the column otherwise.
pub(super) fn pad_args<'py>(pad: Option<&Bound<'py, PyAny>>) -> PyResult<Vec<PadArg<'py>>> {
    let Some(pad) = pad.filter(|p| !p.is_none()) else {
        return Ok(Vec::new());
    };
    let dict = pad.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(
            "pad must be a dict of ragged column name to a pad value, or to a dict with \"value\", \"to\", \"multiple_of\", \"truncate\"",
        )
    })?;
    let mut out = Vec::with_capacity(dict.len());
    for (k, v) in dict.iter() {
        let name: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("pad keys are column names (str)"))?;
        let mut arg = PadArg {
            name: name.clone(),
            value: Some(v.clone()),
            to: None,
            multiple_of: 1,
            truncate: false,
        };
        if let Ok(spec) = v.cast::<PyDict>() {
            arg.value = spec.get_item("value")?;
            for key in spec.keys() {
                let key: String = key.extract()?;
                if !matches!(key.as_str(), "value" | "to" | "multiple_of" | "truncate") {
                    return Err(loader_error(format!(
                        "pad of `{name}`: unknown key {key:?}; the keys are value, to, multiple_of and truncate"
                    )));
                }
            }
            if let Some(to) = spec.get_item("to")?.filter(|t| !t.is_none()) {
                arg.to = Some(crate::args::non_negative(
                    &format!("pad of `{name}`: to"),
                    &to,
                )?);
            }
            if let Some(m) = spec.get_item("multiple_of")? {
                arg.multiple_of =
                    crate::args::non_negative(&format!("pad of `{name}`: multiple_of"), &m)?;
            }
            if let Some(t) = spec.get_item("truncate")? {
                arg.truncate = t.is_truthy()?;
            }
        }
        out.push(arg);
    }
    Ok(out)
}

/// The loader's `Pad` of each `PadArg`: its value as one element of the column's output dtype
/// (`dtype` of `options`, else the stored one that `stored` looks up).
fn pad_options(
    py: Python<'_>,
    pads: &[PadArg<'_>],
    options: &LoaderOptions,
    path: &Path,
    stored: impl Fn(&str) -> PyResult<mmtensor::Dtype>,
) -> PyResult<std::collections::BTreeMap<String, mmtensor::Pad>> {
    let mut out = std::collections::BTreeMap::new();
    for p in pads {
        let dtype = match options.dtypes.get(&p.name) {
            Some(d) => *d,
            None => stored(&p.name)?,
        };
        let gather = crate::take::Gather {
            path,
            name: &p.name,
            dtype,
            rows: 0,
            row_shape: &[],
        };
        let value = crate::ragged::pad_bytes(
            py,
            &p.name,
            p.value.as_ref(),
            &gather.numpy_dtype_object(py)?,
        )?;
        out.insert(
            p.name.clone(),
            mmtensor::Pad {
                value,
                to: p.to,
                multiple_of: p.multiple_of,
                truncate: p.truncate,
                dtype: None,
            },
        );
    }
    Ok(out)
}
