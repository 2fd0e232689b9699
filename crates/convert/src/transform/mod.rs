//! The byte-level transforms: byte swapping (`swap.rs`), dtype casts (`cast.rs`) and the
//! Fortran-to-C reorder (`fortran.rs`).
//!
//! Which casts exist and the kernel that makes them are the format crate's
//! ([`mmtensor_format::Cast`], shared with the loader's gather); this module decides which of them
//! the converter makes ([`cast_supported`]) and runs the kernel in parallel (`parallel.rs`).
//!
//! Every function here works on little-endian byte slices whose length is a whole number of
//! elements; none allocates in proportion to a tensor (the transpose's buffer is the caller's).

mod cast;
mod fortran;
mod parallel;
mod swap;

pub use cast::{cast, cast_supported, is_real_float, OutOfRange};
pub use fortran::{fortran_is_c, transpose_tiles, FortranToC, ReadAt};
pub use swap::{swap_bytes, swap_unit};

#[cfg(test)]
mod tests {
    use super::*;
    use mmtensor_format::Dtype;

    #[test]
    fn widening_is_exact_and_swap_reverses_components() {
        let src: Vec<u8> = [-5i16, 7, i16::MIN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut out = vec![0u8; 24];
        cast(&src, Dtype::I16, &mut out, Dtype::I64).unwrap();
        let back: Vec<i64> = out
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(back, [-5, 7, i64::from(i16::MIN)]);
        let mut c = vec![1, 2, 3, 4, 5, 6, 7, 8];
        swap_bytes(&mut c, swap_unit(Dtype::C64));
        assert_eq!(c, [4, 3, 2, 1, 8, 7, 6, 5]);
        assert!(fortran_is_c(&[1, 5, 1]));
        assert!(!fortran_is_c(&[2, 5]));
        assert!(!cast_supported(Dtype::F32, Dtype::I32));
        assert!(cast_supported(Dtype::C128, Dtype::C64));
    }
}
