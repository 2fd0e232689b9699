//! The readers, one per input format, each owning how its format becomes planned tensors: `.npy`
//! files and shards ([`npy`]), `.npz` members ([`npz`]), `.safetensors` ([`safetensors`]), `.mmt`
//! stores and dataset folders ([`mmt`]), Parquet files ([`parquet`]) and Arrow IPC files and
//! streams ([`arrow_ipc`]), whose columns become tensors alike ([`columns`]). This module
//! decides which reader an [`Input`] goes to.
//!
//! A reader reads headers only and returns [`PlannedTensor`]s whose [`Part`](crate::source::Part)s
//! say where each array's bytes are and how they are stored; it takes the input-dtype rules, the
//! one option it uses (and the table readers the column selection, so that a column no tensor can
//! hold is refused only when selected). How the parts stream is [`crate::source`]'s.

pub(crate) mod arrow_ipc;
pub(crate) mod columns;
pub(crate) mod mmt;
pub(crate) mod npy;
pub(crate) mod npz;
pub(crate) mod parquet;
pub(crate) mod safetensors;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::input::{natural_cmp, InputSource};
use crate::plan::PlannedTensor;
use crate::{DtypeRules, Error, Input, Result};
// `self::`: the crates `arrow_ipc` and `parquet` have the names of these two modules.
use self::arrow_ipc::plan_ipc;
use self::parquet::plan_parquet;
use mmt::{is_dataset, plan_dataset, plan_mmt};
use npy::plan_shards;
use npz::plan_npz;
use safetensors::plan_safetensors;

/// What an input of an unknown extension looks like from its first bytes ("a Parquet file"), or
/// "unknown file type".
fn foreign_kind(path: &Path) -> String {
    let mut head = [0u8; 8];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    match mmtensor_format::looks_like(&head[..n]) {
        Some(kind) => format!("it looks like {kind}"),
        None => "unknown file type".into(),
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The tensors `input` gives, planned by the reader of its format; `input_dtype` are the
/// input-dtype rules, `columns` the selected tensors (all when empty): a Parquet or Arrow IPC
/// column is planned only when selected, other inputs give every tensor and the caller selects.
pub(crate) fn plan_input(
    input: &Input,
    input_dtype: &DtypeRules,
    columns: &[String],
) -> Result<Vec<PlannedTensor>> {
    match &input.source {
        InputSource::Path(path) => {
            let meta = std::fs::metadata(path).map_err(Error::io("cannot open", path))?;
            if meta.is_dir() && is_dataset(path) {
                return plan_dataset(path, input.name.as_deref(), input_dtype);
            }
            if meta.is_dir() {
                let mut files = Vec::new();
                for entry in std::fs::read_dir(path).map_err(Error::io("cannot list", path))? {
                    let entry = entry.map_err(Error::io("cannot list", path))?;
                    let p = entry.path();
                    if p.extension().is_some_and(|e| e == "npy") && p.is_file() {
                        files.push(p);
                    }
                }
                if files.is_empty() {
                    return Err(Error::UnsupportedInput {
                        path: path.clone(),
                        member: None,
                        reason:
                            "the folder holds no .npy files and no dataset manifest (manifest.mmtm): a folder input is a dataset or a set of .npy shards"
                                .into(),
                    });
                }
                sort_natural(&mut files);
                let name = input.name.clone().unwrap_or_else(|| {
                    path.canonicalize()
                        .ok()
                        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .unwrap_or_else(|| file_stem(path))
                });
                return Ok(vec![plan_shards(name, &files, input_dtype)?]);
            }
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            match ext.as_str() {
                "npy" => {
                    let name = input.name.clone().unwrap_or_else(|| file_stem(path));
                    Ok(vec![plan_shards(name, std::slice::from_ref(path), input_dtype)?])
                }
                "npz" => plan_npz(path, input.name.as_deref(), input_dtype),
                "safetensors" => plan_safetensors(path, input.name.as_deref(), input_dtype),
                "mmt" => plan_mmt(path, input.name.as_deref(), input_dtype),
                "parquet" | "parq" | "pq" => {
                    plan_parquet(path, input.name.as_deref(), input_dtype, columns)
                }
                "arrow" | "arrows" | "feather" | "ipc" => {
                    plan_ipc(path, input.name.as_deref(), input_dtype, columns)
                }
                _ => Err(Error::UnsupportedInput {
                    path: path.clone(),
                    member: None,
                    reason: format!(
                        "{}: inputs are .npy, .npz, .safetensors, .mmt, .parquet and .arrow/.feather files, dataset folders, folders of .npy shards or globs",
                        foreign_kind(path)
                    ),
                }),
            }
        }
        InputSource::Glob(pattern) => {
            let bad = |reason: String| Error::InvalidInput {
                input: pattern.clone(),
                reason,
            };
            let paths = glob::glob(pattern).map_err(|e| bad(format!("bad glob pattern: {e}")))?;
            let mut files = Vec::new();
            for p in paths {
                let p = p.map_err(|e| bad(format!("cannot read a match: {e}")))?;
                if p.is_file() {
                    files.push(p);
                }
            }
            if files.is_empty() {
                return Err(bad("the glob matches no file".into()));
            }
            if let Some(p) = files
                .iter()
                .find(|p| p.extension().is_none_or(|e| e != "npy"))
            {
                return Err(bad(format!(
                    "the glob matches {}, which is not a .npy file: a glob input is a set of .npy shards",
                    p.display()
                )));
            }
            sort_natural(&mut files);
            let name = match &input.name {
                Some(n) => n.clone(),
                None => {
                    let file = Path::new(pattern)
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let stem = file.split(['*', '?', '[']).next().unwrap_or("");
                    let stem = stem.trim_end_matches(['_', '-', '.', ' ']);
                    if stem.is_empty() {
                        return Err(bad(
                            "cannot make a tensor name from this glob: write NAME=GLOB".into(),
                        ));
                    }
                    stem.to_owned()
                }
            };
            Ok(vec![plan_shards(name, &files, input_dtype)?])
        }
        InputSource::Shards(paths) => {
            let name = input.name.clone().ok_or_else(|| Error::InvalidInput {
                input: input.describe(),
                reason: "a shard list needs a tensor name".into(),
            })?;
            if paths.is_empty() {
                return Err(Error::InvalidInput {
                    input: name,
                    reason: "the shard list is empty".into(),
                });
            }
            Ok(vec![plan_shards(name, paths, input_dtype)?])
        }
    }
}

fn sort_natural(files: &mut [PathBuf]) {
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
}
