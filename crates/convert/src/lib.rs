//! Repack NumPy, safetensors, Parquet and Arrow data once into aligned `.mmt` stores.
//!
//! [`convert()`] reads `.npy` (versions 1 to 3, every numeric dtype, either byte order, C or
//! Fortran order, 0-d and zero-size), `.npz` (stored or deflated, zip64 included; members are
//! streamed, never inflated whole), `.safetensors`, `.mmt` stores and dataset folders, folders,
//! globs or lists of `.npy` shards concatenated along axis 0, Parquet files (`.parquet`:
//! uncompressed, snappy, zstd, lz4 or gzip) and Arrow IPC files and streams (`.arrow`,
//! `.feather` v2, `.arrows`; uncompressed, lz4 or zstd). It plans every tensor from the headers
//! (a Parquet footer, IPC message metadata), then streams each through byte swapping, a
//! bounded-memory Fortran-to-C transpose and dtype casts into the atomic [`StoreWriter`].
//! Nothing is ever left half-written under the output name.
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//! use mmtensor_convert::{convert, ConvertOptions, Input, NoProgress};
//! use mmtensor_format::{npy, Dtype};
//!
//! let dir = tempfile::tempdir()?;
//! let mut bytes = npy::encode_header(Dtype::I32, &[2, 2]);
//! for v in [1i32, 2, 3, 4] { bytes.extend_from_slice(&v.to_le_bytes()); }
//! std::fs::write(dir.path().join("labels.npy"), bytes)?;
//!
//! let inputs = [Input::parse(&format!("y={}", dir.path().join("labels.npy").display()))?];
//! let summary = convert(&inputs, dir.path().join("out.mmt"), &ConvertOptions::default(),
//!                       &NoProgress, &AtomicBool::new(false))?;
//! assert_eq!(summary.tensors, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`save`] writes tensors already in memory (a name, a dtype, a shape and C-order
//! little-endian bytes each) as one store through the same writer; the Python binding's
//! `mmtensor.save` calls it.
//!
//! ## Names, dtypes and metadata
//!
//! - A tensor is named after its file stem (`.npy`), its npz key, its safetensors name, its
//!   Parquet or Arrow column, or its folder (or glob prefix) for shards. `NAME=PATH` renames a
//!   one-tensor input and prefixes the tensors of a many-tensor file (`NAME.key`). Two tensors
//!   with one name are an error.
//! - A Parquet or Arrow column is one tensor whose first axis is the rows (decoded by arrow-rs
//!   one row group or record batch at a time, one column at a time): integers, floats (float16
//!   included) and bools as 1-D, `FixedSizeList`s (nested too) as rows of their sizes, and
//!   Arrow's fixed-shape tensor extension (`arrow.fixed_shape_tensor`, row-major) as rows of its
//!   shape. Other types (strings, variable-length lists, structs, dictionaries, times, decimals)
//!   and nulls are refused with [`Error::Arrow`] naming the file and column (and for nulls the
//!   row group or record batch, and the first null row when the data says it) before anything
//!   is visible; [`ConvertOptions::columns`] leaves such columns out.
//! - [`ConvertOptions::dtype`]: `DT` casts every real floating-point tensor; `NAME=DT` one tensor.
//!   Casts: between F64, F32, F16 and BF16 (round to nearest even), C128 to C64, and between
//!   integer types (narrowing checks every value and names the first that does not fit).
//! - `ml_dtypes` bfloat16 and fp8 arrays are saved by NumPy as raw void data (`<V2`, `<V1`; `float8_e5m2` as `<f1`).
//!   Name their dtype with [`ConvertOptions::input_dtype`]: `bf16` for all void tensors, or
//!   `NAME=f8_e4m3` for one (CLI: `--input-dtype`). A per-tensor input dtype may also
//!   reinterpret any stored dtype of the same size (e.g. bfloat16 bits saved as `uint16`).
//! - A BOOL tensor must hold only the bytes 0 and 1: any other byte is refused with
//!   [`Error::InvalidBool`] (file, tensor, element index, byte offset), since NumPy and torch would
//!   pass it on as a bool their kernels assume is 0 or 1. [`ConvertOptions::normalize_bools`]
//!   (CLI `--normalize-bools`) stores every nonzero byte as 1 instead.
//! - The store's metadata records `source.converter` and `source.inputs`: a JSON array with one
//!   object per input (`input` as written, `tensors`: how many consecutive tensors of the store it
//!   gave, `first`: the first one's name, `from`: a one-tensor input's shard range or member) and,
//!   under `changed`, only the tensors that were byte-swapped, reordered from Fortran order, cast
//!   or read through an input-dtype rule, with how they were stored. A tensor copied unchanged has
//!   no entry, so provenance grows with the inputs, not the tensor count. Turn off with
//!   [`ConvertOptions::record_sources`].
//!   Keys starting `mmt.` are reserved by the format and refused.
//!
//! ## Sharded datasets
//!
//! [`convert_dataset`] writes the same inputs as a folder of `.mmt` shards of at most a given
//! number of data bytes (whole rows of every tensor, which must share their first dimension) and a
//! manifest (`manifest.mmtm`, see `mmtensor_format::Manifest`), written last. [`append`] adds
//! rows to such a folder, after checking that the inputs have the dataset's columns: it fills the
//! last shard up to the dataset's shard size first (a new shard, under a new name, replaces it)
//! and replaces the manifest atomically. [`compact`] merges runs of small shards in place;
//! [`prune`] deletes the shard files the manifest no longer lists (which stay, until then, for
//! readers holding an older manifest).
//!
//! [`DatasetWriter`] is the one sink of every write that adds rows: rows pushed in batches of any
//! size from any source (the Python binding's `DatasetWriter`), or streamed from planned inputs
//! (`convert_dataset`, `append`), cut into shards at row boundaries, with nothing visible until
//! it finishes. Many writers can write one dataset at once, each its own part
//! ([`DatasetWriter::part`]); [`commit`] makes every part's rows visible together, in the order
//! of the parts' ids.
//!
//! Cargo features: none.
#![deny(missing_docs)]

mod atomic;
mod convert;
mod dataset;
mod error;
pub mod export;
mod input;
mod options;
mod plan;
mod progress;
mod readers;
pub mod sample;
mod save;
mod source;
pub mod tokens;
pub mod transform;
mod writer;

pub use atomic::AtomicFile;
pub use convert::{convert, plan, write_plan, Summary};
pub use dataset::{
    append, append_with, commit, compact, convert_dataset, prune, write_manifest, ColumnBatch,
    DatasetSummary, DatasetWriter, Fill, Pruned, DEFAULT_SHARD_SIZE, MAX_COLUMNS,
};
pub use error::{Error, Result};
pub use input::{DtypeRules, Input, InputSource};
pub use options::{ConvertOptions, DEFAULT_CHUNK_SIZE};
pub use plan::{Plan, PlannedTensor};
pub use progress::{NoProgress, Progress};
pub use save::{save, SaveTensor};
pub use writer::StoreWriter;
