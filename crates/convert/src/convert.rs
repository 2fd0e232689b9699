//! Planning and running a conversion: inputs to tensors, tensors through transforms into a store.
//!
//! Each reader owns its plan and its stream: [`crate::npy`] (`.npy` files and shards, the
//! Fortran-order reorder), [`crate::npz`] (zip members), [`crate::safetensors`]. This module holds
//! the options, the [`Plan`] and the driver that feeds planned tensors to the [`StoreWriter`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use mmtensor_format::{Dtype, LayoutBuilder, DEFAULT_ALIGNMENT, DEFAULT_BLOCK_SIZE};

use crate::input::{natural_cmp, DtypeRules, Input, InputSource};
use crate::mmt::{is_dataset, plan_dataset, plan_mmt};
use crate::npy::plan_shards;
use crate::npz::plan_npz;
use crate::safetensors::plan_safetensors;
use crate::source::{Location, Part};
use crate::transform::{cast, cast_supported, is_real_float};
use crate::{Error, Result, StoreWriter};

/// Default size of the chunks tensors are streamed in when they are transformed (cast, swapped,
/// transposed): large enough for the parallel kernels, a bounded buffer.
pub const DEFAULT_CHUNK_SIZE: usize = 8 << 20;

/// Largest chunk for tensors copied unchanged. Measured on Linux 6.18 / ext4 with a 2 GiB `.npy`
/// (`MMT_CHUNK=N target/release/examples/convert OUT x=IN.npy`, alternated, twice): 1 MiB chunks
/// took 1.8 s, 512 KiB 2.2 s, 2 MiB 3.0 s and 8 MiB 5.1 s (a noisy VM: read as "about 2x"), almost all of the difference in kernel
/// time of `read` and `write`; a buffer that fits in the cache keeps both copies cheap, as `cp`'s
/// 128 KiB buffer does. Casts keep [`DEFAULT_CHUNK_SIZE`] (8 MiB was faster there: 1.0 s against 1.4 s).
pub(crate) const COPY_CHUNK_SIZE: usize = 1 << 20;

/// Options of a conversion. Build with `ConvertOptions::default()` and set fields.
///
/// ```
/// use mmtensor_convert::ConvertOptions;
///
/// let mut o = ConvertOptions::default();
/// o.dtype.add("bf16")?;          // every float tensor to bfloat16
/// o.input_dtype.add("emb=bf16")?; // `emb` was saved through ml_dtypes as raw `<V2`
/// o.alignment = 64;
/// o.metadata.insert("dataset".into(), "demo".into());
/// # Ok::<(), mmtensor_convert::Error>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// Output dtypes (see [`DtypeRules`]).
    pub dtype: DtypeRules,
    /// Dtypes of raw void (`ml_dtypes`) inputs, or reinterpretations (see [`DtypeRules`]).
    pub input_dtype: DtypeRules,
    /// Alignment of every tensor: a power of two from 64 to 2^30 (default 4096).
    pub alignment: u64,
    /// Checksum block size (default 1 MiB).
    pub block_size: u64,
    /// Extra metadata entries; keys starting `mmt.` are reserved and refused.
    pub metadata: BTreeMap<String, String>,
    /// Record provenance (default true): `source.converter` and `source.inputs`, one JSON entry
    /// per input that names only the tensors it transformed (see the crate docs); in a dataset's
    /// shards also `source.shard_size`, the shard size they were cut at, which a later
    /// [`crate::append`] or [`crate::compact`] takes as the dataset's own.
    pub record_sources: bool,
    /// Store every nonzero byte of a BOOL tensor as 1 (default false: a byte other than 0 and 1
    /// is refused with [`Error::InvalidBool`], since NumPy and torch would hand it on as a bool
    /// that their kernels assume is 0 or 1). CLI: `--normalize-bools`.
    pub normalize_bools: bool,
    /// Bytes per streamed chunk of a transformed tensor (default 8 MiB); tensors copied unchanged
    /// use at most 1 MiB, which is faster for plain copies. Memory use is a small multiple of it.
    pub chunk_size: usize,
    /// The tensors (by output name) to keep, in the inputs' order; empty keeps every one. A name
    /// no input gives is [`Error::UnknownTensor`]. CLI: `--columns x,y`.
    pub columns: Vec<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            dtype: DtypeRules::default(),
            input_dtype: DtypeRules::default(),
            alignment: DEFAULT_ALIGNMENT,
            block_size: DEFAULT_BLOCK_SIZE,
            metadata: BTreeMap::new(),
            record_sources: true,
            normalize_bools: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
            columns: Vec::new(),
        }
    }
}

/// Progress of a conversion, reported as input bytes are consumed. Every method has an empty
/// default; the CLI draws a bar, the Python binding may call back into Python.
pub trait Progress: Sync {
    /// The plan is made: `total_bytes` input bytes will be read.
    fn start(&self, plan: &Plan) {
        let _ = plan;
    }
    /// Besides the plan's input bytes, the write copies `bytes` of rows already in a dataset into
    /// new shards (an append that fills the last shard, a compaction), reported through
    /// [`Progress::advance`] like input bytes. Called at most once, right after `start`.
    fn carried(&self, bytes: u64) {
        let _ = bytes;
    }
    /// Tensor `index` of the plan begins.
    fn tensor(&self, index: usize, tensor: &PlannedTensor) {
        let _ = (index, tensor);
    }
    /// `bytes` more input bytes were converted and written.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
    /// Every tensor is written; the store is being made durable.
    fn finish(&self) {}
}

/// A [`Progress`] that reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// One output tensor as planned: where it comes from and what it becomes.
///
/// Made only by [`plan`], which checked every input header, cast and size; its fields are private,
/// so what [`write_plan`] receives is exactly what `plan` checked.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub(crate) name: String,
    pub(crate) source_dtype: Dtype,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<u64>,
    pub(crate) source: String,
    pub(crate) stored_as: String,
    pub(crate) input_bytes: u64,
    pub(crate) output_bytes: u64,
    pub(crate) parts: Vec<Part>,
}

impl PlannedTensor {
    /// Output name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dtype of the input data (after any input-dtype rule).
    pub fn source_dtype(&self) -> Dtype {
        self.source_dtype
    }

    /// Dtype in the store.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Shape (C order).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Where it comes from: `path`, `path:member`, or `first .. last (N shards)`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How it is stored there: descr or dtype name, byte order, memory order.
    pub fn stored_as(&self) -> &str {
        &self.stored_as
    }

    /// Input data bytes.
    pub fn input_bytes(&self) -> u64 {
        self.input_bytes
    }

    /// Output data bytes.
    pub fn output_bytes(&self) -> u64 {
        self.output_bytes
    }

    /// True when the data is copied unchanged (no byte swap, transpose or cast).
    pub fn is_copy(&self) -> bool {
        self.source_dtype == self.dtype && self.parts.iter().all(|p| !p.big_endian && !p.fortran)
    }
}

/// Every tensor of a conversion, planned from headers alone, before any data is read.
///
/// Made only by [`plan`]; its fields are private, so a plan cannot be changed between `plan` and
/// [`write_plan`] (which therefore need not check it again):
///
/// ```compile_fail
/// # fn f(mut p: mmtensor_convert::Plan) {
/// p.tensors[0].dtype = mmtensor_format::Dtype::Bool; // private: does not compile
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Plan {
    tensors: Vec<PlannedTensor>,
    metadata: BTreeMap<String, String>,
}

impl Plan {
    /// A plan made here rather than by [`plan`]: the tensors of shards a compaction rewrites,
    /// which were checked against their manifest when they were read.
    pub(crate) fn of_tensors(
        tensors: Vec<PlannedTensor>,
        metadata: BTreeMap<String, String>,
    ) -> Plan {
        Plan { tensors, metadata }
    }

    /// Tensors in output order.
    pub fn tensors(&self) -> &[PlannedTensor] {
        &self.tensors
    }

    /// Metadata the store will hold.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Input bytes all tensors read (saturating at `u64::MAX`: the sizes come from file headers,
    /// which [`convert`] checks against the files only as it reads them).
    pub fn input_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.input_bytes))
    }

    /// Output data bytes (without headers and padding), saturating at `u64::MAX` as
    /// [`Plan::input_bytes`].
    pub fn output_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.output_bytes))
    }
}

/// What a finished conversion did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// The store written.
    pub path: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Input data bytes read.
    pub input_bytes: u64,
    /// Length of the store file.
    pub file_len: u64,
}

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

/// Reads every input's headers and plans the output tensors; reads no tensor data (except that
/// a `.npz` member's first bytes are inflated to read its npy header).
///
/// # Errors
/// Any reader error ([`Error::Io`], [`Error::Npy`], [`Error::Zip`], [`Error::Safetensors`],
/// [`Error::NeedsInputDtype`], [`Error::DataSize`] when a `.npy` file is shorter or longer than its
/// header says, [`Error::UnsupportedInput`]), [`Error::ShardMismatch`], [`Error::NameCollision`],
/// [`Error::UnknownTensor`], [`Error::UnsupportedCast`], [`Error::InvalidInput`],
/// [`Error::DtypeRule`] (a dtype for all tensors that is not a float), [`Error::MetadataKey`],
/// [`Error::UnknownColumn`] (a selected column no input gives), [`Error::InputChecksum`] (a
/// corrupt checksum table of an `.mmt` input).
pub fn plan(inputs: &[Input], options: &ConvertOptions) -> Result<Plan> {
    if let Some(d) = options.dtype.all {
        if !is_real_float(d) {
            return Err(Error::DtypeRule {
                rule: d.name().to_owned(),
                reason: format!(
                    "a dtype for all tensors casts every floating-point tensor (and leaves the others as \
                     they are), so it must be F64, F32, F16 or BF16: to cast one tensor to {d}, write \
                     NAME={d}"
                ),
            });
        }
    }
    let mut tensors: Vec<PlannedTensor> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    // How many tensors each input gave, in order: the store's tensors are grouped the same way.
    let mut per_input: Vec<usize> = Vec::with_capacity(inputs.len());
    // Every name the inputs give, selected or not, for the error of a selection that names none.
    let mut given: Vec<String> = Vec::new();
    for input in inputs {
        let mut planned = plan_input(input, options)?;
        if !options.columns.is_empty() {
            given.extend(planned.iter().map(|t| t.name.clone()));
            planned.retain(|t| options.columns.contains(&t.name));
        }
        per_input.push(planned.len());
        for t in planned {
            if let Some(&i) = seen.get(&t.name) {
                return Err(Error::NameCollision {
                    name: t.name.clone(),
                    first: tensors[i].source.clone(),
                    second: t.source.clone(),
                });
            }
            seen.insert(t.name.clone(), tensors.len());
            tensors.push(t);
        }
    }
    if let Some(name) = options.columns.iter().find(|c| !seen.contains_key(*c)) {
        let mut known: Vec<&str> = given.iter().map(String::as_str).take(20).collect();
        if given.len() > 20 {
            known.push("...");
        }
        return Err(Error::UnknownColumn {
            name: name.clone(),
            known: known.join(", "),
        });
    }
    let known = || {
        let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).take(20).collect();
        if tensors.len() > 20 {
            names.push("...");
        }
        names.join(", ")
    };
    for (what, rules) in [
        ("dtype", &options.dtype),
        ("input dtype", &options.input_dtype),
    ] {
        for (name, dtype) in &rules.per_tensor {
            if !seen.contains_key(name) {
                return Err(Error::UnknownTensor {
                    what,
                    name: name.clone(),
                    dtype: *dtype,
                    known: known(),
                });
            }
        }
    }
    for t in &mut tensors {
        t.dtype = match options.dtype.get(&t.name) {
            Some(d) => d,
            None => match options.dtype.all {
                Some(d) if is_real_float(t.source_dtype) => d,
                _ => t.source_dtype,
            },
        };
        if !cast_supported(t.source_dtype, t.dtype) {
            return Err(Error::UnsupportedCast {
                tensor: t.name.clone(),
                from: t.source_dtype,
                to: t.dtype,
            });
        }
        let numel = t.input_bytes / t.source_dtype.size() as u64;
        // A widening cast can take a size read from a header past 2^64.
        t.output_bytes = numel
            .checked_mul(t.dtype.size() as u64)
            .ok_or_else(|| Error::Format {
                path: t.parts[0].location.path().to_path_buf(),
                source: mmtensor_format::Error::ShapeOverflow {
                    tensor: t.name.clone(),
                    shape: t.shape.clone(),
                    dtype: t.dtype,
                },
            })?;
    }
    let mut metadata = BTreeMap::new();
    if options.record_sources {
        metadata.insert(
            "source.converter".to_owned(),
            concat!("mmtensor-convert ", env!("CARGO_PKG_VERSION")).to_owned(),
        );
        metadata.insert(
            "source.inputs".to_owned(),
            provenance(inputs, &per_input, &tensors),
        );
    }
    for (k, v) in &options.metadata {
        // The rule is the format crate's (LayoutBuilder::metadata enforces it); checked here too
        // so that the key is refused before any input is read.
        if let Err(e) = mmtensor_format::check_metadata_key(k) {
            return Err(Error::MetadataKey {
                key: k.clone(),
                reason: e.to_string(),
            });
        }
        metadata.insert(k.clone(), v.clone());
    }
    Ok(Plan { tensors, metadata })
}

/// The `source.inputs` metadata value: a JSON array with one object per input, in order:
/// `input` (the argument as written), `tensors` (how many consecutive tensors of the store it
/// gave) and `first` (the first one's name); `from` for a one-tensor input whose source is not
/// the argument itself (a shard range, an archive member); and `changed`, an object naming only
/// the tensors whose bytes were transformed or reinterpreted (byte-swapped, reordered from
/// Fortran order, cast, or read through an input-dtype rule), each with how it was stored.
///
/// A tensor copied unchanged from its input gets no entry of its own, so the header grows with
/// the number of inputs and of transformed tensors, not with the tensor count.
fn provenance(inputs: &[Input], per_input: &[usize], tensors: &[PlannedTensor]) -> String {
    let mut all = Vec::with_capacity(inputs.len());
    let mut next = tensors.iter();
    for (input, &count) in inputs.iter().zip(per_input) {
        let described = input.describe();
        let mut entry = serde_json::Map::new();
        entry.insert("input".into(), described.clone().into());
        entry.insert("tensors".into(), count.into());
        let mut changed = serde_json::Map::new();
        for (i, t) in next.by_ref().take(count).enumerate() {
            if i == 0 {
                entry.insert("first".into(), t.name.clone().into());
                if count == 1 && !described.ends_with(&t.source) {
                    entry.insert("from".into(), t.source.clone().into());
                }
            }
            if !t.is_copy() || t.parts.iter().any(|p| p.reinterpreted) {
                let mut how = t.stored_as.clone();
                if t.dtype != t.source_dtype {
                    how.push_str(&format!(", cast {} -> {}", t.source_dtype, t.dtype));
                } else if t.parts.iter().any(|p| p.reinterpreted) {
                    how.push_str(&format!(", read as {}", t.dtype));
                }
                changed.insert(t.name.clone(), how.into());
            }
        }
        if !changed.is_empty() {
            entry.insert("changed".into(), changed.into());
        }
        all.push(serde_json::Value::Object(entry));
    }
    serde_json::Value::Array(all).to_string()
}

/// Hands one chunk of a part's elements (C order, little-endian, whole elements) to `writer` as
/// the store holds them: the BOOL check (or normalization) and the cast. `at` is the chunk's
/// first element within the tensor and within the part, for error messages.
pub(crate) fn emit(
    writer: &mut StoreWriter,
    t: &PlannedTensor,
    part: &Part,
    options: &ConvertOptions,
    at: (u64, u64),
    bytes: &[u8],
    cast_buf: &mut Vec<u8>,
) -> Result<()> {
    let (done_elems, part_elems) = at;
    let (from, to) = (t.source_dtype, t.dtype);
    let n = bytes.len() / from.size();
    let bad_bool = if to == Dtype::Bool {
        bytes.iter().position(|&b| b > 1)
    } else {
        None
    };
    if let Some(i) = bad_bool {
        if !options.normalize_bools {
            return Err(Error::InvalidBool {
                path: part.location.path().to_path_buf(),
                member: part.location.member().map(str::to_owned),
                tensor: t.name.clone(),
                index: done_elems + i as u64,
                offset: (!part.fortran).then(|| part.location_offset() + part_elems + i as u64),
                value: bytes[i],
            });
        }
        cast_buf.clear();
        cast_buf.extend(bytes.iter().map(|&b| u8::from(b != 0)));
        writer.write_chunk(cast_buf)
    } else if from == to {
        writer.write_chunk(bytes)
    } else {
        cast_buf.resize(n * to.size(), 0);
        cast(bytes, from, cast_buf, to).map_err(|e| Error::ValueOutOfRange {
            tensor: t.name.clone(),
            index: done_elems + e.index,
            value: e.value,
            from,
            to,
        })?;
        writer.write_chunk(cast_buf)
    }
}

/// # Errors
/// [`Error::Format`] (`ShapeOverflow`) when the parts' lengths along axis 0 or their byte lengths,
/// which come from file headers, add up past `u64::MAX`.
pub(crate) fn planned(
    name: String,
    parts: Vec<Part>,
    source: String,
    stored_as: String,
) -> Result<PlannedTensor> {
    let dtype = parts[0].dtype;
    let mut shape = parts[0].shape.clone();
    let overflow = |shape: &[u64]| Error::Format {
        path: parts[0].location.path().to_path_buf(),
        source: mmtensor_format::Error::ShapeOverflow {
            tensor: name.clone(),
            shape: shape.to_vec(),
            dtype,
        },
    };
    if parts.len() > 1 {
        shape[0] = parts
            .iter()
            .try_fold(0u64, |a, p| a.checked_add(p.shape[0]))
            .ok_or_else(|| overflow(&shape))?;
    }
    let input_bytes = parts
        .iter()
        .try_fold(0u64, |a, p| a.checked_add(p.len))
        .ok_or_else(|| overflow(&shape))?;
    Ok(PlannedTensor {
        name,
        source_dtype: dtype,
        dtype,
        shape,
        source,
        stored_as,
        input_bytes,
        output_bytes: input_bytes,
        parts,
    })
}

pub(crate) fn stored_as(p: &Part) -> String {
    let mut s = p.descr.clone();
    if p.big_endian {
        s.push_str(", big-endian");
    }
    if p.fortran {
        s.push_str(", Fortran order");
    }
    s
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn plan_input(input: &Input, options: &ConvertOptions) -> Result<Vec<PlannedTensor>> {
    match &input.source {
        InputSource::Path(path) => {
            let meta = std::fs::metadata(path).map_err(Error::io("cannot open", path))?;
            if meta.is_dir() && is_dataset(path) {
                return plan_dataset(path, input.name.as_deref(), options);
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
                return Ok(vec![plan_shards(name, &files, options)?]);
            }
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            match ext.as_str() {
                "npy" => {
                    let name = input.name.clone().unwrap_or_else(|| file_stem(path));
                    Ok(vec![plan_shards(name, std::slice::from_ref(path), options)?])
                }
                "npz" => plan_npz(path, input.name.as_deref(), options),
                "safetensors" => plan_safetensors(path, input.name.as_deref(), options),
                "mmt" => plan_mmt(path, input.name.as_deref(), options),
                _ => Err(Error::UnsupportedInput {
                    path: path.clone(),
                    member: None,
                    reason: format!(
                        "{}: inputs are .npy, .npz, .safetensors and .mmt files, dataset folders, folders of .npy shards or globs",
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
            Ok(vec![plan_shards(name, &files, options)?])
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
            Ok(vec![plan_shards(name, paths, options)?])
        }
    }
}

fn sort_natural(files: &mut [PathBuf]) {
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
}

pub(crate) fn child_name(prefix: Option<&str>, key: &str, only: bool) -> String {
    match prefix {
        Some(p) if only => p.to_owned(),
        Some(p) => format!("{p}.{key}"),
        None => key.to_owned(),
    }
}

/// Converts `inputs` into the store `output`: plans every tensor (headers only), then streams
/// each through byte swapping, transposition and casting into a [`StoreWriter`] in bounded chunks.
///
/// Memory stays bounded whatever the input size: a few chunks of
/// [`ConvertOptions::chunk_size`] bytes (8 MiB by default), reused across tensors. Inputs are
/// never memory-mapped: they are read with `read` and bounded positioned reads (`pread`, for the
/// random access of a Fortran-order transpose; a compressed member is first inflated to an
/// anonymous spill file beside the output), so an input that another process truncates or
/// rewrites meanwhile gives an error ([`Error::DataSize`] naming the file and offset) or wrong
/// values in the output, never a crash or undefined behaviour.
///
/// Cancellation: `cancel` is polled between chunks; once set, the writer is dropped (its
/// temporary file deleted) and [`Error::Cancelled`] is returned. On any error nothing is left
/// under `output`, and an existing `output` is untouched.
///
/// # Errors
/// As [`plan`]; while streaming, [`Error::DataSize`] (data shorter or longer than the header
/// says), [`Error::Zip`] (a CRC mismatch or bad deflate stream), [`Error::ValueOutOfRange`] (a
/// narrowing integer cast), [`Error::InvalidBool`] (a BOOL byte other than 0 and 1, unless
/// [`ConvertOptions::normalize_bools`]), [`Error::Io`], [`Error::Format`], [`Error::Cancelled`].
///
/// # Examples
/// ```
/// use std::sync::atomic::AtomicBool;
/// use mmtensor_convert::{convert, ConvertOptions, Input, NoProgress};
///
/// let dir = tempfile::tempdir()?;
/// // A tiny .npy: 3 little-endian f64 values.
/// let mut npy = mmtensor_format::npy::encode_header(mmtensor_format::Dtype::F64, &[3]);
/// for v in [1.0f64, 2.5, -3.0] { npy.extend_from_slice(&v.to_le_bytes()); }
/// std::fs::write(dir.path().join("x.npy"), npy)?;
///
/// let mut options = ConvertOptions::default();
/// options.dtype.add("f32")?;
/// let out = dir.path().join("out.mmt");
/// let summary = convert(
///     &[Input::path(dir.path().join("x.npy"))],
///     &out,
///     &options,
///     &NoProgress,
///     &AtomicBool::new(false),
/// )?;
/// assert_eq!(summary.tensors, 1);
///
/// let bytes = std::fs::read(&out)?;
/// let layout = mmtensor_format::FileLayout::parse(&bytes, bytes.len() as u64)?;
/// let x = layout.tensor("x").unwrap();
/// assert_eq!(x.dtype, mmtensor_format::Dtype::F32);
/// let start = layout.tensor_range(x).start as usize;
/// assert_eq!(&bytes[start..start + 4], &1.0f32.to_le_bytes());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn convert(
    inputs: &[Input],
    output: impl AsRef<Path>,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Summary> {
    let plan = plan(inputs, options)?;
    write_plan(&plan, output, options, progress, cancel)
}

/// Writes a [`Plan`] made by [`plan`] (so a caller can show the plan, or refuse it, first).
///
/// A plan's fields are public, so this function checks again what it relies on (every cast is
/// supported, shapes, dtypes and byte counts agree, no reserved `mmt.` metadata key): a plan
/// changed after [`plan`] made it is refused with an error, never a panic.
///
/// # Errors
/// As [`convert`]; [`Error::InvalidInput`] or [`Error::UnsupportedCast`] for a plan that no
/// longer holds together.
pub fn write_plan(
    plan: &Plan,
    output: impl AsRef<Path>,
    options: &ConvertOptions,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Summary> {
    let output = output.as_ref();
    let fmt = |source| Error::Format {
        path: output.to_path_buf(),
        source,
    };
    let mut builder = LayoutBuilder::new();
    builder.alignment(options.alignment).map_err(fmt)?;
    builder.block_size(options.block_size).map_err(fmt)?;
    for (k, v) in &plan.metadata {
        builder.metadata(k, v).map_err(fmt)?;
    }
    for t in &plan.tensors {
        builder.tensor(&t.name, t.dtype, &t.shape).map_err(fmt)?;
    }
    let layout = builder.build().map_err(fmt)?;
    let file_len = layout.file_len();
    let spill_dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    progress.start(plan);
    let cancelled = || Error::Cancelled {
        path: output.to_path_buf(),
    };
    // Sizes from .npz members are the archive's claims until inflated: never reserve disk for them.
    let unproven = plan.tensors.iter().any(|t| {
        t.parts
            .iter()
            .any(|p| matches!(p.location, Location::Member { .. }))
    });
    let mut writer = if unproven {
        StoreWriter::create_unreserved(output, layout)?
    } else {
        StoreWriter::create(output, layout)?
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut cast_buf: Vec<u8> = Vec::new();
    for (index, t) in plan.tensors.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(cancelled());
        }
        progress.tensor(index, t);
        writer.begin_tensor(&t.name)?;
        let mut done_elems = 0u64;
        let from = t.source_dtype;
        let chunk = if t.is_copy() {
            options.chunk_size.min(COPY_CHUNK_SIZE)
        } else {
            options.chunk_size
        }
        .max(1 << 12);
        for part in &t.parts {
            // Elements of this part already delivered (C order).
            let mut part_elems = 0u64;
            part.stream(
                &t.name,
                chunk,
                &mut buf,
                &spill_dir,
                &mut |bytes: &[u8]| {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(cancelled());
                    }
                    let n = bytes.len() / from.size();
                    emit(
                        &mut writer,
                        t,
                        part,
                        options,
                        (done_elems, part_elems),
                        bytes,
                        &mut cast_buf,
                    )?;
                    done_elems += n as u64;
                    part_elems += n as u64;
                    progress.advance(bytes.len() as u64);
                    Ok(())
                },
            )?;
        }
        writer.end_tensor()?;
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(cancelled());
    }
    progress.finish();
    let path = writer.finish()?;
    Ok(Summary {
        path,
        tensors: plan.tensors.len(),
        input_bytes: plan.input_bytes(),
        file_len,
    })
}
