//! Token streams in and out: a Megatron-LM / NeMo indexed dataset (`PREFIX.bin` + `PREFIX.idx`)
//! or a flat token file (nanoGPT's raw `.bin`, or a 1-D `.npy`) into a dataset with one ragged
//! column `tokens` (a row per document), and a ragged column back out as an indexed dataset.
//!
//! Both directions stream: tokens are read and written in batches of whole rows of about
//! [`BATCH_BYTES`], through the one [`DatasetWriter`](crate::DatasetWriter); memory stays at a
//! batch (or the longest document, when one is longer) plus the index.

mod export;
mod import;

pub use export::{export_megatron, MegatronExport};
pub use import::{append_tokens, import_tokens, TokenSource, DEFAULT_ROW_TOKENS};

/// Bytes of tokens read and written at a time.
pub const BATCH_BYTES: usize = 512 << 10;

/// The name of the ragged column an import writes.
pub const TOKENS_COLUMN: &str = "tokens";

/// The name of the column that records each sequence's document when a Megatron index groups
/// several sequences into one document.
pub const DOCUMENT_COLUMN: &str = "document";
