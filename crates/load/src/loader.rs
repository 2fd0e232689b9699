//! The training loader: shuffled, rank-split batches of rows, gathered ahead on a worker thread.
//!
//! A [`Loader`] reads the same rows of several columns (tensors that share their first dimension)
//! batch after batch, in the order [`crate::order`] specifies, and copies each batch into buffers
//! of its own with [`Tensor::take_into`](crate::Tensor::take_into): rows sorted into file order,
//! neighbouring rows copied in one piece, the copy spread over the process's thread pool. A
//! worker thread gathers up to `prefetch` batches ahead of the caller and asks the kernel to start
//! reading the pages of the batch after the one it gathers (`madvise(MADV_WILLNEED)`), so the
//! disk works while the caller computes.
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
//! buffers instead, and those are freed, not kept, once more than `prefetch + 1` sets are idle.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mmtensor_format::Dtype;

use crate::order::{EpochOrder, OrderSpec, Shuffle};
use crate::{Advice, Element, Error, OwnedTensor, Result, Store};

/// Batches the worker gathers ahead of the caller unless told otherwise.
pub const DEFAULT_PREFETCH: usize = 2;

/// Rows of a batch whose byte ranges lie closer than this are advised as one range: one
/// `madvise` call instead of many for rows that share or nearly share pages.
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
    /// Batches gathered ahead of the caller by a worker thread; 0 gathers each batch on the
    /// calling thread when it is asked for.
    pub prefetch: usize,
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
            prefetch: DEFAULT_PREFETCH,
        }
    }
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

/// One column of a loader: a whole tensor, and the size of its rows.
struct Column {
    tensor: OwnedTensor,
    name: Arc<str>,
    row_bytes: usize,
}

/// What every batch and the worker share: the columns, and the buffers waiting for reuse.
struct Shared {
    path: std::path::PathBuf,
    columns: Box<[Column]>,
    pool: Mutex<Vec<Box<[AlignedBuf]>>>,
    /// Idle buffer sets kept for reuse; more are freed.
    keep: usize,
    /// Rows of a full batch: every pooled buffer is made this large, so that a set that held a
    /// short last batch serves a full one without growing.
    batch_rows: usize,
}

/// Reads batches of rows from a store's columns, epoch after epoch. See the [module](self) docs.
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
    pub fn new(store: &Store, options: LoaderOptions) -> Result<Loader> {
        let path = store.path().to_path_buf();
        let order_error = |source| Error::Order {
            path: path.clone(),
            source,
        };
        // The options the order checks, checked before any column is looked at.
        OrderSpec {
            shuffle: options.shuffle,
            seed: options.seed,
            rank: options.rank,
            world_size: options.world_size,
            drop_last: options.drop_last,
            ..OrderSpec::new(0, options.batch_size)
        }
        .validate()
        .map_err(order_error)?;

        let names: Vec<String> = match &options.columns {
            Some(names) => names.clone(),
            None => default_columns(store),
        };
        if names.is_empty() {
            return Err(Error::NoColumns { path });
        }
        let mut columns: Vec<Column> = Vec::with_capacity(names.len());
        for name in &names {
            if columns.iter().any(|c| &*c.name == name.as_str()) {
                return Err(Error::DuplicateColumn {
                    path,
                    column: name.clone(),
                });
            }
            let tensor = store.tensor_owned(name)?;
            let row_bytes = tensor.row_bytes()?;
            // A column's bytes must be viewable; checked once here rather than at every batch.
            tensor.bytes()?;
            let row_bytes = usize::try_from(row_bytes).map_err(|_| Error::TooLarge {
                path: path.clone(),
                len: row_bytes,
            })?;
            if let Some(first) = columns.first() {
                let (want, have) = (first.tensor.shape()[0], tensor.shape()[0]);
                if want != have {
                    return Err(Error::ColumnRows {
                        path,
                        column: name.clone(),
                        rows: have,
                        first: first.name.to_string(),
                        first_rows: want,
                    });
                }
            }
            columns.push(Column {
                tensor,
                name: name.as_str().into(),
                row_bytes,
            });
        }
        let rows = columns[0].tensor.shape()[0];
        let spec = OrderSpec {
            shuffle: options.shuffle,
            seed: options.seed,
            rank: options.rank,
            world_size: options.world_size,
            drop_last: options.drop_last,
            ..OrderSpec::new(rows, options.batch_size)
        };
        // A batch's buffers must be addressable; checked once for the largest batch.
        let batch_rows = options
            .batch_size
            .min(spec.rank_rows().map_err(order_error)?);
        for c in &columns {
            let bytes = (c.row_bytes as u64).checked_mul(batch_rows);
            if bytes.and_then(|b| usize::try_from(b).ok()).is_none() {
                return Err(Error::TooLarge {
                    path,
                    len: bytes.unwrap_or(u64::MAX),
                });
            }
        }
        Ok(Loader {
            shared: Arc::new(Shared {
                path,
                columns: columns.into_boxed_slice(),
                pool: Mutex::new(Vec::new()),
                keep: options.prefetch.saturating_add(1),
                // Checked above to fit (with every row size) in usize.
                batch_rows: usize::try_from(batch_rows).unwrap_or(usize::MAX),
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

    /// The columns' tensors (whole tensors), in the order batches hold them.
    pub fn column_tensors(&self) -> impl ExactSizeIterator<Item = &OwnedTensor> + '_ {
        self.shared.columns.iter().map(|c| &c.tensor)
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
    /// past the end of an epoch (`next_batch == len()` is allowed: the epoch is over).
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
        self.state = state;
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
            shared: Arc::clone(&self.shared),
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

/// Every tensor whose first dimension equals the first tensor's, in file order. A 0-dimensional
/// first tensor has no rows to share: the list is that tensor alone, which `Loader::new` refuses
/// with the Scalar error naming it.
fn default_columns(store: &Store) -> Vec<String> {
    let mut tensors = store.tensors();
    let Some(first) = tensors.next() else {
        return Vec::new();
    };
    let Some(&rows) = first.shape().first() else {
        return vec![first.name().to_owned()];
    };
    std::iter::once(first.name().to_owned())
        .chain(
            tensors
                .filter(|t| t.shape().first() == Some(&rows))
                .map(|t| t.name().to_owned()),
        )
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

/// The loader's own buffers ([`Loader::pool`]): 64-byte aligned, each set back to the loader for
/// reuse when the batch holding it is dropped.
pub struct Pool {
    shared: Arc<Shared>,
}

/// A set of the loader's own buffers; back to the loader for reuse when dropped.
pub struct PooledBuffers {
    bufs: Option<Box<[AlignedBuf]>>,
    shared: Arc<Shared>,
}

impl Buffers for PooledBuffers {
    fn column_mut(&mut self, column: usize) -> &mut [u8] {
        match self.bufs.as_mut().and_then(|b| b.get_mut(column)) {
            Some(b) => b.bytes_mut(),
            None => &mut [],
        }
    }

    fn column(&self, column: usize) -> &[u8] {
        match self.bufs.as_ref().and_then(|b| b.get(column)) {
            Some(b) => b.bytes(),
            None => &[],
        }
    }
}

impl Drop for PooledBuffers {
    fn drop(&mut self) {
        if let Some(bufs) = self.bufs.take() {
            let mut pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < self.shared.keep {
                pool.push(bufs);
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
        let shared = &self.shared;
        let reused = shared.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut bufs = reused.unwrap_or_else(|| {
            lens.iter()
                .map(|_| AlignedBuf { blocks: Vec::new() })
                .collect()
        });
        for ((buf, &len), col) in bufs.iter_mut().zip(lens).zip(shared.columns.iter()) {
            let len = len.max(col.row_bytes.saturating_mul(shared.batch_rows));
            buf.fit(len)
                .map_err(|_| format!("cannot allocate a buffer of {len} bytes for a batch"))?;
        }
        Ok(PooledBuffers {
            bufs: Some(bufs),
            shared: Arc::clone(shared),
        })
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
            })?;
        Ok(self.column_at(c))
    }

    /// The columns, in the loader's order.
    pub fn columns(&self) -> impl ExactSizeIterator<Item = BatchColumn<'_>> + '_ {
        (0..self.shared.columns.len()).map(|c| self.column_at(c))
    }

    fn column_at(&self, c: usize) -> BatchColumn<'_> {
        let col = &self.shared.columns[c];
        let len = col.row_bytes * self.len();
        let mut shape = vec![self.len() as u64];
        shape.extend_from_slice(&col.tensor.shape()[1..]);
        // The gather wrote `len` bytes to the front of a buffer at least that long.
        let bytes = self.buffers.column(c);
        BatchColumn {
            path: &self.shared.path,
            name: &col.name,
            dtype: col.tensor.dtype(),
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

/// The byte ranges (relative to the tensor's first byte) of `rows`, each `row_bytes` long,
/// coalesced where neighbours lie within [`ADVISE_GAP`], in file order.
fn advice_ranges(rows: &[u64], row_bytes: u64, sorted: &mut Vec<u64>) -> Vec<Range<u64>> {
    sorted.clear();
    sorted.extend_from_slice(rows);
    sorted.sort_unstable();
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for &r in sorted.iter() {
        // Rows of a validated tensor: `r * row_bytes` is within the tensor's bytes.
        let start = r.saturating_mul(row_bytes);
        let end = start.saturating_add(row_bytes);
        match ranges.last_mut() {
            Some(last) if start <= last.end.saturating_add(ADVISE_GAP) => {
                last.end = last.end.max(end);
            }
            _ => ranges.push(start..end),
        }
    }
    ranges
}

/// The work of gathering batches: done by the worker thread, or by the caller with prefetch 0.
struct Gatherer<A> {
    shared: Arc<Shared>,
    order: Arc<EpochOrder>,
    alloc: A,
    scratch: Vec<u64>,
}

impl<A: Allocate> Gatherer<A> {
    /// Asks the kernel to start reading batch `index`'s pages, if there is such a batch.
    fn advise(&mut self, index: usize) {
        let Some(rows) = self.order.batch(index) else {
            return;
        };
        for col in self.shared.columns.iter() {
            for r in advice_ranges(rows, col.row_bytes as u64, &mut self.scratch) {
                // Advice is only a hint: a failure changes nothing that is read, so it is ignored.
                let base = col.tensor.byte_range().start;
                let _ = crate::hints::advise(
                    &col.tensor.store().inner,
                    base + r.start..base + r.end,
                    Advice::WillNeed,
                );
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
            .map(|c| c.row_bytes * rows.len())
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
                row_bytes: col.row_bytes as u64,
                actual: have,
            })?;
            col.tensor.take_into(rows, out)?;
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
    path: std::path::PathBuf,
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
        // A full shuffle reads single rows all over the file: the kernel's readahead around each
        // fault would read pages that no batch soon wants. The batches' own pages are asked for
        // ahead of time (`Gatherer::advise`), which readahead does not affect.
        if order.spec().shuffle == Shuffle::Full {
            for col in shared.columns.iter() {
                let _ = col.tensor.advise(Advice::Random);
            }
        }
        let path = shared.path.clone();
        let mut gatherer = Gatherer {
            shared,
            order: Arc::clone(&order),
            alloc,
            scratch: Vec::new(),
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
                    path: path.clone(),
                    action: "start a loader thread for",
                    source,
                })?;
            Mode::Worker {
                rx: Some(Mutex::new(rx)),
                stop,
                handle: Some(handle),
            }
        };
        Ok(Stream {
            path,
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
                    path: self.path.clone(),
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
