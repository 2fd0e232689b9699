//! Dtype casts: which ones the converter makes ([`cast_supported`]) and the format crate's kernel
//! ([`mmtensor_format::Cast`], shared with the loader's gather) run in parallel ([`cast`]).

use mmtensor_format::{Cast, Dtype};
use rayon::prelude::*;

use crate::transform::parallel::PAR_ELEMS;

/// Whether [`cast`] converts `from` to `to` (the identity is always supported).
pub fn cast_supported(from: Dtype, to: Dtype) -> bool {
    from == to
        || (is_real_float(from) && is_real_float(to))
        || (from == Dtype::C128 && to == Dtype::C64)
        || (from.is_integer() && to.is_integer())
}

/// Real floating-point types that casts convert between (fp8 has no cast kernels).
pub fn is_real_float(d: Dtype) -> bool {
    matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// A value that a narrowing integer cast could not represent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfRange {
    /// Index of the element in the slice given to [`cast`].
    pub index: u64,
    /// The value, as text.
    pub value: String,
}

/// Casts the little-endian elements of `src` (dtype `from`) into `dst` (dtype `to`), in parallel.
///
/// The kernel is [`mmtensor_format::Cast::run`] (shared with the loader's gather), run on pieces
/// of `PAR_ELEMS` elements in the loader's fork-safe pool. Float narrowing rounds to nearest,
/// ties to even (NaN stays NaN, overflow gives infinity), in one rounding step from the exact
/// source value. Integer casts check every value and report the first (lowest index) that does
/// not fit.
///
/// # Panics
/// When the cast is not [`cast_supported`] or the slice lengths do not hold the same number of
/// elements: both are checked by the planner before any data moves.
///
/// # Errors
/// The first element a narrowing integer cast cannot represent.
pub fn cast(src: &[u8], from: Dtype, dst: &mut [u8], to: Dtype) -> Result<(), OutOfRange> {
    assert_eq!(
        src.len() / from.size(),
        dst.len() / to.size(),
        "cast slices hold different element counts"
    );
    let kernel = Cast::new(from, to)
        .filter(|_| cast_supported(from, to))
        .unwrap_or_else(|| panic!("unsupported cast {from} -> {to}"));
    // In the loader's per-process pool, not rayon's global one: a process forked after its parent
    // used the global pool (a fork-started DataLoader worker) would otherwise wait forever for
    // global-pool threads that fork did not copy.
    #[allow(clippy::disallowed_methods)] // Inside `pool::install`.
    let bad = mmtensor::pool::install(|| {
        src.par_chunks(from.size() * PAR_ELEMS)
            .zip(dst.par_chunks_mut(to.size() * PAR_ELEMS))
            .enumerate()
            .filter_map(|(part, (s, d))| match kernel.run(s, d) {
                Ok(()) => None,
                Err(mmtensor_format::Error::CastOutOfRange { index, value, .. }) => {
                    Some((part as u64 * PAR_ELEMS as u64 + index, value))
                }
                Err(e) => panic!("{e}: the pieces hold the same element counts"),
            })
            .min()
    });
    match bad {
        None => Ok(()),
        Some((index, value)) => Err(OutOfRange { index, value }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use proptest::prelude::*;

    /// True when the 16-bit pattern `got` is the correctly rounded (to nearest, ties to even) image
    /// of `x`: its magnitude neighbours (one unit below and above) are not closer to `x`, and on a
    /// tie its last bit is even. `val` decodes a pattern; `inf` is the pattern of +infinity.
    fn is_nearest(x: f64, got: u16, val: impl Fn(u16) -> f64, inf: u16) -> bool {
        if x.is_nan() {
            return val(got).is_nan();
        }
        let mag = got & 0x7fff;
        let (ax, g) = (x.abs(), val(mag));
        if g != 0.0 && (got & 0x8000 != 0) != (x < 0.0) {
            return false; // wrong sign
        }
        if mag == inf {
            // Overflow: the largest finite value must not be closer (ties go to the even infinity).
            return ax.is_infinite() || ax - val(inf - 1) >= (val(inf - 1) - val(inf - 2)) / 2.0;
        }
        let d = (ax - g).abs();
        let mut neighbours = vec![mag + 1];
        if mag > 0 {
            neighbours.push(mag - 1);
        }
        neighbours.into_iter().all(|n| {
            let dn = (ax - val(n)).abs();
            dn > d || (dn == d && mag & 1 == 0)
        })
    }

    #[test]
    fn regression_f32_to_bf16_rounds_values_just_above_halfway_up() {
        // 0xbf1c8007: just above the midpoint of bf16 0xbf1c and 0xbf1d; ml_dtypes and torch give 0xbf1d.
        let x = f32::from_bits(0xbf1c_8007);
        let mut out = [0u8; 2];
        cast(&x.to_le_bytes(), Dtype::F32, &mut out, Dtype::BF16).unwrap();
        assert_eq!(u16::from_le_bytes(out), 0xbf1d);
        cast(
            &f64::from(x).to_le_bytes(),
            Dtype::F64,
            &mut out,
            Dtype::BF16,
        )
        .unwrap();
        assert_eq!(u16::from_le_bytes(out), 0xbf1d);
    }

    proptest! {
        #[test]
        fn f32_to_f64_round_trips(v in prop::collection::vec(any::<f32>(), 0..300)) {
            let src: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut wide = vec![0u8; v.len() * 8];
            cast(&src, Dtype::F32, &mut wide, Dtype::F64).unwrap();
            let mut back = vec![0u8; v.len() * 4];
            cast(&wide, Dtype::F64, &mut back, Dtype::F32).unwrap();
            prop_assert_eq!(back, src);
        }

        #[test]
        fn bf16_and_f16_round_trip_through_f32_and_f64(bits in prop::collection::vec(any::<u16>(), 0..300)) {
            let src: Vec<u8> = bits.iter().flat_map(|x| x.to_le_bytes()).collect();
            for half in [Dtype::F16, Dtype::BF16] {
                for wide in [Dtype::F32, Dtype::F64] {
                    let mut w = vec![0u8; bits.len() * wide.size()];
                    cast(&src, half, &mut w, wide).unwrap();
                    let mut back = vec![0u8; src.len()];
                    cast(&w, wide, &mut back, half).unwrap();
                    for (a, b) in src.chunks(2).zip(back.chunks(2)) {
                        let (a, b) = (u16::from_le_bytes([a[0], a[1]]), u16::from_le_bytes([b[0], b[1]]));
                        let nan = if half == Dtype::F16 { f16::from_bits(a).is_nan() } else { bf16::from_bits(a).is_nan() };
                        // NaN payloads may be quieted; every other value is exact.
                        prop_assert!(a == b || nan, "{half} {wide}: {a:#06x} -> {b:#06x}");
                    }
                }
            }
        }

        #[test]
        fn f64_to_bf16_and_f16_round_once_to_nearest_even(
            v in prop::collection::vec(any::<f64>(), 0..300),
            near in prop::collection::vec((any::<u16>(), any::<u32>(), any::<bool>()), 0..300),
        ) {
            // Random doubles, plus doubles just around the midpoint of two bf16/f16 neighbours,
            // where a lost sticky bit shows.
            let mut xs = v.clone();
            for &(h, low, up) in &near {
                let m = bf16::from_bits(h).to_f64();
                let ulp = (bf16::from_bits(h.wrapping_add(1)).to_f64() - m) / 2.0;
                let tweak = f64::from(low) * f64::EPSILON * m.abs();
                xs.push(if up { m + ulp + tweak } else { m + ulp - tweak });
                let m = f16::from_bits(h).to_f64();
                let ulp = (f16::from_bits(h.wrapping_add(1)).to_f64() - m) / 2.0;
                xs.push(m + ulp + if up { tweak } else { -tweak });
            }
            let src: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut b = vec![0u8; xs.len() * 2];
            let mut h = vec![0u8; xs.len() * 2];
            cast(&src, Dtype::F64, &mut b, Dtype::BF16).unwrap();
            cast(&src, Dtype::F64, &mut h, Dtype::F16).unwrap();
            for (i, x) in xs.iter().enumerate() {
                let got = u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
                prop_assert!(is_nearest(*x, got, |p| bf16::from_bits(p).to_f64(), 0x7f80), "bf16 {x:e} -> {got:#06x}");
                let got = u16::from_le_bytes([h[2 * i], h[2 * i + 1]]);
                prop_assert!(is_nearest(*x, got, |p| f16::from_bits(p).to_f64(), 0x7c00), "f16 {x:e} -> {got:#06x}");
            }
        }

        #[test]
        fn f32_to_bf16_and_f16_equal_halfs_from_f32(v in prop::collection::vec(any::<f32>(), 0..300)) {
            let src: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut b = vec![0u8; v.len() * 2];
            let mut h = vec![0u8; v.len() * 2];
            cast(&src, Dtype::F32, &mut b, Dtype::BF16).unwrap();
            cast(&src, Dtype::F32, &mut h, Dtype::F16).unwrap();
            for (i, x) in v.iter().enumerate() {
                let (gb, wb) = (bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]), bf16::from_f32(*x));
                prop_assert!(gb.to_bits() == wb.to_bits() || (gb.is_nan() && wb.is_nan()));
                let (gh, wh) = (f16::from_le_bytes([h[2 * i], h[2 * i + 1]]), f16::from_f32(*x));
                prop_assert!(gh.to_bits() == wh.to_bits() || (gh.is_nan() && wh.is_nan()));
            }
        }

        #[test]
        fn int_narrowing_finds_the_first_bad_value(v in prop::collection::vec(any::<i32>(), 0..200_000)) {
            let src: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut out = vec![0u8; v.len() * 2];
            let first_bad = v.iter().position(|x| i16::try_from(*x).is_err());
            match cast(&src, Dtype::I32, &mut out, Dtype::I16) {
                Ok(()) => {
                    prop_assert_eq!(first_bad, None);
                    let back: Vec<i32> = out.chunks(2).map(|b| i32::from(i16::from_le_bytes([b[0], b[1]]))).collect();
                    prop_assert_eq!(back, v);
                }
                Err(e) => {
                    prop_assert_eq!(Some(e.index as usize), first_bad);
                    prop_assert_eq!(e.value, v[first_bad.unwrap()].to_string());
                }
            }
        }
    }

    #[test]
    fn narrowing_reports_the_lowest_index_across_parallel_parts() {
        let mut v = vec![1u64; 3 * PAR_ELEMS];
        v[2 * PAR_ELEMS + 5] = u64::MAX;
        v[PAR_ELEMS + 3] = 1 << 40;
        let src: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut out = vec![0u8; v.len() * 4];
        let e = cast(&src, Dtype::U64, &mut out, Dtype::I32).unwrap_err();
        assert_eq!(e.index, PAR_ELEMS as u64 + 3);
        assert_eq!(e.value, (1u64 << 40).to_string());
        let e = cast(&(-1i8).to_le_bytes(), Dtype::I8, &mut [0u8; 8], Dtype::U64).unwrap_err();
        assert_eq!((e.index, e.value.as_str()), (0, "-1"));
    }
}
