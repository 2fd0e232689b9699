//! Repack NumPy and safetensors data once into aligned `.mmt` stores.
//!
//! This crate holds the streaming, atomic [`StoreWriter`]: plan a store with
//! [`mmtensor_format::LayoutBuilder`], then feed each tensor's bytes in chunks of any size.
//! Block checksums are computed as the bytes pass, and the target appears only once complete.
//!
//! Cargo features: none.
#![deny(missing_docs)]

mod error;
pub mod sample;
mod writer;

pub use error::{Error, Result};
pub use writer::StoreWriter;
