//! Element types and their names in `.mmt`, safetensors and NumPy.
//!
//! This module depends on no other: the crate's `Error` names a `Dtype` in its variants, so the
//! fallible `FromStr` of a dtype name lives beside that error (in `error.rs`), not here.

use std::fmt;

/// The element type of a tensor.
///
/// The names (`F32`, `BF16`, ...) are safetensors' names where safetensors has the type; they are what
/// the header stores. [`Dtype::numpy_descr`] gives the matching NumPy `descr` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dtype {
    /// Boolean, one byte that is 0 or 1.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16 (the upper half of an IEEE binary32).
    BF16,
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// Complex number of two `F32` (real, imaginary).
    C64,
    /// Complex number of two `F64` (real, imaginary).
    C128,
    /// 8-bit float, 4 exponent bits, 3 mantissa bits (OCP FP8 E4M3, "fn" variant: no infinities).
    F8E4M3,
    /// 8-bit float, 5 exponent bits, 2 mantissa bits (OCP FP8 E5M2).
    F8E5M2,
}

impl Dtype {
    /// Every dtype, in the order of the format spec's table.
    pub const ALL: [Dtype; 17] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::U16,
        Dtype::U32,
        Dtype::U64,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F32,
        Dtype::F64,
        Dtype::C64,
        Dtype::C128,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 | Dtype::C64 => 8,
            Dtype::C128 => 16,
        }
    }

    /// Alignment in bytes that a typed view of this dtype needs in memory.
    ///
    /// Complex numbers need the alignment of their component type, as in C and NumPy.
    pub const fn align(self) -> usize {
        match self {
            Dtype::C64 => 4,
            Dtype::C128 => 8,
            other => other.size(),
        }
    }

    /// The name stored in the header (`"F32"`, `"BF16"`, `"F8_E4M3"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::U16 => "U16",
            Dtype::U32 => "U32",
            Dtype::U64 => "U64",
            Dtype::I8 => "I8",
            Dtype::I16 => "I16",
            Dtype::I32 => "I32",
            Dtype::I64 => "I64",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::C64 => "C64",
            Dtype::C128 => "C128",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
        }
    }

    /// The safetensors dtype of the same element type, or `None` where safetensors has none
    /// (`C128`). This and [`Dtype::from_safetensors`] are the one table between the two formats;
    /// the loader, the converter and the exporter all use it.
    pub const fn to_safetensors(self) -> Option<safetensors::Dtype> {
        use safetensors::Dtype as S;
        Some(match self {
            Dtype::Bool => S::BOOL,
            Dtype::U8 => S::U8,
            Dtype::U16 => S::U16,
            Dtype::U32 => S::U32,
            Dtype::U64 => S::U64,
            Dtype::I8 => S::I8,
            Dtype::I16 => S::I16,
            Dtype::I32 => S::I32,
            Dtype::I64 => S::I64,
            Dtype::F16 => S::F16,
            Dtype::BF16 => S::BF16,
            Dtype::F32 => S::F32,
            Dtype::F64 => S::F64,
            Dtype::C64 => S::C64,
            Dtype::F8E4M3 => S::F8_E4M3,
            Dtype::F8E5M2 => S::F8_E5M2,
            Dtype::C128 => return None,
        })
    }

    /// The dtype of a safetensors dtype, or `None` for types `.mmt` does not have (sub-byte
    /// floats, `F8_E8M0`, ...): the inverse of [`Dtype::to_safetensors`].
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<Dtype> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.to_safetensors() == Some(dtype))
    }

    /// Parses a header name exactly as stored (`"F32"`); see [`Dtype::parse_loose`] for user input.
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The little-endian NumPy `descr` string of this dtype, as `np.save` writes it.
    ///
    /// NumPy has no native bfloat16 or fp8: `ml_dtypes` arrays are saved as raw void types
    /// (`"<V2"` for bfloat16, `"<V1"` for the fp8 types), so those descr strings are ambiguous and
    /// readers must be told the dtype.
    pub const fn numpy_descr(self) -> &'static str {
        match self {
            Dtype::Bool => "|b1",
            Dtype::U8 => "|u1",
            Dtype::U16 => "<u2",
            Dtype::U32 => "<u4",
            Dtype::U64 => "<u8",
            Dtype::I8 => "|i1",
            Dtype::I16 => "<i2",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
            Dtype::F16 => "<f2",
            Dtype::BF16 => "<V2",
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::C64 => "<c8",
            Dtype::C128 => "<c16",
            Dtype::F8E4M3 | Dtype::F8E5M2 => "<V1",
        }
    }

    /// The NumPy (or `ml_dtypes`) type name: `"float32"`, `"bfloat16"`, `"float8_e4m3fn"`, ...
    pub const fn numpy_name(self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
            Dtype::I8 => "int8",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::C64 => "complex64",
            Dtype::C128 => "complex128",
            Dtype::F8E4M3 => "float8_e4m3fn",
            Dtype::F8E5M2 => "float8_e5m2",
        }
    }

    /// Parses a dtype the way a person types it: the header name in any case (`f32`, `bf16`),
    /// the NumPy name (`float32`, `bfloat16`, `float8_e4m3fn`) or a NumPy type code (`f4`, `<f8`,
    /// `c16`, `b1`).
    ///
    /// Two spellings clash: `i8` and `u8` are 8-bit in `.mmt` and safetensors but 8-byte in NumPy's
    /// type codes. The format's name wins; write `<i8` (with a byte-order character) or `int64` for
    /// NumPy's meaning.
    pub fn parse_loose(text: &str) -> Option<Dtype> {
        let lower = text.trim().to_ascii_lowercase();
        let lower = lower.as_str();
        let has_byte_order = lower.starts_with(['<', '>', '|', '=']);
        if let Some(d) = Dtype::ALL
            .into_iter()
            .filter(|_| !has_byte_order)
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(lower) || d.numpy_name() == lower)
        {
            return Some(d);
        }
        let code = lower.trim_start_matches(['<', '>', '|', '=']);
        Some(match code {
            "b1" | "?" => Dtype::Bool,
            "u1" => Dtype::U8,
            "u2" => Dtype::U16,
            "u4" => Dtype::U32,
            "u8" => Dtype::U64,
            "i1" => Dtype::I8,
            "i2" => Dtype::I16,
            "i4" => Dtype::I32,
            "i8" => Dtype::I64,
            "f2" | "half" => Dtype::F16,
            "f4" | "float" | "single" => Dtype::F32,
            "f8" | "double" => Dtype::F64,
            "c8" => Dtype::C64,
            "c16" => Dtype::C128,
            "f8e4m3" | "f8_e4m3fn" | "float8_e4m3" | "e4m3" => Dtype::F8E4M3,
            "f8e5m2" | "e5m2" => Dtype::F8E5M2,
            _ => return None,
        })
    }

    /// True for floating-point and complex types (the ones `--dtype DT` casts).
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F16
                | Dtype::BF16
                | Dtype::F32
                | Dtype::F64
                | Dtype::F8E4M3
                | Dtype::F8E5M2
                | Dtype::C64
                | Dtype::C128
        )
    }

    /// True for complex types.
    pub const fn is_complex(self) -> bool {
        matches!(self, Dtype::C64 | Dtype::C128)
    }

    /// True for signed and unsigned integer types (not `BOOL`).
    pub const fn is_integer(self) -> bool {
        matches!(
            self,
            Dtype::U8
                | Dtype::U16
                | Dtype::U32
                | Dtype::U64
                | Dtype::I8
                | Dtype::I16
                | Dtype::I32
                | Dtype::I64
        )
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_table_round_trips_and_matches_the_names() {
        for d in Dtype::ALL {
            match d.to_safetensors() {
                Some(st) => {
                    assert_eq!(Dtype::from_safetensors(st), Some(d));
                    // safetensors' own spelling of the type is the name the header stores.
                    assert_eq!(format!("{st:?}"), d.name());
                }
                None => assert_eq!(d, Dtype::C128),
            }
        }
        assert_eq!(Dtype::from_safetensors(safetensors::Dtype::F4), None);
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_name(d.name()), Some(d));
            assert_eq!(Dtype::parse_loose(d.name()), Some(d));
            assert_eq!(Dtype::parse_loose(&d.name().to_lowercase()), Some(d));
            assert_eq!(Dtype::parse_loose(d.numpy_name()), Some(d));
            assert_eq!(d.size() % d.align(), 0);
        }
        let mut names: Vec<_> = Dtype::ALL.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Dtype::ALL.len());
    }

    #[test]
    fn loose_parsing_accepts_numpy_codes() {
        assert_eq!(Dtype::parse_loose("<f4"), Some(Dtype::F32));
        assert_eq!(Dtype::parse_loose("f4"), Some(Dtype::F32));
        assert_eq!(Dtype::parse_loose("float32"), Some(Dtype::F32));
        assert_eq!(Dtype::parse_loose("BFloat16"), Some(Dtype::BF16));
        assert_eq!(Dtype::parse_loose("i8"), Some(Dtype::I8));
        assert_eq!(Dtype::parse_loose("<i8"), Some(Dtype::I64));
        assert_eq!(Dtype::parse_loose("int64"), Some(Dtype::I64));
        assert_eq!(Dtype::parse_loose("c16"), Some(Dtype::C128));
        assert_eq!(Dtype::parse_loose("float8_e4m3fn"), Some(Dtype::F8E4M3));
        assert_eq!(Dtype::parse_loose("f3"), None);
        assert_eq!(Dtype::parse_loose(""), None);
    }
}
