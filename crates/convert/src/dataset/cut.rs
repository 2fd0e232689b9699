//! Where a dataset is cut into shards: its columns ([`Columns`]: every planned tensor a column of
//! rows, at most [`MAX_COLUMNS`]), and how many rows a shard holds ([`Cut`]), from a shard size or
//! from the dataset's own (the size its shards record under [`SHARD_SIZE_KEY`]).

use std::path::PathBuf;

use mmtensor_format::{ColumnSpec, FileLayout, Manifest};

use crate::plan::Plan;
use crate::{Error, Result};

/// The metadata key under which every shard records the shard size (data bytes) it was cut at,
/// when provenance is recorded: the dataset's own shard size for a later append or compaction.
pub(super) const SHARD_SIZE_KEY: &str = "source.shard_size";

/// Most columns a sharded write takes: each has a reader thread and about three chunk buffers
/// (1 MiB each) in flight, so this bounds memory at about 768 MiB and threads at 256.
pub const MAX_COLUMNS: usize = 256;

/// The columns of a plan, in plan order, and their shared row count.
pub(super) struct Columns {
    pub(super) columns: Vec<ColumnSpec>,
    pub(super) rows: u64,
}

/// Refuses more than [`MAX_COLUMNS`] columns (given by name, in order), naming the first beyond.
///
/// # Errors
/// [`Error::NotAColumn`].
pub(super) fn check_count<'a>(mut names: impl Iterator<Item = &'a str>) -> Result<()> {
    match names.nth(MAX_COLUMNS) {
        Some(name) => Err(Error::NotAColumn {
            tensor: name.to_owned(),
            reason: format!("a dataset is written with at most {MAX_COLUMNS} columns"),
        }),
        None => Ok(()),
    }
}

/// The columns of `plan`, in plan order.
///
/// # Errors
/// [`Error::NotAColumn`]: a scalar tensor, row counts that differ, more than [`MAX_COLUMNS`]
/// tensors.
pub(super) fn columns_of(plan: &Plan) -> Result<Columns> {
    let tensors = plan.tensors();
    check_count(tensors.iter().map(|t| t.name()))?;
    let mut columns = Vec::with_capacity(tensors.len());
    let mut rows: Option<(u64, &str)> = None;
    for t in tensors {
        let Some((&n, row_shape)) = t.shape().split_first() else {
            return Err(Error::NotAColumn {
                tensor: t.name().to_owned(),
                reason: "it is a 0-dimensional scalar, and every tensor of a dataset is a column of rows".into(),
            });
        };
        match rows {
            Some((r, first)) if r != n => {
                return Err(Error::NotAColumn {
                    tensor: t.name().to_owned(),
                    reason: format!(
                        "it has {n} rows but `{first}` has {r}: the columns of a dataset share their first dimension"
                    ),
                })
            }
            Some(_) => {}
            None => rows = Some((n, t.name())),
        }
        let column =
            ColumnSpec::new(t.name(), t.dtype(), row_shape.to_vec()).map_err(|source| {
                Error::Format {
                    path: PathBuf::from(t.source()),
                    source,
                }
            })?;
        columns.push(column);
    }
    Ok(Columns {
        columns,
        rows: rows.map_or(0, |(r, _)| r),
    })
}

/// Bytes one row of `c` costs a shard at least: its row, or for a ragged column its offset (its
/// items are counted apart, see `Shards`).
fn row_cost(c: &ColumnSpec) -> u64 {
    if c.is_ragged() {
        8
    } else {
        c.row_bytes()
    }
}

/// Rows per shard for `shard_size` data bytes: as many whole rows of all columns as fit (a
/// ragged column counts 8 bytes a row, its offset: its items are cut by their own budget).
pub(super) fn rows_per_shard(columns: &[ColumnSpec], rows: u64, shard_size: u64) -> Result<u64> {
    let row_bytes = columns
        .iter()
        .try_fold(0u64, |a, c| a.checked_add(row_cost(c)));
    match row_bytes {
        // Rows of zero bytes: any number fits.
        Some(0) => Ok(rows.max(1)),
        Some(b) if shard_size >= b => Ok(shard_size / b),
        _ => Err(Error::ShardSize {
            size: shard_size,
            row_bytes: row_bytes.unwrap_or(u64::MAX),
        }),
    }
}

/// Where shards are cut: `rows` rows a shard, and the shard size in data bytes that gave them,
/// recorded in each shard (`source.shard_size`) when provenance is.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cut {
    pub(super) rows: u64,
    pub(super) bytes: u64,
}

/// The dataset's own cut, for a write given no shard size: the shard size its last shard records
/// (`last`, that shard's header), else as many rows as its largest shard holds, else (no rows
/// yet) `rows`, the new rows, in one shard, or, when how many will come is not known,
/// [`DEFAULT_SHARD_SIZE`](crate::DEFAULT_SHARD_SIZE).
pub(super) fn usual_cut(manifest: &Manifest, last: Option<&FileLayout>, rows: Option<u64>) -> Cut {
    let columns = manifest.columns();
    let row_bytes = columns
        .iter()
        .fold(0u64, |a, c| a.saturating_add(row_cost(c)));
    let recorded = last
        .and_then(|l| l.header().metadata.get(SHARD_SIZE_KEY))
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(|size| {
            Some((
                rows_per_shard(columns, rows.unwrap_or(1 << 40), size).ok()?,
                size,
            ))
        });
    if let Some((rows, bytes)) = recorded {
        return Cut { rows, bytes };
    }
    // Shards of a ragged column are cut by their items' bytes: without a recorded size, the
    // default one (row counts say nothing about items).
    if columns.iter().any(ColumnSpec::is_ragged) {
        let size = crate::DEFAULT_SHARD_SIZE;
        let rows = rows_per_shard(columns, 1 << 40, size).unwrap_or(1);
        return Cut { rows, bytes: size };
    }
    // As many rows as the largest shard holds: the shard size the dataset was written with
    // (rounded down to whole rows), so new shards match the others.
    let rows = match (manifest.shards().iter().map(|s| s.num_rows()).max(), rows) {
        (Some(r), _) if r > 0 => r,
        (_, Some(rows)) => rows.max(1),
        (_, None) => {
            let size = crate::DEFAULT_SHARD_SIZE;
            let rows = rows_per_shard(columns, 1 << 40, size).unwrap_or(1);
            return Cut { rows, bytes: size };
        }
    };
    Cut {
        rows,
        bytes: rows.saturating_mul(row_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmtensor_format::Dtype;

    #[test]
    fn rows_per_shard_cuts_whole_rows() {
        let cols = [
            ColumnSpec::new("x", Dtype::F32, vec![3]).unwrap(),
            ColumnSpec::new("y", Dtype::I64, vec![]).unwrap(),
        ];
        assert_eq!(rows_per_shard(&cols, 100, 20).unwrap(), 1);
        assert_eq!(rows_per_shard(&cols, 100, 39).unwrap(), 1);
        assert_eq!(rows_per_shard(&cols, 100, 40).unwrap(), 2);
        assert!(matches!(
            rows_per_shard(&cols, 100, 19),
            Err(Error::ShardSize {
                size: 19,
                row_bytes: 20
            })
        ));
        let empty = [ColumnSpec::new("e", Dtype::F32, vec![0]).unwrap()];
        assert_eq!(rows_per_shard(&empty, 7, 1).unwrap(), 7);
        assert_eq!(rows_per_shard(&empty, 0, 1).unwrap(), 1);
    }
}
