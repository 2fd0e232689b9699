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

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mmtensor_format::Dtype;

use crate::order::{EpochOrder, OrderSpec, Shuffle, Split};
use crate::{Advice, Element, Error, OwnedTensor, Result, Store};

/// Batches the worker gathers ahead of the caller unless told otherwise.
pub const DEFAULT_PREFETCH: usize = 2;

/// The largest `prefetch` a loader accepts: its channel allocates a slot per batch up front.
pub const MAX_PREFETCH: usize = 1 << 16;

/// Rows of a batch checked for residency before it is advised (see `Gatherer::resident`).
const RESIDENT_SAMPLE: usize = 8;

/// Rows of a batch whose byte ranges lie closer than this are advised as one range: one
/// `madvise` call instead of many for rows that share or nearly share pages. (A block shuffle on
/// one rank advises whole blocks instead: see `advice_rows`.)
const ADVISE_GAP: u64 = 64 << 10;

/// What a [`Loader`] reads and in which order.
///
/// Build it with [`LoaderOptions::new`] and struct update syntax:
/// `LoaderOptions { shuffle: Shuffle::Full, seed: 3, ..LoaderOptions::new(1024) }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Rows per batch, at least 1.
    pub batch_size: u64,
    /// The tensors to read, by name, in the order batches hold them. `None`: every tensor of the
    /// store whose first dimension equals the first tensor's, in file order.
    pub columns: Option<Vec<String>>,
    /// How rows are ordered within an epoch ([`crate::order`]).
    pub shuffle: Shuffle,
    /// With the epoch, selects the permutation.
    pub seed: u64,
    /// This process's rank, below `world_size`.
    pub rank: u64,
    /// The number of ranks, at least 1.
    pub world_size: u64,
    /// Make ranks equal by dropping rows, and drop a final short batch.
    pub drop_last: bool,
    /// How rows are divided among ranks: every rank draws from all rows (the default), or each
    /// rank reads whole shards of its own (a dataset opened for one rank needs this).
    pub split: RankSplit,
    /// Batches gathered ahead of the caller by a worker thread, at most [`MAX_PREFETCH`]; 0
    /// gathers each batch on the calling thread when it is asked for.
    pub prefetch: usize,
    /// Output dtypes by column name: a column named here is cast to its dtype as its rows are
    /// gathered (each thread converts the rows it copies, so no second pass), and its batches
    /// hold that dtype (`U16` token ids as `I64`, say). Columns not named keep their dtype. Only
    /// the casts that cannot fail on any value are made (see
    /// [`Tensor::take_into_as`](crate::Tensor::take_into_as)); the order, the batches' rows and
    /// the state are the same with or without casts. Empty by default.
    pub dtypes: BTreeMap<String, Dtype>,
}

impl LoaderOptions {
    /// Batches of `batch_size` rows of every column, in file order, rank 0 of 1, keeping a short
    /// last batch, [`DEFAULT_PREFETCH`] batches ahead.
    pub fn new(batch_size: u64) -> LoaderOptions {
        LoaderOptions {
            batch_size,
            columns: None,
            shuffle: Shuffle::None,
            seed: 0,
            rank: 0,
            world_size: 1,
            drop_last: false,
            split: RankSplit::Rows,
            prefetch: DEFAULT_PREFETCH,
            dtypes: BTreeMap::new(),
        }
    }
}

/// How a [`Loader`] divides an epoch's rows among ranks ([`LoaderOptions::split`]);
/// `docs/LOADER.md` gives both algorithms and the trade between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RankSplit {
    /// Every rank draws from all rows, dealt out as PyTorch's `DistributedSampler` does
    /// ([`Split::Rows`]): the best mix, and every rank reads every shard.
    #[default]
    Rows,
    /// Each rank reads only the rows of the shards it owns ([`crate::order::shard_ranks`]),
    /// shuffled among themselves ([`Split::Shards`]): a rank reads, and downloads, only its part
    /// of a dataset. A store is one shard.
    Shards,
}

/// Where a loader stands: the epoch, and the next batch it will hand out in that epoch.
///
/// A new loader stands at `(0, 0)`. Handing out the last batch of an epoch moves it to
/// `(epoch + 1, 0)`. Saving this and restoring it with [`Loader::set_state`] in a new process
/// (over the same store and options) resumes with exactly the batches that were not handed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoaderState {
    /// The epoch.
    pub epoch: u64,
    /// The index of the next batch of that epoch.
    pub next_batch: u64,
}

/// One column of a loader: where its rows are, and what they are.
struct Column {
    source: Source,
    name: Arc<str>,
    /// The dtype of the rows as stored.
    dtype: Dtype,
    /// The dtype batches hold: `dtype`, or the one [`LoaderOptions::dtypes`] names for the
    /// column, which rows are cast to as they are gathered.
    out_dtype: Dtype,
    /// The shape of one row (the tensor's dimensions after the first).
    row_shape: Box<[u64]>,
    rows: u64,
    /// Bytes of one stored row: where rows lie in the file.
    row_bytes: usize,
    /// Bytes of one row in a batch (of `out_dtype`).
    out_row_bytes: usize,
}

/// Where a column's rows are: one tensor of a store, or one column of a sharded dataset.
enum Source {
    Tensor(OwnedTensor),
    Shards(crate::Column),
}

impl Source {
    fn take_into(&self, rows: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        match self {
            Source::Tensor(t) => t.take_into_as(rows, out, dtype),
            Source::Shards(c) => c.take_into_as(rows, out, dtype),
        }
    }

    /// Every tensor the column reads from (a dataset's open shards).
    fn tensors(&self) -> impl Iterator<Item = &OwnedTensor> {
        let (one, parts): (Option<&OwnedTensor>, &[Option<OwnedTensor>]) = match self {
            Source::Tensor(t) => (Some(t), &[]),
            Source::Shards(c) => (None, c.parts()),
        };
        one.into_iter().chain(parts.iter().flatten())
    }

    /// Calls `f` with each open tensor holding part of the column rows `range`, and that part as
    /// rows of the tensor.
    fn pieces(&self, range: Range<u64>, mut f: impl FnMut(&OwnedTensor, Range<u64>)) {
        match self {
            Source::Tensor(t) => f(t, range),
            Source::Shards(c) => {
                let starts = c.starts();
                for (i, part) in c.parts().iter().enumerate() {
                    let (lo, hi) = (starts[i], starts[i + 1]);
                    let (a, b) = (range.start.max(lo), range.end.min(hi));
                    if let (Some(part), true) = (part, a < b) {
                        f(part, a - lo..b - lo);
                    }
                }
            }
        }
    }

    /// The open tensor holding column row `row`, and the row's index in it.
    fn locate(&self, row: u64) -> Option<(&OwnedTensor, u64)> {
        match self {
            Source::Tensor(t) => Some((t, row)),
            Source::Shards(c) => {
                let (i, r) = c.locate(row)?;
                Some((c.parts()[i].as_ref()?, r))
            }
        }
    }

    /// Each shard's rows (one shard: a store's tensor).
    fn shard_rows(&self) -> Arc<[u64]> {
        match self {
            Source::Tensor(t) => Arc::new([t.shape()[0]]),
            Source::Shards(c) => c.starts().windows(2).map(|w| w[1] - w[0]).collect(),
        }
    }

    /// The first shard of the column that `need` selects and is not open, as
    /// [`Error::ShardNotOpen`].
    fn check_open(&self, need: impl Fn(usize) -> bool) -> Result<()> {
        let Source::Shards(c) = self else {
            return Ok(());
        };
        match c
            .parts()
            .iter()
            .enumerate()
            .find(|(i, p)| p.is_none() && need(*i))
        {
            Some((i, _)) => Err(c.not_open(i, c.starts()[i])),
            None => Ok(()),
        }
    }
}

/// One column of a [`Loader`], as [`Loader::columns`] describes it.
#[derive(Clone, Copy, Debug)]
pub struct LoaderColumn<'a> {
    name: &'a str,
    dtype: Dtype,
    source_dtype: Dtype,
    row_shape: &'a [u64],
}

impl<'a> LoaderColumn<'a> {
    /// The column's (tensor's) name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The dtype its batches hold: the stored dtype, or the one [`LoaderOptions::dtypes`] casts
    /// it to.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The dtype of its rows as stored.
    pub fn source_dtype(&self) -> Dtype {
        self.source_dtype
    }

    /// The shape of one of its rows: a batch of it has shape `[rows] + row_shape`.
    pub fn row_shape(&self) -> &'a [u64] {
        self.row_shape
    }
}

/// What every batch and the worker share: the columns, and the buffers waiting for reuse.
struct Shared {
    path: std::path::PathBuf,
    columns: Box<[Column]>,
    pool: Arc<PoolState>,
    /// Full-shuffle streams alive: `MADV_RANDOM` is set when the first starts and `MADV_NORMAL`
    /// restored when the last ends, so overlapping streams do not undo each other's advice.
    random_streams: Mutex<usize>,
}

/// The loader's idle buffers. Kept apart from the columns so that buffers a caller holds (a
/// binding's arrays) do not keep the store's mapping alive.
struct PoolState {
    /// Each column's idle buffers.
    idle: Box<[Mutex<Vec<AlignedBuf>>]>,
    /// Idle buffer sets kept for reuse; more are freed.
    keep: usize,
    /// Bytes of each column's buffer: a full batch's, so that a set that held a short last batch
    /// serves a full one without growing.
    full: Box<[usize]>,
}

/// Reads batches of rows from a store's columns, epoch after epoch. See the [module](self) docs.
///
/// Cloning is cheap (the columns and the buffers are shared) and gives a loader with the same
/// state that then moves on its own.
#[derive(Clone)]
pub struct Loader {
    shared: Arc<Shared>,
    spec: OrderSpec,
    prefetch: usize,
    state: LoaderState,
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("path", &self.shared.path)
            .field("columns", &self.column_names().collect::<Vec<_>>())
            .field("spec", &self.spec)
            .field("prefetch", &self.prefetch)
            .field("state", &self.state)
            .finish()
    }
}

impl Loader {
    /// A loader over `store`'s columns, standing at epoch 0, batch 0.
    ///
    /// The loader holds its own reference to the store's bytes (as an [`OwnedTensor`] does), so
    /// it may outlive the `store` handle.
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
        check_options(&path, &options)?;
        let names: Vec<String> = match &options.columns {
            Some(names) => names.clone(),
            None => default_columns(store),
        };
        let columns = names
            .iter()
            .map(|name| {
                let tensor = store.tensor_owned(name)?;
                let row_bytes = tensor.row_bytes()?;
                // A column's bytes must be viewable; checked once here, not at every batch.
                tensor.bytes()?;
                let row_bytes = row_size(&path, row_bytes)?;
                Ok(Column {
                    name: name.as_str().into(),
                    dtype: tensor.dtype(),
                    out_dtype: tensor.dtype(),
                    row_shape: tensor.shape()[1..].into(),
                    rows: tensor.shape()[0],
                    row_bytes,
                    out_row_bytes: row_bytes,
                    source: Source::Tensor(tensor),
                })
            })
            .collect::<Result<Vec<Column>>>()?;
        Loader::build(path, columns, options)
    }

    /// A loader over the columns of a sharded [`Dataset`](crate::Dataset): one index space over
    /// every shard's rows, each batch gathered across shards, standing at epoch 0, batch 0.
    ///
    /// `options.columns` names dataset columns; `None` reads them all. Errors name the dataset's
    /// folder.
    ///
    /// # Errors
    ///
    /// As [`Loader::new`]; [`Error::NotFound`] for a column the dataset does not have.
    pub fn from_dataset(dataset: &crate::Dataset, options: LoaderOptions) -> Result<Loader> {
        let path = dataset.dir().to_path_buf();
        check_options(&path, &options)?;
        let names: Vec<String> = match &options.columns {
            Some(names) => names.clone(),
            None => dataset
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect(),
        };
        let columns = names
            .iter()
            .map(|name| {
                let column = dataset.column(name)?;
                let row_bytes = row_size(&path, column.row_bytes())?;
                Ok(Column {
                    name: name.as_str().into(),
                    dtype: column.dtype(),
                    out_dtype: column.dtype(),
                    row_shape: column.row_shape().into(),
                    rows: column.num_rows(),
                    row_bytes,
                    out_row_bytes: row_bytes,
                    source: Source::Shards(column),
                })
            })
            .collect::<Result<Vec<Column>>>()?;
        Loader::build(path, columns, options)
    }

    /// The loader over `columns` (already resolved), after the checks every source shares.
    fn build(
        path: std::path::PathBuf,
        mut columns: Vec<Column>,
        options: LoaderOptions,
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
            let cast = crate::take::read_cast(&path, name, c.dtype, dtype)?;
            let out = crate::take::cast_row(&path, c.row_bytes as u64, cast)?;
            c.out_row_bytes = row_size(&path, out)?;
            c.out_dtype = dtype;
        }
        let rows = columns[0].rows;
        let spec = OrderSpec {
            shuffle: options.shuffle,
            seed: options.seed,
            rank: options.rank,
            world_size: options.world_size,
            drop_last: options.drop_last,
            split: match options.split {
                RankSplit::Rows => Split::Rows,
                RankSplit::Shards => Split::Shards(columns[0].source.shard_rows()),
            },
            ..OrderSpec::new(rows, options.batch_size)
        };
        // A batch's buffers must be addressable; checked once for the largest batch.
        let batch_rows = options
            .batch_size
            .min(spec.rank_rows().map_err(order_error)?);
        // Every shard the epochs can read must be open: all of them, or this rank's.
        let owned = match &spec.split {
            Split::Shards(shards) => {
                Some(crate::order::shard_ranks(shards, spec.world_size).map_err(order_error)?)
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
        let full = full.into_boxed_slice();
        Ok(Loader {
            shared: Arc::new(Shared {
                path,
                columns: columns.into_boxed_slice(),
                random_streams: Mutex::new(0),
                pool: Arc::new(PoolState {
                    idle: (0..full.len()).map(|_| Mutex::new(Vec::new())).collect(),
                    keep: options.prefetch.saturating_add(1),
                    full,
                }),
            }),
            spec,
            prefetch: options.prefetch,
            state: LoaderState::default(),
        })
    }

    /// The number of batches in every epoch on this rank.
    pub fn len(&self) -> usize {
        // `new` checked the spec, and `rows` is at most u64::MAX rows: the count of batches of
        // at least one row fits when the epoch's row order does, which `iter` checks.
        self.spec
            .batches_per_epoch()
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Whether an epoch has no batch on this rank (a store with no rows, or too few rows for a
    /// full batch with `drop_last`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The order's parameters: rows, batch size, shuffle, seed, rank, world size, `drop_last`.
    pub fn spec(&self) -> &OrderSpec {
        &self.spec
    }

    /// Batches the worker gathers ahead of the caller.
    pub fn prefetch(&self) -> usize {
        self.prefetch
    }

    /// The path of the store.
    pub fn path(&self) -> &std::path::Path {
        &self.shared.path
    }

    /// The columns' names, in the order batches hold them.
    pub fn column_names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.shared.columns.iter().map(|c| &*c.name)
    }

    /// The columns: name, dtype and row shape, in the order batches hold them.
    pub fn columns(&self) -> impl ExactSizeIterator<Item = LoaderColumn<'_>> + '_ {
        self.shared.columns.iter().map(|c| LoaderColumn {
            name: &c.name,
            dtype: c.out_dtype,
            source_dtype: c.dtype,
            row_shape: &c.row_shape,
        })
    }

    /// Where the loader stands.
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// Moves to the start of `epoch`, unless the loader already stands in `epoch`, in which case
    /// it stays where it is: a loader restored mid-epoch by [`Loader::set_state`] and then given
    /// `set_epoch` of that same epoch (the usual loop `for e in start..: set_epoch(e); ...`)
    /// resumes rather than starting the epoch again.
    pub fn set_epoch(&mut self, epoch: u64) {
        if self.state.epoch != epoch {
            self.state = LoaderState {
                epoch,
                next_batch: 0,
            };
        }
    }

    /// Moves to `state`, as saved by [`Loader::state`].
    ///
    /// # Errors
    ///
    /// [`Error::Order`] holding [`crate::order::OrderError::ResumePastEnd`] when `next_batch` is
    /// past the end of an epoch. `next_batch == len()` is allowed: the epoch is over, and the
    /// loader moves to `(epoch + 1, 0)`.
    pub fn set_state(&mut self, state: LoaderState) -> Result<()> {
        let len = self.len();
        if usize::try_from(state.next_batch).map_or(true, |n| n > len) {
            return Err(Error::Order {
                path: self.shared.path.clone(),
                source: crate::order::OrderError::ResumePastEnd {
                    batch: usize::try_from(state.next_batch).unwrap_or(usize::MAX),
                    len,
                },
            });
        }
        // A finished epoch is the start of the next: `set_epoch` of the finished one must not
        // keep the position (and so run the next epoch's batches under the old number).
        self.state = if usize::try_from(state.next_batch).is_ok_and(|n| n == len) {
            LoaderState {
                epoch: state.epoch.wrapping_add(1),
                next_batch: 0,
            }
        } else {
            state
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
        Ok(Iter {
            state: &mut self.state,
            stream,
        })
    }

    /// The loader's own buffers, for [`Loader::stream`]: what [`Loader::iter`] gathers into.
    pub fn pool(&self) -> Pool {
        Pool {
            state: Arc::clone(&self.shared.pool),
        }
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
            state = LoaderState {
                epoch: state.epoch.wrapping_add(1),
                next_batch: 0,
            };
        }
        let order = self
            .spec
            .epoch(state.epoch)
            .map_err(|source| Error::Order {
                path: self.shared.path.clone(),
                source,
            })?;
        let first = usize::try_from(state.next_batch).unwrap_or(usize::MAX);
        Stream::start(
            Arc::clone(&self.shared),
            Arc::new(order),
            first,
            self.prefetch,
            alloc,
        )
    }
}

/// The options the order checks, and the prefetch depth, checked before any column is looked at.
fn check_options(path: &std::path::Path, options: &LoaderOptions) -> Result<()> {
    if options.prefetch > MAX_PREFETCH {
        return Err(Error::Prefetch {
            path: path.to_path_buf(),
            prefetch: options.prefetch,
            max: MAX_PREFETCH,
        });
    }
    OrderSpec {
        shuffle: options.shuffle,
        seed: options.seed,
        rank: options.rank,
        world_size: options.world_size,
        drop_last: options.drop_last,
        ..OrderSpec::new(0, options.batch_size)
    }
    .validate()
    .map_err(|source| Error::Order {
        path: path.to_path_buf(),
        source,
    })
}

/// A row size as a `usize`, or [`Error::TooLarge`].
fn row_size(path: &std::path::Path, row_bytes: u64) -> Result<usize> {
    usize::try_from(row_bytes).map_err(|_| Error::TooLarge {
        path: path.to_path_buf(),
        len: row_bytes,
    })
}

/// Every tensor whose first dimension equals that of the first tensor with one, in file order
/// (0-dimensional tensors, such as a step counter, have no rows and are left out).
fn default_columns(store: &Store) -> Vec<String> {
    let Some(rows) = store.tensors().find_map(|t| t.shape().first().copied()) else {
        return Vec::new();
    };
    store
        .tensors()
        .filter(|t| t.shape().first() == Some(&rows))
        .map(|t| t.name().to_owned())
        .collect()
}

/// A 64-byte-aligned byte buffer: aligned for every dtype and for vector loads. Made of 64-byte
/// blocks so that no `unsafe` allocation is needed.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Block([u8; 64]);

struct AlignedBuf {
    blocks: Vec<Block>,
}

impl AlignedBuf {
    /// A buffer of at least `len` bytes, reusing `self`'s allocation when it is large enough.
    fn fit(&mut self, len: usize) -> Result<(), std::collections::TryReserveError> {
        let blocks = len.div_ceil(64);
        if self.blocks.len() < blocks {
            self.blocks.try_reserve_exact(blocks - self.blocks.len())?;
            self.blocks.resize(blocks, Block([0; 64]));
        }
        Ok(())
    }

    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.blocks)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.blocks)
    }
}

/// Buffers a batch is gathered into: one byte buffer per column.
pub trait Buffers: Send + 'static {
    /// The bytes of column `column` (in the loader's column order), at least as long as the
    /// allocation asked for. The loader writes the batch's rows to the front of it.
    fn column_mut(&mut self, column: usize) -> &mut [u8];

    /// The same bytes, to read.
    fn column(&self, column: usize) -> &[u8];
}

/// A source of [`Buffers`] for a [`Stream`]: asked for one set per batch, on the worker thread.
pub trait Allocate: Send + 'static {
    /// The buffers it makes.
    type Buffers: Buffers;

    /// Buffers for one batch: column `c` needs `lens[c]` bytes.
    ///
    /// # Errors
    ///
    /// Any error, reported by the stream as [`Error::Buffers`].
    fn allocate(
        &mut self,
        lens: &[usize],
    ) -> std::result::Result<Self::Buffers, Box<dyn std::error::Error + Send + Sync>>;
}

/// The loader's own buffers ([`Loader::pool`]): 64-byte aligned, each column's buffer back to the
/// loader for reuse when it is dropped (with its batch, or on its own once taken out with
/// [`PooledBuffers::into_columns`]). Buffers hold no reference to the store: buffers taken out of
/// a batch ([`Batch::into_buffers`]) do not keep the mapping alive.
pub struct Pool {
    state: Arc<PoolState>,
}

/// One batch's set of the loader's own buffers, one per column.
pub struct PooledBuffers {
    bufs: Vec<PooledBuffer>,
}

/// One column's buffer of the loader's own; back to the loader for reuse when dropped.
pub struct PooledBuffer {
    buf: Option<AlignedBuf>,
    column: usize,
    pool: Arc<PoolState>,
}

impl PooledBuffer {
    /// The bytes (at least the column's bytes of a full batch), 64-byte aligned.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], AlignedBuf::bytes)
    }

    /// The bytes, to write.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self.buf.as_mut() {
            Some(b) => b.bytes_mut(),
            None => &mut [],
        }
    }
}

impl PooledBuffers {
    /// The buffers, one per column in the loader's order, each returning to the loader on its
    /// own when dropped: a caller that keeps one column of a batch keeps only that column's
    /// memory.
    pub fn into_columns(self) -> Vec<PooledBuffer> {
        self.bufs
    }
}

impl Buffers for PooledBuffers {
    fn column_mut(&mut self, column: usize) -> &mut [u8] {
        match self.bufs.get_mut(column) {
            Some(b) => b.bytes_mut(),
            None => &mut [],
        }
    }

    fn column(&self, column: usize) -> &[u8] {
        match self.bufs.get(column) {
            Some(b) => b.bytes(),
            None => &[],
        }
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let (Some(buf), Some(idle)) = (self.buf.take(), self.pool.idle.get(self.column)) {
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.pool.keep {
                idle.push(buf);
            }
        }
    }
}

impl Allocate for Pool {
    type Buffers = PooledBuffers;

    fn allocate(
        &mut self,
        lens: &[usize],
    ) -> std::result::Result<PooledBuffers, Box<dyn std::error::Error + Send + Sync>> {
        let state = &self.state;
        let mut bufs = Vec::with_capacity(lens.len());
        for (column, (&len, &full)) in lens.iter().zip(state.full.iter()).enumerate() {
            let reused = state
                .idle
                .get(column)
                .and_then(|idle| idle.lock().unwrap_or_else(|e| e.into_inner()).pop());
            let mut buf = reused.unwrap_or(AlignedBuf { blocks: Vec::new() });
            let len = len.max(full);
            buf.fit(len)
                .map_err(|_| format!("cannot allocate a buffer of {len} bytes for a batch"))?;
            bufs.push(PooledBuffer {
                buf: Some(buf),
                column,
                pool: Arc::clone(state),
            });
        }
        Ok(PooledBuffers { bufs })
    }
}

/// One batch: the same rows of every column, gathered into buffers the batch owns.
pub struct Batch<B: Buffers = PooledBuffers> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    index: usize,
    buffers: B,
}

impl<B: Buffers> fmt::Debug for Batch<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("epoch", &self.epoch())
            .field("index", &self.index)
            .field("rows", &self.len())
            .finish_non_exhaustive()
    }
}

impl<B: Buffers> Batch<B> {
    /// The epoch it belongs to.
    pub fn epoch(&self) -> u64 {
        self.order.epoch()
    }

    /// Its index within the epoch on this rank.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The rows it holds, as positions along the columns' first dimension, in batch order.
    pub fn rows(&self) -> &[u64] {
        self.order.batch(self.index).unwrap_or(&[])
    }

    /// The number of rows (the batch size, or fewer for a short last batch).
    pub fn len(&self) -> usize {
        self.rows().len()
    }

    /// Whether it holds no rows (never, for a batch a loader hands out).
    pub fn is_empty(&self) -> bool {
        self.rows().is_empty()
    }

    /// The loader state that follows this batch: where a resume after it starts.
    pub fn state_after(&self) -> LoaderState {
        let order = &self.order;
        if self.index + 1 >= order.len() {
            LoaderState {
                epoch: order.epoch().wrapping_add(1),
                next_batch: 0,
            }
        } else {
            LoaderState {
                epoch: order.epoch(),
                next_batch: self.index as u64 + 1,
            }
        }
    }

    /// The columns' names, in the loader's order.
    pub fn column_names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.shared.columns.iter().map(|c| &*c.name)
    }

    /// The number of columns.
    pub fn num_columns(&self) -> usize {
        self.shared.columns.len()
    }

    /// Column `name` of the batch.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the loader has no such column.
    pub fn column(&self, name: &str) -> Result<BatchColumn<'_>> {
        let c = self
            .shared
            .columns
            .iter()
            .position(|c| &*c.name == name)
            .ok_or_else(|| Error::NotFound {
                path: self.shared.path.clone(),
                tensor: name.to_owned(),
                known: self
                    .shared
                    .columns
                    .iter()
                    .map(|c| c.name.to_string())
                    .collect(),
            })?;
        Ok(self.column_at(c))
    }

    /// The columns, in the loader's order.
    pub fn columns(&self) -> impl ExactSizeIterator<Item = BatchColumn<'_>> + '_ {
        (0..self.shared.columns.len()).map(|c| self.column_at(c))
    }

    fn column_at(&self, c: usize) -> BatchColumn<'_> {
        let col = &self.shared.columns[c];
        let len = col.out_row_bytes * self.len();
        let mut shape = vec![self.len() as u64];
        shape.extend_from_slice(&col.row_shape);
        // The gather wrote `len` bytes to the front of a buffer at least that long.
        let bytes = self.buffers.column(c);
        BatchColumn {
            path: &self.shared.path,
            name: &col.name,
            dtype: col.out_dtype,
            shape,
            bytes: bytes.get(..len).unwrap_or(bytes),
        }
    }

    /// The buffers, taken out of the batch (for a binding that hands them to another runtime).
    /// Column `c`'s rows are the first `len() * row_bytes` bytes of its buffer, where
    /// `columns().nth(c)` gives the shape.
    pub fn into_buffers(self) -> B {
        self.buffers
    }
}

/// One column of a [`Batch`]: its rows as bytes or typed elements, C order.
#[derive(Debug)]
pub struct BatchColumn<'b> {
    path: &'b std::path::Path,
    name: &'b str,
    dtype: Dtype,
    shape: Vec<u64>,
    bytes: &'b [u8],
}

impl<'b> BatchColumn<'b> {
    /// The column's (tensor's) name.
    pub fn name(&self) -> &'b str {
        self.name
    }

    /// Its dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Its shape in this batch: rows, then the tensor's other dimensions.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Its bytes, C order.
    pub fn bytes(&self) -> &'b [u8] {
        self.bytes
    }

    /// Its elements.
    ///
    /// # Errors
    ///
    /// [`Error::DtypeMismatch`] when `T` does not view the column's dtype; [`Error::Buffers`]
    /// when the buffers (a caller's [`Allocate`]) are not aligned for `T` (the loader's own are
    /// 64-byte aligned).
    pub fn as_slice<T: Element>(&self) -> Result<&'b [T]> {
        if T::DTYPE != self.dtype {
            return Err(Error::DtypeMismatch {
                path: self.path.to_path_buf(),
                tensor: self.name.to_owned(),
                dtype: self.dtype,
                requested: T::NAME,
                expected: crate::element::rust_type(self.dtype),
            });
        }
        T::view(self.bytes).map_err(|_| Error::Buffers {
            path: self.path.to_path_buf(),
            source: format!(
                "the buffer of column `{}` is not aligned to {} bytes for `{}`",
                self.name,
                std::mem::align_of::<T>(),
                T::NAME
            )
            .into(),
        })
    }
}

/// The row ranges to advise for `rows`, in file order: each row alone, merged with neighbours
/// fewer than `gap` rows away; or, with `blocks` (a block shuffle on one rank), the whole block of
/// `unit` rows around each row whose block has not been advised yet this epoch (every row of it
/// will be read within the shuffling window, so reading it whole is one sequential request).
fn advice_rows(
    rows: &[u64],
    gap: u64,
    blocks: Option<(u64, &mut Vec<bool>)>,
    total_rows: u64,
    sorted: &mut Vec<u64>,
) -> Vec<Range<u64>> {
    sorted.clear();
    match blocks {
        Some((unit, advised)) => {
            for &r in rows {
                let b = r / unit;
                if let Some(seen) = advised.get_mut(b as usize) {
                    if !*seen {
                        *seen = true;
                        sorted.push(b);
                    }
                }
            }
            sorted.sort_unstable();
            let mut ranges: Vec<Range<u64>> = Vec::new();
            for &b in sorted.iter() {
                let (start, end) = (b * unit, ((b + 1).saturating_mul(unit)).min(total_rows));
                match ranges.last_mut() {
                    Some(last) if last.end == start => last.end = end,
                    _ => ranges.push(start..end),
                }
            }
            ranges
        }
        None => {
            sorted.extend_from_slice(rows);
            sorted.sort_unstable();
            let mut ranges: Vec<Range<u64>> = Vec::new();
            for &r in sorted.iter() {
                match ranges.last_mut() {
                    Some(last) if r <= last.end.saturating_add(gap) => {
                        last.end = last.end.max(r + 1);
                    }
                    _ => ranges.push(r..r + 1),
                }
            }
            ranges
        }
    }
}

/// Whether a sample of `rows` of column `col` ([`RESIDENT_SAMPLE`] rows spread over the batch) is
/// all in memory: then that column of the batch is taken to be warm and is not advised, which
/// spares a warm epoch one `madvise` per row. Each column is sampled, since a small column (labels)
/// is warm long before a wide one. Residency only decides whether a hint is sent, never what is
/// read.
fn resident(col: &Column, rows: &[u64]) -> bool {
    let n = rows.len();
    let k = RESIDENT_SAMPLE.min(n);
    (0..k).all(|i| {
        let Some((tensor, r)) = col.source.locate(rows[i * n / k]) else {
            return false;
        };
        // A row of the tensor: its offset lies within the tensor's bytes.
        let offset = tensor.byte_range().start + r * col.row_bytes as u64;
        crate::hints::resident(&tensor.store().inner, offset) == Some(true)
    })
}

/// The work of gathering batches: done by the worker thread, or by the caller with prefetch 0.
struct Gatherer<A> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    alloc: A,
    scratch: Vec<u64>,
    /// For a block shuffle: the blocks already advised this epoch.
    advised: Vec<bool>,
}

impl<A: Allocate> Gatherer<A> {
    /// Asks the kernel to start reading batch `index`'s pages, if there is such a batch.
    fn advise(&mut self, index: usize) {
        let Some(rows) = self.order.batch(index) else {
            return;
        };
        let spec = self.order.spec();
        let block = match spec.shuffle {
            Shuffle::Block { block_rows, .. } if spec.world_size == 1 => Some(block_rows),
            _ => None,
        };
        // Row ranges are the same for every column but for the gap, which is in bytes; with
        // whole blocks, computed once (the bitmap marks a block advised for every column).
        let block_ranges = block.map(|unit| {
            if self.advised.is_empty() {
                let blocks = spec.rows.div_ceil(unit);
                self.advised = vec![false; usize::try_from(blocks).unwrap_or(0)];
            }
            advice_rows(
                rows,
                0,
                Some((unit, &mut self.advised)),
                spec.rows,
                &mut self.scratch,
            )
        });
        for col in self.shared.columns.iter() {
            if resident(col, rows) {
                continue;
            }
            let row_bytes = col.row_bytes as u64;
            let ranges = match &block_ranges {
                Some(r) => r.clone(),
                None => advice_rows(
                    rows,
                    ADVISE_GAP / row_bytes.max(1),
                    None,
                    spec.rows,
                    &mut self.scratch,
                ),
            };
            for r in ranges {
                col.source.pieces(r, |tensor, rows| {
                    let base = tensor.byte_range().start;
                    // Rows of the tensor: their bytes lie within it, so these cannot overflow.
                    let bytes = base + rows.start * row_bytes..base + rows.end * row_bytes;
                    // Advice is only a hint: a failure changes nothing that is read.
                    let _ = crate::hints::advise(&tensor.store().inner, bytes, Advice::WillNeed);
                });
            }
        }
    }

    /// Gathers batch `index` into a new set of buffers.
    fn gather(&mut self, index: usize) -> Result<Batch<A::Buffers>> {
        let rows = self.order.batch(index).unwrap_or(&[]);
        let lens: Vec<usize> = self
            .shared
            .columns
            .iter()
            .map(|c| c.out_row_bytes * rows.len())
            .collect();
        let mut buffers = self
            .alloc
            .allocate(&lens)
            .map_err(|source| Error::Buffers {
                path: self.shared.path.clone(),
                source,
            })?;
        for (c, col) in self.shared.columns.iter().enumerate() {
            let out = buffers.column_mut(c);
            let have = out.len();
            let out = out.get_mut(..lens[c]).ok_or_else(|| Error::TakeOutput {
                path: self.shared.path.clone(),
                tensor: col.name.to_string(),
                rows: rows.len(),
                row_bytes: col.out_row_bytes as u64,
                actual: have,
            })?;
            col.source.take_into(rows, out, col.out_dtype)?;
        }
        Ok(Batch {
            shared: Arc::clone(&self.shared),
            order: Arc::clone(&self.order),
            index,
            buffers,
        })
    }
}

/// What a stream's worker sends: a batch, or the error that stopped it.
type Sent<B> = Result<Batch<B>>;

/// The batches of one epoch from a starting batch on, gathered ahead by a worker thread (or, with
/// `prefetch` 0, on the calling thread when asked for). It owns everything it reads, so it may
/// outlive the [`Loader`] that started it.
///
/// Dropping it stops the worker after the batch the worker is gathering, and waits for it.
pub struct Stream<A: Allocate> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    next: usize,
    mode: Mode<A>,
}

enum Mode<A: Allocate> {
    /// Gathering on the calling thread.
    Inline(Gatherer<A>),
    /// A worker thread gathering ahead.
    Worker {
        /// In a mutex only so that a stream is `Sync` (a receiver is not): one caller at a time
        /// receives anyway, through `&mut self`.
        rx: Option<Mutex<Receiver<Sent<A::Buffers>>>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    },
    /// The stream ended early, after an error.
    Done,
}

impl<A: Allocate> Stream<A> {
    fn start(
        shared: Arc<Shared>,
        order: Arc<EpochOrder>,
        first: usize,
        prefetch: usize,
        alloc: A,
    ) -> Result<Stream<A>> {
        let mut gatherer = Gatherer {
            shared: Arc::clone(&shared),
            order: Arc::clone(&order),
            alloc,
            scratch: Vec::new(),
            advised: Vec::new(),
        };
        let mode = if prefetch == 0 {
            gatherer.advise(first);
            Mode::Inline(gatherer)
        } else {
            // The worker holds at most `prefetch - 1` batches in the channel and one more while
            // it waits to send: `prefetch` batches ahead of the caller.
            let (tx, rx) = mpsc::sync_channel::<Sent<A::Buffers>>(prefetch - 1);
            let stop = Arc::new(AtomicBool::new(false));
            let worker_stop = Arc::clone(&stop);
            let handle = std::thread::Builder::new()
                .name("mmtensor-loader".into())
                .spawn(move || work(gatherer, first, &tx, &worker_stop))
                .map_err(|source| Error::Io {
                    path: shared.path.clone(),
                    action: "start a loader thread for",
                    source,
                })?;
            Mode::Worker {
                rx: Some(Mutex::new(rx)),
                stop,
                handle: Some(handle),
            }
        };
        // A full shuffle reads single rows all over the file: the kernel's readahead around each
        // fault would read pages that no batch soon wants. The batches' own pages are asked for
        // ahead of time (`Gatherer::advise`), which readahead does not affect. Counted only once
        // the stream exists, so that its `Drop` always undoes it (a failed thread start left the
        // count, and `MADV_RANDOM`, behind).
        if order.spec().shuffle == Shuffle::Full {
            let mut live = shared
                .random_streams
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *live == 0 {
                for t in shared.columns.iter().flat_map(|c| c.source.tensors()) {
                    let _ = t.advise(Advice::Random);
                }
            }
            *live += 1;
        }
        Ok(Stream {
            shared,
            order,
            next: first,
            mode,
        })
    }

    /// The number of batches of the epoch, on this rank.
    pub fn epoch_len(&self) -> usize {
        self.order.len()
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.order.epoch()
    }

    /// The index of the batch the next call to `next` yields.
    pub fn next_batch(&self) -> usize {
        self.next
    }

    /// Stops the worker and waits for it.
    fn finish(&mut self) {
        if let Mode::Worker { rx, stop, handle } = &mut self.mode {
            stop.store(true, Ordering::Release);
            // Dropping the receiver fails the worker's pending send, so it stops even while
            // blocked on a full channel.
            drop(rx.take());
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// The worker: gathers batches `first..` into `tx` until the epoch ends, a gather fails, or the
/// stream stops it.
fn work<A: Allocate>(
    mut g: Gatherer<A>,
    first: usize,
    tx: &SyncSender<Sent<A::Buffers>>,
    stop: &AtomicBool,
) {
    g.advise(first);
    for index in first..g.order.len() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        g.advise(index + 1);
        let batch = g.gather(index);
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return;
        }
    }
}

impl<A: Allocate> Iterator for Stream<A> {
    type Item = Result<Batch<A::Buffers>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.order.len() {
            return None;
        }
        let sent = match &mut self.mode {
            Mode::Done => return None,
            Mode::Inline(g) => {
                g.advise(self.next + 1);
                g.gather(self.next)
            }
            Mode::Worker { rx, .. } => match rx
                .as_mut()
                .map(|rx| rx.get_mut().unwrap_or_else(|e| e.into_inner()).recv())
            {
                Some(Ok(sent)) => sent,
                // The worker sends every batch or the error that stopped it; it ended without
                // either only if it panicked.
                _ => Err(Error::LoaderStopped {
                    path: self.shared.path.clone(),
                    batch: self.next,
                }),
            },
        };
        match sent {
            Ok(batch) => {
                self.next += 1;
                Some(Ok(batch))
            }
            Err(e) => {
                self.finish();
                self.mode = Mode::Done;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match self.mode {
            Mode::Done => 0,
            _ => self.order.len().saturating_sub(self.next),
        };
        (0, Some(n))
    }
}

impl<A: Allocate> std::iter::FusedIterator for Stream<A> {}

impl<A: Allocate> Drop for Stream<A> {
    fn drop(&mut self) {
        self.finish();
        // Back to the kernel's default readahead for the columns once a full-shuffle epoch is
        // over, so that the hint does not outlive the reads it was for.
        if self.order.spec().shuffle == Shuffle::Full {
            let mut live = self
                .shared
                .random_streams
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *live = live.saturating_sub(1);
            if *live == 0 {
                for t in self.shared.columns.iter().flat_map(|c| c.source.tensors()) {
                    let _ = t.advise(Advice::Normal);
                }
            }
        }
    }
}

/// The rest of a [`Loader`]'s epoch, in the loader's own buffers; each batch handed out advances
/// the loader's state.
pub struct Iter<'l> {
    state: &'l mut LoaderState,
    stream: Stream<Pool>,
}

impl Iter<'_> {
    /// The underlying stream (its epoch, its next batch).
    pub fn stream(&self) -> &Stream<Pool> {
        &self.stream
    }
}

impl Iterator for Iter<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let batch = self.stream.next()?;
        if let Ok(b) = &batch {
            *self.state = b.state_after();
        }
        Some(batch)
    }
}

impl std::iter::FusedIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::advice_rows;

    #[test]
    fn rows_are_advised_alone_or_merged_across_small_gaps() {
        let mut s = Vec::new();
        assert_eq!(
            advice_rows(&[9, 1, 2, 30], 0, None, 40, &mut s),
            [1..3, 9..10, 30..31]
        );
        assert_eq!(
            advice_rows(&[9, 1, 2, 30], 7, None, 40, &mut s),
            [1..10, 30..31]
        );
        assert_eq!(advice_rows(&[], 7, None, 40, &mut s), []);
    }

    #[test]
    fn a_block_shuffle_advises_each_block_once_per_epoch() {
        let mut s = Vec::new();
        let mut advised = vec![false; 4]; // blocks of 4 rows over 14 rows: the last has 2
        let first = advice_rows(&[13, 5, 6, 0], 0, Some((4, &mut advised)), 14, &mut s);
        assert_eq!(first, [0..8, 12..14]);
        let second = advice_rows(&[7, 1, 9], 0, Some((4, &mut advised)), 14, &mut s);
        assert_eq!(second, vec![8..12]);
        assert!(advised.iter().all(|&a| a));
    }
}
