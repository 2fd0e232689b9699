//! `MADV_WILLNEED` for the pages of the batch after the one being gathered (rows merged across
//! small gaps, or whole blocks for a block shuffle, and nothing for a column found resident).
//! Which advice is in force for the whole epoch is [`super::plan`]'s. Advice only decides what the
//! kernel reads early, never what is read.

use std::ops::Range;

use super::column::{Column, Shared};
use crate::hints::{self, Advice};
use crate::order::{EpochOrder, Shuffle};

/// Rows of a batch checked for residency before it is advised (see [`resident`]).
const RESIDENT_SAMPLE: usize = 8;

/// Rows of a batch whose byte ranges lie closer than this are advised as one range: one
/// `madvise` call instead of many for rows that share or nearly share pages. (A block shuffle on
/// one rank advises whole blocks instead: see `advice_rows`.)
const ADVISE_GAP: u64 = 64 << 10;

/// The state of one stream's advice: scratch space, and the blocks a block shuffle has advised.
#[derive(Default)]
pub(super) struct ReadAhead {
    scratch: Vec<u64>,
    /// For a block shuffle: the blocks already advised this epoch.
    advised: Vec<bool>,
}

impl ReadAhead {
    /// Asks the kernel to start reading the pages of batch `index` of `order`, if there is such a
    /// batch.
    pub(super) fn advise(&mut self, shared: &Shared, order: &EpochOrder, index: usize) {
        let Some(rows) = order.batch(index) else {
            return;
        };
        let spec = order.spec();
        let block = match spec.shuffle {
            Shuffle::Block { block_rows, .. } if spec.world_size == 1 => Some(block_rows),
            _ => None,
        };
        // Row ranges are the same for every column but for the gap, which is in bytes; with
        // whole blocks, computed once (the bitmap marks a block advised for every column).
        let block_ranges = block.map(|unit| {
            if self.advised.is_empty() {
                let blocks = spec.num_rows.div_ceil(unit);
                self.advised = vec![false; usize::try_from(blocks).unwrap_or(0)];
            }
            advice_rows(
                rows,
                0,
                Some((unit, &mut self.advised)),
                spec.num_rows,
                &mut self.scratch,
            )
        });
        for col in shared.columns.iter() {
            if resident(col, rows) {
                continue;
            }
            let row_bytes = col.row_bytes as u64;
            let ranges = match &block_ranges {
                Some(r) => r.clone(),
                None => advice_rows(
                    rows,
                    ADVISE_GAP / row_bytes.max(1),
                    None,
                    spec.num_rows,
                    &mut self.scratch,
                ),
            };
            for r in ranges {
                col.source.pieces(r, row_bytes, |tensor, bytes| {
                    let base = tensor.byte_range().start;
                    let bytes = base + bytes.start..base + bytes.end;
                    // Advice is only a hint: a failure changes nothing that is read.
                    let _ = hints::advise(tensor.store().file(), bytes, Advice::WillNeed);
                });
            }
        }
    }
}

/// The row ranges to advise for `rows`, in file order: each row alone, merged with neighbours
/// fewer than `gap` rows away; or, with `blocks` (a block shuffle on one rank), the whole block of
/// `unit` rows around each row whose block has not been advised yet this epoch (every row of it
/// will be read within the shuffling window, so reading it whole is one sequential request).
fn advice_rows(
    rows: &[u64],
    gap: u64,
    blocks: Option<(u64, &mut Vec<bool>)>,
    total_rows: u64,
    sorted: &mut Vec<u64>,
) -> Vec<Range<u64>> {
    sorted.clear();
    match blocks {
        Some((unit, advised)) => {
            for &r in rows {
                let b = r / unit;
                if let Some(seen) = advised.get_mut(b as usize) {
                    if !*seen {
                        *seen = true;
                        sorted.push(b);
                    }
                }
            }
            sorted.sort_unstable();
            let mut ranges: Vec<Range<u64>> = Vec::new();
            for &b in sorted.iter() {
                let (start, end) = (b * unit, ((b + 1).saturating_mul(unit)).min(total_rows));
                match ranges.last_mut() {
                    Some(last) if last.end == start => last.end = end,
                    _ => ranges.push(start..end),
                }
            }
            ranges
        }
        None => {
            sorted.extend_from_slice(rows);
            sorted.sort_unstable();
            let mut ranges: Vec<Range<u64>> = Vec::new();
            for &r in sorted.iter() {
                match ranges.last_mut() {
                    Some(last) if r <= last.end.saturating_add(gap) => {
                        last.end = last.end.max(r + 1);
                    }
                    _ => ranges.push(r..r + 1),
                }
            }
            ranges
        }
    }
}

/// Whether a sample of `rows` of column `col` ([`RESIDENT_SAMPLE`] rows spread over the batch) is
/// all in memory: then that column of the batch is taken to be warm and is not advised, which
/// spares a warm epoch one `madvise` per row. Each column is sampled, since a small column (labels)
/// is warm long before a wide one. Residency only decides whether a hint is sent, never what is
/// read.
fn resident(col: &Column, rows: &[u64]) -> bool {
    let n = rows.len();
    let k = RESIDENT_SAMPLE.min(n);
    (0..k).all(|i| {
        let Some((tensor, at)) = col.source.locate(rows[i * n / k], col.row_bytes as u64) else {
            return false;
        };
        // A row of the tensor: its offset lies within the tensor's bytes.
        let offset = tensor.byte_range().start + at;
        tensor.store().file().resident(offset) == Some(true)
    })
}

#[cfg(test)]
mod tests {
    use super::advice_rows;

    #[test]
    fn rows_are_advised_alone_or_merged_across_small_gaps() {
        let mut s = Vec::new();
        assert_eq!(
            advice_rows(&[9, 1, 2, 30], 0, None, 40, &mut s),
            [1..3, 9..10, 30..31]
        );
        assert_eq!(
            advice_rows(&[9, 1, 2, 30], 7, None, 40, &mut s),
            [1..10, 30..31]
        );
        assert_eq!(advice_rows(&[], 7, None, 40, &mut s), []);
    }

    #[test]
    fn a_block_shuffle_advises_each_block_once_per_epoch() {
        let mut s = Vec::new();
        let mut advised = vec![false; 4]; // blocks of 4 rows over 14 rows: the last has 2
        let first = advice_rows(&[13, 5, 6, 0], 0, Some((4, &mut advised)), 14, &mut s);
        assert_eq!(first, [0..8, 12..14]);
        let second = advice_rows(&[7, 1, 9], 0, Some((4, &mut advised)), 14, &mut s);
        assert_eq!(second, vec![8..12]);
        assert!(advised.iter().all(|&a| a));
    }
}
