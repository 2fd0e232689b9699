//! Open `.mmt` tensor stores (and `.safetensors` and `.npy` files) by memory mapping, and get typed,
//! borrowed, zero-copy views of their tensors.
//!
//! Opening a store maps the file and validates its header; it reads no tensor bytes, so it costs
//! the same for a kilobyte as for a terabyte. A [`Tensor`] is a view: its slices point into the
//! mapping, the kernel reads pages when they are first touched, and processes that map the same file
//! share the same page-cache pages.
//!
//! ```
//! use mmtensor::{Advice, Store};
//!
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
//! // SAFETY: nothing modifies or truncates the file while it is open (see `Store`'s Safety section).
//! let store = unsafe { Store::open(path)? };
//! let x = store.tensor("x")?;                 // F32 [256, 8]: dtype, shape, byte range
//! let xs: &[f32] = x.as_slice()?;             // borrowed from the mapping, no copy
//! let batch = x.rows(64..128)?;               // rows along axis 0, no copy
//! assert_eq!(batch.shape(), [64, 8]);
//! assert_eq!(batch.as_slice::<f32>()?, &xs[64 * 8..128 * 8]);
//! assert!(x.as_slice::<f64>().is_err());      // the wrong type is an error naming both types
//! let shuffled = x.take::<f32>(&[200, 3, 4])?; // rows gathered in parallel, in file order
//! assert_eq!(shuffled[8..16], xs[3 * 8..4 * 8]);
//!
//! batch.advise(Advice::Sequential)?;          // access hints, and a background prefetch
//! batch.prefetch().wait()?;
//! store.verify()?;                            // block checksums, in parallel
//! # Ok::<(), mmtensor::Error>(())
//! ```
//!
//! The same calls open a `.safetensors` or `.npy` file (the format is detected from the first
//! bytes). Their views are zero-copy wherever the data is aligned for its type; where it is not,
//! [`Tensor::as_slice`] says so and [`Tensor::to_vec`] copies. Big-endian and Fortran-order `.npy`
//! arrays have no views: `mmt convert` turns them into `.mmt` stores.
//!
//! # Safety of mappings
//!
//! [`Store::open`] is `unsafe`: a mapped file that another process modifies or truncates changes
//! under Rust's borrows or raises `SIGBUS`. Its caller promises that this does not happen while the
//! store lives; [`Store::read`] is the safe, copying alternative. See [`Store`]'s Safety section.
//!
//! # Reopening a store in another process
//!
//! [`Store::fingerprint`] identifies the file a store was opened from and the version opened (format,
//! length, header hash, inode number, modification time). A process handed the path and the
//! fingerprint reopens it with [`Store::open_expecting`] or [`Store::read_expecting`], which refuse
//! a file replaced, rewritten or truncated since ([`Error::Changed`]); [`Fingerprint`] says what
//! that detects and what it cannot. The Python binding pickles stores into DataLoader workers this
//! way.
//!
//! # Sharded datasets
//!
//! [`Dataset::open`] opens a folder of `.mmt` shards and their manifest (written by
//! `mmt convert --shard-size` and `mmt append`) as [`Column`]s whose rows are the rows of every
//! shard, one index space: [`Column::take_into`] gathers rows from any shards,
//! [`Column::rows`] gives a row range as zero-copy pieces, one per shard.
//!
//! # Casting as rows are gathered
//!
//! [`Tensor::take_into_as`], [`Column::take_into_as`] and [`LoaderOptions::dtypes`] cast rows to
//! another dtype while the gather copies them (`U16` token ids to `I64`, `BF16` to `F32`): the
//! casts that cannot fail on any value, from the one table [`Cast::new`].
//!
//! # Training order
//!
//! [`order`] decides which rows go into which batch on which rank for the training loader:
//! unshuffled, fully shuffled or block-shuffled epochs, split across ranks as PyTorch's
//! `DistributedSampler` does, resumable mid-epoch. `docs/LOADER.md` specifies it bit for bit.
//! [`mix`] does the same for a weighted mixture of several sources: which sample of which source
//! goes into which batch, each source within one sample of its share at every point.
//!
//! # Cargo features
//!
//! - `ndarray` (off by default): [`Tensor::to_ndarray`], a borrowed `ndarray::ArrayViewD`.
#![deny(missing_docs)]

mod dataset;
mod element;
mod error;
mod file;
mod fingerprint;
pub mod forks;
mod format;
mod hints;
mod index;
pub mod interop;
pub mod loader;
mod machine;
pub mod mix;
pub mod order;
mod owned;
pub mod pool;
mod ragged;
mod store;
mod take;
mod tensor;
mod verify;

pub use dataset::{Column, Dataset};
pub use element::{Element, F8E4M3, F8E5M2};
pub use error::{Error, Result};
pub use fingerprint::{FileStamp, Fingerprint};
pub use format::Format;
#[doc(hidden)]
pub use hints::live_prefetch_workers;
pub use hints::{Advice, Prefetch};
pub use loader::{Batch, Loader, LoaderColumn, LoaderOptions, LoaderState, RankSplit};
pub use loader::{Gate, GateError, GatePass};
pub use loader::{MixData, MixInput, Mixture};
pub use mmtensor_format::{Cast, CastKind, Dtype};
pub use owned::{OwnedTensor, PrivateBytes};
pub use ragged::{Pad, PaddedBatch, RaggedBatch, RaggedColumn};
pub use store::Store;
pub use tensor::Tensor;

pub use half::{bf16, f16};
pub use num_complex::Complex;
