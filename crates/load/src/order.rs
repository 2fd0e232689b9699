//! The epoch order: which rows go into which batch on which rank.
//!
//! This is a pure function of an [`OrderSpec`] and an epoch number: no clock, no thread count, no
//! hash-map iteration and no floating point enter it, so every run, machine and prefetch depth
//! sees the same batches. `docs/LOADER.md` specifies it precisely enough to reimplement in another
//! language bit for bit; the known-answer tests in `tests/order.rs` pin that spec.
//!
//! ```
//! use mmtensor::order::{OrderSpec, Shuffle};
//!
//! let spec = OrderSpec { shuffle: Shuffle::Full, seed: 7, ..OrderSpec::new(10, 4) };
//! let order = spec.epoch(0)?;
//! assert_eq!(order.len(), 3);                         // batches of 4, 4 and 2 rows
//! let mut seen: Vec<u64> = order.iter().flatten().copied().collect();
//! seen.sort_unstable();
//! assert_eq!(seen, (0..10).collect::<Vec<u64>>());  // every row once per epoch
//!
//! // Resume mid-epoch: the state is (epoch, next batch); a restarted process rebuilds the epoch.
//! let again = spec.epoch(0)?;
//! let tail: Vec<&[u64]> = again.batches_from(1)?.collect();
//! assert_eq!(tail, order.iter().skip(1).collect::<Vec<_>>());
//! # Ok::<(), mmtensor::order::OrderError>(())
//! ```
//!
//! Memory: an epoch holds this rank's row sequence as `u64`s (8 bytes per row it reads); building a
//! shuffled order for `world_size > 1` briefly holds the whole epoch's permutation as well.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, TryReserveError};
use std::sync::Arc;

/// Rows per block of [`Shuffle::block`] (and [`Shuffle::DEFAULT_BLOCK`]).
///
/// 256 rows of 4 KiB are a 1 MiB sequential read, large enough that a disk streams it.
pub const DEFAULT_BLOCK_ROWS: u64 = 256;

/// Blocks per shuffling window of [`Shuffle::block`] (and [`Shuffle::DEFAULT_BLOCK`]).
///
/// With [`DEFAULT_BLOCK_ROWS`], a window is 16,384 rows (64 MiB of 4 KiB rows): a batch of 1,024
/// rows draws on 64 blocks scattered over the file rather than on one.
pub const DEFAULT_WINDOW_BLOCKS: u64 = 64;

/// How an epoch's rows are ordered before they are split across ranks and cut into batches.
///
/// `docs/LOADER.md` gives the exact algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Shuffle {
    /// Rows in file order, the same every epoch.
    None,
    /// A uniform permutation of all rows: a Fisher-Yates shuffle driven by [`Rng::for_epoch`].
    Full,
    /// Blocks of `block_rows` consecutive rows (the last may be shorter) are permuted, then the
    /// rows of each window of `window_blocks` consecutive blocks of that permuted sequence are
    /// shuffled among themselves.
    ///
    /// A cold epoch then reads each block once, as one sequential run, at the cost of a weaker
    /// shuffle: rows of one block always land within one window of each other
    /// (see "Block shuffle" in `docs/LOADER.md`). Both numbers must be at least 1.
    Block {
        /// Rows per block.
        block_rows: u64,
        /// Blocks per window.
        window_blocks: u64,
    },
}

impl Shuffle {
    /// The block shuffle with the default block and window sizes.
    pub const DEFAULT_BLOCK: Shuffle = Shuffle::block(DEFAULT_BLOCK_ROWS);

    /// A block shuffle of `block_rows`-row blocks in windows of [`DEFAULT_WINDOW_BLOCKS`] blocks.
    pub const fn block(block_rows: u64) -> Shuffle {
        Shuffle::Block {
            block_rows,
            window_blocks: DEFAULT_WINDOW_BLOCKS,
        }
    }
}

/// How an epoch's rows are divided among ranks ([`OrderSpec::split`]).
///
/// `docs/LOADER.md` ("Splitting across ranks" and "Whole shards per rank") gives both algorithms
/// and the trade between them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Split {
    /// Every rank draws from all rows: the epoch's permutation is dealt out position by position,
    /// as PyTorch's `DistributedSampler` does. The best mix, but every rank reads every shard.
    #[default]
    Rows,
    /// Whole shards per rank: each shard belongs to one rank ([`shard_ranks`]), and each rank
    /// shuffles only its own shards' rows, so a rank reads (and downloads) only its part of a
    /// dataset. Holds each shard's row count, in manifest order; their sum must be
    /// [`OrderSpec::num_rows`].
    Shards(Arc<[u64]>),
}

/// The part of an epoch's global order that a run of the epoch reads: positions `start..rows` of
/// the epoch permutation `P` of `rows` rows ([`permutation`]), split across ranks as a whole
/// epoch is ("Elastic resume" in `docs/LOADER.md`).
///
/// A whole epoch is [`Segment::whole`]`(num_rows)`. An epoch resumed on another world size, or
/// after rows were appended, is the rest of its order from the position every rank had reached
/// (`start`, the entries of `P` consumed by all ranks together), over the rows the epoch was
/// started with (`rows`): the global order of an epoch does not depend on the world size, so the
/// new ranks read exactly the entries the old ones had not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Entries of the epoch's order already consumed, across all ranks.
    pub start: u64,
    /// Rows the epoch's order covers: the rows the epoch started with.
    pub rows: u64,
}

impl Segment {
    /// The whole epoch over `rows` rows: `start` 0.
    pub const fn whole(rows: u64) -> Segment {
        Segment { start: 0, rows }
    }

    /// Entries of the order this segment has left: `rows - start` (0 past the end).
    pub const fn remaining(&self) -> u64 {
        self.rows.saturating_sub(self.start)
    }
}

/// Why an order could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrderError {
    /// `batch_size` was 0.
    #[error("the batch size is 0; it must be at least 1")]
    ZeroBatchSize,
    /// `world_size` was 0.
    #[error("the world size is 0; it must be at least 1")]
    ZeroWorldSize,
    /// `rank` was not below `world_size`.
    #[error("rank {rank} is out of range for a world size of {world_size}; ranks are 0 to world size - 1")]
    RankOutOfRange {
        /// The rank asked for.
        rank: u64,
        /// The world size.
        world_size: u64,
    },
    /// A block shuffle's `block_rows` or `window_blocks` was 0.
    #[error("a block shuffle needs at least 1 row per block and 1 block per window, got {block_rows} and {window_blocks}")]
    EmptyBlock {
        /// Rows per block asked for.
        block_rows: u64,
        /// Blocks per window asked for.
        window_blocks: u64,
    },
    /// The rows of an epoch cannot be held in this process's memory (too many for its address
    /// space, or the allocation failed).
    #[error(
        "cannot hold the order of {rows} rows: {bytes} bytes of row indices do not fit in memory"
    )]
    TooManyRows {
        /// Rows in the epoch.
        rows: u64,
        /// Bytes the order needed (saturating).
        bytes: u64,
    },
    /// [`Split::Shards`]'s shard row counts do not add up to the spec's `rows`.
    #[error("the shards hold {shard_rows} rows in all, but the order is for {rows} rows")]
    ShardRows {
        /// The sum of the shards' rows (saturating).
        shard_rows: u64,
        /// The spec's rows.
        rows: u64,
    },
    /// [`Split::Shards`] with fewer non-empty shards than ranks: some rank would have no rows.
    #[error(
        "whole shards per rank needs at least one non-empty shard per rank, but there are \
         {shards} non-empty shards for a world size of {world_size}: split by rows, or write \
         smaller shards"
    )]
    TooFewShards {
        /// Shards with at least one row.
        shards: usize,
        /// The world size.
        world_size: u64,
    },
    /// A resume from a state whose epoch covers more rows than the order has: rows were removed,
    /// or the state is of other data. (Fewer rows is an epoch saved before an append, which
    /// resumes over its own rows: see [`Segment`].)
    #[error(
        "cannot resume an epoch over {state_rows} rows: there are only {rows} rows, so the data \
         changed since the state was saved (a state resumes on its own data, or on that data with \
         rows appended)"
    )]
    StateRows {
        /// The rows the state's epoch covers.
        state_rows: u64,
        /// The rows the order has.
        rows: u64,
    },
    /// A resume from a position past the end of its epoch's order.
    #[error("cannot resume at position {samples} of an epoch of {rows} rows: it is past the end")]
    PositionPastEnd {
        /// The position asked for.
        samples: u64,
        /// The rows of the epoch.
        rows: u64,
    },
    /// A resume from a global position on another world size, or over other rows, with options
    /// whose order of an epoch depends on the world size or is not cut from the global order
    /// ("Elastic resume" in `docs/LOADER.md`).
    #[error(
        "cannot resume at position {samples} of an epoch over {rows} rows on these ranks or \
         these rows: {reason}"
    )]
    NotElastic {
        /// The position asked for.
        samples: u64,
        /// The rows of the state's epoch.
        rows: u64,
        /// Why, and what to do instead.
        reason: &'static str,
    },
    /// A resume asked for a batch past the end of the epoch.
    #[error("cannot resume at batch {batch}: this epoch has {len} batches on this rank")]
    ResumePastEnd {
        /// The batch asked for.
        batch: usize,
        /// Batches in the epoch on this rank.
        len: usize,
    },
}

/// SplitMix64 (Steele, Lea and Flood, 2014), the generator that derives [`Rng`]'s state.
///
/// ```
/// # use mmtensor::order::SplitMix64;
/// assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
/// ```
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose state is `seed`.
    pub const fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// Adds the golden-ratio increment to the state and returns its mix.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// xoshiro256** 1.0 (Blackman and Vigna, 2018), the generator behind every shuffle.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// The generator for `(seed, epoch)`: SplitMix64 from `seed` gives one word `k`; the state is
    /// then the next four outputs of SplitMix64 from `k ^ epoch`.
    pub fn for_epoch(seed: u64, epoch: u64) -> Rng {
        let key = SplitMix64::new(seed).next_u64() ^ epoch;
        let mut sm = SplitMix64::new(key);
        // Four outputs of a bijection on four distinct states: at most one is zero, so the state
        // is never all zeros (xoshiro's one forbidden state).
        Rng {
            s: [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()],
        }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform integer in `0..n`, by Lemire's multiply-and-reject method (exactly unbiased).
    ///
    /// Draws one output, and more only in the rare case it is rejected. `n` 0 is treated as 1.
    pub fn below(&mut self, n: u64) -> u64 {
        let n = n.max(1);
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// Shuffles `items` in place: for `i` from `len - 1` down to 1, swap `items[i]` with
    /// `items[below(i + 1)]` (Durstenfeld's Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            // `below(i + 1) <= i`, so the cast back is lossless.
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// What an epoch order is made of: everything but the epoch number.
///
/// Build one with [`OrderSpec::new`] and struct update syntax, then call [`OrderSpec::epoch`].
/// Cloning is cheap ([`Split::Shards`] holds its counts in an [`Arc`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrderSpec {
    /// Rows in the store (the first dimension of its columns).
    pub num_rows: u64,
    /// Rows per batch, at least 1.
    pub batch_size: u64,
    /// How rows are ordered.
    pub shuffle: Shuffle,
    /// The seed; with the epoch it selects the permutation.
    pub seed: u64,
    /// This process's rank, below `world_size`.
    pub rank: u64,
    /// The number of ranks, at least 1.
    pub world_size: u64,
    /// Drop rows so every rank gets the same number without padding, and drop a final short batch.
    pub drop_last: bool,
    /// How rows are divided among ranks.
    pub split: Split,
}

impl OrderSpec {
    /// `num_rows` in batches of `batch_size`, unshuffled, seed 0, rank 0 of 1, keeping the last
    /// batch.
    pub const fn new(num_rows: u64, batch_size: u64) -> OrderSpec {
        OrderSpec {
            num_rows,
            batch_size,
            shuffle: Shuffle::None,
            seed: 0,
            rank: 0,
            world_size: 1,
            drop_last: false,
            split: Split::Rows,
        }
    }

    /// Checks the spec.
    ///
    /// # Errors
    ///
    /// [`OrderError::ZeroBatchSize`], [`OrderError::ZeroWorldSize`],
    /// [`OrderError::RankOutOfRange`], [`OrderError::EmptyBlock`], then for [`Split::Shards`]
    /// [`OrderError::ShardRows`] and [`OrderError::TooFewShards`], in that order of checking.
    pub fn validate(&self) -> Result<(), OrderError> {
        self.validate_options()?;
        if let Split::Shards(shards) = &self.split {
            // An overflowing sum is a mismatch even when `rows` is `u64::MAX` (what it saturates
            // to): `shard_sequence` adds the counts up unchecked.
            let total = shards.iter().try_fold(0u64, |a, &r| a.checked_add(r));
            if total != Some(self.num_rows) {
                return Err(OrderError::ShardRows {
                    shard_rows: total.unwrap_or(u64::MAX),
                    rows: self.num_rows,
                });
            }
            shard_ranks(shards, self.world_size)?;
        }
        Ok(())
    }

    /// The checks that need no shard counts: everything [`OrderSpec::validate`] checks before
    /// the split.
    fn validate_options(&self) -> Result<(), OrderError> {
        if self.batch_size == 0 {
            return Err(OrderError::ZeroBatchSize);
        }
        if self.world_size == 0 {
            return Err(OrderError::ZeroWorldSize);
        }
        if self.rank >= self.world_size {
            return Err(OrderError::RankOutOfRange {
                rank: self.rank,
                world_size: self.world_size,
            });
        }
        if let Shuffle::Block {
            block_rows,
            window_blocks,
        } = self.shuffle
        {
            if block_rows == 0 || window_blocks == 0 {
                return Err(OrderError::EmptyBlock {
                    block_rows,
                    window_blocks,
                });
            }
        }
        Ok(())
    }

    /// Rows this rank reads per epoch before a short final batch is dropped, the same for every
    /// epoch, shuffle and rank. Split by rows: `ceil(rows / world_size)`, or `floor(rows /
    /// world_size)` with `drop_last` (DistributedSampler's `num_samples`). Whole shards per
    /// rank: the most rows any rank owns, or the fewest with `drop_last`.
    ///
    /// # Errors
    ///
    /// Those of [`OrderSpec::validate`].
    pub fn rank_rows(&self) -> Result<u64, OrderError> {
        self.segment_rank_rows(Segment::whole(self.num_rows))
    }

    /// [`OrderSpec::rank_rows`] of a segment of an epoch: split by rows, the same rule over the
    /// `rows - start` entries the segment has left.
    ///
    /// # Errors
    ///
    /// Those of [`OrderSpec::check_segment`].
    pub fn segment_rank_rows(&self, segment: Segment) -> Result<u64, OrderError> {
        self.check_segment(segment)?;
        Ok(match &self.split {
            Split::Rows => {
                let left = segment.remaining();
                let (q, r) = (left / self.world_size, left % self.world_size);
                if r == 0 || self.drop_last {
                    q
                } else {
                    q + 1
                }
            }
            Split::Shards(shards) => {
                let owned = owned_rows(
                    shards,
                    &shard_ranks(shards, self.world_size)?,
                    self.world_size,
                );
                let pick = if self.drop_last {
                    owned.iter().min()
                } else {
                    owned.iter().max()
                };
                pick.copied().unwrap_or(0)
            }
        })
    }

    /// Batches per epoch on this rank, the same for every epoch, shuffle and rank: what
    /// [`EpochOrder::len`] will be, without building an order.
    ///
    /// # Errors
    ///
    /// Those of [`OrderSpec::validate`].
    pub fn batches_per_epoch(&self) -> Result<u64, OrderError> {
        self.segment_batches(Segment::whole(self.num_rows))
    }

    /// Batches of a segment of an epoch on this rank: what [`OrderSpec::epoch_from`]'s
    /// [`EpochOrder::len`] will be.
    ///
    /// # Errors
    ///
    /// Those of [`OrderSpec::check_segment`].
    pub fn segment_batches(&self, segment: Segment) -> Result<u64, OrderError> {
        let n = self.segment_rank_rows(segment)?;
        let (q, r) = (n / self.batch_size, n % self.batch_size);
        Ok(if r == 0 || self.drop_last { q } else { q + 1 })
    }

    /// Checks the spec ([`OrderSpec::validate`]) and that `segment` is a part of an epoch it can
    /// read: no more rows than the spec's, a start within them, and, for [`Split::Shards`]
    /// (whose order of an epoch depends on the world size), the whole epoch.
    ///
    /// # Errors
    ///
    /// Those of [`OrderSpec::validate`], then [`OrderError::StateRows`],
    /// [`OrderError::PositionPastEnd`] and [`OrderError::NotElastic`], in that order.
    pub fn check_segment(&self, segment: Segment) -> Result<(), OrderError> {
        self.validate()?;
        if segment.rows > self.num_rows {
            return Err(OrderError::StateRows {
                state_rows: segment.rows,
                rows: self.num_rows,
            });
        }
        if segment.start > segment.rows {
            return Err(OrderError::PositionPastEnd {
                samples: segment.start,
                rows: segment.rows,
            });
        }
        if matches!(self.split, Split::Shards(_)) && segment != Segment::whole(self.num_rows) {
            return Err(OrderError::NotElastic {
                samples: segment.start,
                rows: segment.rows,
                reason: SHARDS_NOT_ELASTIC,
            });
        }
        Ok(())
    }

    /// The global position after `batches` batches of `segment` on every rank:
    /// `min(start + batches * batch_size * world_size, rows)` (saturating), the entries of the
    /// epoch's order consumed by all ranks together.
    pub fn position(&self, segment: Segment, batches: u64) -> u64 {
        let step = batches
            .saturating_mul(self.batch_size)
            .saturating_mul(self.world_size);
        segment.start.saturating_add(step).min(segment.rows)
    }

    /// The order of `epoch`.
    ///
    /// # Errors
    ///
    /// Those of [`OrderSpec::validate`], and [`OrderError::TooManyRows`] when the row indices
    /// (8 bytes a row) cannot be allocated.
    pub fn epoch(&self, epoch: u64) -> Result<EpochOrder, OrderError> {
        self.epoch_from(epoch, Segment::whole(self.num_rows))
    }

    /// The order of the rest of `epoch` from `segment.start` on: positions `start..rows` of the
    /// permutation of `segment.rows` rows, padded (or cut, with `drop_last`) and split across
    /// this spec's ranks as a whole epoch is, then cut into batches ("Elastic resume" in
    /// `docs/LOADER.md`). [`OrderSpec::epoch`] is the segment [`Segment::whole`]`(num_rows)`.
    ///
    /// # Errors
    ///
    /// Those of [`OrderSpec::check_segment`], and [`OrderError::TooManyRows`] when the row
    /// indices (8 bytes a row) cannot be allocated.
    pub fn epoch_from(&self, epoch: u64, segment: Segment) -> Result<EpochOrder, OrderError> {
        let rank_rows = self.segment_rank_rows(segment)?;
        let batches = self.segment_batches(segment)?;
        // Rows kept after a short last batch is dropped; never more than `rank_rows`.
        let kept = if self.drop_last {
            batches * self.batch_size
        } else {
            rank_rows
        };
        let too_many = |_| OrderError::TooManyRows {
            rows: self.num_rows,
            bytes: self.num_rows.saturating_mul(8),
        };
        let kept_len = usize::try_from(kept).map_err(too_many)?;
        let batches = usize::try_from(batches).map_err(too_many)?;
        let batch_size = usize::try_from(self.batch_size).unwrap_or(usize::MAX);

        let (rows, start, ws, rank) = (segment.rows, segment.start, self.world_size, self.rank);
        let seq = if let Split::Shards(shards) = &self.split {
            // `check_segment` allowed only the whole epoch.
            shard_sequence(self, shards, epoch, kept)?
        } else if self.shuffle == Shuffle::None && ws == 1 {
            // One rank reads at most the `rows - start` entries left, unpadded.
            let mut seq = try_vec(kept_len, self.num_rows)?;
            seq.extend(start..start + kept);
            seq
        } else {
            // Position `start + k` of the epoch's order, continued cyclically (`perm[(start + k)
            // mod rows]`), is entry `k` of the padded segment; rank `r` takes the entries
            // `r, r + ws, r + 2 ws, ...`. With `Shuffle::None`, `perm` is the identity.
            let perm = match self.shuffle {
                Shuffle::None => None,
                _ => Some(permutation(rows, self.shuffle, self.seed, epoch)?),
            };
            match perm {
                Some(mut perm) if ws == 1 => {
                    // `start <= rows`, the permutation's length, and one rank is never padded.
                    perm.drain(..start as usize);
                    perm.truncate(kept_len);
                    perm.shrink_to_fit();
                    perm
                }
                perm => {
                    let mut seq = try_vec(kept_len, self.num_rows)?;
                    // `start + rank + i * ws` for `i < kept <= ceil((rows - start) / ws)` is
                    // below `rows + ws`, which fits: the sum is only formed while it is below the
                    // padded end.
                    let mut k = start.saturating_add(rank);
                    for _ in 0..kept {
                        let at = if rows == 0 { 0 } else { k % rows };
                        seq.push(match &perm {
                            Some(p) => p[at as usize],
                            None => at,
                        });
                        k = k.saturating_add(ws);
                    }
                    seq
                }
            }
        };
        debug_assert_eq!(seq.len(), kept_len);
        Ok(EpochOrder {
            spec: self.clone(),
            segment,
            epoch,
            seq,
            batches,
            batch_size,
            first: 0,
        })
    }
}

/// Why [`Split::Shards`] cannot resume on other ranks or rows ([`OrderError::NotElastic`]).
const SHARDS_NOT_ELASTIC: &str = "with whole shards per rank (split=\"shards\") the order of an \
     epoch depends on the world size and on every shard's rows; resume on the ranks and the data \
     the state was saved with, or split by rows (split=\"rows\"), whose order does not";

/// The rank that owns each shard under [`Split::Shards`], in manifest order: shard by shard, each
/// goes to the rank that owns the fewest rows so far, the lowest such rank on a tie.
///
/// A shard's rank depends only on the shards before it and the world size, never on the seed or
/// the epoch: a rank keeps its shards from epoch to epoch (its cache stays useful), and
/// appending shards to a dataset leaves every existing shard where it was. Ranks' rows differ by
/// at most the largest shard's rows. With at least `world_size` non-empty shards, every rank owns
/// at least one (the first `world_size` non-empty shards go to distinct ranks).
///
/// ```
/// # use mmtensor::order::shard_ranks;
/// assert_eq!(shard_ranks(&[100, 100, 100, 100, 40], 2)?, [0, 1, 0, 1, 0]);
/// assert_eq!(shard_ranks(&[100, 10, 10, 10, 100], 2)?, [0, 1, 1, 1, 1]);
/// # Ok::<(), mmtensor::order::OrderError>(())
/// ```
///
/// # Errors
///
/// [`OrderError::ZeroWorldSize`]; [`OrderError::TooFewShards`] when the shards hold rows but
/// fewer than `world_size` shards are non-empty.
pub fn shard_ranks(shard_rows: &[u64], world_size: u64) -> Result<Vec<u64>, OrderError> {
    if world_size == 0 {
        return Err(OrderError::ZeroWorldSize);
    }
    let non_empty = shard_rows.iter().filter(|&&r| r > 0).count();
    if non_empty > 0 && (non_empty as u64) < world_size {
        return Err(OrderError::TooFewShards {
            shards: non_empty,
            world_size,
        });
    }
    // No shard has rows: nothing to balance, and `world_size` may exceed the shard count.
    if non_empty == 0 {
        return Ok(vec![0; shard_rows.len()]);
    }
    // `world_size <= non_empty <= shard_rows.len()`, so the heap is no larger than the shards.
    let mut load: BinaryHeap<Reverse<(u64, u64)>> =
        (0..world_size).map(|r| Reverse((0, r))).collect();
    Ok(shard_rows
        .iter()
        .map(|&rows| {
            let Reverse((owned, rank)) = load.pop().expect("world_size >= 1 ranks in the heap");
            load.push(Reverse((owned.saturating_add(rows), rank)));
            rank
        })
        .collect())
}

/// Rows each rank owns, given each shard's rank.
fn owned_rows(shard_rows: &[u64], ranks: &[u64], world_size: u64) -> Vec<u64> {
    // `shard_ranks` succeeded, so `world_size` is at most the shard count (or the shards are
    // all empty and every rank owns 0 rows).
    let mut owned = vec![
        0u64;
        usize::try_from(world_size)
            .unwrap_or(0)
            .min(shard_rows.len().max(1))
    ];
    for (&rows, &rank) in shard_rows.iter().zip(ranks) {
        if let Some(o) = owned.get_mut(rank as usize) {
            *o = o.saturating_add(rows);
        }
    }
    owned
}

/// This rank's sequence under [`Split::Shards`]: its shards' rows (in manifest order, numbered
/// from 0) permuted with seed `seed + rank`, repeated from the start or cut to `kept` entries,
/// each mapped back to its dataset row.
fn shard_sequence(
    spec: &OrderSpec,
    shards: &[u64],
    epoch: u64,
    kept: u64,
) -> Result<Vec<u64>, OrderError> {
    let ranks = shard_ranks(shards, spec.world_size)?;
    // Where each of this rank's shards starts, in the dataset and in the rank's own rows.
    let (mut starts, mut local_starts) = (Vec::new(), Vec::new());
    let (mut start, mut local) = (0u64, 0u64);
    for (&rows, &rank) in shards.iter().zip(&ranks) {
        if rank == spec.rank && rows > 0 {
            starts.push(start);
            local_starts.push(local);
            local += rows;
        }
        start += rows;
    }
    let perm = permutation(
        local,
        spec.shuffle,
        spec.seed.wrapping_add(spec.rank),
        epoch,
    )?;
    let mut seq = try_vec(usize::try_from(kept).unwrap_or(usize::MAX), spec.num_rows)?;
    for k in 0..kept {
        // `local > 0` whenever `kept > 0`: validation gave every rank a non-empty shard.
        let l = perm[(k % local) as usize];
        let j = local_starts.partition_point(|&s| s <= l) - 1;
        seq.push(starts[j] + (l - local_starts[j]));
    }
    Ok(seq)
}

fn try_vec(len: usize, rows: u64) -> Result<Vec<u64>, OrderError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_: TryReserveError| OrderError::TooManyRows {
            rows,
            bytes: (len as u64).saturating_mul(8),
        })?;
    Ok(v)
}

/// The whole epoch's permutation of `0..rows`, before it is split across ranks.
///
/// `Shuffle::None` gives `0..rows`; the others consume [`Rng::for_epoch`]`(seed, epoch)` as
/// `docs/LOADER.md` specifies.
///
/// # Errors
///
/// [`OrderError::EmptyBlock`] for a block shuffle with a zero size, and
/// [`OrderError::TooManyRows`] when `rows` indices cannot be allocated.
pub fn permutation(
    rows: u64,
    shuffle: Shuffle,
    seed: u64,
    epoch: u64,
) -> Result<Vec<u64>, OrderError> {
    let too_many = OrderError::TooManyRows {
        rows,
        bytes: rows.saturating_mul(8),
    };
    let len = usize::try_from(rows).map_err(|_| too_many.clone())?;
    if let Shuffle::Block {
        block_rows,
        window_blocks,
    } = shuffle
    {
        if block_rows == 0 || window_blocks == 0 {
            return Err(OrderError::EmptyBlock {
                block_rows,
                window_blocks,
            });
        }
    }
    let mut perm = try_vec(len, rows)?;
    let mut rng = Rng::for_epoch(seed, epoch);
    match shuffle {
        Shuffle::None => perm.extend(0..rows),
        Shuffle::Full => {
            perm.extend(0..rows);
            rng.shuffle(&mut perm);
        }
        Shuffle::Block {
            block_rows,
            window_blocks,
        } => {
            let blocks = rows.div_ceil(block_rows);
            let mut order = try_vec(usize::try_from(blocks).map_err(|_| too_many.clone())?, rows)?;
            order.extend(0..blocks);
            rng.shuffle(&mut order);
            // `window_blocks` may exceed `usize` on a 32-bit target; a window that large is the
            // whole sequence either way.
            let window = usize::try_from(window_blocks).unwrap_or(usize::MAX);
            for window_blocks in order.chunks(window) {
                let start = perm.len();
                for &b in window_blocks {
                    // `b < blocks`, so `b * block_rows < rows` and the end is capped at `rows`.
                    let first = b * block_rows;
                    perm.extend(first..rows.min(first.saturating_add(block_rows)));
                }
                rng.shuffle(&mut perm[start..]);
            }
        }
    }
    debug_assert_eq!(perm.len(), len);
    Ok(perm)
}

/// One epoch's batches on one rank: row indices, in the order the loader yields them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochOrder {
    spec: OrderSpec,
    /// The part of the epoch's global order it reads: the whole epoch, or the rest of a resumed
    /// one.
    segment: Segment,
    epoch: u64,
    seq: Vec<u64>,
    batches: usize,
    batch_size: usize,
    /// The first batch `seq` holds: 0 for an order made by [`OrderSpec::epoch`]; a loader's
    /// mixture epoch resumed mid-way holds only the batches from where it resumes.
    first: usize,
}

impl EpochOrder {
    /// The order of an epoch of `batches` full batches of `batch_size` rows, of which `seq` holds
    /// batches `first..batches`, one after the other (a weighted mixture's, whose rows are already
    /// numbered in the loader's index space). `spec` describes the rows for the read-ahead
    /// advice (its shuffle and row count); its own batch count is not used.
    pub(crate) fn from_batches(
        spec: OrderSpec,
        epoch: u64,
        seq: Vec<u64>,
        first: usize,
        batches: usize,
        batch_size: usize,
    ) -> EpochOrder {
        debug_assert_eq!(
            Some(seq.len()),
            batches
                .checked_sub(first)
                .and_then(|n| n.checked_mul(batch_size))
        );
        EpochOrder {
            segment: Segment::whole(spec.num_rows),
            spec,
            epoch,
            seq,
            batches,
            batch_size,
            first,
        }
    }

    /// The spec this order was made from.
    pub fn spec(&self) -> &OrderSpec {
        &self.spec
    }

    /// The epoch number.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The part of the epoch's global order this order reads: [`Segment::whole`] for an order
    /// made by [`OrderSpec::epoch`].
    pub fn segment(&self) -> Segment {
        self.segment
    }

    /// The global position when every rank stands before batch `next_batch` of this order
    /// ([`OrderSpec::position`]): the entries of the epoch's order consumed by all ranks.
    pub fn position(&self, next_batch: usize) -> u64 {
        self.spec
            .position(self.segment, u64::try_from(next_batch).unwrap_or(u64::MAX))
    }

    /// The number of batches on this rank ([`OrderSpec::batches_per_epoch`]).
    pub fn len(&self) -> usize {
        self.batches
    }

    /// Whether this rank has no batch this epoch.
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }

    /// Every row index this rank reads this epoch, batch after batch.
    pub fn row_indices(&self) -> &[u64] {
        &self.seq
    }

    /// The row indices of batch `i`, or `None` past the end. Every batch has `batch_size` rows
    /// except perhaps the last (never shorter with `drop_last`).
    pub fn batch(&self, i: usize) -> Option<&[u64]> {
        if i >= self.batches || i < self.first {
            return None;
        }
        let start = (i - self.first) * self.batch_size;
        let end = start.saturating_add(self.batch_size).min(self.seq.len());
        self.seq.get(start..end)
    }

    /// The batches in order.
    pub fn iter(&self) -> Batches<'_> {
        Batches {
            order: self,
            next: self.first,
        }
    }

    /// The batches from batch `next` on: what remains of an epoch whose state is
    /// `(epoch, next)`. `next == len()` gives an empty iterator (the epoch is done).
    ///
    /// # Errors
    ///
    /// [`OrderError::ResumePastEnd`] when `next > len()`.
    pub fn batches_from(&self, next: usize) -> Result<Batches<'_>, OrderError> {
        if next > self.batches {
            return Err(OrderError::ResumePastEnd {
                batch: next,
                len: self.batches,
            });
        }
        Ok(Batches {
            order: self,
            next: next.max(self.first),
        })
    }
}

impl EpochOrder {
    /// Groups rows of similar length into batches, for less padding, still shuffled: this
    /// rank's row sequence is cut into windows of `window_batches` batches (`window_batches ×
    /// batch_size` rows; the last window may be shorter); within each window the rows are
    /// sorted by `length(row)`, longest first (ties keep their order in the sequence), cut into
    /// batches, and those batches are permuted by a Fisher-Yates shuffle driven by
    /// `Rng::for_epoch(seed ^ LENGTH_GROUP_SALT, epoch)`, one generator for the whole epoch,
    /// window after window. A short last batch of the epoch stays last. `docs/LOADER.md`
    /// ("Length-grouped batches") is the spec.
    ///
    /// Every row stays on its rank and in its window, so each row is still read once per
    /// epoch, and the grouped order is a pure function of the epoch's order and the lengths:
    /// a resumed epoch is grouped the same way.
    pub fn group_by_length(&mut self, window_batches: u64, seed: u64, length: impl Fn(u64) -> u64) {
        let b = self.batch_size.max(1);
        let window = usize::try_from(window_batches.max(1))
            .unwrap_or(usize::MAX)
            .saturating_mul(b);
        // The full batches only: a short last batch keeps its rows and its place.
        let full = (self.seq.len() / b) * b;
        let mut rng = Rng::for_epoch(seed ^ LENGTH_GROUP_SALT, self.epoch);
        let mut start = 0usize;
        let mut scratch: Vec<(u64, usize, u64)> = Vec::new();
        let mut batches: Vec<usize> = Vec::new();
        while start < full {
            let end = start.saturating_add(window).min(full);
            let rows = &mut self.seq[start..end];
            scratch.clear();
            scratch.extend(rows.iter().enumerate().map(|(i, &r)| (length(r), i, r)));
            // Longest first; ties by position, so the sort is total and needs no stability.
            scratch.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            batches.clear();
            batches.extend(0..rows.len() / b);
            rng.shuffle(&mut batches);
            for (slot, &k) in batches.iter().enumerate() {
                for j in 0..b {
                    rows[slot * b + j] = scratch[k * b + j].2;
                }
            }
            start = end;
        }
    }
}

/// Mixed into the seed of [`EpochOrder::group_by_length`]'s generator, so that the batches'
/// permutation is not the epoch permutation's generator again: the bytes of "lengths".
pub const LENGTH_GROUP_SALT: u64 = 0x6C65_6E67_7468_7300;

impl<'a> IntoIterator for &'a EpochOrder {
    type Item = &'a [u64];
    type IntoIter = Batches<'a>;

    fn into_iter(self) -> Batches<'a> {
        self.iter()
    }
}

/// An iterator over an [`EpochOrder`]'s batches; [`Batches::next_batch`] is the resume state.
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    order: &'a EpochOrder,
    next: usize,
}

impl Batches<'_> {
    /// The index of the batch `next()` will yield: with the epoch, the state to resume from.
    pub fn next_batch(&self) -> usize {
        self.next
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = &'a [u64];

    fn next(&mut self) -> Option<&'a [u64]> {
        let batch = self.order.batch(self.next)?;
        self.next += 1;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.order.batches - self.next;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}
impl std::iter::FusedIterator for Batches<'_> {}

/// A batch's rows in file order, each with its position in the batch: the plan of a gather that
/// reads the file forwards and writes row `rows[p]` to output slot `p`.
///
/// Fills `out` (cleared first, so a loader can reuse its allocation) with `(row, position)`
/// sorted by row, then position, so a row that appears twice keeps a fixed order. Consecutive
/// rows in `out` are the contiguous runs a gather can copy in one piece.
pub fn file_order(rows: &[u64], out: &mut Vec<(u64, usize)>) {
    out.clear();
    out.extend(rows.iter().copied().zip(0..));
    out.sort_unstable();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_for_small_and_huge_bounds() {
        let mut rng = Rng::for_epoch(1, 2);
        for n in [1, 2, 3, 7, u64::MAX / 3, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.below(n) < n);
            }
        }
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn shuffle_of_fewer_than_two_items_draws_nothing() {
        let mut a = Rng::for_epoch(3, 4);
        let b = a.clone();
        a.shuffle(&mut [0u64; 0]);
        a.shuffle(&mut [5u64]);
        assert_eq!(a.s, b.s);
    }
}
