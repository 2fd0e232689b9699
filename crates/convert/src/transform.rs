//! The byte-level transforms: byte swapping, dtype casts and the Fortran-to-C transpose.
//!
//! Which casts exist and the kernel that makes them are the format crate's
//! ([`mmtensor_format::Cast`], shared with the loader's gather); this module decides which of them
//! the converter makes ([`cast_supported`]) and runs the kernel in parallel.
//!
//! Every function here works on little-endian byte slices whose length is a whole number of
//! elements; none allocates in proportion to a tensor (the transpose's buffer is the caller's).

use mmtensor_format::{Cast, Dtype};
use rayon::prelude::*;

/// Elements handed to one rayon task: large enough that scheduling costs nothing, small enough
/// that an 8 MiB chunk still splits across cores.
const PAR_ELEMS: usize = 64 * 1024;

/// Reverses the bytes of every `component`-byte unit of `bytes` (big-endian to little-endian).
///
/// Complex numbers swap each component, so `component` is the dtype's size for real types and half
/// of it for complex types (see [`swap_unit`]).
pub fn swap_bytes(bytes: &mut [u8], component: usize) {
    fn go<const N: usize>(bytes: &mut [u8]) {
        // In the loader's fork-safe pool, as every kernel here (see `map`).
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
/// of [`PAR_ELEMS`] elements in the loader's fork-safe pool. Float narrowing rounds to nearest,
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

/// Random access to the bytes of a Fortran-order array, at offsets counted from its first byte.
///
/// The converter implements it with bounded `pread`s of the input file (or of a spill file it
/// created itself), so a file that shrinks while it is read gives an error, never a `SIGBUS`;
/// byte slices implement it for tests and benchmarks.
pub trait ReadAt {
    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    ///
    /// # Errors
    /// [`std::io::ErrorKind::UnexpectedEof`] when the bytes end first, or the read's own error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Side of the square tiles a block is copied in: 64 columns by 64 rows keeps both the runs
/// read and the rows written within a few pages, where a column-at-a-time copy touches a new
/// page of output for every element.
const TILE: usize = 64;

/// Column runs shorter than this make direct reads of a matrix slow enough that transposing it
/// through a spill file in square tiles ([`transpose_tiles`]) is faster. Measured end to end on
/// 128 MB f32/f64 matrices (docs/BENCHMARKS.md): 52-byte runs took 1.4 s read directly against
/// 0.55 s through a spill file; 512-byte runs were even; 2 KiB runs were faster read directly.
const MIN_RUN: usize = 256;

/// Below this many bytes per element, the strided gather (rows longer than the chunk) reads a
/// window of the source around each element instead of the element alone.
const GATHER_WINDOW_STRIDE: usize = 512;

/// Reorders a Fortran-order array into C order, one bounded output chunk at a time.
///
/// The input is read through [`ReadAt`] in bounded pieces, never whole. Output is produced in
/// blocks of whole rows along axis 0: for a block of rows `a..b`, each column of the Fortran
/// layout contributes one contiguous run of `b - a` elements, read with one read per column (or
/// one read for a tile of 64 columns when the runs are at least half of the columns, so the gaps
/// read cost less than separate reads), then copied in 64 x 64 tiles. When one row is larger
/// than the budget, the rows are produced piecewise by a strided gather (slower, still bounded).
///
/// Memory: the output chunk (about `budget` bytes) and a scratch buffer of at most twice that.
#[derive(Debug)]
pub struct FortranToC {
    shape: Vec<u64>,
    elem: usize,
    budget: usize,
    /// Elements per row along axis 0 (the product of the trailing dimensions).
    row: u64,
    /// Next output element (C-order flat index).
    next: u64,
    total: u64,
}

impl FortranToC {
    /// Plans the reordering of an array of `shape` with elements of `dtype`, producing chunks of
    /// about `budget` bytes (at least one element).
    ///
    /// The element size comes from a [`Dtype`], so it is always 1, 2, 4, 8 or 16 bytes: a raw size
    /// of 0 (which divided by zero) cannot be asked for.
    ///
    /// The shape's element count must fit in `u64` and its bytes in `usize` (the planner checks
    /// both against the input file's length); otherwise the reorder produces nothing.
    ///
    /// ```compile_fail
    /// // A raw element size is not accepted: it could be 0.
    /// mmtensor_convert::transform::FortranToC::new(&[2, 2], 0usize, 64);
    /// ```
    ///
    /// ```
    /// use mmtensor_convert::transform::FortranToC;
    /// use mmtensor_format::Dtype;
    ///
    /// // A 2 x 3 Fortran-order matrix of bytes: columns [1, 4], [2, 5], [3, 6].
    /// let fortran: &[u8] = &[1, 4, 2, 5, 3, 6];
    /// let mut t = FortranToC::new(&[2, 3], Dtype::U8, 64);
    /// assert!(!t.prefers_spill());
    /// let (mut scratch, mut out) = (Vec::new(), Vec::new());
    /// t.next_chunk(fortran, &mut scratch, &mut out)?;
    /// assert_eq!(out, [1, 2, 3, 4, 5, 6]);
    /// assert!(t.is_done());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(shape: &[u64], dtype: Dtype, budget: usize) -> FortranToC {
        let elem = dtype.size();
        let total = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|n| {
                n.checked_mul(elem as u64)
                    .is_some_and(|b| usize::try_from(b).is_ok())
            })
            .unwrap_or(0);
        let row = if total == 0 {
            1
        } else {
            shape.iter().skip(1).product()
        };
        FortranToC {
            shape: shape.to_vec(),
            elem,
            budget: budget.max(elem),
            row,
            next: 0,
            total,
        }
    }

    /// True when reading the source directly would take many reads of fewer than 256 bytes that
    /// cannot be merged (wide matrices, rows longer than the budget): a matrix (rank 2) is then
    /// better reordered by [`transpose_tiles`] into a spill file, read back in order.
    pub fn prefers_spill(&self) -> bool {
        if self.shape.len() != 2 || self.total == 0 {
            return false;
        }
        let es = self.elem;
        let d0 = self.shape[0] as usize;
        let row_bytes = self.row as usize * es;
        if row_bytes > self.budget {
            return d0.saturating_mul(es) > GATHER_WINDOW_STRIDE;
        }
        let h = (self.budget / row_bytes).min(d0);
        let dense = d0 - h <= h;
        !dense && h * es < MIN_RUN
    }

    /// True when every element was produced.
    pub fn is_done(&self) -> bool {
        self.next >= self.total
    }

    /// Writes the next chunk of C-order bytes into `out` (cleared first), reading the
    /// Fortran-order bytes of the whole array from `src`; `scratch` is a reusable buffer.
    ///
    /// # Errors
    /// The first error of `src` (a short read when the source is shorter than the array).
    pub fn next_chunk<R: ReadAt + ?Sized>(
        &mut self,
        src: &R,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        out.clear();
        if self.is_done() {
            return Ok(());
        }
        let es = self.elem;
        let row_bytes = self.row as usize * es;
        let d0 = self.shape[0];
        if self.next % self.row == 0 && row_bytes <= self.budget {
            // Whole-row blocks.
            let a = self.next / self.row;
            let rows = ((self.budget / row_bytes.max(1)) as u64).clamp(1, d0 - a);
            out.resize(rows as usize * row_bytes, 0);
            let rest = &self.shape[1..];
            // C-order strides of the trailing dims, in elements.
            let mut cstride = vec![1u64; rest.len()];
            for k in (0..rest.len().saturating_sub(1)).rev() {
                cstride[k] = cstride[k + 1] * rest[k + 1];
            }
            let block = Block {
                d0: d0 as usize,
                a: a as usize,
                row: self.row as usize,
                rows: rows as usize,
            };
            match es {
                1 => block.copy::<1, R>(src, rest, &cstride, scratch, out)?,
                2 => block.copy::<2, R>(src, rest, &cstride, scratch, out)?,
                4 => block.copy::<4, R>(src, rest, &cstride, scratch, out)?,
                8 => block.copy::<8, R>(src, rest, &cstride, scratch, out)?,
                16 => block.copy::<16, R>(src, rest, &cstride, scratch, out)?,
                _ => return Err(std::io::ErrorKind::InvalidInput.into()),
            }
            self.next = (a + rows) * self.row;
        } else {
            self.gather(src, scratch, out)?;
        }
        Ok(())
    }

    /// A strided gather over a C-order range, for rows longer than the budget. Each element is
    /// read alone when elements are far apart in the source; when they are close (axis 0 is
    /// short), a window of the source around it is read and kept for the next ones.
    fn gather<R: ReadAt + ?Sized>(
        &mut self,
        src: &R,
        window: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let es = self.elem;
        let n = ((self.budget / es) as u64).min(self.total - self.next);
        out.resize(n as usize * es, 0);
        let rank = self.shape.len();
        let mut fstride = vec![1u64; rank];
        for k in 1..rank {
            fstride[k] = fstride[k - 1] * self.shape[k - 1];
        }
        let mut idx = vec![0u64; rank];
        let mut rem = self.next;
        for k in (0..rank).rev() {
            idx[k] = rem % self.shape[k];
            rem /= self.shape[k];
        }
        let total_bytes = self.total * es as u64;
        let wide = (self.shape[0] as usize).saturating_mul(es) <= GATHER_WINDOW_STRIDE;
        let window_len = if wide { self.budget as u64 } else { es as u64 };
        // The window holds source bytes `wstart..wstart + window.len()`.
        let mut wstart = 0u64;
        window.clear();
        let mut f: u64 = idx.iter().zip(&fstride).map(|(i, s)| i * s).sum();
        for j in 0..n as usize {
            let s = f * es as u64;
            if s < wstart || s + es as u64 > wstart + window.len() as u64 {
                let len = window_len.max(es as u64).min(total_bytes - s) as usize;
                window.resize(len, 0);
                src.read_exact_at(window, s)?;
                wstart = s;
            }
            let w = (s - wstart) as usize;
            out[j * es..(j + 1) * es].copy_from_slice(&window[w..w + es]);
            for k in (0..rank).rev() {
                idx[k] += 1;
                f += fstride[k];
                if idx[k] < self.shape[k] {
                    break;
                }
                f -= fstride[k] * self.shape[k];
                idx[k] = 0;
            }
        }
        self.next += n;
        Ok(())
    }
}

/// Reorders a Fortran-order matrix of `shape` `[d0, d1]` with elements of `dtype` into C order,
/// in square tiles of about `budget` bytes: each tile is read as one run per column (at least
/// a tile's side long) and written as one run per row through `write_at(bytes, offset)`, at
/// offsets of the C-order matrix. The destination is a file of the matrix's size (the
/// converter's own spill file), read back in order afterwards.
///
/// Memory: `scratch` and `tile`, about `budget` bytes each.
///
/// The element size comes from a [`Dtype`] (1, 2, 4, 8 or 16 bytes), never a raw number that
/// could be 0.
///
/// # Errors
/// The first error of `src` or of `write_at`; [`std::io::ErrorKind::InvalidInput`] when the
/// matrix's byte size does not fit in `usize`.
pub fn transpose_tiles<R: ReadAt + ?Sized>(
    src: &R,
    shape: [u64; 2],
    dtype: Dtype,
    budget: usize,
    scratch: &mut Vec<u8>,
    tile: &mut Vec<u8>,
    write_at: &mut dyn FnMut(&[u8], u64) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let elem = dtype.size();
    let too_big = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let d0 = usize::try_from(shape[0]).map_err(|_| too_big())?;
    let d1 = usize::try_from(shape[1]).map_err(|_| too_big())?;
    d0.checked_mul(d1)
        .and_then(|n| n.checked_mul(elem))
        .ok_or_else(too_big)?;
    let es = elem;
    let side = ((budget / es.max(1)) as f64).sqrt() as usize;
    let side = side.max(1);
    let mut r0 = 0;
    while r0 < d0 {
        let h = side.min(d0 - r0);
        let mut q0 = 0;
        while q0 < d1 {
            let w = side.min(d1 - q0);
            let run = h * es;
            scratch.resize(w * run, 0);
            for (j, dst) in scratch.chunks_exact_mut(run).enumerate() {
                src.read_exact_at(dst, (((q0 + j) * d0 + r0) * es) as u64)?;
            }
            tile.resize(h * w * es, 0);
            for (j, col) in scratch.chunks_exact(run).enumerate() {
                for (k, el) in col.chunks_exact(es).enumerate() {
                    let o = (k * w + j) * es;
                    tile[o..o + es].copy_from_slice(el);
                }
            }
            for (k, row) in tile.chunks_exact(w * es).enumerate() {
                write_at(row, (((r0 + k) * d1 + q0) * es) as u64)?;
            }
            q0 += w;
        }
        r0 += h;
    }
    Ok(())
}

/// One block of whole rows `a..a + rows` of a Fortran-order array, to be written in C order.
struct Block {
    /// Length of axis 0.
    d0: usize,
    /// First row of the block.
    a: usize,
    /// Elements per row (the product of the trailing dimensions).
    row: usize,
    /// Rows in the block.
    rows: usize,
}

impl Block {
    /// Copies the block into `out` (C order), in tiles of 64 columns, with `E`-byte elements.
    fn copy<const E: usize, R: ReadAt + ?Sized>(
        &self,
        src: &R,
        rest: &[u64],
        cstride: &[u64],
        scratch: &mut Vec<u8>,
        out: &mut [u8],
    ) -> std::io::Result<()> {
        // Column q of the Fortran layout holds rows a..a + rows at elements d0 * q + a onwards.
        // When the gap between two columns' runs is no longer than a run, one read of the span
        // of a tile of columns costs less than a read per column.
        let dense = self.d0 - self.rows <= self.rows;
        // The Fortran-order odometer over the trailing dims, and `c`, the C-order index (within a
        // row) of the same position; both run across tiles.
        let mut idx = vec![0u64; rest.len()];
        let mut c = 0u64;
        let mut cs = [0usize; TILE];
        let mut q0 = 0;
        while q0 < self.row {
            let width = TILE.min(self.row - q0);
            for slot in cs.iter_mut().take(width) {
                *slot = c as usize;
                for (k, i) in idx.iter_mut().enumerate() {
                    *i += 1;
                    c += cstride[k];
                    if *i < rest[k] {
                        break;
                    }
                    c -= cstride[k] * rest[k];
                    *i = 0;
                }
            }
            // Load the tile's runs: element (row a + k, column q0 + j) lands at scratch element
            // `stride * j + k`.
            let start = ((self.d0 * q0 + self.a) * E) as u64;
            let stride = if dense {
                scratch.resize(((width - 1) * self.d0 + self.rows) * E, 0);
                src.read_exact_at(scratch, start)?;
                self.d0
            } else {
                let run = self.rows * E;
                scratch.resize(width * run, 0);
                for (j, dst) in scratch.chunks_exact_mut(run).enumerate() {
                    src.read_exact_at(dst, start + (j * self.d0 * E) as u64)?;
                }
                self.rows
            };
            let mut k0 = 0;
            while k0 < self.rows {
                let height = TILE.min(self.rows - k0);
                for (j, &cq) in cs.iter().enumerate().take(width) {
                    let base = (stride * j + k0) * E;
                    let run = &scratch[base..base + height * E];
                    for (k, el) in run.chunks_exact(E).enumerate() {
                        let o = ((k0 + k) * self.row + cq) * E;
                        let el: &[u8; E] = el.try_into().expect("chunks_exact gives E bytes");
                        out[o..o + E].copy_from_slice(el);
                    }
                }
                k0 += height;
            }
            q0 += width;
        }
        Ok(())
    }
}

/// True when a Fortran-order array of `shape` has the same bytes as its C-order form (at most one
/// dimension above 1, or no elements).
pub fn fortran_is_c(shape: &[u64]) -> bool {
    shape.contains(&0) || shape.iter().filter(|&&d| d > 1).count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use proptest::prelude::*;

    /// Naive Fortran-to-C by index arithmetic on every element.
    fn naive(src: &[u8], shape: &[u64], es: usize) -> Vec<u8> {
        let total: u64 = shape.iter().product();
        let mut out = vec![0u8; total as usize * es];
        for c in 0..total {
            let mut rem = c;
            let mut idx = vec![0u64; shape.len()];
            for k in (0..shape.len()).rev() {
                idx[k] = rem % shape[k];
                rem /= shape[k];
            }
            let mut f = 0u64;
            let mut stride = 1u64;
            for k in 0..shape.len() {
                f += idx[k] * stride;
                stride *= shape[k];
            }
            out[c as usize * es..][..es].copy_from_slice(&src[f as usize * es..][..es]);
        }
        out
    }

    /// A dtype of `es` bytes per element.
    fn dtype_of(es: usize) -> Dtype {
        match es {
            1 => Dtype::U8,
            2 => Dtype::U16,
            4 => Dtype::U32,
            8 => Dtype::U64,
            16 => Dtype::C128,
            _ => unreachable!("no dtype has {es} bytes"),
        }
    }

    fn run(src: &[u8], shape: &[u64], es: usize, budget: usize) -> Vec<u8> {
        let mut t = FortranToC::new(shape, dtype_of(es), budget);
        let mut all = Vec::new();
        let mut buf = Vec::new();
        let mut scratch = Vec::new();
        while !t.is_done() {
            t.next_chunk(src, &mut scratch, &mut buf).unwrap();
            assert!(!buf.is_empty());
            assert!(
                buf.len()
                    <= budget
                        .max(shape.iter().skip(1).product::<u64>() as usize * es)
                        .max(es)
            );
            all.extend_from_slice(&buf);
        }
        all
    }

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
    fn regression_an_element_size_of_zero_divided_by_zero() {
        // The element size was a raw `usize`: 0 panicked in `prefers_spill` (division) and in
        // `transpose_tiles` (`chunks_exact(0)`). It now comes from a dtype, so every size the
        // functions can be given is a real one; the `compile_fail` example on `FortranToC::new`
        // pins that a raw number is refused.
        for dtype in Dtype::ALL {
            let es = dtype.size();
            let src: Vec<u8> = (0..6 * es).map(|i| i as u8).collect();
            let mut t = FortranToC::new(&[2, 3], dtype, 1);
            let _ = t.prefers_spill();
            let (mut scratch, mut buf, mut all) = (Vec::new(), Vec::new(), Vec::new());
            while !t.is_done() {
                t.next_chunk(&src[..], &mut scratch, &mut buf).unwrap();
                all.extend_from_slice(&buf);
            }
            assert_eq!(all, naive(&src, &[2, 3], es), "{dtype}");
            let mut out = vec![0u8; 6 * es];
            let mut tile = Vec::new();
            transpose_tiles(
                &src[..],
                [2, 3],
                dtype,
                1,
                &mut scratch,
                &mut tile,
                &mut |b, at| {
                    out[at as usize..][..b.len()].copy_from_slice(b);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(out, all, "{dtype}");
        }
    }

    #[test]
    fn transpose_crosses_tile_boundaries() {
        // Dimensions just past multiples of the 64-element tile, in both directions, with
        // budgets that split the rows into uneven blocks.
        for (shape, es, budget) in [
            (vec![130u64, 70], 8usize, 1 << 20),
            (vec![130, 70], 4, 70 * 4 * 3),
            (vec![3, 65, 67], 2, 1 << 16),
            (vec![200, 2, 33], 16, 66 * 16 * 65),
        ] {
            let total: u64 = shape.iter().product();
            let src: Vec<u8> = (0..total as usize * es)
                .map(|i| (i * 31 + i / 253) as u8)
                .collect();
            assert_eq!(
                run(&src, &shape, es, budget),
                naive(&src, &shape, es),
                "{shape:?} {es} {budget}"
            );
        }
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
        fn transpose_equals_naive(
            shape in prop::collection::vec(1u64..6, 1..5),
            es in prop::sample::select(vec![1usize, 2, 4, 8, 16]),
            budget in 1usize..400,
        ) {
            let total: u64 = shape.iter().product();
            let src: Vec<u8> = (0..total as usize * es).map(|i| (i * 7 + i / 251) as u8).collect();
            prop_assert_eq!(run(&src, &shape, es, budget), naive(&src, &shape, es));
        }

        #[test]
        fn tiled_transpose_equals_naive(
            d0 in 1u64..40,
            d1 in 1u64..40,
            es in prop::sample::select(vec![1usize, 2, 4, 8, 16]),
            budget in 1usize..600,
        ) {
            let total = (d0 * d1) as usize;
            let src: Vec<u8> = (0..total * es).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut out = vec![0u8; total * es];
            let (mut scratch, mut tile) = (Vec::new(), Vec::new());
            transpose_tiles(&src[..], [d0, d1], dtype_of(es), budget, &mut scratch, &mut tile, &mut |b, at| {
                out[at as usize..at as usize + b.len()].copy_from_slice(b);
                Ok(())
            }).unwrap();
            prop_assert_eq!(out, naive(&src, &[d0, d1], es));
        }

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
