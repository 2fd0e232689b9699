//! A gate between a loader's order and its gather, for data that is not all local yet: before a
//! batch is gathered, its gate makes the batch's rows readable (a dataset streamed from object
//! storage fetches and verifies their bytes), and keeps them so until the gather is done.
//!
//! A loader without a gate reads its mapping directly. `mmtensor-remote` implements the trait for
//! a streamed dataset, whose shards are mapped from sparse local files that hold only the parts
//! fetched so far: its gate knows the whole epoch's order when the pass starts, so it fetches
//! ahead in that order and evicts what no remaining batch needs.

use std::sync::Arc;

use crate::order::EpochOrder;

/// Why a gate could not make a batch readable.
pub type GateError = Box<dyn std::error::Error + Send + Sync>;

/// What a loader asks before it gathers: see the [module](self) docs.
pub trait Gate: Send + Sync {
    /// A pass over `order`'s batches from `first` on begins (a new stream of the loader). The
    /// pass sees every batch's rows (`order.batch(i)`, dataset rows) before any is read.
    ///
    /// # Errors
    ///
    /// Whatever stops the pass from starting (the gate's own resources).
    fn start(&self, order: Arc<EpochOrder>, first: usize) -> Result<Box<dyn GatePass>, GateError>;
}

/// One pass of a [`Gate`] over an epoch's batches, driven by the thread that gathers them, in
/// order: `ready(i)`, the gather of batch `i`, `done(i)`, then batch `i + 1`.
pub trait GatePass: Send + Sync {
    /// Blocks until every byte of batch `batch`'s rows is readable and verified, and keeps it so
    /// until [`GatePass::done`] of the same batch.
    ///
    /// # Errors
    ///
    /// Why the rows cannot be had (a failed download, after retries); the loader reports it as
    /// [`Error::Gate`](crate::Error::Gate) and ends the stream.
    fn ready(&mut self, batch: usize) -> Result<(), GateError>;

    /// Batch `batch` has been gathered: its rows may be evicted when nothing after needs them.
    fn done(&mut self, batch: usize);
}
