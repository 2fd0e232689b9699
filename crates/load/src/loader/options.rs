//! What a caller tells a loader (its options), and what it saves to resume one (its state).

use std::collections::BTreeMap;
use std::path::Path;

use mmtensor_format::Dtype;

use crate::order::{OrderSpec, Shuffle, Split};
use crate::ragged::Pad;
use crate::{Error, Result};

/// Batches the worker gathers ahead of the caller unless told otherwise.
pub const DEFAULT_PREFETCH: usize = 2;

/// The largest `prefetch` a loader accepts: its channel allocates a slot per batch up front.
pub const MAX_PREFETCH: usize = 1 << 16;

/// What a [`Loader`](crate::Loader) reads and in which order.
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
    /// Sequence windows: with `Some(L)`, the loader reads one ragged column (`columns` names it,
    /// or the store or dataset has only one) as its concatenated stream, and each row of the
    /// order is a window of `L + 1` items (batches of `[batch_size, L + 1]`). See
    /// `docs/LOADER.md`, "Sequence windows". `None` (the default) reads rows.
    pub seq_len: Option<u64>,
    /// With `seq_len`: windows never cross a row (document) boundary; each row of `d` items
    /// gives `(d - 1) / seq_len` windows. `false` (the default) packs documents back to back.
    pub within_documents: bool,
    /// Ragged columns read as rows (without `seq_len`): each one named here is gathered padded
    /// ([`Pad`]: to the batch's longest row, or `pad.to`, rounded up to `pad.multiple_of`; the
    /// pad value is one element of the column's output dtype), and a column `NAME.lengths`
    /// (`I64`, each row's length) follows it in the batch. A ragged column the loader reads
    /// must have one. Empty by default.
    pub pad: BTreeMap<String, Pad>,
    /// Length-grouped batches: with `Some(k)`, each window of `k` batches of this rank's epoch
    /// is sorted by the length of the first padded column's rows, cut into batches, and the
    /// batches shuffled ([`EpochOrder::group_by_length`](crate::order::EpochOrder::group_by_length)):
    /// less padding, still shuffled. `None` by default.
    pub group_by_length: Option<u64>,
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
            seq_len: None,
            within_documents: false,
            pad: BTreeMap::new(),
            group_by_length: None,
        }
    }
}

/// How a [`Loader`](crate::Loader) divides an epoch's rows among ranks
/// ([`LoaderOptions::split`]);
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

/// Where a loader stands: the epoch, the next batch it will hand out in that epoch, and the
/// epoch's global position.
///
/// A new loader over `rows` rows stands at `(0, 0)`, position 0 of `rows`, on its world size. Handing out the last
/// batch of an epoch moves it to `(epoch + 1, 0)`. Saving this and restoring it with
/// [`Loader::set_state`](crate::Loader::set_state) in a new process resumes with exactly the
/// batches that were not handed out: over the same data and options, or, split by rows, on
/// another world size or after rows were appended ("Elastic resume" in `docs/LOADER.md`).
/// [`Loader::state_at`](crate::Loader::state_at) gives the state of any batch of a whole epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoaderState {
    /// The epoch.
    pub epoch: u64,
    /// The index of the next batch of that epoch on this rank (of the resumed part of the epoch,
    /// after a resume at a position of another world size: see [`Loader::len`](crate::Loader::len)).
    pub next_batch: u64,
    /// The global position: entries of the epoch's order consumed by all ranks together when each
    /// stands before its batch `next_batch`, at most `rows`.
    pub samples: u64,
    /// Rows the epoch's order covers: the loader's rows, or fewer for an epoch started before
    /// rows were appended.
    pub rows: u64,
    /// The world size `next_batch` counts batches on (the saving loader's): a state of another
    /// world size resumes from `samples`.
    pub world_size: u64,
}

impl LoaderOptions {
    /// Checks the options the order checks, and the prefetch depth, before any column is looked
    /// at; errors name `path`.
    pub(super) fn check(&self, path: &Path) -> Result<()> {
        if self.prefetch > MAX_PREFETCH {
            return Err(Error::Prefetch {
                path: path.to_path_buf(),
                prefetch: self.prefetch,
                max: MAX_PREFETCH,
            });
        }
        self.spec(0, Split::Rows)
            .validate()
            .map_err(|source| Error::Order {
                path: path.to_path_buf(),
                source,
            })
    }

    /// The order these options ask for over `rows` rows, divided among ranks by `split`.
    pub(super) fn spec(&self, rows: u64, split: Split) -> OrderSpec {
        OrderSpec {
            shuffle: self.shuffle,
            seed: self.seed,
            rank: self.rank,
            world_size: self.world_size,
            drop_last: self.drop_last,
            split,
            ..OrderSpec::new(rows, self.batch_size)
        }
    }
}

impl LoaderState {
    /// The start of `epoch` over the `spec`'s rows, on its ranks.
    pub(super) fn start(epoch: u64, spec: &OrderSpec) -> LoaderState {
        LoaderState {
            epoch,
            next_batch: 0,
            samples: 0,
            rows: spec.num_rows,
            world_size: spec.world_size,
        }
    }

    /// The start of the epoch after `epoch` over the `spec`'s rows, where a finished epoch leaves
    /// a loader.
    pub(super) fn after(epoch: u64, spec: &OrderSpec) -> LoaderState {
        LoaderState::start(epoch.wrapping_add(1), spec)
    }
}
