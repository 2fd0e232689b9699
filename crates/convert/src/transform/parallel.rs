//! How the element-wise kernels (byte swap, casts) split a chunk across cores: pieces of
//! [`PAR_ELEMS`] elements, run in the loader's fork-safe pool (`mmtensor::pool::install`), never in
//! rayon's global one, which a forked child inherits without its threads.

/// Elements handed to one rayon task: large enough that scheduling costs nothing, small enough
/// that an 8 MiB chunk still splits across cores.
pub(super) const PAR_ELEMS: usize = 64 * 1024;
