//! The Fortran-to-C reorder: [`FortranToC`] in bounded chunks of whole rows (or a strided gather),
//! and [`transpose_tiles`] for matrices whose column runs are short, both reading through
//! [`ReadAt`] and never holding the array whole.

use mmtensor_format::Dtype;

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
        if self.next.is_multiple_of(self.row) && row_bytes <= self.budget {
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
    }
}
