//! The `.mmt` tensor store format as types.
//!
//! An `.mmt` file is a 32-byte [`Preamble`], a JSON [`Header`] and a data section in which every
//! tensor starts at a multiple of the store's alignment, followed by a table of xxh3-64 block
//! checksums. `docs/FORMAT.md` in the repository is the byte-exact spec; this crate is its
//! executable form.
//!
//! This crate parses, validates and encodes bytes. It never opens a file and never maps memory:
//! the loader (`mmtensor`) and the writer (`mmtensor-convert`) do the I/O and share this crate's
//! single validation path.
//!
//! ```
//! use mmtensor_format::{block_checksums, encode_checksum_table, Dtype, FileLayout, LayoutBuilder};
//!
//! // Plan a store with one 3x2 f32 tensor.
//! let mut b = LayoutBuilder::new();
//! b.alignment(64)?;
//! b.tensor("x", Dtype::F32, &[3, 2])?;
//! let layout = b.build()?;
//!
//! // Lay the bytes out as a writer would.
//! let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
//! let table = encode_checksum_table(&block_checksums(&data, layout.header().block_size.get()));
//! let mut file = layout.encode_head(mmtensor_format::block_checksum(&table));
//! file.resize(layout.data_start() as usize, 0);
//! file.extend_from_slice(&data);
//! file.resize(layout.checksum_table_start() as usize, 0);
//! file.extend_from_slice(&table);
//!
//! // Read it back: every offset is validated against the file's length.
//! let parsed = FileLayout::parse(&file, file.len() as u64)?;
//! let x = parsed.tensor("x").unwrap();
//! assert_eq!(x.shape, [3, 2]);
//! assert_eq!(&file[parsed.tensor_range(x).start as usize..][..24], &data[..]);
//! # Ok::<(), mmtensor_format::Error>(())
//! ```
//!
//! [`Cast`] is the one table of casts between dtypes, with the kernel that converts little-endian
//! elements (pure functions on bytes, as everything here).
//!
//! Cargo features: none.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cast;
mod checksum;
mod dtype;
mod error;
mod file_layout;
mod foreign;
mod header;
mod json;
mod layout;
mod manifest;
pub mod megatron;
pub mod npy;
mod preamble;
mod rules;
mod sizes;
mod units;

pub use cast::{Cast, CastKind};
pub use checksum::{block_checksum, block_checksums, block_count, blocks_covering, BlockHasher};
pub use dtype::Dtype;
pub use error::{Error, Result};
pub use file_layout::FileLayout;
pub use foreign::looks_like;
pub use header::{check_offsets, ChecksumTable, Header, TensorInfo};
pub use layout::{
    decode_checksum_table, encode_checksum_table, offsets_name, Layout, LayoutBuilder,
};
pub use manifest::{
    check_shard_name, ColumnSpec, Manifest, Shard, KNOWN_MANIFEST_REQUIRED_FLAGS, MANIFEST_FILE,
    MANIFEST_FLAG_RAGGED, MANIFEST_MAGIC, MANIFEST_PREAMBLE_LEN, MANIFEST_VERSION_MAJOR,
    MANIFEST_VERSION_MINOR, MAX_MANIFEST_BODY_LEN, MAX_SHARD_NAME_LEN,
};
pub use preamble::{
    Preamble, KNOWN_REQUIRED_FLAGS, MAGIC, MAX_HEADER_LEN, PREAMBLE_LEN, REQUIRED_FLAGS_MASK,
    VERSION_MAJOR, VERSION_MINOR,
};
pub use rules::{
    check_metadata_key, check_name, checked_byte_len, MAX_NAME_LEN, MAX_RANK, RESERVED_KEY_PREFIX,
};
pub use sizes::{
    align_up, Alignment, BlockSize, DEFAULT_ALIGNMENT, DEFAULT_BLOCK_SIZE, MAX_ALIGNMENT,
    MAX_BLOCK_SIZE, MIN_ALIGNMENT, MIN_BLOCK_SIZE,
};
pub use units::{format_size, parse_size, SizeError};
