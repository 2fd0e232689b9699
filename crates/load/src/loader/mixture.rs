//! A weighted mixture as a loader source: the sources' columns concatenated into one index space
//! (source `s`'s row `r` is row `start_s + r`, as a dataset's shards are), read in the order
//! [`crate::mix`] specifies, through the loader's one gather path.
//!
//! [`Mixture`] is what a caller gives [`Loader::from_mix`](crate::Loader::from_mix); [`MixParts`]
//! is one column's rows over every source; [`Order`] is where a loader's epochs come from (its
//! rows' [`OrderSpec`] or a [`MixSpec`]), and [`MixPlan`] makes a mixture's epochs and states.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mmtensor_format::Dtype;

use crate::dataset::Dataset;
use crate::mix::{MixError, MixSource, MixSpec, MixState, Schedule};
use crate::order::{EpochOrder, OrderError, OrderSpec, Segment, Shuffle, Split};
use crate::owned::OwnedTensor;
use crate::store::Store;
use crate::take::{cast_row, gather, read_cast};
use crate::tensor::Tensor;
use crate::{Error, Result};

use super::column::{Column, Source};
use super::options::{LoaderOptions, RankSplit};
use super::windows::Windows;
use super::{default_columns, Loader};

/// Where a mixture source's rows are: a store's tensors, or a sharded dataset's columns.
#[derive(Clone, Copy, Debug)]
pub enum MixData<'a> {
    /// A store: each column is one of its tensors.
    Store(&'a Store),
    /// A dataset: each column is one of its columns, over all its shards (it must be opened
    /// with all of them).
    Dataset(&'a Dataset),
}

impl<'a> From<&'a Store> for MixData<'a> {
    fn from(store: &'a Store) -> MixData<'a> {
        MixData::Store(store)
    }
}

impl<'a> From<&'a Dataset> for MixData<'a> {
    fn from(dataset: &'a Dataset) -> MixData<'a> {
        MixData::Dataset(dataset)
    }
}

impl MixData<'_> {
    fn path(&self) -> &Path {
        match self {
            MixData::Store(s) => s.path(),
            MixData::Dataset(d) => d.path(),
        }
    }

    /// The columns read when none are named: a store's as [`Loader::new`] chooses them, a
    /// dataset's all.
    fn default_columns(&self) -> Vec<String> {
        match self {
            MixData::Store(s) => default_columns(s),
            MixData::Dataset(d) => d.columns().iter().map(|c| c.name().to_owned()).collect(),
        }
    }

    /// The names of its columns, for a message.
    fn names(&self) -> Vec<String> {
        match self {
            MixData::Store(s) => s.names().map(str::to_owned).collect(),
            MixData::Dataset(d) => d.columns().iter().map(|c| c.name().to_owned()).collect(),
        }
    }
}

/// One source of a [`Mixture`]: a name (for messages and states), its rows, and its weight.
#[derive(Clone, Debug)]
pub struct MixInput<'a> {
    /// The source's name: messages name it, and it is the key of Python's dicts.
    pub name: String,
    /// Its rows.
    pub data: MixData<'a>,
    /// Its share of the mixture relative to the other weights: finite, at least 0.
    pub weight: f64,
}

impl<'a> MixInput<'a> {
    /// Source `name` reading `data` (a `&Store` or a `&Dataset`) with weight `weight`.
    pub fn new(name: impl Into<String>, data: impl Into<MixData<'a>>, weight: f64) -> MixInput<'a> {
        MixInput {
            name: name.into(),
            data: data.into(),
            weight,
        }
    }
}

/// A weighted mixture of sources, for [`Loader::from_mix`](crate::Loader::from_mix).
#[derive(Clone, Debug)]
pub struct Mixture<'a> {
    /// The sources, numbered in this order (which enters the order).
    pub sources: Vec<MixInput<'a>>,
    /// Mixture samples per epoch before it is cut to whole global batches; `None`: the rows of
    /// the sources with a positive weight, added up ([`MixSpec::samples_per_epoch`]).
    pub samples_per_epoch: Option<u64>,
}

impl<'a> Mixture<'a> {
    /// A mixture of `sources`, with the default epoch length.
    pub fn new(sources: Vec<MixInput<'a>>) -> Mixture<'a> {
        Mixture {
            sources,
            samples_per_epoch: None,
        }
    }

    /// The name a loader over the mixture goes by in messages: `mix[web, code]`.
    fn path(&self) -> PathBuf {
        let names: Vec<&str> = self.sources.iter().map(|s| s.name.as_str()).collect();
        PathBuf::from(format!("mix[{}]", names.join(", ")))
    }
}

/// One column of a mixture: the same-named column of every source, one after the other in one
/// index space. Every part has the same dtype and row shape.
pub(super) struct MixParts {
    /// The mixture's name, for errors.
    path: PathBuf,
    name: String,
    dtype: Dtype,
    row_shape: Box<[u64]>,
    row_bytes: u64,
    /// Every source's tensors of the column (a dataset gives one per shard), in order.
    parts: Box<[OwnedTensor]>,
    /// The row where each part starts, then the total: `parts.len() + 1` entries.
    starts: Box<[u64]>,
}

impl MixParts {
    pub(super) fn dtype(&self) -> Dtype {
        self.dtype
    }

    pub(super) fn row_shape(&self) -> &[u64] {
        &self.row_shape
    }

    pub(super) fn num_rows(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    pub(super) fn parts(&self) -> &[OwnedTensor] {
        &self.parts
    }

    /// Gathers the rows `indices` (mixture rows) into `out`, cast to `dtype`: one gather over
    /// every part, as a dataset column's.
    pub(super) fn take_into(&self, indices: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        let cast = read_cast(&self.path, &self.name, self.dtype, dtype)?;
        let out_row = cast_row(&self.path, self.row_bytes, cast)?;
        if u128::from(out_row) * indices.len() as u128 != out.len() as u128 {
            return Err(Error::TakeOutput {
                path: self.path.clone(),
                tensor: self.name.clone(),
                rows: indices.len(),
                row_bytes: out_row,
                actual: out.len(),
            });
        }
        let n = self.num_rows();
        if let Some(&index) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::RowIndex {
                path: self.path.clone(),
                tensor: self.name.clone(),
                index,
                rows: n,
            });
        }
        let views: Vec<Tensor<'_>> = self.parts.iter().map(OwnedTensor::view).collect();
        gather(&views, &self.starts, indices, out, self.row_bytes, cast)
    }

    /// Calls `f` with each part holding some of the mixture rows `range`, and those rows' bytes.
    pub(super) fn pieces(
        &self,
        range: Range<u64>,
        row_bytes: u64,
        mut f: impl FnMut(&OwnedTensor, Range<u64>),
    ) {
        for (i, part) in self.parts.iter().enumerate() {
            let (lo, hi) = (self.starts[i], self.starts[i + 1]);
            let (a, b) = (range.start.max(lo), range.end.min(hi));
            if a < b {
                f(part, (a - lo) * row_bytes..(b - lo) * row_bytes);
            }
        }
    }

    /// The part holding mixture row `row`, and the byte offset of the row in it.
    pub(super) fn locate(&self, row: u64, row_bytes: u64) -> Option<(&OwnedTensor, u64)> {
        if row >= self.num_rows() {
            return None;
        }
        // The last part starting at or before `row` (empty parts start where the next does).
        let i = self.starts.partition_point(|&s| s <= row) - 1;
        Some((self.parts.get(i)?, (row - self.starts[i]) * row_bytes))
    }
}

/// One source's part of a column, before the parts are put together.
struct Piece {
    dtype: Dtype,
    row_shape: Vec<u64>,
    row_bytes: u64,
    rows: u64,
    /// The tensors, with the rows of each.
    tensors: Vec<(OwnedTensor, u64)>,
}

/// Column `column` of source `input`; errors name the mixture `path` and the source.
fn piece(path: &Path, input: &MixInput<'_>, column: &str) -> Result<Piece> {
    let refuse = |reason: String| Error::Mixture {
        path: path.to_path_buf(),
        column: Some(column.to_owned()),
        reason,
    };
    let source = format!("source {:?} ({})", input.name, input.data.path().display());
    let missing = || {
        refuse(format!(
            "{source} has no column `{column}` (it has {}); every source of a mixture needs every \
             column the loader reads",
            input
                .data
                .names()
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    match input.data {
        MixData::Store(store) => {
            let tensor = match store.tensor(column) {
                Ok(t) => t,
                Err(Error::NotFound { .. }) => return Err(missing()),
                Err(e) => return Err(e),
            };
            if tensor.is_ragged() {
                return Err(refuse(format!(
                    "column `{column}` of {source} is ragged; a mixture reads fixed-shape rows"
                )));
            }
            let tensor = store.tensor_owned(column)?;
            let row_bytes = tensor.row_bytes()?;
            // A column's bytes must be viewable; checked once here, not at every batch.
            tensor.bytes()?;
            let rows = tensor.shape()[0];
            Ok(Piece {
                dtype: tensor.dtype(),
                row_shape: tensor.shape()[1..].to_vec(),
                row_bytes,
                rows,
                tensors: vec![(tensor, rows)],
            })
        }
        MixData::Dataset(dataset) => {
            let c = match dataset.column(column) {
                Ok(c) => c,
                Err(Error::NotFound { .. }) => return Err(missing()),
                Err(Error::RaggedColumn { .. }) => {
                    return Err(refuse(format!(
                        "column `{column}` of {source} is ragged; a mixture reads fixed-shape rows"
                    )))
                }
                Err(e) => return Err(e),
            };
            let starts = c.starts();
            let mut tensors = Vec::with_capacity(c.parts().len());
            for (i, part) in c.parts().iter().enumerate() {
                let Some(part) = part else {
                    return Err(refuse(format!(
                        "{source} was opened without its shard {i}: a mixture reads every row of \
                         every source on every rank; open the dataset with all its shards"
                    )));
                };
                tensors.push((part.clone(), starts[i + 1] - starts[i]));
            }
            Ok(Piece {
                dtype: c.dtype(),
                row_shape: c.row_shape().to_vec(),
                row_bytes: c.row_bytes(),
                rows: c.num_rows(),
                tensors,
            })
        }
    }
}

/// What [`Loader::build`] needs to make a mixture's order besides the columns.
pub(super) struct MixSetup {
    pub(super) sources: Vec<(String, u64, f64)>,
    pub(super) samples_per_epoch: Option<u64>,
    /// Where each source's rows start in the mixture's index space.
    pub(super) starts: Vec<u64>,
}

impl Loader {
    /// A loader over a weighted [`Mixture`] of stores and datasets, standing at epoch 0, batch 0.
    ///
    /// Each column of the mixture is the same-named column of every source, which must have the
    /// same dtype and row shape everywhere; the sources' rows are numbered one after the other
    /// (source `s`'s row `r` is `start_s + r`, as [`Batch::row_indices`](crate::Batch) gives
    /// them). Batches hold rows drawn from the sources by weight, in the order [`crate::mix`]
    /// specifies, with `options`' batch size, rank and world size, its `shuffle` as every
    /// source's own shuffle and its `seed` as the mixture's. Every batch is full (no
    /// `drop_last`, which is ignored). `options.columns` names the columns; `None` reads the first
    /// source's (as [`Loader::new`] or [`Loader::from_dataset`] would choose them). The loader's
    /// [`path`](Loader::path), which errors name, is `mix[name, name, ...]`.
    ///
    /// [`Loader::state`] stays `(epoch, next_batch)`; [`Loader::mix_state`] adds how many samples
    /// each source has given, and [`Loader::set_mix_state`] resumes from it without replaying
    /// the schedule.
    ///
    /// # Errors
    ///
    /// - [`Error::Mixture`] for `split` [`RankSplit::Shards`] or `seq_len` (a mixture takes
    ///   neither), a column missing from a source or ragged there, a column whose dtype or row
    ///   shape differs between sources, or a dataset opened without some shards.
    /// - [`Error::Mix`] for what the mixture order refuses: no source, a weight negative, NaN or
    ///   infinite, every weight 0, a source with weight and no rows, an epoch shorter than one
    ///   global batch.
    /// - As [`Loader::new`] otherwise ([`Error::ColumnRows`] names a source whose columns differ
    ///   in rows).
    pub fn from_mix(mix: &Mixture<'_>, options: LoaderOptions) -> Result<Loader> {
        let path = mix.path();
        options.check(&path)?;
        let refuse = |reason: &str| Error::Mixture {
            path: path.clone(),
            column: None,
            reason: reason.to_owned(),
        };
        if options.split != RankSplit::Rows {
            return Err(refuse(
                "a mixture's ranks split its samples (split=\"rows\"); whole shards per rank \
                 (split=\"shards\") is not for a mixture",
            ));
        }
        let Some(first) = mix.sources.first() else {
            return Err(Error::Mix {
                path,
                source: MixError::NoSources,
            });
        };
        if let Some(seq_len) = options.seq_len {
            return Loader::mix_windows(mix, options, path, seq_len);
        }
        let names = match &options.columns {
            Some(names) => names.clone(),
            None => first.data.default_columns(),
        };
        // Source by source, column by column: every source's rows, and every column's parts.
        let mut pieces: Vec<Vec<Piece>> = Vec::with_capacity(names.len());
        for name in &names {
            let mut row = Vec::with_capacity(mix.sources.len());
            for input in &mix.sources {
                row.push(piece(&path, input, name)?);
            }
            pieces.push(row);
        }
        let mut rows = Vec::with_capacity(mix.sources.len());
        for (s, input) in mix.sources.iter().enumerate() {
            let Some(first_col) = pieces.first() else {
                break;
            };
            let n = first_col[s].rows;
            for (c, col) in pieces.iter().enumerate().skip(1) {
                if col[s].rows != n {
                    return Err(Error::ColumnRows {
                        path: input.data.path().to_path_buf(),
                        column: names[c].clone(),
                        rows: col[s].rows,
                        first: names[0].clone(),
                        first_rows: n,
                    });
                }
            }
            rows.push(n);
        }
        let mut starts = Vec::with_capacity(rows.len() + 1);
        let mut total = 0u64;
        for &n in &rows {
            starts.push(total);
            total = total.checked_add(n).ok_or_else(|| Error::TooLarge {
                path: path.clone(),
                len: u64::MAX,
            })?;
        }
        let mut columns = Vec::with_capacity(names.len());
        for (name, col) in names.iter().zip(pieces) {
            let first = &col[0];
            for (s, p) in col.iter().enumerate().skip(1) {
                if p.dtype != first.dtype || p.row_shape != first.row_shape {
                    return Err(Error::Mixture {
                        path: path.clone(),
                        column: Some(name.clone()),
                        reason: format!(
                            "column `{name}` of source {:?} ({}) holds {} rows of shape {:?}, \
                             but source {:?}'s holds {} rows of shape {:?}; a mixture's sources \
                             must have the same dtype and row shape for each column",
                            mix.sources[s].name,
                            mix.sources[s].data.path().display(),
                            p.dtype,
                            p.row_shape,
                            mix.sources[0].name,
                            first.dtype,
                            first.row_shape,
                        ),
                    });
                }
            }
            let (dtype, row_shape, row_bytes) =
                (first.dtype, first.row_shape.clone(), first.row_bytes);
            let mut parts = Vec::new();
            let mut part_starts = Vec::new();
            let mut at = 0u64;
            for p in col {
                for (t, n) in p.tensors {
                    part_starts.push(at);
                    parts.push(t);
                    at += n;
                }
            }
            part_starts.push(at);
            let source = Source::Mix(MixParts {
                path: path.clone(),
                name: name.clone(),
                dtype,
                row_shape: row_shape.into(),
                row_bytes,
                parts: parts.into(),
                starts: part_starts.into(),
            });
            columns.push(Column::new(&path, name, row_bytes, source)?);
        }
        let setup = MixSetup {
            sources: mix
                .sources
                .iter()
                .zip(&rows)
                .map(|(s, &n)| (s.name.clone(), n, s.weight))
                .collect(),
            samples_per_epoch: mix.samples_per_epoch,
            starts,
        };
        Loader::build(path, columns, options, Some(setup))
    }
}

impl Loader {
    /// [`Loader::from_mix`] with `seq_len`: every source's ragged column (the one
    /// `options.columns` names, or the first source's only one) cut into windows, each a sample
    /// of the mixture; windows of every source have the same length and dtype.
    fn mix_windows(
        mix: &Mixture<'_>,
        options: LoaderOptions,
        path: PathBuf,
        seq_len: u64,
    ) -> Result<Loader> {
        let first = &mix.sources[0];
        let ragged: Vec<String> = match first.data {
            MixData::Store(st) => st.ragged_names().map(str::to_owned).collect(),
            MixData::Dataset(ds) => ds
                .ragged_columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect(),
        };
        let name = super::window_column(&path, options.columns.as_deref(), &ragged)?;
        let mut windows = Vec::with_capacity(mix.sources.len());
        let mut starts = Vec::with_capacity(mix.sources.len() + 1);
        let mut total = 0u64;
        for input in &mix.sources {
            let source = format!("source {:?} ({})", input.name, input.data.path().display());
            let column = match input.data {
                MixData::Store(st) => st.ragged(&name),
                MixData::Dataset(ds) => ds.ragged(&name),
            }
            .map_err(|e| Error::Mixture {
                path: path.clone(),
                column: Some(name.clone()),
                reason: format!("{source}: {e}"),
            })?;
            let w = Windows::new(input.data.path(), column, seq_len, options.within_documents)?;
            if let Some(f) = windows.first() {
                let f: &Windows = f;
                if f.column().dtype() != w.column().dtype() {
                    return Err(Error::Mixture {
                        path: path.clone(),
                        column: Some(name.clone()),
                        reason: format!(
                            "{source} holds {} tokens, but source {:?} holds {}; a mixture's windows have one dtype",
                            w.column().dtype(),
                            first.name,
                            f.column().dtype()
                        ),
                    });
                }
            }
            starts.push(total);
            total = total
                .checked_add(w.count())
                .ok_or_else(|| Error::TooLarge {
                    path: path.clone(),
                    len: u64::MAX,
                })?;
            windows.push(w);
        }
        starts.push(total);
        let rows: Vec<u64> = windows.iter().map(Windows::count).collect();
        let row_bytes = windows[0].width() * windows[0].column().item_bytes();
        let source = Source::MixWindows(MixWindows {
            path: path.clone(),
            name: name.clone(),
            windows: windows.into(),
            starts: starts.clone().into(),
        });
        let columns = vec![Column::new(&path, &name, row_bytes, source)?];
        let setup = MixSetup {
            sources: mix
                .sources
                .iter()
                .zip(&rows)
                .map(|(s, &n)| (s.name.clone(), n, s.weight))
                .collect(),
            samples_per_epoch: mix.samples_per_epoch,
            starts: starts[..starts.len() - 1].to_vec(),
        };
        Loader::build(path, columns, options, Some(setup))
    }
}

/// The windows of every source of a mixture, numbered one source after the other.
pub(super) struct MixWindows {
    path: PathBuf,
    name: String,
    windows: Box<[Windows]>,
    /// Where each source's windows start, then the total.
    starts: Box<[u64]>,
}

impl MixWindows {
    pub(super) fn dtype(&self) -> Dtype {
        self.windows[0].column().dtype()
    }

    pub(super) fn width(&self) -> u64 {
        self.windows[0].width()
    }

    pub(super) fn num_rows(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// The source holding mixture window `w`, and its window there.
    fn locate_window(&self, w: u64) -> Option<(&Windows, u64)> {
        if w >= self.num_rows() {
            return None;
        }
        let s = self.starts.partition_point(|&x| x <= w) - 1;
        Some((self.windows.get(s)?, w - self.starts[s]))
    }

    /// Copies mixture windows `indices` into `out`, cast to `dtype`, each from its source.
    pub(super) fn take_into(&self, indices: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        let first = self.windows[0].column();
        let cast = read_cast(&self.path, &self.name, first.dtype(), dtype)?;
        let row = cast_row(&self.path, self.width() * first.item_bytes(), cast)? as usize;
        if row * indices.len() != out.len() {
            return Err(Error::TakeOutput {
                path: self.path.clone(),
                tensor: self.name.clone(),
                rows: indices.len(),
                row_bytes: row as u64,
                actual: out.len(),
            });
        }
        for (k, &i) in indices.iter().enumerate() {
            let (w, local) = self.locate_window(i).ok_or_else(|| Error::RowIndex {
                path: self.path.clone(),
                tensor: self.name.clone(),
                index: i,
                rows: self.num_rows(),
            })?;
            w.copy_window(local, &mut out[k * row..(k + 1) * row], cast)?;
        }
        Ok(())
    }

    /// Calls `f` with each values tensor holding part of mixture windows `range`.
    pub(super) fn pieces(&self, range: Range<u64>, mut f: impl FnMut(&OwnedTensor, Range<u64>)) {
        for (s, w) in self.windows.iter().enumerate() {
            let (lo, hi) = (self.starts[s], self.starts[s + 1]);
            let (a, b) = (range.start.max(lo), range.end.min(hi));
            if a < b {
                w.pieces(a - lo..b - lo, &mut f);
            }
        }
    }

    /// The values tensor holding mixture window `w`'s first item, and its byte offset there.
    pub(super) fn locate(&self, w: u64) -> Option<(&OwnedTensor, u64)> {
        let (windows, local) = self.locate_window(w)?;
        windows.locate(local)
    }

    /// Every values tensor read.
    pub(super) fn tensors(&self) -> impl Iterator<Item = &OwnedTensor> {
        self.windows.iter().flat_map(Windows::tensors)
    }
}

/// Where a loader's epochs come from.
#[derive(Clone, Debug)]
pub(super) enum Order {
    /// Its rows, by [`OrderSpec::epoch`].
    Rows(OrderSpec),
    /// A weighted mixture of sources.
    Mix(Arc<MixPlan>),
}

impl Order {
    /// The rows' order parameters; a mixture's describes its rows (all sources') and options.
    pub(super) fn spec(&self) -> &OrderSpec {
        match self {
            Order::Rows(spec) => spec,
            Order::Mix(plan) => &plan.rows,
        }
    }

    /// Batches on this rank of `segment` of an epoch (a mixture's epochs are always whole).
    pub(super) fn len(&self, segment: Segment) -> usize {
        let n = match self {
            // `build` checked the spec, and `Loader::set_state` the segment.
            Order::Rows(spec) => spec.segment_batches(segment).unwrap_or(0),
            Order::Mix(plan) => plan.batches,
        };
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// Epoch `epoch`'s order of `segment`, holding the batches from `first` on (a mixture's,
    /// whose epochs are whole; a row order holds them all); errors name `path`.
    pub(super) fn epoch(
        &self,
        epoch: u64,
        segment: Segment,
        first: usize,
        path: &Path,
    ) -> Result<EpochOrder> {
        match self {
            Order::Rows(spec) => spec
                .epoch_from(epoch, segment)
                .map_err(|source| Error::Order {
                    path: path.to_path_buf(),
                    source,
                }),
            Order::Mix(plan) => plan.epoch(epoch, first as u64, path),
        }
    }
}

/// The most mixture states a loader keeps to resume from (epoch starts and restored states).
const KNOWN_STATES: usize = 16;

/// A mixture's order as a loader uses it: the [`MixSpec`], where each source's rows start, and
/// states already known, so that neither a new epoch nor a saved state replays the schedule.
pub(super) struct MixPlan {
    pub(super) spec: MixSpec,
    /// The loader's rows and options, for [`Loader::spec`].
    rows: OrderSpec,
    /// What the epoch orders carry for the read-ahead: a full shuffle of all rows (the sources
    /// interleave, so rows are advised one by one, whatever each source's shuffle).
    advice: OrderSpec,
    starts: Box<[u64]>,
    batches: u64,
    /// [`MixSpec::integer_weights`].
    weights: Vec<u64>,
    /// The schedule's period.
    period: u64,
    /// States met so far (each the schedule's own): epoch starts of epochs built, and states
    /// restored. Shared by the loader's clones, which have the same spec.
    known: Mutex<VecDeque<MixState>>,
}

impl std::fmt::Debug for MixPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixPlan")
            .field("spec", &self.spec)
            .field("starts", &self.starts)
            .field("batches", &self.batches)
            .finish_non_exhaustive()
    }
}

impl MixPlan {
    /// The plan for `setup` with `options`, whose rows are `rows`; errors name `path`.
    pub(super) fn new(
        path: &Path,
        setup: MixSetup,
        options: &LoaderOptions,
        rows: OrderSpec,
    ) -> Result<MixPlan> {
        let mix_error = |source| Error::Mix {
            path: path.to_path_buf(),
            source,
        };
        let spec = MixSpec {
            sources: setup
                .sources
                .into_iter()
                .map(|(name, rows, weight)| MixSource {
                    name,
                    rows,
                    weight,
                    shuffle: options.shuffle,
                })
                .collect(),
            seed: options.seed,
            batch_size: options.batch_size,
            rank: options.rank,
            world_size: options.world_size,
            samples_per_epoch: setup.samples_per_epoch,
        };
        let batches = spec.batches_per_epoch().map_err(mix_error)?;
        let weights = spec.integer_weights().map_err(mix_error)?;
        let period = Schedule::new(&weights).map_err(mix_error)?.period();
        let advice = OrderSpec {
            shuffle: Shuffle::Full,
            split: Split::Rows,
            drop_last: true,
            ..rows.clone()
        };
        Ok(MixPlan {
            spec,
            rows,
            advice,
            starts: setup.starts.into(),
            batches,
            weights,
            period,
            known: Mutex::new(VecDeque::new()),
        })
    }

    /// Global batches per epoch.
    pub(super) fn batches(&self) -> u64 {
        self.batches
    }

    fn remember(&self, state: &MixState) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(state) {
            return;
        }
        if known.len() >= KNOWN_STATES {
            known.pop_front();
        }
        known.push_back(state.clone());
    }

    /// Checks `state` (as far as is cheap: [`MixSpec::resume`]) and keeps it to resume from;
    /// returns it with a finished epoch read as the start of the next.
    pub(super) fn restore(&self, state: &MixState) -> std::result::Result<MixState, MixError> {
        let order = self.spec.resume(state)?;
        let state = order.state();
        self.remember(&state);
        Ok(state)
    }

    /// The state at the start of global batch `batch` of `epoch`: a known one, or replayed from
    /// the nearest known state of the epoch before it, or [`MixSpec::state_at`], whichever
    /// replays fewer samples.
    pub(super) fn state(&self, epoch: u64, batch: u64) -> std::result::Result<MixState, MixError> {
        let (epoch, batch) = match batch.cmp(&self.batches) {
            std::cmp::Ordering::Less => (epoch, batch),
            std::cmp::Ordering::Equal => (
                epoch
                    .checked_add(1)
                    .ok_or(MixError::TooManySamples { epoch, batch })?,
                0,
            ),
            std::cmp::Ordering::Greater => {
                return Err(MixError::ResumePastEnd {
                    batch,
                    len: self.batches,
                })
            }
        };
        let nearest = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            known
                .iter()
                .filter(|s| s.epoch == epoch && s.next_batch <= batch)
                .max_by_key(|s| s.next_batch)
                .cloned()
        };
        let global = self.spec.batch_size * self.spec.world_size;
        // `state_at` replays `k mod P` samples, `k` where the batch starts.
        let direct = epoch
            .checked_mul(self.batches * global)
            .and_then(|k| k.checked_add(batch * global))
            .map(|k| k % self.period);
        let state = match nearest {
            Some(s) if s.next_batch == batch => return Ok(s),
            Some(s) if direct.is_none_or(|d| (batch - s.next_batch) * global <= d) => {
                let mut schedule = Schedule::from_counts(&self.weights, &s.counts)?;
                for _ in 0..(batch - s.next_batch) * global {
                    schedule.next();
                }
                MixState {
                    epoch,
                    next_batch: batch,
                    counts: schedule.counts().to_vec(),
                }
            }
            _ => self.spec.state_at(epoch, batch)?,
        };
        self.remember(&state);
        Ok(state)
    }

    /// Epoch `epoch`'s batches from `first` on, on this rank, as rows of the mixture's index
    /// space; errors name `path`.
    fn epoch(&self, epoch: u64, first: u64, path: &Path) -> Result<EpochOrder> {
        let mix_error = |source| Error::Mix {
            path: path.to_path_buf(),
            source,
        };
        let start = self.state(epoch, first).map_err(mix_error)?;
        let mut order = self.spec.resume(&start).map_err(mix_error)?;
        let b = self.spec.batch_size;
        let count = (self.batches - start.next_batch).saturating_mul(b);
        let too_many = || Error::Order {
            path: path.to_path_buf(),
            source: OrderError::TooManyRows {
                rows: count,
                bytes: count.saturating_mul(8),
            },
        };
        let len = usize::try_from(count).map_err(|_| too_many())?;
        let mut seq: Vec<u64> = Vec::new();
        seq.try_reserve_exact(len).map_err(|_| too_many())?;
        for _ in start.next_batch..self.batches {
            let batch = order
                .next()
                .expect("an epoch has `batches` batches")
                .map_err(mix_error)?;
            seq.extend(batch.iter().map(|&(s, r)| self.starts[s as usize] + r));
        }
        // The next epoch's start, for the next epoch's order and states.
        self.remember(&order.state());
        let too_large = |_| too_many();
        Ok(EpochOrder::from_batches(
            self.advice.clone(),
            start.epoch,
            seq,
            usize::try_from(start.next_batch).map_err(too_large)?,
            usize::try_from(self.batches).map_err(too_large)?,
            usize::try_from(b).map_err(too_large)?,
        ))
    }
}
