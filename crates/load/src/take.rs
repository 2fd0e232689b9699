//! The parallel gather: rows at arbitrary positions along axis 0, copied into one buffer.
//!
//! A training loader reads shuffled batches: a thousand rows scattered over a tensor, every step.
//! Copying them one by one in the caller's order faults pages in random order on one thread. `take`
//! instead sorts the requested rows into file order, merges rows that are neighbours both in the
//! file and in the output into one copy, and spreads the copies over rayon's worker threads, each
//! of which walks its share of the file front to back.
//!
//! A gather may also cast: each run's source rows are converted straight into their place in the
//! output ([`mmtensor_format::Cast::run`], the kernel the converter uses too) by the thread that
//! copies them, so a cast costs no second pass over the batch. It makes only the casts that cannot
//! fail on any value ([`read_cast`]): a batch never stops halfway on a value that does not fit.
//!
//! All of a gather's parallel work, the sort of many indices as much as the copies, runs inside
//! one [`crate::pool::install`]: on the per-process pool, never on rayon's global one, which a
//! fork-started child (a PyTorch DataLoader worker) inherits without its threads. The workspace's
//! `clippy.toml` refuses rayon's entry points anywhere they are not allowed by name, next to the
//! `install` they run in; `tests/fork.rs` runs every public parallel operation in a forked child.

use rayon::prelude::*;

use std::path::Path;

use mmtensor_format::{Cast, CastKind, Dtype};

use crate::element::{sealed::Sealed, Element, ViewError};
use crate::tensor::Tensor;
use crate::{pool, Error, Result};

/// Bytes of copying below which the calling thread does all of it: splitting a few pages over
/// threads costs more in wake-ups than it saves.
const SERIAL_BYTES: u64 = 256 << 10;
/// Bytes each rayon task copies at least, so that small rows still make tasks worth stealing.
const TASK_BYTES: u64 = 64 << 10;
/// Indices above which the sort into file order runs in parallel (and so in the pool).
const PAR_SORT_ROWS: usize = 1 << 16;

thread_local! {
    /// Whether gathers on this thread run on it alone, never in the pool: set on the loader's
    /// gather threads, which gather whole batches side by side ([`serially`]).
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` with every gather it makes on the calling thread alone. The loader's gather threads
/// gather one batch each, side by side: splitting a batch over the pool as well would only add
/// hand-offs, and the pool's threads spin and yield between the tasks of one batch and the next
/// (CPU time a training step could use) where a thread waiting for its next batch sleeps.
pub(crate) fn serially<R>(work: impl FnOnce() -> R) -> R {
    SERIAL.with(|s| {
        let before = s.replace(true);
        let r = work();
        s.set(before);
        r
    })
}

/// One copy: `rows` rows starting at row `src` of part `part`, to the output starting at row
/// `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    part: usize,
    src: u64,
    dst: usize,
    rows: usize,
}

/// Each index with its output position, in the order given. Sorted, (row, output position) pairs
/// are in file order with duplicates in output order, so the runs do not depend on the sort's
/// stability or on the thread count.
fn positions(indices: &[u64]) -> Vec<(u64, usize)> {
    indices.iter().copied().zip(0..).collect()
}

/// The copies that gather the rows of `order` (sorted [`positions`] of indices all already
/// checked to be below the last of `starts`), in file order: each run is a maximal stretch of rows
/// that are consecutive in one part and in the output alike, so a sorted slice `[4, 5, 6]` asked
/// for at output positions `[0, 1, 2]` is one copy. Duplicates give one run per output position.
/// `starts[p]` is the first row of part `p` in the index space of `indices`, and `starts` ends
/// with the total (one part: `[0, rows]`).
fn runs(order: &[(u64, usize)], starts: &[u64]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut part = 0;
    for &(row, dst) in order {
        // Rows come in ascending order, so the part only moves forwards (past empty parts too).
        while part + 2 < starts.len() && row >= starts[part + 1] {
            part += 1;
        }
        let src = row - starts[part];
        if let Some(last) = runs.last_mut() {
            // `rows` counts output positions, which fit in usize; the row numbers are below the
            // part's row count, so these sums cannot overflow.
            let next_src = last.src + last.rows as u64;
            let next_dst = last.dst + last.rows;
            if last.part == part && src == next_src && dst == next_dst {
                last.rows += 1;
                continue;
            }
        }
        runs.push(Run {
            part,
            src,
            dst,
            rows: 1,
        });
    }
    runs
}

/// The cast a gather makes from `from` to `to` (the identity when they are equal), or
/// [`Error::UnsupportedCast`] naming `path` and `tensor`: the casts of [`Cast::new`]'s table that
/// cannot fail on any value ([`Cast::never_fails`]). Integer narrowing, which can, is refused
/// here, once, rather than found on a value in the middle of an epoch.
pub(crate) fn read_cast(path: &Path, tensor: &str, from: Dtype, to: Dtype) -> Result<Cast> {
    Cast::new(from, to)
        .filter(Cast::never_fails)
        .ok_or_else(|| Error::UnsupportedCast {
            path: path.to_path_buf(),
            tensor: tensor.to_owned(),
            from,
            to,
        })
}

/// The bytes a row of `row` source bytes becomes through `cast`, or [`Error::TooLarge`].
pub(crate) fn cast_row(path: &Path, row: u64, cast: Cast) -> Result<u64> {
    cast.output_len(row).ok_or_else(|| Error::TooLarge {
        path: path.to_path_buf(),
        len: u64::MAX,
    })
}

/// Copies the rows `indices` of the parts (`views[p]` holding rows `starts[p]..starts[p + 1]` of
/// one index space; every index already checked to be in range, `out` checked to hold one row of
/// `cast.output_len(row)` bytes for each) into `out`, in parallel on the loader's pool, reading
/// each part in file order. `row` is the bytes of one source row; each run of rows is converted
/// by `cast` (from the parts' dtype, one of [`read_cast`]'s) as it is copied. `BOOL` parts are
/// checked to hold only 0 and 1: the error is for the bad row with the lowest (part, offset).
pub(crate) fn gather(
    views: &[Tensor<'_>],
    starts: &[u64],
    indices: &[u64],
    out: &mut [u8],
    row: u64,
    cast: Cast,
) -> Result<()> {
    let bytes: Vec<&[u8]> = views.iter().map(Tensor::bytes).collect::<Result<_>>()?;
    if out.is_empty() {
        return Ok(());
    }
    // `out` is not empty, so it holds an output row for each index: the output row fits in
    // usize, and every (source) row of a validated view lies inside its bytes. An output row is
    // never empty when `out` is not; a source row is empty only with it.
    let out_row = cast.output_len(row).unwrap_or(u64::MAX) as usize;
    let row = row as usize;
    let copy = |(run, dst): &mut (Run, &mut [u8])| -> Option<Error> {
        let view = &views[run.part];
        let part_bytes = bytes[run.part];
        // In bounds for a validated view; checked anyway, so that a broken invariant is an
        // error and never a panic on a worker thread.
        let src = usize::try_from(run.src)
            .ok()
            .and_then(|r| r.checked_mul(row))
            .and_then(|s| {
                let len = run.rows.checked_mul(row)?;
                Some((s, part_bytes.get(s..s.checked_add(len)?)?))
            });
        let Some((start, src)) = src else {
            let start = view.byte_range().start;
            return Some(Error::Format {
                path: view.store.path().to_owned(),
                source: mmtensor_format::Error::OutOfBounds {
                    what: format!("row {} of tensor `{}`", run.src, view.info.name),
                    start,
                    end: start.saturating_add(part_bytes.len() as u64),
                    file_len: view.store.file().len(),
                },
            });
        };
        if view.info.dtype == mmtensor_format::Dtype::Bool {
            if let Err(ViewError::NotBool { index, value }) = bool::view(src) {
                return Some(Error::InvalidBool {
                    path: view.store.path().to_owned(),
                    tensor: view.info.name.clone(),
                    offset: view.byte_range().start + (start + index) as u64,
                    value,
                });
            }
        }
        if cast.kind() == CastKind::Copy {
            dst.copy_from_slice(src);
            return None;
        }
        // The lengths match (one output row per source row) and the cast never fails on a value;
        // an error here is a broken invariant, reported rather than a panic on a worker thread.
        cast.run(src, dst).err().map(|source| Error::Format {
            path: view.store.path().to_owned(),
            source,
        })
    };
    let total = out.len() as u64;
    if (total <= SERIAL_BYTES && indices.len() <= PAR_SORT_ROWS) || SERIAL.with(|s| s.get()) {
        // Small enough for the calling thread alone (a hand-off to the pool would cost more), or
        // on a thread that gathers alone by design (`serially`).
        let mut order = positions(indices);
        order.sort_unstable();
        let mut tasks = split_out(&runs(&order, starts), out, out_row);
        return tasks.iter_mut().find_map(copy).map_or(Ok(()), Err);
    }
    // Everything parallel, the sort as much as the copies, in the per-process pool (`pool.rs`),
    // so a gather in a child forked after its parent used rayon's global pool (a fork-started
    // DataLoader worker) does not wait for threads fork did not copy.
    #[allow(clippy::disallowed_methods)] // Inside `pool::install`.
    let bad = pool::install(|| {
        let mut order = positions(indices);
        if order.len() > PAR_SORT_ROWS {
            order.par_sort_unstable();
        } else {
            order.sort_unstable();
        }
        let runs = runs(&order, starts);
        drop(order);
        let mut tasks = split_out(&runs, out, out_row);
        // One worker would only move the copy to another core (and its cache).
        if total <= SERIAL_BYTES || rayon::current_num_threads() < 2 {
            return tasks.iter_mut().find_map(copy);
        }
        // Each task copies about TASK_BYTES, in file order within it; `find_map_first` returns
        // the bad run with the lowest (part, offset), whichever thread met it first.
        let per_task = TASK_BYTES
            .saturating_mul(runs.len() as u64)
            .checked_div(total)
            .map_or(1, |n| usize::try_from(n.max(1)).unwrap_or(usize::MAX));
        tasks
            .par_iter_mut()
            .with_min_len(per_task)
            .find_map_first(copy)
    });
    bad.map_or(Ok(()), Err)
}

impl<'a> Tensor<'a> {
    /// The number of bytes of one row along axis 0: the product of the other dims times the dtype
    /// size (the dtype size for a 1-d tensor).
    ///
    /// # Errors
    ///
    /// [`Error::Format`] holding [`mmtensor_format::Error::Scalar`] for a 0-dimensional tensor.
    pub fn row_bytes(&self) -> Result<u64> {
        let fmt = |source| Error::Format {
            path: self.store.path().to_owned(),
            source,
        };
        if self.shape.is_empty() {
            return Err(fmt(mmtensor_format::Error::Scalar {
                tensor: self.info.name.clone(),
            }));
        }
        // A validated tensor's row size fits in a u64 (see `TensorInfo::row_bytes`); checked
        // anyway, like every size computed from the file.
        self.shape[1..]
            .iter()
            .try_fold(self.info.dtype.size() as u64, |n, &d| n.checked_mul(d))
            .ok_or_else(|| {
                fmt(mmtensor_format::Error::ShapeOverflow {
                    tensor: self.info.name.clone(),
                    shape: self.info.shape.clone(),
                    dtype: self.info.dtype,
                })
            })
    }

    /// Gathers the rows `indices` (positions along axis 0, relative to this view) into `out`, in
    /// the order given: row `indices[k]` lands at `out[k * row_bytes..(k + 1) * row_bytes]`.
    ///
    /// Indices may come in any order and repeat. The copy runs on the threads of mmtensor's
    /// per-process pool ([`crate::pool`], so also in a forked child), each reading its share of
    /// the rows in file order, and rows that are neighbours both in the file and in `indices`
    /// (`[7, 8, 9]`) are copied in one piece. The bytes are copied as they are,
    /// so this works for every dtype; `BOOL` rows are checked to hold only 0 and 1, as the typed
    /// views check them. The result does not depend on the number of threads.
    /// [`Tensor::take_into_as`] casts the rows as it copies them.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
    /// # // SAFETY: nothing modifies the fixture.
    /// # let store = unsafe { mmtensor::Store::open(path)? };
    /// let x = store.tensor("x")?; // F32 [256, 8]: rows of 32 bytes
    /// let mut batch = vec![0u8; 3 * 32];
    /// x.take_into(&[200, 3, 4], &mut batch)?;
    /// assert_eq!(&batch[32..64], x.rows(3..4)?.bytes()?);
    /// assert!(x.take_into(&[256], &mut batch[..32]).is_err()); // past the end: nothing written
    /// # Ok::<(), mmtensor::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Checked before anything is written to `out`: [`Error::Format`] holding
    /// [`mmtensor_format::Error::Scalar`] for a 0-dimensional tensor; [`Error::TakeOutput`] when
    /// `out.len()` is not `indices.len() * row_bytes`; [`Error::RowIndex`] for the first index (in
    /// the order given) that is not below the view's row count; [`Error::NeedsConvert`] as for
    /// [`Tensor::bytes`].
    ///
    /// Found while copying, after which the contents of `out` are unspecified:
    /// [`Error::InvalidBool`] for a gathered `BOOL` row holding another byte (the one with the
    /// lowest file offset among the bad rows).
    pub fn take_into(&self, indices: &[u64], out: &mut [u8]) -> Result<()> {
        self.take_into_as(indices, out, self.info.dtype)
    }

    /// Gathers the rows `indices` into `out` as [`Tensor::take_into`] does, cast to `dtype` as
    /// they are copied: each thread converts its rows straight into their place in `out`, so the
    /// cast costs no second pass. `out` holds `indices.len()` rows of `dtype`: `row_bytes /
    /// dtype().size() * dtype.size()` bytes each. With `dtype == self.dtype()` this is
    /// [`Tensor::take_into`].
    ///
    /// The casts made are those that cannot fail on any value ([`mmtensor_format::Cast::new`]'s
    /// table, kinds `Copy`, `Exact` and `Rounds`):
    ///
    /// - exact: integer widening (`U8`/`U16`/`U32`/`I8`/`I16`/`I32` to `I32`/`I64`, to a wider
    ///   unsigned type from an unsigned one), integers to a float that holds them all (`U8`/`I8` to
    ///   any float, `U16`/`I16` to `F32`/`F64`, `U32`/`I32` to `F64`), `F16`/`BF16` to `F32`/`F64`,
    ///   `F32` to `F64`, `C64` to `C128`, and `BOOL` to any integer or real float;
    /// - rounding: float narrowing (`F32`/`F64` to `F16`/`BF16`, `F64` to `F32`, `F16` to and from
    ///   `BF16`, `C128` to `C64`), to nearest, ties to even; a value too large becomes infinity.
    ///
    /// Integer narrowing and changes of sign (`I64` to `I32`, `U64` to `I64`), which fail on
    /// values that do not fit, are refused ([`Error::UnsupportedCast`]) before anything is read:
    /// a batch never stops halfway through an epoch. Narrow such data once with
    /// `mmt convert --dtype NAME=DT`, which checks every value.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
    /// # // SAFETY: nothing modifies the fixture.
    /// # let store = unsafe { mmtensor::Store::open(path)? };
    /// use mmtensor::Dtype;
    ///
    /// let x = store.tensor("x")?; // F32 [256, 8]
    /// let mut wide = vec![0u8; 2 * 8 * 8]; // two rows of eight F64
    /// x.take_into_as(&[5, 1], &mut wide, Dtype::F64)?;
    /// let xs = x.as_slice::<f32>()?;
    /// assert_eq!(f64::from_le_bytes(wide[..8].try_into().unwrap()), f64::from(xs[5 * 8]));
    /// assert!(x.take_into_as(&[5], &mut [0u8; 32], Dtype::I32).is_err()); // no float-to-int
    /// # Ok::<(), mmtensor::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Tensor::take_into`], where [`Error::TakeOutput`] counts rows of `dtype`; first of all
    /// [`Error::UnsupportedCast`] for a cast it does not make, naming the tensor and both dtypes.
    pub fn take_into_as(&self, indices: &[u64], out: &mut [u8], dtype: Dtype) -> Result<()> {
        let path = self.store.path();
        let cast = read_cast(path, &self.info.name, self.info.dtype, dtype)?;
        let row = self.row_bytes()?;
        let out_row = cast_row(path, row, cast)?;
        let expected = u128::from(out_row) * indices.len() as u128;
        if expected != out.len() as u128 {
            return Err(Error::TakeOutput {
                path: path.to_owned(),
                tensor: self.info.name.clone(),
                rows: indices.len(),
                row_bytes: out_row,
                actual: out.len(),
            });
        }
        let n = self.shape[0];
        if let Some(&index) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::RowIndex {
                path: path.to_owned(),
                tensor: self.info.name.clone(),
                index,
                rows: n,
            });
        }
        gather(std::slice::from_ref(self), &[0, n], indices, out, row, cast)
    }

    /// Gathers the rows `indices` into a new byte vector; see [`Tensor::take_into`].
    ///
    /// # Errors
    ///
    /// As [`Tensor::take_into`], except [`Error::TakeOutput`]; [`Error::TooLarge`] when the
    /// result would not fit in memory's address space.
    pub fn take_bytes(&self, indices: &[u64]) -> Result<Vec<u8>> {
        let copy = read_cast(
            self.store.path(),
            &self.info.name,
            self.info.dtype,
            self.info.dtype,
        )?;
        let len = self.take_len(indices, copy)?;
        let mut out = vec![0u8; len];
        self.take_into(indices, &mut out)?;
        Ok(out)
    }

    /// Gathers the rows `indices` into a new vector of elements: `indices.len()` rows of the
    /// view's row shape, C order. See [`Tensor::take_into`].
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
    /// # // SAFETY: nothing modifies the fixture.
    /// # let store = unsafe { mmtensor::Store::open(path)? };
    /// let labels = store.tensor("labels")?; // I64 [256]
    /// let all = labels.as_slice::<i64>()?;
    /// assert_eq!(labels.take::<i64>(&[9, 2, 9])?, [all[9], all[2], all[9]]);
    /// # Ok::<(), mmtensor::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::DtypeMismatch`] when `T` does not view the tensor's dtype; otherwise as
    /// [`Tensor::take_bytes`].
    pub fn take<T: Element>(&self, indices: &[u64]) -> Result<Vec<T>> {
        self.check_type::<T>()?;
        self.take_as(indices)
    }

    /// Gathers the rows `indices` into a new vector of `T`, cast from the tensor's dtype to `T`'s
    /// as they are copied; see [`Tensor::take_into_as`] for the casts made.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/golden/page-a4096.mmt");
    /// # // SAFETY: nothing modifies the fixture.
    /// # let store = unsafe { mmtensor::Store::open(path)? };
    /// let x = store.tensor("x")?; // F32 [256, 8]
    /// let wide: Vec<f64> = x.take_as(&[3])?;
    /// assert_eq!(wide[1], f64::from(x.as_slice::<f32>()?[3 * 8 + 1]));
    /// assert!(x.take_as::<i64>(&[3]).is_err()); // no float-to-integer cast
    /// # Ok::<(), mmtensor::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Tensor::take_into_as`] (with `T`'s dtype), except [`Error::TakeOutput`];
    /// [`Error::TooLarge`] when the result would not fit in memory's address space.
    pub fn take_as<T: Element>(&self, indices: &[u64]) -> Result<Vec<T>> {
        let path = self.store.path();
        let cast = read_cast(path, &self.info.name, self.info.dtype, T::DTYPE)?;
        let len = self.take_len(indices, cast)?;
        let mut fill = |out: &mut [u8]| self.take_into_as(indices, out, T::DTYPE);
        match T::filled(len / std::mem::size_of::<T>(), &mut fill) {
            Some(out) => out,
            // `bool`, which has no byte view to write into (and is cast only from `BOOL`): gather
            // the (checked) bytes, then copy.
            None => {
                let bytes = self.take_bytes(indices)?;
                T::copy(&bytes).map_err(|e| self.view_error::<T>(e))
            }
        }
    }

    /// The byte length of a gather of `indices` through `cast`, as a `usize`.
    fn take_len(&self, indices: &[u64], cast: Cast) -> Result<usize> {
        let row = cast_row(self.store.path(), self.row_bytes()?, cast)?;
        row.checked_mul(indices.len() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Error::TooLarge {
                path: self.store.path().to_owned(),
                len: row.saturating_mul(indices.len() as u64),
            })
    }
}

/// Cuts `out` into one slice per run and returns the (run, slice) pairs in file order. The runs
/// cover every output row exactly once, so cutting `out` front to back hands out disjoint borrows,
/// and the parallel copies need no `unsafe`.
fn split_out<'o>(runs: &[Run], out: &'o mut [u8], row: usize) -> Vec<(Run, &'o mut [u8])> {
    // The run that starts at each output row (`usize::MAX` inside a run): the runs in output order
    // in one linear pass, without sorting them again.
    let rows = out.len() / row;
    let mut starting = vec![usize::MAX; rows];
    for (r, run) in runs.iter().enumerate() {
        starting[run.dst] = r;
    }
    let mut slots: Vec<&'o mut [u8]> = (0..runs.len()).map(|_| <&mut [u8]>::default()).collect();
    let mut rest = out;
    let mut dst = 0;
    while dst < rows {
        let r = starting[dst];
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(runs[r].rows * row);
        slots[r] = head;
        rest = tail;
        dst += runs[r].rows;
    }
    runs.iter().copied().zip(slots).collect()
}

#[cfg(test)]
mod tests {
    use super::Run;

    fn runs_in(indices: &[u64], starts: &[u64]) -> Vec<Run> {
        let mut order = super::positions(indices);
        order.sort_unstable();
        super::runs(&order, starts)
    }

    fn runs(indices: &[u64]) -> Vec<Run> {
        runs_in(indices, &[0, 1 << 40])
    }

    fn run(src: u64, dst: usize, rows: usize) -> Run {
        Run {
            part: 0,
            src,
            dst,
            rows,
        }
    }

    #[test]
    fn runs_stop_at_part_boundaries_and_skip_empty_parts() {
        // Parts of rows 0..3, 3..3 (empty), 3..6.
        let r = runs_in(&[2, 3, 4], &[0, 3, 3, 6]);
        assert_eq!(
            r,
            [
                Run {
                    part: 0,
                    src: 2,
                    dst: 0,
                    rows: 1
                },
                Run {
                    part: 2,
                    src: 0,
                    dst: 1,
                    rows: 2
                },
            ]
        );
    }

    #[test]
    fn neighbours_in_file_and_output_are_one_run() {
        assert_eq!(runs(&[4, 5, 6]), [run(4, 0, 3)]);
        assert_eq!(runs(&[]), []);
    }

    #[test]
    fn reversed_rows_are_separate_runs_in_file_order() {
        assert_eq!(runs(&[6, 5, 4]), [run(4, 2, 1), run(5, 1, 1), run(6, 0, 1)]);
    }

    #[test]
    fn duplicates_get_one_run_per_output_position() {
        assert_eq!(
            runs(&[3, 3, 4, 9, 10]),
            [run(3, 0, 1), run(3, 1, 2), run(9, 3, 2)]
        );
    }
}
