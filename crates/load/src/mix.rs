//! The weighted mixture order: which sample of which source goes into which batch on which rank.
//!
//! A mixture draws its samples from several sources (datasets), each in proportion to its weight.
//! Like [`crate::order`], this is a pure function of a [`MixSpec`] and a position: no clock, no
//! thread count, no hash-map iteration and no floating point enter the sequence (the `f64` weights
//! are turned into integers once, exactly as specified). `docs/LOADER.md` ("Weighted mixtures")
//! specifies it precisely enough to reimplement bit for bit; `tests/mix.rs` pins known answers, and
//! `tests/mix_reference.py` is a second implementation in plain Python.
//!
//! Three layers:
//!
//! 1. [`Schedule`]: the source of mixture sample `k = 0, 1, 2, ...`, by Tijdeman's rule for the
//!    chairman assignment problem in integer arithmetic. After any `k` samples, each source is
//!    within `1 - 1 / (2S - 2)` of a sample (less than one) of its share `k * q_s / W`, where
//!    `q_s` are the integer weights ([`MixSpec::integer_weights`]), `W` their sum and `S` the
//!    number of sources with a positive weight.
//! 2. Each source's own order: the `j`-th sample given to source `s` is position `j mod rows_s`
//!    of the permutation ([`crate::order::permutation`]) of the source's epoch `j / rows_s`,
//!    seeded with [`source_seed`]`(seed, s)`.
//! 3. Epochs, global batches and ranks of the mixture ([`MixOrder`]), resumable from a
//!    [`MixState`] without replaying the samples before it.
//!
//! ```
//! use mmtensor::mix::{MixSource, MixSpec};
//!
//! let spec = MixSpec {
//!     seed: 7,
//!     ..MixSpec::new(vec![MixSource::new("web", 70, 0.7), MixSource::new("code", 30, 0.3)], 4)
//! };
//! let mut order = spec.start()?;
//! assert_eq!(order.batches_per_epoch(), 25); // 100 samples per epoch in batches of 4
//! let first = order.next().unwrap()?;        // [(source, row in source); 4]
//! assert_eq!(first.iter().filter(|(s, _)| *s == 0).count(), 3);
//!
//! // Resume: the state records where every source stands, so nothing is replayed.
//! let state = order.state();
//! let mut again = spec.resume(&state)?;
//! assert_eq!(again.next().unwrap()?, order.next().unwrap()?);
//! # Ok::<(), mmtensor::mix::MixError>(())
//! ```

use crate::order::{permutation, OrderError, Shuffle, SplitMix64};

/// The most sources a mixture may have (2^20).
///
/// Each mixture sample costs one pass over the sources with a positive weight, so mixtures near
/// this size are slow; the limit keeps the integer arithmetic within 128 bits.
pub const MAX_SOURCES: usize = 1 << 20;

/// The largest integer weight a [`Schedule`] accepts (2^32). [`MixSpec::integer_weights`] puts
/// the largest weight in `[2^31, 2^32]`.
pub const MAX_INTEGER_WEIGHT: u64 = 1 << 32;

/// SplitMix64's increment, the golden-ratio constant (see `docs/LOADER.md`, "The generator").
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Why a mixture order could not be made or resumed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MixError {
    /// The mixture has no source.
    #[error("a mixture needs at least one source")]
    NoSources,
    /// More than [`MAX_SOURCES`] sources.
    #[error("a mixture has at most {max} sources, got {count}")]
    TooManySources {
        /// Sources given.
        count: usize,
        /// [`MAX_SOURCES`].
        max: usize,
    },
    /// A bad batch size, world size or rank (the [`OrderError`] says which).
    #[error(transparent)]
    Order(#[from] OrderError),
    /// A weight that is negative, NaN or infinite.
    #[error(
        "source {index} ({name:?}) has weight {weight}; a weight must be finite and at least 0"
    )]
    Weight {
        /// The source's index.
        index: usize,
        /// The source's name.
        name: String,
        /// The weight given.
        weight: f64,
    },
    /// Every weight is 0.
    #[error("every source of the mixture has weight 0; at least one weight must be positive")]
    AllZero,
    /// A source with a positive weight and no rows: it could never give the samples it is owed.
    #[error("source {index} ({name:?}) has weight {weight} but no rows; give it weight 0 or rows")]
    EmptySource {
        /// The source's index.
        index: usize,
        /// The source's name.
        name: String,
        /// Its weight.
        weight: f64,
    },
    /// A source's own order failed: a block shuffle with a zero size, or a permutation too large
    /// to allocate.
    #[error("source {index} ({name:?}): {error}")]
    Source {
        /// The source's index.
        index: usize,
        /// The source's name.
        name: String,
        /// What went wrong.
        error: OrderError,
    },
    /// An integer weight above [`MAX_INTEGER_WEIGHT`] given to [`Schedule::new`].
    #[error("integer weight {weight} of source {index} is above the limit of 2^32")]
    IntegerWeight {
        /// The source's index.
        index: usize,
        /// The weight given.
        weight: u64,
    },
    /// An epoch shorter than one global batch (`batch_size * world_size` samples).
    #[error(
        "an epoch of {samples} samples holds no global batch of {batch_size} samples x {world_size} \
         ranks; give more samples per epoch or smaller batches"
    )]
    EpochTooShort {
        /// Samples per epoch asked for (or the sources' rows by default).
        samples: u64,
        /// Samples per batch on each rank.
        batch_size: u64,
        /// Ranks.
        world_size: u64,
    },
    /// A resume asked for a batch past the end of its epoch.
    #[error("cannot resume at batch {batch}: a mixture epoch has {len} batches")]
    ResumePastEnd {
        /// The batch asked for.
        batch: u64,
        /// Batches per epoch.
        len: u64,
    },
    /// A resume state that this mixture cannot have reached.
    #[error("not a state of this mixture: {reason}")]
    State {
        /// What does not fit.
        reason: String,
    },
    /// The mixture's sample index would pass 2^64 - 1.
    #[error("epoch {epoch}, batch {batch} starts past the last mixture sample index (2^64 - 1)")]
    TooManySamples {
        /// The epoch.
        epoch: u64,
        /// The batch.
        batch: u64,
    },
}

/// One source of a mixture: its rows, weight and shuffle.
#[derive(Clone, Debug, PartialEq)]
pub struct MixSource {
    /// A name for messages (the key of the Python dict); it does not enter the order.
    pub name: String,
    /// Rows in the source.
    pub rows: u64,
    /// The source's share of the mixture, relative to the other weights: finite, at least 0.
    pub weight: f64,
    /// How the source's own rows are ordered, each time its rows run out.
    pub shuffle: Shuffle,
}

impl MixSource {
    /// A source of `rows` rows with weight `weight`, fully shuffled ([`Shuffle::Full`]).
    pub fn new(name: impl Into<String>, rows: u64, weight: f64) -> MixSource {
        MixSource {
            name: name.into(),
            rows,
            weight,
            shuffle: Shuffle::Full,
        }
    }
}

/// Everything a mixture order is made of. Build one with [`MixSpec::new`] and struct update
/// syntax, then call [`MixSpec::start`] or [`MixSpec::resume`].
#[derive(Clone, Debug, PartialEq)]
pub struct MixSpec {
    /// The sources, numbered in this order (which enters the order: ties and per-source seeds).
    pub sources: Vec<MixSource>,
    /// The seed; each source's permutations use [`source_seed`]`(seed, s)`.
    pub seed: u64,
    /// Samples per batch on each rank, at least 1.
    pub batch_size: u64,
    /// This process's rank, below `world_size`.
    pub rank: u64,
    /// The number of ranks, at least 1.
    pub world_size: u64,
    /// Mixture samples per epoch before it is cut to whole global batches; `None`: the rows of
    /// the sources with a positive weight, added up.
    pub samples_per_epoch: Option<u64>,
}

/// Where a mixture stands: the epoch, the next batch, and how many samples each source has given.
///
/// The same on every rank (ranks split global batches, which all ranks step through together), so
/// a state saved by one rank resumes any other. [`MixOrder::state`] gives it;
/// [`MixSpec::resume`] continues from it; [`MixSpec::state_at`] computes it for any batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MixState {
    /// The mixture epoch.
    pub epoch: u64,
    /// The next global batch of that epoch; below [`MixSpec::batches_per_epoch`].
    pub next_batch: u64,
    /// Samples each source has given so far, over all ranks and epochs (`n_s`): source `s`'s next
    /// sample is position `counts[s] mod rows_s` of its epoch `counts[s] / rows_s`.
    pub counts: Vec<u64>,
}

/// The seed of source `source`'s permutations in a mixture seeded with `seed`: the first output
/// of [`SplitMix64`] started from `seed + source * 0x9E3779B97F4A7C15` (wrapping), which is
/// output number `source` (from 0) of SplitMix64 started from `seed`.
///
/// ```
/// # use mmtensor::mix::source_seed;
/// assert_eq!(source_seed(0, 0), 0xE220_A839_7B1D_CDAF); // SplitMix64(0)'s first output
/// assert_eq!(source_seed(0, 1), 0x6E78_9E6A_A1B9_65F4); // and its second
/// ```
pub fn source_seed(seed: u64, source: u32) -> u64 {
    SplitMix64::new(seed.wrapping_add(u64::from(source).wrapping_mul(GAMMA))).next_u64()
}

/// A positive finite `f64` as `m * 2^x` exactly, `m < 2^53`.
fn decompose(w: f64) -> (u64, i32) {
    let bits = w.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    if exponent == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), exponent - 1075)
    }
}

/// `floor(log2(m * 2^x))` for `m > 0`.
fn log2_floor((m, x): (u64, i32)) -> i32 {
    x + 63 - m.leading_zeros() as i32
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl MixSpec {
    /// `sources` in batches of `batch_size`, seed 0, rank 0 of 1, the default epoch length.
    pub fn new(sources: Vec<MixSource>, batch_size: u64) -> MixSpec {
        MixSpec {
            sources,
            seed: 0,
            batch_size,
            rank: 0,
            world_size: 1,
            samples_per_epoch: None,
        }
    }

    /// Checks the spec.
    ///
    /// # Errors
    ///
    /// In this order: [`MixError::NoSources`], [`MixError::TooManySources`]; [`MixError::Order`]
    /// with [`OrderError::ZeroBatchSize`], [`OrderError::ZeroWorldSize`] or
    /// [`OrderError::RankOutOfRange`]; then source by source [`MixError::Weight`],
    /// [`MixError::Source`] (a block shuffle with a zero size) and [`MixError::EmptySource`];
    /// then [`MixError::AllZero`] and [`MixError::EpochTooShort`].
    pub fn validate(&self) -> Result<(), MixError> {
        self.batches_per_epoch().map(|_| ())
    }

    fn validate_sources(&self) -> Result<(), MixError> {
        if self.sources.is_empty() {
            return Err(MixError::NoSources);
        }
        if self.sources.len() > MAX_SOURCES {
            return Err(MixError::TooManySources {
                count: self.sources.len(),
                max: MAX_SOURCES,
            });
        }
        if self.batch_size == 0 {
            return Err(OrderError::ZeroBatchSize.into());
        }
        if self.world_size == 0 {
            return Err(OrderError::ZeroWorldSize.into());
        }
        if self.rank >= self.world_size {
            return Err(OrderError::RankOutOfRange {
                rank: self.rank,
                world_size: self.world_size,
            }
            .into());
        }
        for (i, source) in self.sources.iter().enumerate() {
            // NaN fails `>= 0.0` as well.
            if !(source.weight.is_finite() && source.weight >= 0.0) {
                return Err(MixError::Weight {
                    index: i,
                    name: source.name.clone(),
                    weight: source.weight,
                });
            }
            if let Shuffle::Block {
                block_rows,
                window_blocks,
            } = source.shuffle
            {
                if block_rows == 0 || window_blocks == 0 {
                    return Err(MixError::Source {
                        index: i,
                        name: source.name.clone(),
                        error: OrderError::EmptyBlock {
                            block_rows,
                            window_blocks,
                        },
                    });
                }
            }
            if source.weight > 0.0 && source.rows == 0 {
                return Err(MixError::EmptySource {
                    index: i,
                    name: source.name.clone(),
                    weight: source.weight,
                });
            }
        }
        if self.sources.iter().all(|s| s.weight == 0.0) {
            return Err(MixError::AllZero);
        }
        Ok(())
    }

    /// The weights as the integers the schedule uses, `q_s`.
    ///
    /// With `E` the binary exponent of the largest weight (`2^E <= max w < 2^(E+1)`), `q_s` is
    /// `w_s * 2^(31 - E)` (exact: a power-of-two scaling of the `f64`'s exact value) rounded to
    /// the nearest integer, halves up; a positive weight that rounds to 0 becomes 1, and weight 0
    /// stays 0. The largest is in `[2^31, 2^32]`. Integer weights below 2^32, and any weights
    /// that are such integers times one power of two, keep their ratios exactly (7 and 3 give
    /// `7 * 2^29` and `3 * 2^29`); 0.7 and 0.3, which are not in ratio 7:3 as binary fractions,
    /// give 3006477107 and 1288490189.
    ///
    /// # Errors
    ///
    /// Those of the weight checks of [`MixSpec::validate`]: [`MixError::NoSources`],
    /// [`MixError::TooManySources`], [`MixError::Weight`], [`MixError::AllZero`].
    pub fn integer_weights(&self) -> Result<Vec<u64>, MixError> {
        if self.sources.is_empty() {
            return Err(MixError::NoSources);
        }
        if self.sources.len() > MAX_SOURCES {
            return Err(MixError::TooManySources {
                count: self.sources.len(),
                max: MAX_SOURCES,
            });
        }
        for (i, source) in self.sources.iter().enumerate() {
            if !(source.weight.is_finite() && source.weight >= 0.0) {
                return Err(MixError::Weight {
                    index: i,
                    name: source.name.clone(),
                    weight: source.weight,
                });
            }
        }
        let top = self
            .sources
            .iter()
            .filter(|s| s.weight > 0.0)
            .map(|s| log2_floor(decompose(s.weight)))
            .max()
            .ok_or(MixError::AllZero)?;
        Ok(self
            .sources
            .iter()
            .map(|s| {
                if s.weight <= 0.0 {
                    return 0;
                }
                let (m, x) = decompose(s.weight);
                // `w * 2^(31 - top) = m * 2^shift`, below 2^32 since `w < 2^(top + 1)`.
                let shift = x + 31 - top;
                let q = if shift >= 0 {
                    m << shift
                } else {
                    // Round half up: add half of the divisor, then divide. `m < 2^53`, so
                    // from a shift of 55 on the result is 0 anyway.
                    let d = (-shift).min(64) as u32;
                    ((u128::from(m) + (1u128 << (d - 1))) >> d) as u64
                };
                q.max(1)
            })
            .collect())
    }

    /// Mixture samples per epoch, `M`: `samples_per_epoch` (by default the rows of the sources
    /// with a positive weight, added up, saturating) rounded down to whole global batches of
    /// `batch_size * world_size` samples.
    ///
    /// # Errors
    ///
    /// Those of [`MixSpec::validate`].
    pub fn epoch_samples(&self) -> Result<u64, MixError> {
        Ok(self.batches_per_epoch()? * self.batch_size * self.world_size)
    }

    /// Global batches per epoch, `L`, the same on every rank: one batch per rank each.
    ///
    /// # Errors
    ///
    /// Those of [`MixSpec::validate`].
    pub fn batches_per_epoch(&self) -> Result<u64, MixError> {
        self.validate_sources()?;
        let samples = self.samples_per_epoch.unwrap_or_else(|| {
            self.sources
                .iter()
                .filter(|s| s.weight > 0.0)
                .fold(0u64, |a, s| a.saturating_add(s.rows))
        });
        let batches = match self.batch_size.checked_mul(self.world_size) {
            Some(global) => samples / global,
            None => 0,
        };
        if batches == 0 {
            return Err(MixError::EpochTooShort {
                samples,
                batch_size: self.batch_size,
                world_size: self.world_size,
            });
        }
        Ok(batches)
    }

    /// The first mixture sample of global batch `batch` of `epoch`: `epoch * M + batch * B * W`.
    fn first_sample(&self, epoch: u64, batch: u64) -> Result<u64, MixError> {
        let global = self.batch_size * self.world_size;
        let per_epoch = self.epoch_samples()?;
        epoch
            .checked_mul(per_epoch)
            .and_then(|k| k.checked_add(batch.checked_mul(global)?))
            .ok_or(MixError::TooManySamples { epoch, batch })
    }

    /// `(epoch, batch)` with a finished epoch `(e, L)` moved to `(e + 1, 0)`.
    fn normalize(&self, epoch: u64, batch: u64) -> Result<(u64, u64), MixError> {
        let len = self.batches_per_epoch()?;
        if batch > len {
            return Err(MixError::ResumePastEnd { batch, len });
        }
        if batch == len {
            let next = epoch
                .checked_add(1)
                .ok_or(MixError::TooManySamples { epoch, batch })?;
            return Ok((next, 0));
        }
        Ok((epoch, batch))
    }

    /// The state at the start of global batch `batch` of `epoch` (a finished epoch, `batch ==
    /// batches_per_epoch()`, is the start of the next), by [`Schedule::at`]: the schedule repeats
    /// every `P` samples (the sum of the integer weights divided by their greatest common
    /// divisor), so this replays `k mod P` samples of the first period, `O(S)` each, for the
    /// mixture sample `k` where the batch starts. Weights 7 and 3 have `P = 10`; weights without a
    /// small integer ratio (0.7 and 0.3: `P = 4294967296`) may replay up to `min(k, P)` samples.
    ///
    /// # Errors
    ///
    /// Those of [`MixSpec::validate`], [`MixError::ResumePastEnd`] for a batch past the epoch's
    /// end, and [`MixError::TooManySamples`].
    pub fn state_at(&self, epoch: u64, batch: u64) -> Result<MixState, MixError> {
        let (epoch, batch) = self.normalize(epoch, batch)?;
        let k = self.first_sample(epoch, batch)?;
        let schedule = Schedule::at(&self.integer_weights()?, k)?;
        Ok(MixState {
            epoch,
            next_batch: batch,
            counts: schedule.counts,
        })
    }

    /// The order from the start: epoch 0, batch 0, no sample given.
    ///
    /// # Errors
    ///
    /// Those of [`MixSpec::validate`].
    pub fn start(&self) -> Result<MixOrder, MixError> {
        self.resume(&MixState {
            epoch: 0,
            next_batch: 0,
            counts: vec![0; self.sources.len()],
        })
    }

    /// The order from `state`: the batches the uninterrupted order yields from there on, without
    /// replaying what came before (`O(S)`, plus each source's current permutation, built when its
    /// first sample is needed).
    ///
    /// The counts are trusted to be the schedule's after `k` samples (`k` where the state's batch
    /// starts), and checked only as far as is cheap: they add up to `k`, and each is within the
    /// schedule's bound of `k * q_s / W`. A state from [`MixOrder::state`] or
    /// [`MixSpec::state_at`] of the same spec (on any rank) always passes.
    ///
    /// # Errors
    ///
    /// Those of [`MixSpec::validate`], [`MixError::ResumePastEnd`], [`MixError::TooManySamples`],
    /// and [`MixError::State`] for counts that do not fit.
    pub fn resume(&self, state: &MixState) -> Result<MixOrder, MixError> {
        let batches = self.batches_per_epoch()?;
        let (epoch, next_batch) = self.normalize(state.epoch, state.next_batch)?;
        let k = self.first_sample(epoch, next_batch)?;
        let weights = self.integer_weights()?;
        let schedule =
            Schedule::with_counts(&weights, &state.counts)?.map_err(|bad| MixError::State {
                reason: bad.describe(Some(&self.sources)),
            })?;
        if schedule.position != k {
            return Err(MixError::State {
                reason: format!(
                    "its counts add up to {} samples, but batch {next_batch} of epoch {epoch} starts \
                     at mixture sample {k}",
                    schedule.position
                ),
            });
        }
        let sources = self.sources.len();
        Ok(MixOrder {
            spec: self.clone(),
            schedule,
            seeds: (0..sources as u32)
                .map(|s| source_seed(self.seed, s))
                .collect(),
            batches,
            epoch,
            next_batch,
            paused: false,
            perms: vec![None; sources],
            picks: Vec::new(),
        })
    }
}

/// The source of each mixture sample: Tijdeman's rule for the chairman assignment problem, in
/// integers. An endless iterator of source indices.
///
/// With integer weights `q_s` (`W` their sum, `S` the number of positive ones, `m = 2S - 2`, or 1
/// when `S = 1`) and `n_s` the samples given to source `s` so far, sample `k` goes to the source
/// with the smallest `(m * (n_s + 1) - 1) / q_s` among those with `q_s > 0` and
/// `m * ((k + 1) * q_s - n_s * W) >= W`, the lowest index on a tie. Then for every `k` and `s`,
/// `|n_s - k * q_s / W| <= 1 - 1/m < 1` (Tijdeman, "The chairman assignment problem", Discrete
/// Mathematics 32, 1980): each source is less than one sample from its share at every prefix.
/// A source with weight 0 never gets a sample. `docs/LOADER.md` explains the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The weights divided by their greatest common divisor (the rule is unchanged by scaling).
    weights: Vec<u64>,
    /// The indices of the positive weights.
    active: Vec<u32>,
    /// `W`, the sum of `weights` (at most `2^20 * 2^32`).
    total: u64,
    /// `m = max(2S - 2, 1)`.
    m: i128,
    /// `n_s`.
    counts: Vec<u64>,
    /// `e_s = (k + 1) * q_s - n_s * W` for the next sample `k`; within `(q_s - W, q_s + W)`.
    scores: Vec<i128>,
    /// `k`, the next sample (the sum of `counts`).
    position: u64,
}

impl Schedule {
    /// The schedule from sample 0.
    ///
    /// # Errors
    ///
    /// [`MixError::NoSources`], [`MixError::TooManySources`], [`MixError::IntegerWeight`] for a
    /// weight above [`MAX_INTEGER_WEIGHT`], [`MixError::AllZero`].
    pub fn new(weights: &[u64]) -> Result<Schedule, MixError> {
        if weights.is_empty() {
            return Err(MixError::NoSources);
        }
        if weights.len() > MAX_SOURCES {
            return Err(MixError::TooManySources {
                count: weights.len(),
                max: MAX_SOURCES,
            });
        }
        if let Some((source, &weight)) = weights
            .iter()
            .enumerate()
            .find(|(_, &w)| w > MAX_INTEGER_WEIGHT)
        {
            return Err(MixError::IntegerWeight {
                index: source,
                weight,
            });
        }
        let g = weights.iter().fold(0, |a, &w| gcd(a, w));
        if g == 0 {
            return Err(MixError::AllZero);
        }
        let weights: Vec<u64> = weights.iter().map(|&w| w / g).collect();
        let active: Vec<u32> = (0..weights.len() as u32)
            .filter(|&s| weights[s as usize] > 0)
            .collect();
        let total = weights.iter().sum();
        let m = if active.len() >= 2 {
            2 * active.len() as i128 - 2
        } else {
            1
        };
        Ok(Schedule {
            scores: weights.iter().map(|&w| i128::from(w)).collect(),
            counts: vec![0; weights.len()],
            weights,
            active,
            total,
            m,
            position: 0,
        })
    }

    /// The schedule after `position` samples, as if [`Schedule::next`] had been called that many
    /// times.
    ///
    /// Because `n_s` is within one sample of `k * q_s / W` and both are integers when `k` is a
    /// multiple of `P` (the [`Schedule::period`]), the schedule stands exactly where it started
    /// every `P` samples: this replays `position mod P` samples and adds `position / P * q_s`.
    ///
    /// # Errors
    ///
    /// Those of [`Schedule::new`].
    pub fn at(weights: &[u64], position: u64) -> Result<Schedule, MixError> {
        let mut schedule = Schedule::new(weights)?;
        let period = schedule.total;
        for _ in 0..position % period {
            schedule.next();
        }
        let cycles = position / period;
        for (n, &q) in schedule.counts.iter_mut().zip(&schedule.weights) {
            // `cycles * q <= position * q / P <= position`, and with `n` (its share of the rest)
            // at most `position`.
            *n += cycles * q;
        }
        schedule.position = position;
        Ok(schedule)
    }

    /// The schedule after `counts.iter().sum()` samples, given how many each source has had.
    ///
    /// # Errors
    ///
    /// Those of [`Schedule::new`], and [`MixError::State`] when the counts are not as many as the
    /// sources, add up past `u64::MAX`, or one is farther from its share than the schedule ever
    /// is (`m * |n_s * W - k * q_s| > (m - 1) * W`).
    pub fn from_counts(weights: &[u64], counts: &[u64]) -> Result<Schedule, MixError> {
        Schedule::with_counts(weights, counts)?.map_err(|bad| MixError::State {
            reason: bad.describe(None),
        })
    }

    /// [`Schedule::from_counts`], with what is wrong with the counts kept apart so that the
    /// message can name the source.
    fn with_counts(
        weights: &[u64],
        counts: &[u64],
    ) -> Result<Result<Schedule, BadCounts>, MixError> {
        let mut schedule = Schedule::new(weights)?;
        if counts.len() != weights.len() {
            return Ok(Err(BadCounts::Len {
                counts: counts.len(),
                sources: weights.len(),
            }));
        }
        let Some(k) = counts.iter().try_fold(0u64, |a, &n| a.checked_add(n)) else {
            return Ok(Err(BadCounts::Sum));
        };
        let (w, m) = (i128::from(schedule.total), schedule.m);
        for (s, (&n, &q)) in counts.iter().zip(&schedule.weights).enumerate() {
            // `n <= k < 2^64` and `W <= 2^52`, `q <= 2^32`: both products fit.
            let diff = i128::from(n) * w - i128::from(k) * i128::from(q);
            if diff.abs() >= w || m * diff.abs() > (m - 1) * w {
                return Ok(Err(BadCounts::Source { source: s, n, k }));
            }
            schedule.scores[s] = i128::from(q) - diff;
        }
        schedule.counts = counts.to_vec();
        schedule.position = k;
        Ok(Ok(schedule))
    }

    /// The weights the schedule uses: those given, divided by their greatest common divisor.
    pub fn weights(&self) -> &[u64] {
        &self.weights
    }

    /// `P`: the sum of [`Schedule::weights`]. The sources repeat with this period: sample `k`
    /// goes where sample `k mod P` does.
    pub fn period(&self) -> u64 {
        self.total
    }

    /// Samples each source has had.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The next sample's index `k`: the samples given so far.
    pub fn position(&self) -> u64 {
        self.position
    }
}

impl Iterator for Schedule {
    type Item = u32;

    /// The source of sample [`Schedule::position`]; `None` only once `u64::MAX` samples are
    /// given.
    fn next(&mut self) -> Option<u32> {
        if self.position == u64::MAX {
            return None;
        }
        let (w, m) = (i128::from(self.total), self.m);
        // Among the eligible sources, the smallest `(m (n_s + 1) - 1) / q_s`. Multiplied by `W`,
        // less `m (k + 1)`, that is `(m (W - e_s) - W) / q_s`, whose numerator stays small.
        // `e_s` is in `(q_s - W, q_s + W)`, so `|m (W - e_s) - W| < (2m + 1) W < 2^75`, and times
        // `q <= 2^32` it fits in 128 bits.
        let mut best: Option<(usize, i128)> = None;
        for &s in &self.active {
            let s = s as usize;
            let e = self.scores[s];
            if m * e < w {
                continue;
            }
            let key = m * (w - e) - w;
            let better = match best {
                None => true,
                Some((b, bkey)) => {
                    key * i128::from(self.weights[b]) < bkey * i128::from(self.weights[s])
                }
            };
            if better {
                best = Some((s, key));
            }
        }
        // The scores add up to `W`, so the largest is at least `W / S >= W / m`: some source is
        // eligible.
        let (s, _) = best.expect("a source with a positive weight is always eligible");
        self.counts[s] += 1;
        self.scores[s] -= w;
        for &a in &self.active {
            self.scores[a as usize] += i128::from(self.weights[a as usize]);
        }
        self.position += 1;
        Some(s as u32)
    }
}

/// What is wrong with the counts of a state.
enum BadCounts {
    Len { counts: usize, sources: usize },
    Sum,
    Source { source: usize, n: u64, k: u64 },
}

impl BadCounts {
    fn describe(&self, sources: Option<&[MixSource]>) -> String {
        match *self {
            BadCounts::Len { counts, sources } => {
                format!("it has counts for {counts} sources, but the mixture has {sources}")
            }
            BadCounts::Sum => "its counts add up past 2^64 - 1".into(),
            BadCounts::Source { source, n, k } => {
                let name = sources
                    .and_then(|all| all.get(source))
                    .map(|x| format!(" ({:?})", x.name))
                    .unwrap_or_default();
                format!(
                    "source {source}{name} has had {n} of {k} samples, farther from its share \
                     than the schedule ever is"
                )
            }
        }
    }
}

/// A mixture's batches on one rank, epoch after epoch: an iterator of batches of
/// `(source, row in source)`.
///
/// `next()` yields the current epoch's batches, then returns `None` once at its end (the state is
/// then `(epoch + 1, 0)`), and called again continues with the next epoch, as the loader's
/// iteration does: `for batch in &mut order` runs one epoch.
#[derive(Clone, Debug)]
pub struct MixOrder {
    spec: MixSpec,
    schedule: Schedule,
    seeds: Vec<u64>,
    batches: u64,
    epoch: u64,
    next_batch: u64,
    /// Just finished an epoch: the next `next()` says so with `None`.
    paused: bool,
    /// Each source's permutation of the source epoch last read, and that epoch.
    perms: Vec<Option<(u64, Vec<u64>)>>,
    /// This rank's `(source, j)` of the batch being made, reused.
    picks: Vec<(u32, u64)>,
}

impl MixOrder {
    /// The spec this order was made from.
    pub fn spec(&self) -> &MixSpec {
        &self.spec
    }

    /// The epoch the order stands in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The global batch `next()` yields this rank's part of.
    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    /// Global batches per epoch ([`MixSpec::batches_per_epoch`]).
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches
    }

    /// Where the order stands: resume from it with [`MixSpec::resume`] (on any rank).
    pub fn state(&self) -> MixState {
        MixState {
            epoch: self.epoch,
            next_batch: self.next_batch,
            counts: self.schedule.counts.clone(),
        }
    }

    /// Row `j mod rows` of source `s`'s epoch `j / rows`.
    fn row(&mut self, s: u32, j: u64) -> Result<u64, MixError> {
        let i = s as usize;
        let source = &self.spec.sources[i];
        // `rows > 0`: only sources with a positive weight get samples, and validation gave them rows.
        let (epoch, at) = (j / source.rows, j % source.rows);
        if source.shuffle == Shuffle::None {
            return Ok(at);
        }
        let cached = matches!(&self.perms[i], Some((e, _)) if *e == epoch);
        if !cached {
            // Free the old permutation before making the next.
            self.perms[i] = None;
            let perm = permutation(source.rows, source.shuffle, self.seeds[i], epoch).map_err(
                |error| MixError::Source {
                    index: i,
                    name: source.name.clone(),
                    error,
                },
            )?;
            self.perms[i] = Some((epoch, perm));
        }
        let (_, perm) = self.perms[i].as_ref().expect("just made");
        Ok(perm[at as usize])
    }

    fn make_batch(&mut self) -> Result<Vec<(u32, u64)>, MixError> {
        let (b, ws, rank) = (self.spec.batch_size, self.spec.world_size, self.spec.rank);
        // The whole global batch must have sample indices; fail before moving if not.
        let k = self.schedule.position;
        if k.checked_add(b * ws).is_none() {
            return Err(MixError::TooManySamples {
                epoch: self.epoch,
                batch: self.next_batch,
            });
        }
        let before = self.schedule.clone();
        self.picks.clear();
        for i in 0..ws {
            for _ in 0..b {
                let s = self
                    .schedule
                    .next()
                    .expect("checked above: the indices fit");
                if i == rank {
                    // The source's `j`: its samples before this one.
                    self.picks.push((s, self.schedule.counts[s as usize] - 1));
                }
            }
        }
        let picks = std::mem::take(&mut self.picks);
        let mut batch = Vec::with_capacity(picks.len());
        for &(s, j) in &picks {
            match self.row(s, j) {
                Ok(row) => batch.push((s, row)),
                Err(e) => {
                    self.schedule = before;
                    self.picks = picks;
                    return Err(e);
                }
            }
        }
        self.picks = picks;
        Ok(batch)
    }
}

impl Iterator for MixOrder {
    type Item = Result<Vec<(u32, u64)>, MixError>;

    /// This rank's part of the next global batch: `batch_size` `(source, row)` pairs; `None` once
    /// at the end of each epoch. An error leaves the state where it was.
    fn next(&mut self) -> Option<Self::Item> {
        if self.paused {
            self.paused = false;
            return None;
        }
        match self.make_batch() {
            Ok(batch) => {
                self.next_batch += 1;
                if self.next_batch == self.batches {
                    // `epoch + 1` fits: the next epoch's first sample is the current position.
                    self.epoch += 1;
                    self.next_batch = 0;
                    self.paused = true;
                }
                Some(Ok(batch))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompose_is_exact_for_normal_and_subnormal_numbers() {
        assert_eq!(decompose(1.0), (1 << 52, -52));
        assert_eq!(decompose(0.75), (3 << 51, -53));
        assert_eq!(decompose(5e-324), (1, -1074));
        assert_eq!(decompose(f64::MAX), ((1 << 53) - 1, 971));
        for w in [1.0, 0.75, 3.0, 5e-324, 1e-310, 1e300, f64::MAX] {
            let (m, x) = decompose(w);
            // In two steps, so that no power of two on the way is out of range.
            let half = x / 2;
            assert_eq!(m as f64 * 2f64.powi(half) * 2f64.powi(x - half), w, "{w}");
            let e = log2_floor((m, x));
            assert!(m as f64 * 2f64.powi(half - e) * 2f64.powi(x - half) < 2.0);
            assert!(m as f64 * 2f64.powi(half - e) * 2f64.powi(x - half) >= 1.0);
        }
        assert_eq!(log2_floor(decompose(0.7)), -1);
        assert_eq!(log2_floor(decompose(8.0)), 3);
        assert_eq!(log2_floor(decompose(5e-324)), -1074);
    }

    #[test]
    fn gcd_of_weights() {
        assert_eq!(gcd(0, 0), 0);
        assert_eq!(gcd(0, 6), 6);
        assert_eq!(gcd(7 << 29, 3 << 29), 1 << 29);
    }

    #[test]
    fn the_largest_integer_weight_may_round_up_to_2_pow_32() {
        let spec = MixSpec::new(
            vec![
                MixSource::new("a", 1, f64::from_bits(0x3FEF_FFFF_FFFF_FFFF)),
                MixSource::new("b", 1, 0.5),
            ],
            1,
        );
        assert_eq!(spec.integer_weights().unwrap(), [1 << 32, 1 << 31]);
    }

    #[test]
    fn a_single_source_gets_every_sample() {
        let mut s = Schedule::new(&[0, 5, 0]).unwrap();
        assert_eq!(s.period(), 1);
        assert!(s.by_ref().take(9).all(|x| x == 1));
        assert_eq!(s.counts(), [0, 9, 0]);
    }

    #[test]
    fn messages_name_the_source_when_they_can() {
        let bad = BadCounts::Source {
            source: 1,
            n: 3,
            k: 4,
        };
        let named = [MixSource::new("a", 1, 1.0), MixSource::new("code", 1, 1.0)];
        assert_eq!(
            bad.describe(Some(&named)),
            "source 1 (\"code\") has had 3 of 4 samples, farther from its share than the \
             schedule ever is"
        );
        assert!(bad.describe(None).starts_with("source 1 has had 3 of 4"));
    }
}
