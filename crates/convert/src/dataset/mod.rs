//! Sharded datasets: a folder of `.mmt` shards and a manifest (`docs/FORMAT.md`, "Dataset
//! manifest"), written by [`convert_dataset`] (`create.rs`), extended by [`append()`]
//! (`append.rs`), rewritten in place by [`compact()`] (`compact.rs`) and cleaned by [`prune()`]
//! (`prune.rs`).
//!
//! Every planned tensor is a *column*; all columns share their first dimension, and shards are cut
//! at row boundaries of all of them together (`cut.rs`). Every write but `prune` goes through one
//! pipeline (`write.rs`: each column streamed by its own reader thread, each shard through its own
//! `StoreWriter`) under names no manifest of the folder has listed (`names.rs`), holds the folder's
//! lock (`lock.rs`), and replaces the manifest last, atomically (`manifest.rs`).

mod append;
mod compact;
mod create;
mod cut;
mod lock;
mod manifest;
mod names;
mod parts;
mod prune;
mod shard;
mod sink;
mod write;
mod writer;

pub use append::{append, append_with, Fill};
pub use compact::compact;
pub use create::convert_dataset;
pub use cut::MAX_COLUMNS;
pub(crate) use manifest::read_manifest;
pub use manifest::write_manifest;
pub use parts::commit;
pub use prune::{prune, Pruned};
pub use write::DatasetSummary;
pub(crate) use writer::schema_difference;
pub use writer::{ColumnBatch, DatasetWriter, DEFAULT_SHARD_SIZE};
