//! The shuffled-batch pattern a training loader reads: the first `--batches` batches of a
//! full-shuffle epoch order of a tensor's rows, and the one reused buffer every case gathers into.

use std::hint::black_box;

use anyhow::{Context, Result};
use mmtensor::order::{EpochOrder, OrderSpec, Shuffle};

use super::measure::full_pass;
use crate::human;

/// How many shuffled batches a case gathers.
#[derive(Clone, Copy, Debug)]
pub(super) enum Batches {
    /// At most this many (at least 1).
    First(u64),
    /// The whole epoch.
    All,
}

/// The shuffled-batch pattern of one tensor, and the buffers every case reuses.
pub(super) struct Shuffled {
    pub(super) order: EpochOrder,
    /// Batches each case gathers: the first ones of `order`.
    pub(super) batches: usize,
    pub(super) rows: u64,
    pub(super) row_bytes: usize,
    /// Rows each case gathers (the sum of the first `batches` batch lengths).
    pub(super) rows_read: u64,
    /// The output buffer, as long as the longest batch; written once before any case, so that no
    /// case's heap growth counts it.
    out: Vec<u8>,
    /// One batch's rows in file order (the pread cases), reused.
    plan: Vec<(u64, usize)>,
    /// Threads of the loader's pool, which `take_into` and the parallel pread use.
    pub(super) threads: usize,
}

impl Shuffled {
    /// The pattern over `tensor`'s rows: `batches` batches of `batch_size` rows of the epoch order
    /// `seed` shuffles. The inner error says why there is none (a tensor without rows to gather,
    /// which is measured without the pattern rather than refused).
    pub(super) fn new(
        tensor: &mmtensor::Tensor<'_>,
        batch_size: u64,
        batches: Batches,
        seed: u64,
    ) -> Result<std::result::Result<Shuffled, String>> {
        let Some(&rows) = tensor.shape().first() else {
            return Ok(Err(format!(
                "tensor `{}` is a scalar: it has no rows to shuffle",
                tensor.name()
            )));
        };
        let row_bytes = tensor.row_bytes()?;
        if rows == 0 || row_bytes == 0 {
            return Ok(Err(format!(
                "tensor `{}` (shape {:?}) holds no bytes to gather",
                tensor.name(),
                tensor.shape()
            )));
        }
        let spec = OrderSpec {
            shuffle: Shuffle::Full,
            seed,
            ..OrderSpec::new(rows, batch_size)
        };
        let order = spec.epoch(0).with_context(|| {
            format!(
                "cannot shuffle the {rows} rows of tensor `{}`",
                tensor.name()
            )
        })?;
        let batches = match batches {
            Batches::All => order.len(),
            Batches::First(n) => usize::try_from(n).unwrap_or(usize::MAX).min(order.len()),
        };
        let rows_read: u64 = order.iter().take(batches).map(|b| b.len() as u64).sum();
        let longest = order
            .iter()
            .take(batches)
            .map(<[u64]>::len)
            .max()
            .unwrap_or(0);
        let row_bytes = usize::try_from(row_bytes)
            .with_context(|| format!("rows of tensor `{}` do not fit in memory", tensor.name()))?;
        let len = longest.checked_mul(row_bytes).with_context(|| {
            format!(
                "a batch of {longest} rows of {row_bytes} bytes does not fit in memory (try a smaller --batch-size)"
            )
        })?;
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|_| {
            anyhow::anyhow!(
                "cannot allocate a batch buffer of {} (try a smaller --batch-size)",
                human::bytes(len as u64)
            )
        })?;
        // Written, not only allocated: untouched pages would be faulted in by the first case.
        out.resize(len, 1);
        #[allow(clippy::disallowed_methods)] // Inside `pool::install`: the pool's own count.
        let threads = mmtensor::pool::install(rayon::current_num_threads);
        Ok(Ok(Shuffled {
            order,
            batches,
            rows,
            row_bytes,
            rows_read,
            out,
            plan: Vec::new(),
            threads,
        }))
    }

    /// Bytes each case gathers.
    pub(super) fn bytes_read(&self) -> u64 {
        self.rows_read * self.row_bytes as u64
    }

    /// Gathers the batches with `gather(batch, out, plan)`, and checksums them when `check`.
    pub(super) fn gather_all(
        &mut self,
        check: bool,
        mut gather: impl FnMut(&[u64], &mut [u8], &mut Vec<(u64, usize)>) -> Result<()>,
    ) -> Result<Option<u64>> {
        let row = self.row_bytes;
        let mut sum = 0u64;
        for batch in self.order.iter().take(self.batches) {
            let out = batch
                .len()
                .checked_mul(row)
                .and_then(|n| self.out.get_mut(..n))
                .context("a batch is longer than the batch buffer")?;
            gather(batch, out, &mut self.plan)?;
            if check {
                sum = sum_rows(sum, out, row);
            }
            black_box(&*out);
        }
        Ok(check.then_some(sum))
    }
}

/// `sum` followed by the checksum of each row of `bytes` (rows of `row` bytes), row by row, so that
/// rows in the wrong slots change the sum: how every case checks that it gathered the same batches.
pub(super) fn sum_rows(sum: u64, bytes: &[u8], row: usize) -> u64 {
    bytes.chunks_exact(row).fold(sum, |sum, slot| {
        sum.wrapping_mul(31).wrapping_add(full_pass(slot))
    })
}
