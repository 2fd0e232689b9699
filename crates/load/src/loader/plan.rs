//! How an epoch is read from disk: chosen when its stream starts, from the epoch's order, the
//! device's read-ahead, the memory available and how much of the columns is already in memory.
//!
//! Three ways, and the rule between them ([`choose`]):
//!
//! - **Sweep**: when more than a tenth of the columns is not in memory, what is missing fits
//!   comfortably in the memory available (at most half of `MemAvailable`, or of the room a memory
//!   cgroup's limit leaves, when less: a sweep beyond it would be evicted before it is used), and
//!   the epoch reads at least half of the columns' rows, a sweep thread reads the columns' rows in
//!   order, a stretch of rows (every column's bytes for it) at a time, and maps them into the
//!   process (`MADV_POPULATE_READ`) as they arrive ([`super::sweep`]). A batch is gathered once the sweep
//!   has passed every row it reads: an epoch in order right behind the sweep, a shuffled one
//!   (whose rows lie all over the columns) at about its end, rather than fault its rows in one
//!   page at a time against the sweep's long reads. Either way the epoch costs one sequential
//!   read of the columns, on any read-ahead, and no batch is advised on its own.
//! - **Random**: a full shuffle over more than fits, on a device whose read-around is larger than
//!   a row: `MADV_RANDOM` (a fault reads its page, not the read-around window no batch soon
//!   wants), and the next batch's rows asked for with `MADV_WILLNEED` ([`super::readahead`]).
//! - **Around**: everything else: columns already in memory (at least nine tenths: the gathers'
//!   faults then only map pages, several at a time, which `MADV_RANDOM` would stop), a block
//!   shuffle or an epoch in order over more than fits, or rows at least as large as the
//!   read-around: the kernel's read-around, and the next batch's rows or blocks asked for with
//!   `MADV_WILLNEED`.
//!
//! A batch whose sampled rows are found in memory is never advised ([`super::readahead`]), so an
//! epoch that becomes warm stops advising; each epoch's stream chooses again. Advice only decides
//! what the kernel reads early, never what is read.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::column::Shared;
use super::sweep::{self, Progress, Sweep};
use crate::file::OpenFile;
use crate::hints::Advice;
use crate::machine;
use crate::order::{EpochOrder, Shuffle};

/// Pages sampled (with `mincore`) to estimate how much of the columns is in memory: spread over
/// their tensors, at least one each.
const RESIDENCY_SAMPLES: u64 = 256;

/// How one epoch is read; see the [module](self) docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    Sweep,
    Random,
    Around,
}

/// What [`choose`] decides from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Facts {
    /// A full shuffle: rows all over the columns, batch after batch.
    pub(super) full_shuffle: bool,
    /// The share of the columns' rows this epoch reads on this rank (1 for one rank).
    pub(super) touched: f64,
    /// Bytes of the columns (every tensor they read from).
    pub(super) span: u64,
    /// Of them, the bytes estimated to be in memory already.
    pub(super) resident: u64,
    /// `MemAvailable`, or the room the process's memory cgroup leaves when less, when known.
    pub(super) memory: Option<u64>,
    /// The device's read-around, when the kernel says.
    pub(super) read_ahead: Option<u64>,
    /// Bytes of the smallest stored row among the columns.
    pub(super) row_bytes: u64,
}

/// The rule; see the [module](self) docs.
pub(super) fn choose(f: &Facts) -> Plan {
    let missing = f.span.saturating_sub(f.resident);
    let fits = f.memory.is_some_and(|m| missing <= m / 2);
    if missing <= f.span / 10 {
        // Warm: nothing to read. The gathers fault the pages in themselves, side by side, each
        // fault mapping its neighbours too (fault-around, which `MADV_RANDOM` would switch off).
        Plan::Around
    } else if fits && f.touched >= 0.5 {
        Plan::Sweep
    } else if f.full_shuffle && f.read_ahead.is_none_or(|ra| ra > f.row_bytes) {
        Plan::Random
    } else {
        Plan::Around
    }
}

/// The advice in force for a loader's columns, shared by its streams: streams overlap (an
/// epoch's stream, another started for evaluation), and the advice must not be undone by the
/// first to end.
#[derive(Default)]
pub(super) struct Advised {
    /// Streams that want `MADV_RANDOM`: set when the first starts, `MADV_NORMAL` restored when the
    /// last ends.
    random: usize,
    /// The sweep running for the columns, and the streams using it: stopped when the last ends.
    sweep: Option<SharedSweep>,
}

/// A sweep, and the streams using it.
struct SharedSweep {
    /// The process whose thread sweeps ([`crate::forks::generation`]): a child forked while it
    /// ran inherits this record, not the thread, and must start its own rather than wait for one
    /// that never moves.
    process: u64,
    streams: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

/// What a stream holds of the advice, to give back when it ends ([`end`]).
pub(super) struct Hold {
    plan: Option<Plan>,
    /// The sweep the stream uses: a batch is gathered once it has passed every row the batch reads.
    sweep: Option<Arc<Progress>>,
}

impl Hold {
    /// The progress of the sweep the stream's gathers wait for.
    pub(super) fn sweep(&self) -> Option<Arc<Progress>> {
        self.sweep.clone()
    }
}

/// Chooses how the stream of `order` (from batch `first`) reads `shared`'s columns, and puts it
/// in force. A stream whose rows a gate makes readable (data that is not all local) is left to
/// the gate: its files are fetched part by part, and reading ahead would read holes.
pub(super) fn begin(shared: &Arc<Shared>, order: &EpochOrder, first: usize, gated: bool) -> Hold {
    if gated {
        return Hold {
            plan: None,
            sweep: None,
        };
    }
    let facts = facts(shared, order, first);
    let mut plan = choose(&facts);
    let mut advised = shared.advice.lock().unwrap_or_else(|e| e.into_inner());
    let mut sweep = None;
    if plan == Plan::Sweep {
        // Join the sweep running for these columns, or start one. One that has ended (its
        // columns read, or stopped on an error), or whose thread is another process's (this
        // one was forked while it ran), is not joined: it would read nothing more.
        let me = crate::forks::generation();
        let running = advised
            .sweep
            .as_mut()
            .filter(|s| s.process == me && !s.progress.ended());
        sweep = match running {
            Some(s) => {
                s.streams += 1;
                Some(Arc::clone(&s.progress))
            }
            None => sweep::start(Arc::clone(shared), order.spec().num_rows, facts.read_ahead)
                .ok()
                .map(|Sweep { stop, progress }| {
                    if let Some(old) = advised.sweep.take() {
                        old.stop.store(true, Ordering::Release);
                    }
                    advised.sweep = Some(SharedSweep {
                        process: me,
                        streams: 1,
                        stop,
                        progress: Arc::clone(&progress),
                    });
                    progress
                }),
        };
        // A sweep thread that cannot start leaves the epoch to the gathers' own reads, advised
        // as when the columns do not fit.
        if sweep.is_none() {
            plan = if order.spec().shuffle == Shuffle::Full {
                Plan::Random
            } else {
                Plan::Around
            };
        }
    }
    if plan == Plan::Random {
        if advised.random == 0 {
            advise_columns(shared, Advice::Random);
        }
        advised.random += 1;
    }
    Hold {
        plan: Some(plan),
        sweep,
    }
}

/// Gives back what `hold` took: the last stream wanting `MADV_RANDOM` restores `MADV_NORMAL`,
/// and the last stream using a sweep stops it.
pub(super) fn end(shared: &Shared, hold: &mut Hold) {
    let Some(plan) = hold.plan.take() else {
        return;
    };
    let mut advised = shared.advice.lock().unwrap_or_else(|e| e.into_inner());
    if plan == Plan::Random {
        advised.random = advised.random.saturating_sub(1);
        if advised.random == 0 {
            advise_columns(shared, Advice::Normal);
        }
    }
    // Only the sweep this stream joined: another may have replaced it since.
    let Some(mine) = hold.sweep.take() else {
        return;
    };
    if let Some(s) = advised
        .sweep
        .as_mut()
        .filter(|s| Arc::ptr_eq(&s.progress, &mine))
    {
        s.streams = s.streams.saturating_sub(1);
        if s.streams == 0 {
            s.stop.store(true, Ordering::Release);
            advised.sweep = None;
        }
    }
}

/// Every mapped byte range the columns read from: each tensor's bytes in its file.
fn spans(shared: &Shared) -> Vec<(Arc<OpenFile>, Range<u64>)> {
    let mut out: Vec<(Arc<OpenFile>, Range<u64>)> = Vec::new();
    for t in shared.columns.iter().flat_map(|c| c.source.tensors()) {
        let file = t.store().file();
        if file.is_mapped() && !t.byte_range().is_empty() {
            out.push((Arc::clone(file), t.byte_range()));
        }
    }
    out
}

/// The facts of the stream of `order` from batch `first` over `shared`'s columns.
fn facts(shared: &Shared, order: &EpochOrder, first: usize) -> Facts {
    let spans = spans(shared);
    let spec = order.spec();
    // The rows this stream reads: from its first batch to the epoch's end.
    let batches = order.len().saturating_sub(first) as u64;
    let rows = batches.saturating_mul(spec.batch_size);
    let touched = if spec.num_rows == 0 {
        1.0
    } else {
        (rows as f64 / spec.num_rows as f64).min(1.0)
    };
    let span = spans.iter().map(|(_, r)| r.end - r.start).sum();
    // At most RESIDENCY_SAMPLES pages in all: a dataset of thousands of shards is sampled
    // thinly rather than with a system call per page of every shard.
    let per_span = (RESIDENCY_SAMPLES / spans.len().max(1) as u64).max(1);
    let resident = spans
        .iter()
        .map(|(f, r)| resident_bytes(f, r, per_span))
        .sum();
    Facts {
        full_shuffle: spec.shuffle == Shuffle::Full,
        touched,
        span,
        resident,
        memory: machine::memory_available(),
        read_ahead: spans
            .first()
            .and_then(|(f, _)| f.device())
            .map(|d| d.read_ahead),
        row_bytes: shared
            .columns
            .iter()
            .map(|c| c.row_bytes as u64)
            .min()
            .unwrap_or(0),
    }
}

/// The bytes of `range` of `file` estimated to be in memory, from `samples` pages spread over it.
fn resident_bytes(file: &OpenFile, range: &Range<u64>, samples: u64) -> u64 {
    let len = range.end - range.start;
    let n = samples.min(len.div_ceil(4096)).max(1);
    let hits = (0..n)
        .filter(|i| file.resident(range.start + i * len / n) == Some(true))
        .count() as u64;
    len / n * hits
}

/// Passes `advice` for every tensor the columns read from. Advice is only a hint: a failure changes
/// nothing that is read.
fn advise_columns(shared: &Shared, advice: Advice) {
    for t in shared.columns.iter().flat_map(|c| c.source.tensors()) {
        let _ = t.advise(advice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn facts() -> Facts {
        Facts {
            full_shuffle: true,
            touched: 1.0,
            span: GIB,
            resident: 0,
            memory: Some(20 * GIB),
            read_ahead: Some(128 << 10),
            row_bytes: 4096,
        }
    }

    #[test]
    fn columns_in_memory_are_left_to_the_gathers_faults() {
        let warm = Facts {
            resident: GIB - GIB / 10,
            ..facts()
        };
        assert_eq!(choose(&warm), Plan::Around);
        let big_and_warm = Facts {
            span: 64 * GIB,
            resident: 64 * GIB,
            ..facts()
        };
        assert_eq!(choose(&big_and_warm), Plan::Around);
        let partly = Facts {
            resident: GIB / 2,
            ..facts()
        };
        assert_eq!(choose(&partly), Plan::Sweep);
    }

    #[test]
    fn an_epoch_that_fits_is_swept_whatever_its_order_and_read_ahead() {
        for full_shuffle in [true, false] {
            for read_ahead in [Some(128 << 10), Some(8 << 20), Some(4096), None] {
                let f = Facts {
                    full_shuffle,
                    read_ahead,
                    ..facts()
                };
                assert_eq!(choose(&f), Plan::Sweep, "{f:?}");
            }
        }
        // Half the memory available is the limit, counting only what is not in memory yet.
        let big = Facts {
            span: 30 * GIB,
            resident: 20 * GIB,
            ..facts()
        };
        assert_eq!(choose(&big), Plan::Sweep);
        let f = Facts {
            span: 11 * GIB,
            ..facts()
        };
        assert_eq!(choose(&f), Plan::Random);
    }

    #[test]
    fn a_full_shuffle_over_more_than_fits_reads_single_pages_unless_rows_outsize_read_around() {
        let big = Facts {
            span: 64 * GIB,
            ..facts()
        };
        assert_eq!(choose(&big), Plan::Random);
        let unknown = Facts {
            memory: None,
            read_ahead: None,
            ..facts()
        };
        assert_eq!(choose(&unknown), Plan::Random);
        let wide_rows = Facts {
            row_bytes: 1 << 20,
            ..big
        };
        assert_eq!(choose(&wide_rows), Plan::Around);
        let in_order = Facts {
            full_shuffle: false,
            ..big
        };
        assert_eq!(choose(&in_order), Plan::Around);
    }

    #[test]
    fn a_rank_reading_a_small_share_is_not_swept() {
        let f = Facts {
            touched: 0.25,
            ..facts()
        };
        assert_eq!(choose(&f), Plan::Random);
        let f = Facts {
            touched: 0.5,
            ..facts()
        };
        assert_eq!(choose(&f), Plan::Sweep);
    }
}
