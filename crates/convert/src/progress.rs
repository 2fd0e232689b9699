//! What a conversion or a dataset write reports as it goes ([`Progress`]).

use crate::plan::{Plan, PlannedTensor};

/// Progress of a conversion, reported as input bytes are consumed. Every method has an empty
/// default; the CLI draws a bar, the Python binding may call back into Python.
pub trait Progress: Sync {
    /// The plan is made: `total_bytes` input bytes will be read.
    fn start(&self, plan: &Plan) {
        let _ = plan;
    }
    /// Besides the plan's input bytes, the write copies `bytes` of rows already in a dataset into
    /// new shards (an append that fills the last shard, a compaction), reported through
    /// [`Progress::advance`] like input bytes. Called at most once, right after `start`.
    fn carried(&self, bytes: u64) {
        let _ = bytes;
    }
    /// Tensor `index` of the plan begins.
    fn tensor(&self, index: usize, tensor: &PlannedTensor) {
        let _ = (index, tensor);
    }
    /// `bytes` more input bytes were converted and written.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
    /// Every tensor is written; the store is being made durable.
    fn finish(&self) {}
}

/// A [`Progress`] that reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
