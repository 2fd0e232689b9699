//! The training loader: shuffled, rank-split batches of rows, gathered ahead on a worker thread.
//!
//! A [`Loader`] reads the same rows of several columns (tensors that share their first dimension)
//! batch after batch, in the order [`crate::order`] specifies, and copies each batch into buffers
//! of its own with [`Tensor::take_into`](crate::Tensor::take_into): rows sorted into file order,
//! neighbouring rows copied in one piece, the copy spread over the process's thread pool. A
//! worker thread gathers up to `prefetch` batches ahead of the caller and asks the kernel to start
//! reading the pages of the batch after the one it gathers (`madvise(MADV_WILLNEED)`), so the
//! disk works while the caller computes. A column may be cast as it is gathered
//! ([`LoaderOptions::dtypes`]: `U16` token ids as `I64`), in the same pass.
//!
//! ```
//! use mmtensor::{Loader, LoaderOptions, order::Shuffle};
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
//! # // SAFETY: nothing modifies the fixture.
//! let store = unsafe { mmtensor::Store::open(path)? }; // x: F32 [256, 8], labels: I64 [256]
//! let mut loader = Loader::new(&store, LoaderOptions {
//!     shuffle: Shuffle::Full,
//!     seed: 7,
//!     ..LoaderOptions::new(100)
//! })?;
//! assert_eq!(loader.len(), 3); // 100 + 100 + 56 rows
//! for epoch in 0..2 {
//!     loader.set_epoch(epoch);
//!     for batch in loader.iter()? {
//!         let batch = batch?;
//!         let x: &[f32] = batch.column("x")?.as_slice()?;
//!         let labels: &[i64] = batch.column("labels")?.as_slice()?;
//!         assert_eq!(x.len(), 8 * labels.len());
//!     }
//! }
//! # Ok::<(), mmtensor::Error>(())
//! ```
//!
//! # Memory
//!
//! Batches are gathered into buffers that return to the loader when the [`Batch`] holding them is
//! dropped, and the next batch reuses them. The worker gathers at most `prefetch` batches ahead,
//! so a caller that lets go of each batch before asking for the next keeps the loader's heap at
//! `(prefetch + 1)` batches of buffers, plus the epoch's row order (8 bytes a row), whatever the
//! store's size. A batch the caller still holds is never written to: the worker takes fresh
//! buffers instead, and those are freed, not kept, once more than `prefetch + 1` buffers of a
//! column are idle. Each column's buffer returns on its own ([`PooledBuffers::into_columns`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::dataset::Dataset;
use crate::mix::{MixSpec, MixState};
use crate::order::{shard_ranks, OrderError, OrderSpec, Segment, Split};
use crate::store::Store;
use crate::{Error, Result};

mod batch;
mod buffers;
mod column;
mod gate;
mod mixture;
mod options;
mod padded;
mod plan;
mod readahead;
mod stream;
mod sweep;
mod waits;
mod windows;

pub use batch::{Batch, BatchColumn};
pub use buffers::{Allocate, Buffers, Pool, PooledBuffer, PooledBuffers};
pub use column::LoaderColumn;
pub use gate::{Gate, GateError, GatePass};
pub use mixture::{MixData, MixInput, Mixture};
pub use options::{LoaderOptions, LoaderState, RankSplit, DEFAULT_PREFETCH, MAX_PREFETCH};
pub use stream::{Iter, Stream};

use crate::ragged::RaggedColumn;
use buffers::PoolState;
use column::{Column, Shared, Source};
use mixture::{MixPlan, MixSetup, Order};

/// Reads batches of rows from a store's columns, epoch after epoch. See the [module](self) docs.
///
/// Cloning is cheap (the columns and the buffers are shared) and gives a loader with the same
/// state that then moves on its own.
#[derive(Clone)]
pub struct Loader {
    shared: Arc<Shared>,
    /// The buffers batches are gathered into, kept apart from the columns (see [`Pool`]).
    pool: Arc<PoolState>,
    order: Order,
    prefetch: usize,
    state: LoaderState,
    /// Length-grouped batches: the window in batches, and the ragged column whose row lengths
    /// group them ([`LoaderOptions::group_by_length`]).
    grouping: Option<(u64, RaggedColumn)>,
    /// What makes a batch's rows readable before its gather, for data that is not all local
    /// ([`Loader::with_gate`]).
    gate: Option<Arc<dyn Gate>>,
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("path", &self.shared.path)
            .field("columns", &self.column_names().collect::<Vec<_>>())
            .field("order", &self.order)
            .field("prefetch", &self.prefetch)
            .field("state", &self.state)
            .finish()
    }
}

impl Loader {
    /// A loader over `store`'s columns, standing at epoch 0, batch 0.
    ///
    /// The loader holds its own reference to the store's bytes (as an
    /// [`OwnedTensor`](crate::OwnedTensor) does), so it may outlive the `store` handle.
    ///
    /// # Errors
    ///
    /// - [`Error::Order`] for options the order refuses: batch size 0, world size 0, a rank not
    ///   below the world size, a block shuffle with a zero size.
    /// - [`Error::NoColumns`] for an empty column list or a store without tensors;
    ///   [`Error::NotFound`] for a column that is not a tensor of the store;
    ///   [`Error::DuplicateColumn`] for a column named twice.
    /// - [`Error::Format`] holding [`mmtensor_format::Error::Scalar`] for a 0-dimensional column;
    ///   [`Error::ColumnRows`] for a column whose first dimension differs from the first column's.
    /// - [`Error::NeedsConvert`] for a column with no little-endian C-order bytes (a Fortran or
    ///   big-endian `.npy`); [`Error::TooLarge`] for rows too large to address.
    /// - [`Error::CastColumn`] for an output dtype ([`LoaderOptions::dtypes`]) given for a name
    ///   that is not one of the columns; [`Error::UnsupportedCast`] for one the rows are not cast
    ///   to as they are read (a cast that could fail on a value, or none at all).
    pub fn new(store: &Store, options: LoaderOptions) -> Result<Loader> {
        let path = store.path().to_path_buf();
        options.check(&path)?;
        check_pad_with_windows(&path, &options)?;
        if options.seq_len.is_some() {
            let ragged: Vec<String> = store.ragged_names().map(str::to_owned).collect();
            return Loader::of_windows(path, options, &ragged, |n| store.ragged(n));
        }
        let mut names: Vec<String> = match &options.columns {
            Some(names) => names.clone(),
            None => default_columns(store),
        };
        if options.columns.is_none() {
            // Ragged tensors join the default columns when they are given a pad.
            let more: Vec<String> = options
                .pad
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            names.extend(more);
        }
        if names.is_empty() {
            // Only ragged tensors: say how they are read, not that there is nothing.
            if let Some(name) = store.ragged_names().next() {
                return Err(Error::RaggedColumn {
                    path,
                    column: name.to_owned(),
                });
            }
        }
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            let ragged = store.tensor(name)?.is_ragged();
            match (ragged, options.pad.get(name)) {
                (true, Some(pad)) => {
                    columns.extend(Column::of_padded(&path, store.ragged(name)?, pad.clone())?)
                }
                _ => columns.push(Column::of_tensor(&path, store, name)?),
            }
        }
        Loader::build(path, columns, options, None)
    }

    /// A loader over the columns of a sharded [`Dataset`]: one index space over
    /// every shard's rows, each batch gathered across shards, standing at epoch 0, batch 0.
    ///
    /// `options.columns` names dataset columns; `None` reads them all. Errors name the dataset's
    /// folder.
    ///
    /// # Errors
    ///
    /// As [`Loader::new`]; [`Error::NotFound`] for a column the dataset does not have.
    pub fn from_dataset(dataset: &Dataset, options: LoaderOptions) -> Result<Loader> {
        let path = dataset.path().to_path_buf();
        options.check(&path)?;
        check_pad_with_windows(&path, &options)?;
        if options.seq_len.is_some() {
            let ragged: Vec<String> = dataset
                .ragged_columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect();
            return Loader::of_windows(path, options, &ragged, |n| dataset.ragged(n));
        }
        let names: Vec<String> = match &options.columns {
            Some(names) => names.clone(),
            // Every column, ragged ones when they are given a pad, in manifest order.
            None => dataset
                .manifest()
                .columns()
                .iter()
                .filter(|c| !c.is_ragged() || options.pad.contains_key(c.name()))
                .map(|c| c.name().to_owned())
                .collect(),
        };
        if let (true, Some(c)) = (names.is_empty(), dataset.ragged_columns().first()) {
            // Only ragged columns: say how they are read, not that there is nothing.
            return Err(Error::RaggedColumn {
                path,
                column: c.name().to_owned(),
            });
        }
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            match options.pad.get(name) {
                Some(pad) if dataset.ragged_columns().iter().any(|c| c.name() == name) => columns
                    .extend(Column::of_padded(
                        &path,
                        dataset.ragged(name)?,
                        pad.clone(),
                    )?),
                _ => columns.push(Column::of_dataset(&path, dataset, name)?),
            }
        }
        Loader::build(path, columns, options, None)
    }

    /// The loader of sequence windows over one of the ragged columns `ragged` (the one
    /// `options.columns` names, or the only one), which `open` opens.
    fn of_windows(
        path: PathBuf,
        options: LoaderOptions,
        ragged: &[String],
        open: impl FnOnce(&str) -> Result<RaggedColumn>,
    ) -> Result<Loader> {
        let seq_len = options.seq_len.unwrap_or(0);
        let name = window_column(&path, options.columns.as_deref(), ragged)?;
        let column = open(&name)?;
        let columns = vec![Column::of_windows(
            &path,
            column,
            seq_len,
            options.within_documents,
        )?];
        Loader::build(path, columns, options, None)
    }

    /// The loader over `columns` (already resolved), after the checks every source shares; with
    /// `mix`, in the order of that mixture of sources.
    fn build(
        path: PathBuf,
        mut columns: Vec<Column>,
        options: LoaderOptions,
        mix: Option<MixSetup>,
    ) -> Result<Loader> {
        let order_error = |source| Error::Order {
            path: path.clone(),
            source,
        };
        if columns.is_empty() {
            return Err(Error::NoColumns { path });
        }
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].iter().any(|d| d.name == c.name) {
                return Err(Error::DuplicateColumn {
                    path,
                    column: c.name.to_string(),
                });
            }
            let first = &columns[0];
            if c.rows != first.rows {
                return Err(Error::ColumnRows {
                    path,
                    column: c.name.to_string(),
                    rows: c.rows,
                    first: first.name.to_string(),
                    first_rows: first.rows,
                });
            }
        }
        let refuse = |column: &str, reason: String| Error::Windows {
            path: path.clone(),
            column: column.to_owned(),
            reason,
        };
        for name in options.pad.keys() {
            if !columns
                .iter()
                .any(|c| *c.name == **name && matches!(c.source, Source::Padded(_)))
            {
                return Err(refuse(
                    name,
                    "a pad is given for it, but it is not a ragged column the loader reads".into(),
                ));
            }
        }
        let grouping = match options.group_by_length {
            None => None,
            Some(0) => {
                return Err(refuse(
                    "",
                    "group_by_length is a window of batches; it must be at least 1".into(),
                ))
            }
            Some(window) => match columns.iter().find_map(|c| match &c.source {
                Source::Padded(p) => Some(p.column.clone()),
                _ => None,
            }) {
                Some(column) => Some((window, column)),
                None => {
                    return Err(refuse(
                        "",
                        "group_by_length groups rows by the length of a padded ragged column, and the loader reads none (give one a pad)".into(),
                    ))
                }
            },
        };
        // Output dtypes: checked once here (a cast that could fail on a value is refused now, not
        // mid-epoch), then made by every batch's gather. They change what a batch holds, never
        // which rows it holds.
        for (name, &dtype) in &options.dtypes {
            let Some(c) = columns.iter_mut().find(|c| *c.name == **name) else {
                return Err(Error::CastColumn {
                    path,
                    column: name.clone(),
                    columns: columns.iter().map(|c| c.name.to_string()).collect(),
                });
            };
            c.cast_to(&path, dtype)?;
        }
        let rows = columns[0].rows;
        let split = match options.split {
            RankSplit::Rows => Split::Rows,
            RankSplit::Shards => match columns[0].source.shard_rows() {
                Some(rows) => Split::Shards(rows),
                None => {
                    return Err(Error::Windows {
                        path,
                        column: columns[0].name.to_string(),
                        reason: "sequence windows are split across ranks by windows (split=\"rows\"), not by shards".into(),
                    })
                }
            },
        };
        let spec = options.spec(rows, split);
        // A batch's buffers must be addressable; checked once for the largest batch (a
        // mixture's batches are all full, whatever its rows).
        let (order, batch_rows) = match mix {
            None => {
                let batch_rows = options
                    .batch_size
                    .min(spec.rank_rows().map_err(order_error)?);
                (Order::Rows(spec.clone()), batch_rows)
            }
            Some(setup) => {
                let plan = MixPlan::new(&path, setup, &options, spec.clone())?;
                (Order::Mix(Arc::new(plan)), options.batch_size)
            }
        };
        // Every shard the epochs can read must be open: all of them, or this rank's.
        let owned = match &spec.split {
            Split::Shards(shards) => {
                Some(shard_ranks(shards, spec.world_size).map_err(order_error)?)
            }
            _ => None,
        };
        for c in &columns {
            c.source
                .check_open(|i| owned.as_ref().is_none_or(|r| r[i] == spec.rank))?;
        }
        let mut full = Vec::with_capacity(columns.len());
        for c in &columns {
            let bytes = (c.out_row_bytes as u64).checked_mul(batch_rows);
            match bytes.and_then(|b| usize::try_from(b).ok()) {
                Some(b) => full.push(b),
                None => {
                    return Err(Error::TooLarge {
                        path,
                        len: bytes.unwrap_or(u64::MAX),
                    })
                }
            }
        }
        let state = LoaderState::start(0, order.spec());
        Ok(Loader {
            shared: Arc::new(Shared {
                path,
                columns: columns.into_boxed_slice(),
                advice: Mutex::default(),
            }),
            pool: PoolState::new(full.into_boxed_slice(), options.prefetch.saturating_add(1)),
            order,
            prefetch: options.prefetch,
            state,
            grouping,
            gate: None,
        })
    }

    /// The number of batches on this rank of the epoch the loader stands in: of every epoch,
    /// except one resumed by [`Loader::set_state`] at a position saved on another world size or
    /// over fewer rows, which has the batches of what remained of it (numbered from 0).
    pub fn len(&self) -> usize {
        // `new` checked the spec, and `rows` is at most u64::MAX rows: the count of batches of
        // at least one row fits when the epoch's row order does, which `iter` checks.
        self.order.len(self.segment())
    }

    /// Whether the epoch the loader stands in has no batch on this rank (a store with no rows,
    /// or too few rows for a full batch with `drop_last`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The order's parameters: rows, batch size, shuffle, seed, rank, world size, `drop_last`.
    ///
    /// For a mixture ([`Loader::from_mix`]): its rows (every source's, added up) and the options
    /// it was made with; its batches are the mixture's ([`Loader::len`], [`Loader::mix`]), not
    /// what the spec's [`OrderSpec::batches_per_epoch`] would give.
    pub fn spec(&self) -> &OrderSpec {
        self.order.spec()
    }

    /// Rows of the largest batch: the batch size, or fewer when an epoch on this rank has fewer
    /// rows (never fewer for a mixture, whose batches are all full).
    pub fn batch_rows(&self) -> u64 {
        match &self.order {
            Order::Rows(spec) => spec.batch_size.min(spec.rank_rows().unwrap_or(0)),
            Order::Mix(_) => self.order.spec().batch_size,
        }
    }

    /// The mixture's order, for a loader made by [`Loader::from_mix`]: its sources (names, rows,
    /// weights), seed, batch size and ranks; `None` for any other loader.
    pub fn mix(&self) -> Option<&MixSpec> {
        match &self.order {
            Order::Mix(plan) => Some(&plan.spec),
            Order::Rows(_) => None,
        }
    }

    /// For a mixture, where the loader stands as a [`MixState`]: its [`Loader::state`] and the
    /// samples each source has given before it (over all ranks and epochs). `None` for any other
    /// loader.
    ///
    /// Known at once after an epoch's order is built or a state restored by
    /// [`Loader::set_mix_state`]; otherwise replayed from the epoch's start, or computed by
    /// [`MixSpec::state_at`], whichever is shorter.
    ///
    /// # Errors
    ///
    /// [`Error::Mix`] holding [`MixError::TooManySamples`](crate::mix::MixError) past the last
    /// sample index.
    pub fn mix_state(&self) -> Result<Option<MixState>> {
        self.mix_state_at(self.state)
    }

    /// [`Loader::mix_state`] at `state` rather than where the loader stands.
    ///
    /// # Errors
    ///
    /// As [`Loader::mix_state`], and [`Error::Mix`] holding
    /// [`MixError::ResumePastEnd`](crate::mix::MixError) for a batch past the end of an epoch.
    pub fn mix_state_at(&self, state: LoaderState) -> Result<Option<MixState>> {
        let Order::Mix(plan) = &self.order else {
            return Ok(None);
        };
        plan.state(state.epoch, state.next_batch)
            .map(Some)
            .map_err(|source| Error::Mix {
                path: self.shared.path.clone(),
                source,
            })
    }

    /// For a mixture, moves to `state`, as saved by [`Loader::mix_state`] (on any rank): as
    /// [`Loader::set_state`] of its epoch and batch, and the sources' counts are kept, so that the
    /// next epoch's order resumes from them rather than replaying the schedule.
    ///
    /// # Errors
    ///
    /// [`Error::Mixture`] for a loader that is not a mixture's; [`Error::Mix`] holding
    /// [`MixError::ResumePastEnd`](crate::mix::MixError) or, for counts that this mixture cannot
    /// have reached (checked as far as is cheap: see [`MixSpec::resume`]),
    /// [`MixError::State`](crate::mix::MixError) naming the source.
    pub fn set_mix_state(&mut self, state: &MixState) -> Result<()> {
        let Order::Mix(plan) = &self.order else {
            return Err(Error::Mixture {
                path: self.shared.path.clone(),
                column: None,
                reason: "this loader reads no mixture, so it has no mixture state to restore"
                    .into(),
            });
        };
        let state = plan.restore(state).map_err(|source| Error::Mix {
            path: self.shared.path.clone(),
            source,
        })?;
        debug_assert!(state.next_batch < plan.batches());
        self.state = self.state_at(state.epoch, state.next_batch);
        Ok(())
    }

    /// This loader, asking `gate` before it gathers each batch (see [`Gate`]): how
    /// `mmtensor-remote` reads a dataset streamed from object storage, whose shards hold only the
    /// parts fetched so far. A loader over fully local data needs none.
    ///
    /// # Errors
    ///
    /// [`Error::Windows`] for a loader of sequence windows or padded ragged rows, whose rows a
    /// gate cannot see (it is told dataset rows, and those read ragged items).
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Result<Loader> {
        if let Some(c) = self
            .shared
            .columns
            .iter()
            .find(|c| !matches!(c.source, Source::Tensor(_) | Source::Shards(_)))
        {
            return Err(Error::Windows {
                path: self.shared.path.clone(),
                column: c.name.to_string(),
                reason: "a streamed dataset is read as rows of fixed-shape columns; sequence \
                         windows, padded ragged rows and mixtures need its shards local (open \
                         it without stream)"
                    .into(),
            });
        }
        self.gate = Some(gate);
        Ok(self)
    }

    /// Batches the worker gathers ahead of the caller.
    pub fn prefetch(&self) -> usize {
        self.prefetch
    }

    /// The path of the store.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The columns' names, in the order batches hold them.
    pub fn column_names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.shared.columns.iter().map(|c| &*c.name)
    }

    /// The columns: name, dtype and row shape, in the order batches hold them.
    pub fn columns(&self) -> impl ExactSizeIterator<Item = LoaderColumn<'_>> + '_ {
        self.shared.columns.iter().map(Column::describe)
    }

    /// Where the loader stands.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// The state of batch `next_batch` of the whole epoch `epoch` on this loader's ranks and
    /// rows: what [`Loader::state`] reports there. `next_batch == len()` is the end of the epoch.
    pub fn state_at(&self, epoch: u64, next_batch: u64) -> LoaderState {
        let spec = self.order.spec();
        LoaderState {
            epoch,
            next_batch,
            samples: spec.position(Segment::whole(spec.num_rows), next_batch),
            rows: spec.num_rows,
            world_size: spec.world_size,
        }
    }

    /// The part of its epoch's order the loader stands in: a state never stands at the end of
    /// its epoch (it moves to the next), so its position is `start + next_batch * batch_size *
    /// world_size`, not capped at `rows`.
    fn segment(&self) -> Segment {
        segment_of(self.order.spec(), &self.state)
    }

    /// Moves to the start of `epoch`, unless the loader already stands in `epoch`, in which case
    /// it stays where it is: a loader restored mid-epoch by [`Loader::set_state`] and then given
    /// `set_epoch` of that same epoch (the usual loop `for e in start..: set_epoch(e); ...`)
    /// resumes rather than starting the epoch again.
    pub fn set_epoch(&mut self, epoch: u64) {
        if self.state.epoch != epoch {
            self.state = LoaderState::start(epoch, self.order.spec());
        }
    }

    /// Moves to `state`, as saved by [`Loader::state`] (on any rank).
    ///
    /// A state of this loader's world size stands where it says: batch `next_batch` of its epoch
    /// (of the part of it that remained, for an epoch resumed from another world size). A state
    /// of another world size resumes its epoch from its global position `samples`: the rest of
    /// the epoch's order over the state's `rows`, split across this loader's ranks and numbered
    /// from batch 0 ([`Loader::len`] is then its batches). A state whose epoch covers fewer rows
    /// than the loader has (rows appended since) resumes that epoch over its own rows, and the
    /// next epoch covers them all. A state at position 0 starts its epoch over all the loader's
    /// rows. `docs/LOADER.md` ("Elastic resume") is the spec.
    ///
    /// # Errors
    ///
    /// [`Error::Order`] holding:
    /// - [`OrderError::StateRows`] when the state's epoch covers more rows than the loader has;
    ///   [`OrderError::PositionPastEnd`] for a position past them;
    /// - [`OrderError::ResumePastEnd`] when `next_batch` is past the end of an epoch.
    ///   `next_batch == len()` is allowed: the epoch is over, and the loader moves to
    ///   `(epoch + 1, 0)`;
    /// - [`OrderError::NotElastic`] for a position of another world size or fewer rows where the
    ///   order of an epoch depends on the world size: whole shards per rank
    ///   ([`RankSplit::Shards`]), length-grouped batches, and mixtures (which resume only on the
    ///   world size they were saved on).
    pub fn set_state(&mut self, state: LoaderState) -> Result<()> {
        let spec = self.order.spec();
        let order_error = |source| Error::Order {
            path: self.shared.path.clone(),
            source,
        };
        if state.rows > spec.num_rows {
            return Err(order_error(OrderError::StateRows {
                state_rows: state.rows,
                rows: spec.num_rows,
            }));
        }
        if state.samples > state.rows {
            return Err(order_error(OrderError::PositionPastEnd {
                samples: state.samples,
                rows: state.rows,
            }));
        }
        let refuse = |reason| {
            order_error(OrderError::NotElastic {
                samples: state.samples,
                rows: state.rows,
                reason,
            })
        };
        let mix = matches!(self.order, Order::Mix(_));
        if mix && (state.world_size != spec.world_size || state.rows != spec.num_rows) {
            return Err(refuse(MIX_NOT_ELASTIC));
        }
        if state.samples == 0 && state.next_batch == 0 {
            // Nothing of the epoch was read: it starts over every row there is.
            self.state = LoaderState::start(state.epoch, spec);
            return Ok(());
        }
        let (segment, next_batch) = if state.world_size == spec.world_size {
            // Batch `next_batch` of the segment this rank stood in. A finished epoch's position
            // is capped at its rows, and the segment so found is over by `next_batch` too.
            (segment_of(spec, &state), state.next_batch)
        } else {
            (
                Segment {
                    start: state.samples,
                    rows: state.rows,
                },
                0,
            )
        };
        if segment != Segment::whole(spec.num_rows) && self.grouping.is_some() {
            return Err(refuse(GROUPED_NOT_ELASTIC));
        }
        spec.check_segment(segment).map_err(order_error)?;
        let len = self.order.len(segment);
        if usize::try_from(next_batch).map_or(true, |n| n > len) {
            return Err(order_error(OrderError::ResumePastEnd {
                batch: usize::try_from(next_batch).unwrap_or(usize::MAX),
                len,
            }));
        }
        // A finished epoch is the start of the next: `set_epoch` of the finished one must not
        // keep the position (and so run the next epoch's batches under the old number).
        self.state = if usize::try_from(next_batch).is_ok_and(|n| n == len) {
            LoaderState::after(state.epoch, spec)
        } else {
            LoaderState {
                epoch: state.epoch,
                next_batch,
                samples: spec.position(segment, next_batch),
                rows: segment.rows,
                world_size: spec.world_size,
            }
        };
        Ok(())
    }

    /// The rest of the current epoch, batch after batch, gathered ahead by a worker thread.
    ///
    /// Each batch handed out advances [`Loader::state`]; after the epoch's last batch the state
    /// is the start of the next epoch, so calling `iter` again goes on with a new shuffle. A
    /// loader that stands at the end of an epoch (`next_batch == len()`) moves to the next epoch
    /// first.
    ///
    /// # Errors
    ///
    /// [`Error::Order`] when the epoch's row order cannot be held in memory; [`Error::Io`] when
    /// the worker thread cannot be started.
    pub fn iter(&mut self) -> Result<Iter<'_>> {
        let stream = self.stream(self.pool())?;
        Ok(Iter::new(&mut self.state, stream))
    }

    /// The loader's own buffers, for [`Loader::stream`]: what [`Loader::iter`] gathers into.
    pub fn pool(&self) -> Pool {
        Pool::new(&self.pool)
    }

    /// The rest of the current epoch, like [`Loader::iter`], but gathered into buffers that
    /// `alloc` provides (pinned host memory for a GPU copy, say), and without moving the
    /// loader's state: the stream owns everything it needs, and reports with each batch the state
    /// that follows it, for the caller to [`set_state`](Loader::set_state).
    ///
    /// # Errors
    ///
    /// As [`Loader::iter`].
    pub fn stream<A: Allocate>(&self, alloc: A) -> Result<Stream<A>> {
        let mut state = self.state;
        if usize::try_from(state.next_batch).is_ok_and(|n| n >= self.len()) {
            state = LoaderState::after(state.epoch, self.order.spec());
        }
        let first = usize::try_from(state.next_batch).unwrap_or(usize::MAX);
        let segment = segment_of(self.order.spec(), &state);
        let mut order = self
            .order
            .epoch(state.epoch, segment, first, &self.shared.path)?;
        if let Some((window, column)) = &self.grouping {
            // A row order holds the whole epoch (grouping needs padded rows, which a mixture
            // does not read), and its rows are the column's, in range: `row_len` cannot fail.
            let seed = self.order.spec().seed;
            order.group_by_length(*window, seed, |r| column.row_len(r).unwrap_or(0));
        }
        let order = Arc::new(order);
        let gate = match &self.gate {
            None => None,
            Some(g) => Some(
                g.start(Arc::clone(&order), first)
                    .map_err(|source| Error::Gate {
                        path: self.shared.path.clone(),
                        batch: first,
                        source,
                    })?,
            ),
        };
        Stream::start(
            Arc::clone(&self.shared),
            order,
            first,
            self.prefetch,
            alloc,
            gate,
        )
    }
}

/// The part of its epoch's order `state` stands in, on `spec`'s ranks: it started at the position
/// `samples - next_batch * batch_size * world_size` (0 when that is negative: a finished epoch
/// whose position was capped at its rows).
fn segment_of(spec: &OrderSpec, state: &LoaderState) -> Segment {
    let done = state
        .next_batch
        .saturating_mul(spec.batch_size)
        .saturating_mul(spec.world_size);
    Segment {
        start: state.samples.saturating_sub(done),
        rows: state.rows,
    }
}

/// Why a mixture cannot resume on another world size ([`OrderError::NotElastic`]).
const MIX_NOT_ELASTIC: &str = "a mixture's epochs and batches are counted in global batches of \
     the world size it was saved on, over its sources' rows; resume a mixture on that world size \
     and those sources";

/// Why length-grouped batches cannot resume at a position of another world size or fewer rows.
const GROUPED_NOT_ELASTIC: &str = "length-grouped batches (group_by_length) are regrouped within \
     windows of each rank's rows, which depend on the world size and the epoch's start; resume \
     on the ranks and the data the state was saved with, or without group_by_length";

/// Every tensor whose first dimension equals that of the first tensor with one, in file order
/// (0-dimensional tensors, such as a step counter, have no rows and are left out).
pub(super) fn default_columns(store: &Store) -> Vec<String> {
    // A ragged tensor's values and offsets are not rows (a loader reads them with `seq_len`).
    let tensors = store.index().tensors();
    let ragged =
        |i: usize| tensors[i].offsets.is_some() || (i > 0 && tensors[i - 1].offsets.is_some());
    let rows_of = |i: usize| {
        (!ragged(i))
            .then(|| tensors[i].shape.first().copied())
            .flatten()
    };
    let Some(rows) = (0..tensors.len()).find_map(rows_of) else {
        return Vec::new();
    };
    (0..tensors.len())
        .filter(|&i| rows_of(i) == Some(rows))
        .map(|i| tensors[i].name.clone())
        .collect()
}

/// The one ragged column sequence windows are cut from: the one named, or the only ragged
/// column; errors name `path`.
fn window_column(path: &Path, asked: Option<&[String]>, ragged: &[String]) -> Result<String> {
    let refuse = |reason: String| Error::Windows {
        path: path.to_path_buf(),
        column: asked.unwrap_or(ragged).join(", "),
        reason,
    };
    match asked {
        Some([one]) => Ok(one.clone()),
        Some(many) => Err(refuse(format!(
            "seq_len cuts windows from one ragged column, but {} columns were named",
            many.len()
        ))),
        None => match ragged {
            [one] => Ok(one.clone()),
            [] => Err(refuse(
                "seq_len needs a ragged column (a token stream), and there is none".into(),
            )),
            _ => Err(refuse(format!(
                "seq_len cuts windows from one ragged column: name one of {ragged:?} in columns"
            ))),
        },
    }
}

/// Refuses `pad` with `seq_len`: the first reads ragged rows as padded samples, the second reads
/// windows of the stream.
fn check_pad_with_windows(path: &Path, options: &LoaderOptions) -> Result<()> {
    match (options.seq_len, options.pad.keys().next()) {
        (Some(_), Some(name)) => Err(Error::Windows {
            path: path.to_path_buf(),
            column: name.clone(),
            reason: "a pad reads ragged rows as padded samples and seq_len reads windows of the stream: give one of them".into(),
        }),
        _ => Ok(()),
    }
}
