//! Rust element types that typed views hand out, and which dtypes each one views.

use bytemuck::{Pod, PodCastError, Zeroable};
use half::{bf16, f16};
use mmtensor_format::Dtype;
use num_complex::Complex;

/// An 8-bit float in the OCP FP8 E4M3 ("fn") encoding, kept as its raw byte.
///
/// Rust has no fp8 arithmetic type, so views of `F8_E4M3` tensors hand out this wrapper: the dtype is
/// in the type, the bits are in `.0`, and no conversion is done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(transparent)]
pub struct F8E4M3(pub u8);

/// An 8-bit float in the OCP FP8 E5M2 encoding, kept as its raw byte (see [`F8E4M3`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(transparent)]
pub struct F8E5M2(pub u8);

/// A type that typed views ([`crate::Tensor::as_slice`], [`crate::Tensor::to_vec`]) can hand out.
///
/// | dtype      | element types                                   |
/// |------------|-------------------------------------------------|
/// | `BOOL`     | `bool` (every byte is checked to be 0 or 1)     |
/// | `U8`..`U64`, `I8`..`I64` | `u8`..`u64`, `i8`..`i64`          |
/// | `F16`, `BF16` | [`half::f16`], [`half::bf16`]                |
/// | `F32`, `F64` | `f32`, `f64`                                  |
/// | `C64`      | [`num_complex::Complex<f32>`] or `[f32; 2]` (real, imaginary) |
/// | `C128`     | [`num_complex::Complex<f64>`] or `[f64; 2]`    |
/// | `F8_E4M3`, `F8_E5M2` | [`F8E4M3`], [`F8E5M2`] (raw bytes)   |
///
/// Raw bytes of any tensor come from [`crate::Tensor::bytes`]. The trait is sealed: the set of types
/// is the format's set of dtypes.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {}

/// Why a typed view of valid-length bytes failed.
pub enum ViewError {
    /// The first byte is not aligned for the type.
    Unaligned,
    /// Byte `index` of a `BOOL` tensor is `value`, not 0 or 1.
    NotBool { index: usize, value: u8 },
}

pub(crate) mod sealed {
    use super::ViewError;
    use mmtensor_format::Dtype;

    pub trait Sealed: Sized {
        /// The type's name in error messages.
        const NAME: &'static str;
        /// The one dtype this type views.
        const DTYPE: Dtype;
        /// Borrows `bytes` (a whole number of elements) as elements.
        fn view(bytes: &[u8]) -> Result<&[Self], ViewError>;
        /// Copies `bytes` (a whole number of elements, any alignment) into elements.
        fn copy(bytes: &[u8]) -> Result<Vec<Self>, ViewError>;
        /// `len` zeroed elements, then `fill`ed through their bytes (for gathers that write
        /// straight into the result); `None` for `bool`, which has no writable byte view.
        fn filled(
            len: usize,
            fill: &mut dyn FnMut(&mut [u8]) -> crate::Result<()>,
        ) -> Option<crate::Result<Vec<Self>>>;
    }
}

macro_rules! pod_elements {
    ($($ty:ty => $dtype:ident, $name:literal;)*) => {$(
        impl sealed::Sealed for $ty {
            const NAME: &'static str = $name;
            const DTYPE: Dtype = Dtype::$dtype;
            fn view(bytes: &[u8]) -> Result<&[Self], ViewError> {
                pod_view(bytes)
            }
            fn copy(bytes: &[u8]) -> Result<Vec<Self>, ViewError> {
                Ok(bytemuck::pod_collect_to_vec(bytes))
            }
            fn filled(
                len: usize,
                fill: &mut dyn FnMut(&mut [u8]) -> crate::Result<()>,
            ) -> Option<crate::Result<Vec<Self>>> {
                let mut v = vec![<Self as Zeroable>::zeroed(); len];
                Some(fill(bytemuck::cast_slice_mut(&mut v)).map(|()| v))
            }
        }
        impl Element for $ty {}
    )*};
}

pod_elements! {
    u8 => U8, "u8";
    u16 => U16, "u16";
    u32 => U32, "u32";
    u64 => U64, "u64";
    i8 => I8, "i8";
    i16 => I16, "i16";
    i32 => I32, "i32";
    i64 => I64, "i64";
    f16 => F16, "half::f16";
    bf16 => BF16, "half::bf16";
    f32 => F32, "f32";
    f64 => F64, "f64";
    Complex<f32> => C64, "Complex<f32>";
    [f32; 2] => C64, "[f32; 2]";
    Complex<f64> => C128, "Complex<f64>";
    [f64; 2] => C128, "[f64; 2]";
    F8E4M3 => F8E4M3, "mmtensor::F8E4M3";
    F8E5M2 => F8E5M2, "mmtensor::F8E5M2";
}

fn pod_view<T: Pod>(bytes: &[u8]) -> Result<&[T], ViewError> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(v) => Ok(v),
        Err(PodCastError::TargetAlignmentGreaterAndInputNotAligned) => Err(ViewError::Unaligned),
        // Views are always a whole number of elements of a type whose size is the dtype's size
        // (the unit tests check every pair), so no other cast error can happen.
        Err(_) => Err(ViewError::Unaligned),
    }
}

impl sealed::Sealed for bool {
    const NAME: &'static str = "bool";
    const DTYPE: Dtype = Dtype::Bool;
    fn view(bytes: &[u8]) -> Result<&[Self], ViewError> {
        // The checked cast validates every byte; on failure, find the first bad one to report it.
        bytemuck::checked::try_cast_slice(bytes).map_err(|_| first_non_bool(bytes))
    }
    fn copy(bytes: &[u8]) -> Result<Vec<Self>, ViewError> {
        Self::view(bytes).map(<[bool]>::to_vec)
    }
    fn filled(
        _: usize,
        _: &mut dyn FnMut(&mut [u8]) -> crate::Result<()>,
    ) -> Option<crate::Result<Vec<Self>>> {
        None
    }
}
impl Element for bool {}

fn first_non_bool(bytes: &[u8]) -> ViewError {
    let (index, &value) = bytes
        .iter()
        .enumerate()
        .find(|(_, &b)| b > 1)
        .unwrap_or((0, &0));
    ViewError::NotBool { index, value }
}

/// The Rust type that views `dtype`, for error messages.
pub(crate) fn rust_type(dtype: Dtype) -> &'static str {
    use sealed::Sealed;
    match dtype {
        Dtype::Bool => bool::NAME,
        Dtype::U8 => u8::NAME,
        Dtype::U16 => u16::NAME,
        Dtype::U32 => u32::NAME,
        Dtype::U64 => u64::NAME,
        Dtype::I8 => i8::NAME,
        Dtype::I16 => i16::NAME,
        Dtype::I32 => i32::NAME,
        Dtype::I64 => i64::NAME,
        Dtype::F16 => f16::NAME,
        Dtype::BF16 => bf16::NAME,
        Dtype::F32 => f32::NAME,
        Dtype::F64 => f64::NAME,
        Dtype::C64 => Complex::<f32>::NAME,
        Dtype::C128 => Complex::<f64>::NAME,
        Dtype::F8E4M3 => F8E4M3::NAME,
        Dtype::F8E5M2 => F8E5M2::NAME,
        // A dtype added to the format later has no Rust type here yet; raw bytes still work.
        _ => "u8 (through Tensor::bytes)",
    }
}

#[cfg(test)]
mod tests {
    use super::sealed::Sealed;
    use super::*;

    fn check<T: Element>() {
        assert_eq!(std::mem::size_of::<T>(), T::DTYPE.size(), "{}", T::NAME);
        assert!(std::mem::align_of::<T>() <= 8, "{}", T::NAME);
    }

    #[test]
    fn every_element_type_has_its_dtype_size() {
        check::<bool>();
        check::<u8>();
        check::<u16>();
        check::<u32>();
        check::<u64>();
        check::<i8>();
        check::<i16>();
        check::<i32>();
        check::<i64>();
        check::<f16>();
        check::<bf16>();
        check::<f32>();
        check::<f64>();
        check::<Complex<f32>>();
        check::<[f32; 2]>();
        check::<Complex<f64>>();
        check::<[f64; 2]>();
        check::<F8E4M3>();
        check::<F8E5M2>();
    }

    #[test]
    fn every_dtype_has_a_rust_type() {
        for d in Dtype::ALL {
            assert!(!rust_type(d).contains("Tensor::bytes"), "{d}");
        }
    }

    #[test]
    fn bool_views_report_the_first_bad_byte() {
        assert_eq!(bool::view(&[0, 1, 1]).ok(), Some(&[false, true, true][..]));
        match bool::view(&[0, 1, 2, 7]) {
            Err(ViewError::NotBool { index, value }) => assert_eq!((index, value), (2, 2)),
            _ => panic!("expected NotBool"),
        }
    }

    #[test]
    fn unaligned_bytes_have_no_view_but_copy() {
        let buf = [0u64; 3];
        let bytes: &[u8] = bytemuck::cast_slice(&buf);
        let odd = &bytes[1..17];
        assert!(matches!(u64::view(odd), Err(ViewError::Unaligned)));
        assert_eq!(u64::copy(odd).ok().map(|v| v.len()), Some(2));
        assert_eq!(u8::view(odd).ok().map(<[u8]>::len), Some(16));
    }
}
