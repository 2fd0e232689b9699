//! The conversion driver: [`plan`] turns inputs into a checked [`Plan`] (through the readers, then
//! names, column selection, dtype rules, casts, metadata and provenance), and [`write_plan`]
//! streams it into one store: each part's chunks through [`emit`] (the BOOL check and the cast,
//! shared with the dataset writers) into a [`StoreWriter`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use mmtensor_format::Dtype;

use crate::options::COPY_CHUNK_SIZE;
use crate::plan::{Plan, PlannedTensor};
use crate::readers::plan_input;
use crate::source::Part;
use crate::transform::{cast, cast_supported, is_real_float};
use crate::{ConvertOptions, Error, Input, Progress, Result, StoreWriter};

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
        let mut planned = plan_input(input, &options.input_dtype, &options.columns)?;
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
    Ok(Plan::of_tensors(tensors, metadata))
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

/// Hands one chunk of a part's elements (C order, little-endian, whole elements) to `write` as
/// the store holds them: the BOOL check (or normalization) and the cast. `at` is the chunk's
/// first element within the tensor and within the part, for error messages.
pub(crate) fn emit(
    write: &mut dyn FnMut(&[u8]) -> Result<()>,
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
        write(cast_buf)
    } else if from == to {
        write(bytes)
    } else {
        cast_buf.resize(n * to.size(), 0);
        cast(bytes, from, cast_buf, to).map_err(|e| Error::ValueOutOfRange {
            tensor: t.name.clone(),
            index: done_elems + e.index,
            value: e.value,
            from,
            to,
        })?;
        write(cast_buf)
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
    let mut builder = options.layout(plan.metadata()).map_err(fmt)?;
    for t in plan.tensors() {
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
    let mut writer = if plan.tensors().iter().any(PlannedTensor::has_claimed_size) {
        StoreWriter::create_unreserved(output, layout)?
    } else {
        StoreWriter::create(output, layout)?
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut cast_buf: Vec<u8> = Vec::new();
    for (index, t) in plan.tensors().iter().enumerate() {
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
                        &mut |b: &[u8]| writer.write_chunk(b),
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
        tensors: plan.tensors().len(),
        input_bytes: plan.input_bytes(),
        file_len,
    })
}
