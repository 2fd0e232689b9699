//! `mmtensor.Mix`: a weighted mixture of stores and datasets, which `Loader` reads as its source
//! (`mmtensor::Loader::from_mix`), and the mixture's part of the loader's state dict.

use std::path::PathBuf;

use mmtensor::mix::{MixSource, MixSpec, MixState};
use mmtensor::{LoaderOptions, MixData, MixInput, Mixture, RankSplit};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping};

use crate::args::non_negative;
use crate::dataset::Dataset;
use crate::errors::{load_error, message};
use crate::open::{open_folder, open_handle, Store};

use super::options::{check_numpy_types, loader_error, Output, Ranks};
use super::shared::Shared;

/// One source of a mixture, opened.
enum Opened {
    Store(mmtensor::Store),
    Dataset(mmtensor::Dataset),
}

/// Mix(sources, weights, *, seed=0, samples_per_epoch=None)
///
/// A weighted mixture of sources for `Loader`: `Loader(Mix({"web": ds_a, "code": ds_b},
/// weights={"web": 0.7, "code": 0.3}), batch_size=256, columns=["x", "y"])` gives batches whose
/// rows are drawn from the sources in proportion to their weights: every prefix of the mixture
/// holds each source's share to within one sample.
///
/// `sources` is a dict of name to a `Store`, a `Dataset` (opened with all its shards) or a path
/// (a file or a dataset folder); the dict's order numbers them. Each column the loader reads is
/// the same-named column of every source, with the same dtype and row shape. `weights` is a dict of
/// the same names to numbers at least 0 (relative shares; not all 0). `seed` seeds every source's
/// shuffle (the Loader's `shuffle=`: a fresh pass over a source each time its rows run out).
/// `samples_per_epoch` is the samples of an epoch (default: the rows of the sources with weight,
/// added up), cut to whole batches on every rank: every batch is full and every rank has the same
/// number of them. docs/LOADER.md ("Weighted mixtures") specifies the order.
#[pyclass(frozen, module = "mmtensor", name = "Mix")]
pub(crate) struct Mix {
    names: Vec<String>,
    weights: Vec<f64>,
    sources: Vec<Opened>,
    seed: u64,
    samples_per_epoch: Option<u64>,
}

/// A ValueError with `message`.
fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// `source` opened: a Store's or Dataset's handle, or a path's file or dataset folder.
fn open_source(py: Python<'_>, name: &str, source: &Bound<'_, PyAny>) -> PyResult<Opened> {
    if let Ok(ds) = source.cast::<Dataset>() {
        return Ok(Opened::Dataset(ds.get().ds.clone()));
    }
    if let Ok(store) = source.cast::<Store>() {
        return Ok(Opened::Store(store.get().handle(py)?));
    }
    let path: PathBuf = source.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "source {name:?} must be an mmtensor.Store, an mmtensor.Dataset or a path (str or \
             os.PathLike), not {}",
            source
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    if path.to_string_lossy().contains("://") {
        return Err(value_error(format!(
            "source {name:?}: open a remote dataset with mmtensor.open_dataset(url, cache=...) and \
             pass the Dataset"
        )));
    }
    if path.join(mmtensor_format::MANIFEST_FILE).is_file() {
        let ds = py
            .detach(|| open_folder(&path, None))
            .map_err(|e| load_error(py, e))?;
        return Ok(Opened::Dataset(ds));
    }
    let store = py
        .detach(|| open_handle(&path, false, None))
        .map_err(|e| load_error(py, e))?;
    Ok(Opened::Store(store))
}

#[pymethods]
impl Mix {
    #[new]
    #[pyo3(signature = (sources, weights, *, seed=None, samples_per_epoch=None))]
    fn new(
        py: Python<'_>,
        sources: &Bound<'_, PyAny>,
        weights: &Bound<'_, PyAny>,
        seed: Option<&Bound<'_, PyAny>>,
        samples_per_epoch: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Mix> {
        let sources = sources.cast::<PyMapping>().map_err(|_| {
            PyTypeError::new_err("sources must be a dict of name to Store, Dataset or path")
        })?;
        let weights = weights
            .cast::<PyMapping>()
            .map_err(|_| PyTypeError::new_err("weights must be a dict of source name to weight"))?;
        let mut names = Vec::new();
        let mut opened = Vec::new();
        for item in sources.items()?.iter() {
            let (name, source): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
            let name: String = name
                .extract()
                .map_err(|_| PyTypeError::new_err("sources' keys must be names (str)"))?;
            opened.push(open_source(py, &name, &source)?);
            names.push(name);
        }
        let mut given: Vec<Option<f64>> = vec![None; names.len()];
        for item in weights.items()?.iter() {
            let (name, weight): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
            let name: String = name
                .extract()
                .map_err(|_| PyTypeError::new_err("weights' keys must be source names (str)"))?;
            let Some(i) = names.iter().position(|n| *n == name) else {
                return Err(value_error(format!(
                    "weights names {name:?}, which is not a source (the sources are {names:?})"
                )));
            };
            given[i] = Some(weight.extract().map_err(|_| {
                PyTypeError::new_err(format!("the weight of source {name:?} must be a number"))
            })?);
        }
        let mut weights = Vec::with_capacity(names.len());
        for (name, w) in names.iter().zip(given) {
            match w {
                Some(w) => weights.push(w),
                None => {
                    return Err(value_error(format!(
                        "source {name:?} has no weight: give every source a weight (0 leaves it \
                         out)"
                    )))
                }
            }
        }
        // The weights' checks (negative, NaN, infinite, all 0, no source), in the mixture's own
        // words; rows and batches are checked when a Loader reads it.
        let spec = MixSpec::new(
            names
                .iter()
                .zip(&weights)
                .map(|(n, &w)| MixSource::new(n.clone(), 0, w))
                .collect(),
            1,
        );
        spec.integer_weights()
            .map_err(|e| value_error(message(&e)))?;
        Ok(Mix {
            names,
            weights,
            sources: opened,
            seed: seed
                .map(|s| non_negative("seed", s))
                .transpose()?
                .unwrap_or(0),
            samples_per_epoch: samples_per_epoch
                .filter(|s| !s.is_none())
                .map(|s| non_negative("samples_per_epoch", s))
                .transpose()?,
        })
    }

    /// The sources' names, in order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The weights, by source name.
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (n, w) in self.names.iter().zip(&self.weights) {
            d.set_item(n, w)?;
        }
        Ok(d)
    }

    #[getter]
    fn seed(&self) -> u64 {
        self.seed
    }

    #[getter]
    fn samples_per_epoch(&self) -> Option<u64> {
        self.samples_per_epoch
    }

    fn __len__(&self) -> usize {
        self.names.len()
    }

    fn __repr__(&self) -> String {
        let parts: Vec<String> = self
            .names
            .iter()
            .zip(&self.weights)
            .map(|(n, w)| format!("{n:?}: {w}"))
            .collect();
        format!("<mmtensor.Mix {{{}}} seed={}>", parts.join(", "), self.seed)
    }
}

/// What a loader over a mixture keeps of it for its state dict.
pub(super) struct MixInfo {
    names: Vec<String>,
    weights: Vec<f64>,
    samples_per_epoch: Option<u64>,
    /// The order, to compute the counts after `close()`.
    spec: MixSpec,
}

/// The Rust loader over `mix` with `options` (the Loader's `seed` only if `seed_given`, and then
/// the mixture's too), and what the state dict needs of it. A mixture splits its samples across
/// ranks: `split` must be "rows" or left out.
pub(super) fn build(
    py: Python<'_>,
    mix: &Mix,
    mut options: LoaderOptions,
    seed_given: bool,
    ranks: Ranks,
    output: Output,
) -> PyResult<(mmtensor::Loader, MixInfo, PathBuf)> {
    if seed_given && options.seed != mix.seed {
        return Err(loader_error(format!(
            "the Loader's seed ({}) is not the Mix's ({}): give the seed to Mix",
            options.seed, mix.seed
        )));
    }
    options.seed = mix.seed;
    options.split = ranks.split.unwrap_or(RankSplit::Rows);
    options.rank = ranks.rank.unwrap_or(0);
    options.world_size = ranks.world_size.unwrap_or(1);
    let inputs = mix
        .names
        .iter()
        .zip(&mix.weights)
        .zip(&mix.sources)
        .map(|((name, &weight), source)| {
            let data = match source {
                Opened::Store(s) => MixData::Store(s),
                Opened::Dataset(d) => MixData::Dataset(d),
            };
            MixInput::new(name.clone(), data, weight)
        })
        .collect();
    let mixture = Mixture {
        sources: inputs,
        samples_per_epoch: mix.samples_per_epoch,
    };
    let core = py
        .detach(|| mmtensor::Loader::from_mix(&mixture, options))
        .map_err(|e| load_error(py, e))?;
    let path = core.path().to_path_buf();
    check_numpy_types(py, &core, output, &path)?;
    let info = MixInfo {
        names: mix.names.clone(),
        weights: mix.weights.clone(),
        samples_per_epoch: mix.samples_per_epoch,
        spec: core
            .mix()
            .cloned()
            .expect("a mixture's loader has its spec"),
    };
    Ok((core, info, path))
}

impl MixInfo {
    /// The state dict's `mix`: the sources, weights and samples per epoch (which
    /// `load_state_dict` checks), and the samples each source has given before `state`.
    pub(super) fn state<'py>(
        &self,
        py: Python<'py>,
        shared: &Shared,
        state: mmtensor::LoaderState,
    ) -> PyResult<Bound<'py, PyDict>> {
        let counts = match shared.with_core(py, |core| core.clone()) {
            Ok(core) => py
                .detach(|| core.mix_state_at(state))
                .map_err(|e| load_error(py, e))?
                .map(|s| s.counts),
            // Closed: computed from the spec.
            Err(_) => Some(
                py.detach(|| self.spec.state_at(state.epoch, state.next_batch))
                    .map_err(|e| loader_error(message(&e)))?
                    .counts,
            ),
        };
        let d = PyDict::new(py);
        d.set_item("sources", PyList::new(py, &self.names)?)?;
        d.set_item("weights", PyList::new(py, &self.weights)?)?;
        d.set_item("samples_per_epoch", self.samples_per_epoch)?;
        d.set_item("counts", counts)?;
        Ok(d)
    }
}

/// The mixture's state in `state` (a state dict), checked against the loader's mixture `info`:
/// the counts to resume from, or `None` for a loader that reads no mixture (whose state must have
/// no `mix`). Refusals (LoaderError) name the key.
pub(super) fn saved_counts(
    info: Option<&MixInfo>,
    state: &Bound<'_, PyDict>,
    path: &std::path::Path,
) -> PyResult<Option<Vec<u64>>> {
    let saved = state.get_item("mix")?.filter(|m| !m.is_none());
    let other = |key: &str, got: String, want: String| {
        loader_error(format!(
            "{}: the state is of another loader: its {key} is {got}, this loader's is {want}",
            path.display()
        ))
    };
    let (info, saved) = match (info, saved) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(other(
                "mix",
                "a mixture's".into(),
                "missing (it reads no mixture)".into(),
            ))
        }
        (Some(_), None) => return Err(other("mix", "missing".into(), "a mixture's".into())),
        (Some(info), Some(saved)) => (info, saved),
    };
    let saved = saved
        .cast::<PyDict>()
        .map_err(|_| other("mix", "not a dict".into(), "a dict".into()))?;
    let field = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        saved
            .get_item(key)?
            .ok_or_else(|| other(&format!("mix.{key}"), "missing".into(), "given".into()))
    };
    let names: Option<Vec<String>> = field("sources")?.extract().ok();
    if names.as_ref() != Some(&info.names) {
        return Err(other(
            "mix.sources",
            field("sources")?.repr()?.to_string(),
            format!("{:?}", info.names),
        ));
    }
    let weights: Option<Vec<f64>> = field("weights")?.extract().ok();
    if weights.as_ref() != Some(&info.weights) {
        return Err(other(
            "mix.weights",
            field("weights")?.repr()?.to_string(),
            format!("{:?}", info.weights),
        ));
    }
    let samples = field("samples_per_epoch")?;
    let samples: Option<Option<u64>> = if samples.is_none() {
        Some(None)
    } else {
        samples.extract().ok().map(Some)
    };
    if samples != Some(info.samples_per_epoch) {
        return Err(other(
            "mix.samples_per_epoch",
            field("samples_per_epoch")?.repr()?.to_string(),
            format!("{:?}", info.samples_per_epoch),
        ));
    }
    let counts: Vec<u64> = field("counts")?.extract().map_err(|_| {
        other(
            "mix.counts",
            "not a list of counts".into(),
            format!("{} counts", info.names.len()),
        )
    })?;
    Ok(Some(counts))
}

/// Moves `core` to `(epoch, next_batch)` with the sources' `counts`; counts this mixture cannot
/// have reached are refused naming `mix.counts`.
pub(super) fn restore(
    py: Python<'_>,
    core: &mut mmtensor::Loader,
    state: mmtensor::LoaderState,
    counts: Vec<u64>,
) -> PyResult<()> {
    let result = core.set_mix_state(&MixState {
        epoch: state.epoch,
        next_batch: state.next_batch,
        counts,
    });
    match result {
        Err(mmtensor::Error::Mix {
            path,
            source: source @ mmtensor::mix::MixError::State { .. },
        }) => Err(loader_error(format!(
            "{}: the state is of another loader: its mix.counts do not fit this mixture ({})",
            path.display(),
            message(&source)
        ))),
        other => other.map_err(|e| load_error(py, e)),
    }
}
