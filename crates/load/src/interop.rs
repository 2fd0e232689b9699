//! How each [`Dtype`] is handed to other array libraries: NumPy, DLPack consumers and PyTorch.
//!
//! One table per consumer, each row saying everything that consumer needs for a dtype: the type it
//! is described as, and the alignment of the data's address it requires. The Python binding calls
//! these; nothing else spells out these mappings. (The NumPy `.npy` descr strings are
//! [`Dtype::numpy_descr`] and the safetensors names [`Dtype::to_safetensors`], in the format crate.)
//!
//! Alignment differs per consumer, which is why it lives here and not only in [`Dtype::align`]
//! (the C alignment a Rust typed view needs):
//!
//! | consumer | C64 | C128 | others |
//! |---|---|---|---|
//! | NumPy (`__array_interface__`) | 1 | 1 | 1 (NumPy works on unaligned data) |
//! | DLPack (any consumer, PyTorch included) | 8 | 16 | the element size |
//! | PyTorch | 8 | 16 | the element size |
//!
//! PyTorch's `c10::complex<float>` is declared `alignas(8)` and `c10::complex<double>`
//! `alignas(16)`, twice the alignment of C's complex types; a DLPack capsule may be consumed by
//! PyTorch (`torch.from_dlpack` calls `__dlpack__`), so DLPack export asks for the same.
//!
//! ```
//! use mmtensor::{interop, Dtype};
//!
//! assert_eq!(interop::numpy(Dtype::BF16).unwrap().ml_dtypes, Some("bfloat16"));
//! assert_eq!(interop::torch(Dtype::C64).unwrap().align, 8);
//! assert_eq!(interop::dlpack(Dtype::F32).unwrap().dtype, interop::DlpackType::new(2, 32));
//! ```

use crate::Dtype;

/// A NumPy array type for a dtype's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NumpyType {
    /// The `__array_interface__` type string of the bytes (`"<f4"`; `"<u2"` for bfloat16).
    pub typestr: &'static str,
    /// The `ml_dtypes` type to view the array as afterwards, for dtypes NumPy lacks
    /// (`"bfloat16"`, `"float8_e4m3fn"`, `"float8_e5m2"`).
    pub ml_dtypes: Option<&'static str>,
    /// The alignment of the data's address NumPy needs: 1, since NumPy handles unaligned arrays
    /// (it clears `flags.aligned` and copies elements through a buffer where it must).
    pub align: usize,
}

/// The NumPy type of `dtype`, or `None` for a dtype this table does not know yet (the format's
/// `Dtype` may grow).
pub const fn numpy(dtype: Dtype) -> Option<NumpyType> {
    let (typestr, ml_dtypes) = match dtype {
        Dtype::Bool => ("|b1", None),
        Dtype::U8 => ("|u1", None),
        Dtype::U16 => ("<u2", None),
        Dtype::U32 => ("<u4", None),
        Dtype::U64 => ("<u8", None),
        Dtype::I8 => ("|i1", None),
        Dtype::I16 => ("<i2", None),
        Dtype::I32 => ("<i4", None),
        Dtype::I64 => ("<i8", None),
        Dtype::F16 => ("<f2", None),
        Dtype::BF16 => ("<u2", Some("bfloat16")),
        Dtype::F32 => ("<f4", None),
        Dtype::F64 => ("<f8", None),
        Dtype::C64 => ("<c8", None),
        Dtype::C128 => ("<c16", None),
        Dtype::F8E4M3 => ("|u1", Some("float8_e4m3fn")),
        Dtype::F8E5M2 => ("|u1", Some("float8_e5m2")),
        _ => return None,
    };
    Some(NumpyType {
        typestr,
        ml_dtypes,
        align: 1,
    })
}

/// The unsigned-integer NumPy type string for a dtype's raw bits, and how many of them make one
/// element: 1, or 2 for C128, whose 16 bytes have no integer type (its raw view gets a trailing
/// axis of 2).
pub const fn numpy_raw(dtype: Dtype) -> (&'static str, u64) {
    match dtype.size() {
        1 => ("|u1", 1),
        2 => ("<u2", 1),
        4 => ("<u4", 1),
        8 => ("<u8", 1),
        n => ("<u8", (n / 8) as u64),
    }
}

/// `DLDataTypeCode` values of `dlpack.h` (v1.1) that mmtensor's dtypes use.
pub mod dlpack_code {
    /// `kDLInt`.
    pub const INT: u8 = 0;
    /// `kDLUInt`.
    pub const UINT: u8 = 1;
    /// `kDLFloat`.
    pub const FLOAT: u8 = 2;
    /// `kDLBfloat`.
    pub const BFLOAT: u8 = 4;
    /// `kDLComplex`.
    pub const COMPLEX: u8 = 5;
    /// `kDLBool`.
    pub const BOOL: u8 = 6;
    /// `kDLFloat8_e4m3fn` (DLPack 1.1).
    pub const FLOAT8_E4M3FN: u8 = 10;
    /// `kDLFloat8_e5m2` (DLPack 1.1).
    pub const FLOAT8_E5M2: u8 = 12;
}

/// A `DLDataType`: type code, bits per lane, lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DlpackType {
    /// A [`dlpack_code`] value.
    pub code: u8,
    /// Bits of one lane.
    pub bits: u8,
    /// Lanes (always 1 here: no vector types).
    pub lanes: u16,
}

impl DlpackType {
    /// A one-lane type.
    pub const fn new(code: u8, bits: u8) -> DlpackType {
        DlpackType {
            code,
            bits,
            lanes: 1,
        }
    }
}

/// How a dtype is exported through DLPack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dlpack {
    /// The `DLDataType`.
    pub dtype: DlpackType,
    /// The oldest DLPack version `(major, minor)` that names this type: (1, 1) for fp8.
    pub min_version: (u32, u32),
    /// The alignment of the data's address a consumer may assume: the element size (PyTorch's
    /// complex types are aligned to their full size, and PyTorch is a DLPack consumer).
    pub align: usize,
}

const fn bits(dtype: Dtype) -> u8 {
    (dtype.size() * 8) as u8
}

/// The DLPack export of `dtype`, or `None` for a dtype this table does not know yet.
pub const fn dlpack(dtype: Dtype) -> Option<Dlpack> {
    use dlpack_code as c;
    let (code, min_minor) = match dtype {
        Dtype::Bool => (c::BOOL, 0),
        Dtype::U8 | Dtype::U16 | Dtype::U32 | Dtype::U64 => (c::UINT, 0),
        Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64 => (c::INT, 0),
        Dtype::F16 | Dtype::F32 | Dtype::F64 => (c::FLOAT, 0),
        Dtype::BF16 => (c::BFLOAT, 0),
        Dtype::C64 | Dtype::C128 => (c::COMPLEX, 0),
        Dtype::F8E4M3 => (c::FLOAT8_E4M3FN, 1),
        Dtype::F8E5M2 => (c::FLOAT8_E5M2, 1),
        _ => return None,
    };
    Some(Dlpack {
        dtype: DlpackType::new(code, bits(dtype)),
        min_version: (1, min_minor),
        align: dtype.size(),
    })
}

/// How a dtype becomes a `torch.Tensor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Torch {
    /// The `torch` dtype attribute of the resulting tensor (`"float32"`, `"bfloat16"`, ...).
    pub name: &'static str,
    /// The DLPack type to hand PyTorch the bytes as.
    pub dlpack: DlpackType,
    /// Whether the tensor PyTorch makes from `dlpack` must then be viewed (`tensor.view(dtype)`)
    /// as `name`: true for fp8, which goes over as uint8 bytes, so that it works on every PyTorch
    /// that has the fp8 types, whatever DLPack version it speaks.
    pub needs_view: bool,
    /// The alignment of the data's address PyTorch's element type needs (`alignof`): the element
    /// size for every dtype (`c10::complex<float>` is 8, `c10::complex<double>` 16).
    pub align: usize,
}

/// The PyTorch export of `dtype`, or `None` for a dtype this table does not know yet.
pub const fn torch(dtype: Dtype) -> Option<Torch> {
    let Some(exported) = dlpack(dtype) else {
        return None;
    };
    let (name, via_bytes) = match dtype {
        Dtype::Bool => ("bool", false),
        Dtype::U8 => ("uint8", false),
        Dtype::U16 => ("uint16", false),
        Dtype::U32 => ("uint32", false),
        Dtype::U64 => ("uint64", false),
        Dtype::I8 => ("int8", false),
        Dtype::I16 => ("int16", false),
        Dtype::I32 => ("int32", false),
        Dtype::I64 => ("int64", false),
        Dtype::F16 => ("float16", false),
        Dtype::BF16 => ("bfloat16", false),
        Dtype::F32 => ("float32", false),
        Dtype::F64 => ("float64", false),
        Dtype::C64 => ("complex64", false),
        Dtype::C128 => ("complex128", false),
        Dtype::F8E4M3 => ("float8_e4m3fn", true),
        Dtype::F8E5M2 => ("float8_e5m2", true),
        _ => return None,
    };
    Some(Torch {
        name,
        dlpack: if via_bytes {
            DlpackType::new(dlpack_code::UINT, 8)
        } else {
            exported.dtype
        },
        needs_view: via_bytes,
        align: dtype.size(),
    })
}

/// The number of bytes an array of `shape` with `itemsize`-byte elements spans, C order, or `None`
/// when the product overflows a u64.
///
/// A binding checks, before a pointer leaves for a foreign array (`__array_interface__`, a DLPack
/// `DLTensor`), that this equals the length of the bytes it points at: the consumer reads
/// `prod(shape) * itemsize` bytes from the pointer, whatever the slice it came from was. For a
/// view of a validated store it always does (the loader's shapes passed `checked_byte_len`); the
/// check is defence in depth at the boundary, where a mistake would be an out-of-bounds read.
///
/// ```
/// use mmtensor::interop::byte_extent;
///
/// assert_eq!(byte_extent(&[3, 4], 4), Some(48));
/// assert_eq!(byte_extent(&[], 8), Some(8));
/// assert_eq!(byte_extent(&[1 << 40, 1 << 40], 1), None);
/// ```
pub fn byte_extent(shape: &[u64], itemsize: u64) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(itemsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_extent_is_checked() {
        assert_eq!(byte_extent(&[2, 3], 2), Some(12));
        assert_eq!(byte_extent(&[0, 1 << 40, 1 << 40], 1), Some(0));
        assert_eq!(byte_extent(&[u64::MAX, 2], 1), None);
        assert_eq!(byte_extent(&[u64::MAX], 2), None);
    }

    #[test]
    fn every_dtype_has_a_row_in_every_table() {
        for d in Dtype::ALL {
            let n = numpy(d).unwrap();
            let dl = dlpack(d).unwrap();
            let t = torch(d).unwrap();
            // The NumPy type has the element's size (ml_dtypes views keep the size).
            let item: usize = n.typestr[2..].parse().unwrap();
            assert_eq!(item, d.size(), "{d}");
            assert_eq!(usize::from(dl.dtype.bits) / 8, d.size(), "{d}");
            assert_eq!(dl.dtype.lanes, 1);
            assert_eq!(usize::from(t.dlpack.bits) / 8, d.size(), "{d}");
            // NumPy's and ml_dtypes' names are the format's NumPy names.
            assert_eq!(n.ml_dtypes.unwrap_or(d.numpy_name()), d.numpy_name());
            assert_eq!(t.name, d.numpy_name(), "{d}");
            let (raw, per) = numpy_raw(d);
            let raw_size: u64 = raw[2..].parse().unwrap();
            assert_eq!(raw_size * per, d.size() as u64, "{d}");
        }
    }

    #[test]
    fn numpy_types_match_the_npy_descr_where_numpy_has_the_type() {
        for d in Dtype::ALL {
            let n = numpy(d).unwrap();
            if n.ml_dtypes.is_none() {
                assert_eq!(n.typestr, d.numpy_descr(), "{d}");
            }
        }
    }

    /// Defect 8 of issue 10: complex tensors were checked at 4 (C64) and 8 (C128) bytes, the
    /// alignment of C's complex types, but PyTorch's `c10::complex` needs 8 and 16.
    #[test]
    fn torch_and_dlpack_need_complex_aligned_to_its_full_size() {
        assert_eq!(torch(Dtype::C64).unwrap().align, 8);
        assert_eq!(torch(Dtype::C128).unwrap().align, 16);
        assert_eq!(dlpack(Dtype::C64).unwrap().align, 8);
        assert_eq!(dlpack(Dtype::C128).unwrap().align, 16);
        // Stricter than a Rust typed view, which follows C.
        assert!(torch(Dtype::C64).unwrap().align > Dtype::C64.align());
        for d in Dtype::ALL {
            assert_eq!(numpy(d).unwrap().align, 1);
            assert!(torch(d).unwrap().align >= d.align());
        }
    }

    #[test]
    fn fp8_needs_dlpack_1_1_and_goes_to_torch_as_bytes() {
        for d in [Dtype::F8E4M3, Dtype::F8E5M2] {
            assert_eq!(dlpack(d).unwrap().min_version, (1, 1));
            let t = torch(d).unwrap();
            assert!(t.needs_view);
            assert_eq!(t.dlpack, DlpackType::new(dlpack_code::UINT, 8));
        }
        assert_eq!(dlpack(Dtype::F32).unwrap().min_version, (1, 0));
        assert!(!torch(Dtype::BF16).unwrap().needs_view);
        assert_eq!(
            torch(Dtype::BF16).unwrap().dlpack,
            DlpackType::new(dlpack_code::BFLOAT, 16)
        );
    }
}
