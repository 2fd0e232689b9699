//! Element casts between dtypes: which pairs exist and what each does to values ([`Cast::new`],
//! the one table), and the kernel that converts little-endian elements ([`Cast::run`]).
//!
//! The kernel is one thread over byte slices and allocates nothing. Its callers bring the
//! parallelism: the loader's gather (`mmtensor::Tensor::take_into_as`) runs it on each run of rows
//! it copies, inside its own parallel copy; the converter (`mmtensor_convert::transform::cast`)
//! runs it on pieces of a chunk. Each decides which kinds of cast it makes: the gather only those that
//! cannot fail on any value ([`Cast::never_fails`]), the converter also the checked ones.
//!
//! ```
//! use mmtensor_format::{Cast, CastKind, Dtype};
//!
//! let widen = Cast::new(Dtype::U16, Dtype::I64).unwrap();
//! assert_eq!(widen.kind(), CastKind::Exact);
//! let mut out = [0u8; 16];
//! widen.run(&[1, 0, 0xff, 0xff], &mut out)?;
//! assert_eq!(out[8..], 65535i64.to_le_bytes());
//!
//! let narrow = Cast::new(Dtype::I64, Dtype::U8).unwrap();
//! assert_eq!(narrow.kind(), CastKind::Checked); // refused value by value
//! assert!(narrow.run(&300i64.to_le_bytes(), &mut [0u8]).is_err());
//! assert_eq!(Cast::new(Dtype::F32, Dtype::I32), None); // no float-to-integer cast
//! # Ok::<(), mmtensor_format::Error>(())
//! ```

use half::{bf16, f16};

use crate::{Dtype, Error, Result};

/// What a [`Cast`] does to values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CastKind {
    /// The same dtype: the bytes are copied.
    Copy,
    /// Every value of the source is exactly a value of the target, so nothing is lost: integer
    /// widening (`U16` to `I32`), integers to a float whose significand holds them all (`U8` to
    /// `BF16`, `I16` to `F32`, `U32` to `F64`), float widening (`F16`/`BF16` to `F32`/`F64`, `F32`
    /// to `F64`, `C64` to `C128`), and `BOOL` to any integer or real float (0 and 1).
    Exact,
    /// Float narrowing (`F64`/`F32` to `F16`/`BF16`, `F64` to `F32`, `F16` to and from `BF16`,
    /// `C128` to `C64`): rounds to nearest, ties to even, in one step from the exact source value;
    /// a value too large gives infinity and NaN stays NaN. It never fails.
    Rounds,
    /// Integer narrowing or a change of sign (`I64` to `I32`, `U64` to `I64`, `I8` to `U8`):
    /// values that do not fit are refused ([`Error::CastOutOfRange`], naming the first).
    Checked,
}

/// A cast from one dtype to another that the kernel implements: made by [`Cast::new`], which
/// answers `None` for every pair not in its table, so a `Cast` in hand always runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cast {
    from: Dtype,
    to: Dtype,
    kind: CastKind,
}

/// The range of an integer dtype's values (`BOOL` counts as 0 and 1, as a source).
fn int_range(d: Dtype) -> Option<(i128, i128)> {
    Some(match d {
        Dtype::Bool => (0, 1),
        Dtype::U8 => (0, u8::MAX.into()),
        Dtype::U16 => (0, u16::MAX.into()),
        Dtype::U32 => (0, u32::MAX.into()),
        Dtype::U64 => (0, u64::MAX.into()),
        Dtype::I8 => (i8::MIN.into(), i8::MAX.into()),
        Dtype::I16 => (i16::MIN.into(), i16::MAX.into()),
        Dtype::I32 => (i32::MIN.into(), i32::MAX.into()),
        Dtype::I64 => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

/// The significand bits (the implicit one included) of a real float dtype the kernel converts:
/// every integer of at most that many bits is exactly one of its values.
fn float_precision(d: Dtype) -> Option<u32> {
    Some(match d {
        Dtype::BF16 => 8,
        Dtype::F16 => 11,
        Dtype::F32 => 24,
        Dtype::F64 => 53,
        _ => return None,
    })
}

impl Cast {
    /// The cast from `from` to `to`, or `None` when the kernel has none. This is the one table of
    /// casts; [`CastKind`] says what each does:
    ///
    /// | from | to | kind |
    /// |---|---|---|
    /// | any dtype | itself | `Copy` |
    /// | `BOOL` | any integer or real float | `Exact` |
    /// | integer | integer holding all its values | `Exact` |
    /// | integer | any other integer | `Checked` |
    /// | integer | real float whose significand holds all its values (`U8`/`I8` to any; `U16`/`I16` to `F32`, `F64`; `U32`/`I32` to `F64`) | `Exact` |
    /// | `F16`, `BF16` | `F32`, `F64`; `F32` to `F64`; `C64` to `C128` | `Exact` |
    /// | real float | any other real float; `C128` to `C64` | `Rounds` |
    ///
    /// Nothing else: no cast to `BOOL` or from a float to an integer (which would round or fail on
    /// fractions), none from an integer to a float that would round it (`I64` to `F64`), none for
    /// the fp8 types or between complex and real.
    pub fn new(from: Dtype, to: Dtype) -> Option<Cast> {
        let kind = if from == to {
            CastKind::Copy
        } else if to == Dtype::Bool {
            return None;
        } else if let (Some((lo, hi)), Some((to_lo, to_hi))) = (int_range(from), int_range(to)) {
            if to_lo <= lo && hi <= to_hi {
                CastKind::Exact
            } else {
                CastKind::Checked
            }
        } else if let (Some((lo, hi)), Some(bits)) = (int_range(from), float_precision(to)) {
            // Every integer of magnitude up to 2^bits is a value of the float.
            let limit = 1i128 << bits;
            if -limit <= lo && hi <= limit {
                CastKind::Exact
            } else {
                return None;
            }
        } else if float_precision(from).is_some() && float_precision(to).is_some() {
            if matches!(
                (from, to),
                (Dtype::F16 | Dtype::BF16, Dtype::F32 | Dtype::F64) | (Dtype::F32, Dtype::F64)
            ) {
                CastKind::Exact
            } else {
                CastKind::Rounds
            }
        } else {
            match (from, to) {
                (Dtype::C64, Dtype::C128) => CastKind::Exact,
                (Dtype::C128, Dtype::C64) => CastKind::Rounds,
                _ => return None,
            }
        };
        Some(Cast { from, to, kind })
    }

    /// The source dtype.
    pub fn from(&self) -> Dtype {
        self.from
    }

    /// The target dtype.
    pub fn to(&self) -> Dtype {
        self.to
    }

    /// What the cast does to values.
    pub fn kind(&self) -> CastKind {
        self.kind
    }

    /// True when no value makes [`Cast::run`] fail: every kind but [`CastKind::Checked`].
    pub fn never_fails(&self) -> bool {
        !matches!(self.kind, CastKind::Checked)
    }

    /// The bytes that `bytes` bytes of the source dtype become in the target dtype (`bytes` a
    /// whole number of source elements), or `None` past `u64::MAX`.
    pub fn output_len(&self, bytes: u64) -> Option<u64> {
        (bytes / self.from.size() as u64).checked_mul(self.to.size() as u64)
    }

    /// Converts the little-endian elements of `src` (of the source dtype) into `dst` (of the
    /// target dtype), element by element, on the calling thread. A `BOOL` byte other than 0 counts
    /// as 1.
    ///
    /// # Errors
    ///
    /// [`Error::CastLength`] when `src` is not a whole number of elements or `dst` does not hold
    /// exactly as many (nothing is written); [`Error::CastOutOfRange`] for the first element (the
    /// lowest index) a [`CastKind::Checked`] cast cannot represent, after which `dst` holds the
    /// elements before it converted and the rest unspecified.
    pub fn run(&self, src: &[u8], dst: &mut [u8]) -> Result<()> {
        let (from, to) = (self.from, self.to);
        let n = src.len() / from.size();
        if !src.len().is_multiple_of(from.size()) || n.checked_mul(to.size()) != Some(dst.len()) {
            return Err(Error::CastLength {
                from,
                to,
                src: src.len() as u64,
                dst: dst.len() as u64,
            });
        }
        let bad = match (self.kind, from, to) {
            (CastKind::Copy, ..) => {
                dst.copy_from_slice(src);
                None
            }
            // Complex casts convert the real and imaginary parts as two floats.
            (_, Dtype::C64, Dtype::C128) => {
                floats(src, Dtype::F32, dst, Dtype::F64);
                None
            }
            (_, Dtype::C128, Dtype::C64) => {
                floats(src, Dtype::F64, dst, Dtype::F32);
                None
            }
            _ if float_precision(from).is_some() => {
                floats(src, from, dst, to);
                None
            }
            _ => ints(src, from, dst, to),
        };
        match bad {
            None => Ok(()),
            Some(index) => Err(Error::CastOutOfRange {
                from,
                to,
                index: index as u64,
                value: src
                    .get(index * from.size()..(index + 1) * from.size())
                    .map_or(0, |b| read_int(b, from))
                    .to_string(),
            }),
        }
    }
}

/// Applies `f` to every `S`-byte element of `src`, writing `D`-byte elements to `dst` (which holds
/// as many).
fn map<const S: usize, const D: usize>(src: &[u8], dst: &mut [u8], f: impl Fn([u8; S]) -> [u8; D]) {
    for (s, d) in src.chunks_exact(S).zip(dst.chunks_exact_mut(D)) {
        let mut b = [0u8; S];
        b.copy_from_slice(s);
        d.copy_from_slice(&f(b));
    }
}

/// As [`map`], but `f` may refuse an element: returns the index of the first it refuses.
fn try_map<const S: usize, const D: usize>(
    src: &[u8],
    dst: &mut [u8],
    f: impl Fn([u8; S]) -> Option<[u8; D]>,
) -> Option<usize> {
    for (i, (s, d)) in src.chunks_exact(S).zip(dst.chunks_exact_mut(D)).enumerate() {
        let mut b = [0u8; S];
        b.copy_from_slice(s);
        match f(b) {
            Some(v) => d.copy_from_slice(&v),
            None => return Some(i),
        }
    }
    None
}

/// A float cast: every source value decoded exactly to f64, then rounded once to the target.
fn floats(src: &[u8], from: Dtype, dst: &mut [u8], to: Dtype) {
    match from {
        Dtype::F64 => float_to::<8>(src, dst, to, f64::from_le_bytes),
        Dtype::F32 => float_to::<4>(src, dst, to, |b| f64::from(f32::from_le_bytes(b))),
        Dtype::F16 => float_to::<2>(src, dst, to, |b| f16::from_le_bytes(b).to_f64()),
        Dtype::BF16 => float_to::<2>(src, dst, to, |b| bf16::from_le_bytes(b).to_f64()),
        _ => unreachable!("Cast::new has no other float source"),
    }
}

/// Encodes `dec`'s f64 values as `to` (a real float): exactly for a value the target holds,
/// otherwise rounded to nearest, ties to even.
fn float_to<const S: usize>(src: &[u8], dst: &mut [u8], to: Dtype, dec: impl Fn([u8; S]) -> f64) {
    match to {
        Dtype::F64 => map::<S, 8>(src, dst, |b| dec(b).to_le_bytes()),
        Dtype::F32 => map::<S, 4>(src, dst, |b| (dec(b) as f32).to_le_bytes()),
        Dtype::F16 => map::<S, 2>(src, dst, |b| {
            f16::from_f32(f64_to_f32_odd(dec(b))).to_le_bytes()
        }),
        Dtype::BF16 => map::<S, 2>(src, dst, |b| {
            bf16::from_f32(f64_to_f32_odd(dec(b))).to_le_bytes()
        }),
        _ => unreachable!("Cast::new has no other float target"),
    }
}

/// Narrows an f64 to f32 with *round to odd*: truncate toward zero, then set the last mantissa bit
/// when any precision was lost.
///
/// Rounding to odd into a format with at least two more bits of precision than the final target
/// makes the second rounding (f32 to f16 or bf16, to nearest even, in `half::from_f32`) give exactly
/// the correctly rounded result of the original f64: no double-rounding error. `half`'s own
/// `from_f64` for bf16 drops the low 32 bits of the mantissa before rounding, which rounds values
/// just above a halfway point down (for example F32 `0xbf1c8007` became BF16 `0xbf1c`, not
/// `0xbf1d` as in ml_dtypes and torch). Values exactly representable in f32 come back unchanged.
fn f64_to_f32_odd(x: f64) -> f32 {
    let t = x as f32; // round to nearest even
    if x.is_nan() || f64::from(t) == x {
        return t;
    }
    // Inexact: step back toward zero if rounding went away from it, then mark the loss.
    let mut bits = t.to_bits();
    if f64::from(t).abs() > x.abs() {
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

/// A cast from an integer (or `BOOL`) source: every value decoded exactly to i128.
fn ints(src: &[u8], from: Dtype, dst: &mut [u8], to: Dtype) -> Option<usize> {
    macro_rules! dec {
        ($t:ty, $n:literal) => {
            int_to::<$n>(src, dst, to, |b| i128::from(<$t>::from_le_bytes(b)))
        };
    }
    match from {
        Dtype::Bool => int_to::<1>(src, dst, to, |b| i128::from(b[0] != 0)),
        Dtype::U8 => dec!(u8, 1),
        Dtype::U16 => dec!(u16, 2),
        Dtype::U32 => dec!(u32, 4),
        Dtype::U64 => dec!(u64, 8),
        Dtype::I8 => dec!(i8, 1),
        Dtype::I16 => dec!(i16, 2),
        Dtype::I32 => dec!(i32, 4),
        Dtype::I64 => dec!(i64, 8),
        _ => unreachable!("Cast::new has no other integer source"),
    }
}

/// Encodes `dec`'s values as `to`: an integer type, refusing values that do not fit, or a real
/// float that holds every source value (`Cast::new` allows no other), through f64, which holds
/// every integer of up to 53 bits exactly.
fn int_to<const S: usize>(
    src: &[u8],
    dst: &mut [u8],
    to: Dtype,
    dec: impl Fn([u8; S]) -> i128,
) -> Option<usize> {
    macro_rules! enc {
        ($t:ty, $n:literal) => {
            try_map::<S, $n>(src, dst, |b| {
                <$t>::try_from(dec(b)).ok().map(<$t>::to_le_bytes)
            })
        };
    }
    match to {
        Dtype::U8 => enc!(u8, 1),
        Dtype::U16 => enc!(u16, 2),
        Dtype::U32 => enc!(u32, 4),
        Dtype::U64 => enc!(u64, 8),
        Dtype::I8 => enc!(i8, 1),
        Dtype::I16 => enc!(i16, 2),
        Dtype::I32 => enc!(i32, 4),
        Dtype::I64 => enc!(i64, 8),
        _ => {
            float_to::<S>(src, dst, to, |b| dec(b) as f64);
            None
        }
    }
}

/// The value of one little-endian integer (or `BOOL`) element, for an error message.
fn read_int(b: &[u8], d: Dtype) -> i128 {
    let mut buf = [0u8; 8];
    let n = b.len().min(8);
    buf[..n].copy_from_slice(&b[..n]);
    let u = u64::from_le_bytes(buf);
    match d {
        Dtype::I8 => i128::from(u as u8 as i8),
        Dtype::I16 => i128::from(u as u16 as i16),
        Dtype::I32 => i128::from(u as u32 as i32),
        Dtype::I64 => i128::from(u as i64),
        _ => i128::from(u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One character per kind, for the pinned table.
    fn mark(c: Option<Cast>) -> char {
        match c.map(|c| c.kind()) {
            None => '.',
            Some(CastKind::Copy) => '=',
            Some(CastKind::Exact) => 'e',
            Some(CastKind::Rounds) => 'r',
            Some(CastKind::Checked) => 'c',
        }
    }

    #[test]
    fn the_table_is_pinned() {
        // Rows are sources, columns targets, both in `Dtype::ALL` order: BOOL U8 U16 U32 U64 I8
        // I16 I32 I64 F16 BF16 F32 F64 C64 C128 F8_E4M3 F8_E5M2. `=` copy, `e` exact, `r` rounds,
        // `c` checked, `.` no cast. A change here changes what the loader and the converter cast.
        let want = "\
   BOOL =eeeeeeeeeeee....
     U8 .=eeeceeeeeee....
    U16 .c=eeccee..ee....
    U32 .cc=eccce...e....
    U64 .ccc=cccc........
     I8 .cccc=eeeeeee....
    I16 .ccccc=ee..ee....
    I32 .cccccc=e...e....
    I64 .ccccccc=........
    F16 .........=ree....
   BF16 .........r=ee....
    F32 .........rr=e....
    F64 .........rrr=....
    C64 .............=e..
   C128 .............r=..
F8_E4M3 ...............=.
F8_E5M2 ................=";
        let rows: Vec<String> = Dtype::ALL
            .iter()
            .map(|&from| {
                let marks: String = Dtype::ALL
                    .iter()
                    .map(|&to| mark(Cast::new(from, to)))
                    .collect();
                format!("{:>7} {marks}", from.name())
            })
            .collect();
        let want: Vec<&str> = want.lines().map(str::trim).collect();
        let rows: Vec<&str> = rows.iter().map(|r| r.trim()).collect();
        assert_eq!(rows, want);
    }

    /// A value as the kernel reads it: exactly, as an integer or a float.
    #[derive(Debug, PartialEq)]
    enum Value {
        Int(i128),
        Float(f64),
    }

    fn decode(b: &[u8], d: Dtype) -> Value {
        match d {
            Dtype::F16 => Value::Float(f16::from_le_bytes([b[0], b[1]]).to_f64()),
            Dtype::BF16 => Value::Float(bf16::from_le_bytes([b[0], b[1]]).to_f64()),
            Dtype::F32 => Value::Float(f32::from_le_bytes(b.try_into().unwrap()).into()),
            Dtype::F64 => Value::Float(f64::from_le_bytes(b.try_into().unwrap())),
            _ => Value::Int(read_int(b, d)),
        }
    }

    /// Elements of `d` worth checking: the extremes, zero, one, minus one, NaN, infinities,
    /// subnormals, and a spread of bit patterns.
    fn samples(d: Dtype) -> Vec<u8> {
        let size = d.size();
        let mut out = Vec::new();
        if let Some((lo, hi)) = int_range(d) {
            for v in [lo, hi, 0, 1, -1, lo / 3, hi / 3] {
                if (lo..=hi).contains(&v) {
                    out.extend_from_slice(&v.to_le_bytes()[..size]);
                }
            }
        } else {
            for bits in [0u64, 1, 0x7f, 0x3c00, 0x7c00, 0xfc00, 0x7fc0, 0x8001] {
                out.extend_from_slice(&bits.to_le_bytes()[..size]);
            }
            for v in [f64::NAN, f64::INFINITY, -0.0, 1.5, -3.25e-3, 65504.0] {
                match d {
                    Dtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
                    Dtype::F32 | Dtype::C64 => out.extend_from_slice(&(v as f32).to_le_bytes()),
                    Dtype::F16 => out.extend_from_slice(&f16::from_f64(v).to_le_bytes()),
                    Dtype::BF16 => out.extend_from_slice(&bf16::from_f64(v).to_le_bytes()),
                    _ => {}
                }
            }
        }
        for i in 0..64u64 {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            out.extend_from_slice(&x.to_le_bytes()[..size]);
        }
        if d == Dtype::Bool {
            out.iter_mut().for_each(|b| *b &= 1);
        }
        out.truncate(out.len() / size * size);
        out
    }

    #[test]
    fn exact_casts_keep_every_value() {
        for from in Dtype::ALL {
            for to in Dtype::ALL {
                let Some(c) = Cast::new(from, to).filter(|c| c.kind() == CastKind::Exact) else {
                    continue;
                };
                // Complex parts are floats, and cast as such.
                let part = |d| match d {
                    Dtype::C64 => Dtype::F32,
                    Dtype::C128 => Dtype::F64,
                    d => d,
                };
                let (pf, pt) = (part(from), part(to));
                let src = samples(from);
                let mut dst = vec![0u8; c.output_len(src.len() as u64).unwrap() as usize];
                c.run(&src, &mut dst).unwrap();
                for (s, d) in src.chunks(pf.size()).zip(dst.chunks(pt.size())) {
                    let (a, b) = (decode(s, pf), decode(d, pt));
                    let same = match (&a, &b) {
                        (Value::Int(x), Value::Float(y)) => *x as f64 == *y,
                        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
                        _ => a == b,
                    };
                    assert!(same, "{from} -> {to}: {a:?} became {b:?}");
                }
            }
        }
    }

    #[test]
    fn rounding_casts_round_to_nearest_and_keep_nan_and_infinity() {
        let c = Cast::new(Dtype::F32, Dtype::BF16).unwrap();
        let mut out = [0u8; 2];
        // Just above the midpoint of bf16 0xbf1c and 0xbf1d: ml_dtypes and torch give 0xbf1d.
        c.run(&f32::from_bits(0xbf1c_8007).to_le_bytes(), &mut out)
            .unwrap();
        assert_eq!(u16::from_le_bytes(out), 0xbf1d);
        let c = Cast::new(Dtype::F64, Dtype::F16).unwrap();
        for (x, want) in [
            (1e6, f16::INFINITY),
            (f64::NAN, f16::NAN),
            (0.1, f16::from_f64(0.1)),
        ] {
            c.run(&x.to_le_bytes(), &mut out).unwrap();
            let got = f16::from_le_bytes(out);
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "{x} -> {got}"
            );
        }
        assert!(Cast::new(Dtype::F64, Dtype::F16).unwrap().never_fails());
    }

    #[test]
    fn checked_casts_name_the_first_value_that_does_not_fit() {
        let c = Cast::new(Dtype::I32, Dtype::U16).unwrap();
        assert!(!c.never_fails());
        let src: Vec<u8> = [7i32, 65535, -1, 70000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = [0u8; 8];
        let e = c.run(&src, &mut out).unwrap_err();
        assert_eq!(
            e,
            Error::CastOutOfRange {
                from: Dtype::I32,
                to: Dtype::U16,
                index: 2,
                value: "-1".into()
            }
        );
        assert_eq!(out[..4], [7, 0, 0xff, 0xff]);
    }

    #[test]
    fn lengths_that_do_not_match_are_errors_and_nothing_is_written() {
        let c = Cast::new(Dtype::U16, Dtype::I64).unwrap();
        let mut out = [9u8; 8];
        for (src, dst) in [(3usize, 8usize), (4, 8), (2, 7)] {
            let e = c.run(&vec![1u8; src], &mut out[..dst]).unwrap_err();
            assert!(matches!(e, Error::CastLength { .. }), "{e}");
        }
        assert_eq!(out, [9; 8]);
        c.run(&[], &mut []).unwrap();
        assert_eq!(c.output_len(6), Some(24));
    }
}
