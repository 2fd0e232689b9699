//! Byte swapping: big-endian inputs to the little-endian bytes a store holds.

use mmtensor_format::Dtype;
use rayon::prelude::*;

use crate::transform::parallel::PAR_ELEMS;

/// Reverses the bytes of every `component`-byte unit of `bytes` (big-endian to little-endian).
///
/// Complex numbers swap each component, so `component` is the dtype's size for real types and half
/// of it for complex types (see [`swap_unit`]).
pub fn swap_bytes(bytes: &mut [u8], component: usize) {
    fn go<const N: usize>(bytes: &mut [u8]) {
        // In the loader's fork-safe pool, as every kernel here (see `parallel.rs`).
        #[allow(clippy::disallowed_methods)] // Inside `pool::install`.
        mmtensor::pool::install(|| {
            bytes
                .par_chunks_mut(N * PAR_ELEMS)
                .for_each(|part| part.chunks_exact_mut(N).for_each(|e| e.reverse()))
        });
    }
    match component {
        2 => go::<2>(bytes),
        4 => go::<4>(bytes),
        8 => go::<8>(bytes),
        16 => go::<16>(bytes),
        _ => {}
    }
}

/// The unit whose bytes a byte-order change reverses: the element, or one component of a complex.
pub fn swap_unit(dtype: Dtype) -> usize {
    if dtype.is_complex() {
        dtype.size() / 2
    } else {
        dtype.size()
    }
}
