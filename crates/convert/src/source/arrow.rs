//! A column of a [`Table`] (a Parquet file, an Arrow IPC file or stream) as a stream: the file is
//! decoded by arrow-rs one row group (Parquet) or record batch (IPC) at a time, one column at a
//! time, and the column's values go on as C-order little-endian rows ([`Part::stream_arrow`]).
//!
//! Nothing here trusts the file: the readers checked every row group's and record batch's claimed
//! byte range against the file's length before a stream starts, the decoded row counts are held
//! to the planned ones, every level of every batch is checked for nulls, and a panic inside
//! arrow-rs (a damaged file it did not foresee) becomes an error naming the file ([`guarded`]).

use std::fs::File;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_buffer::Buffer;
use arrow_ipc::reader::FileDecoder;
use arrow_ipc::MetadataVersion;
use mmtensor_format::Dtype;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::source::part::Part;
use crate::source::read::pread_exact;
use crate::source::table::{
    column_type, element_dtype, guarded, ColumnType, Decoder, IpcBlock, Table,
};
use crate::transform::{swap_bytes, swap_unit};
use crate::{Error, Result};

/// Why a decoded batch of a column cannot be handed on.
enum Refused {
    /// A null at this row of the batch.
    Null(usize),
    /// The decoded type is not the planned one.
    Type(String),
    /// A list's values are fewer than its rows need.
    Short,
}

/// The first null of `a`, if any.
fn first_null(a: &dyn Array) -> Option<usize> {
    if a.null_count() == 0 {
        return None;
    }
    (0..a.len()).find(|&i| a.is_null(i))
}

/// The elements of a decoded batch of a column of type `ty`, flattened through its lists, after
/// checking that no level holds a null and that the types are the planned ones.
fn elements(array: &ArrayRef, ty: &ColumnType) -> std::result::Result<ArrayRef, Refused> {
    let mut values = array.clone();
    // Elements of the current level in one row.
    let mut per_row = 1usize;
    for &size in &ty.lists {
        if let Some(i) = first_null(&values) {
            return Err(Refused::Null(i.checked_div(per_row).unwrap_or(0)));
        }
        let list = values
            .as_fixed_size_list_opt()
            .filter(|l| usize::try_from(l.value_length()) == Ok(size))
            .ok_or_else(|| Refused::Type(values.data_type().to_string()))?;
        let n = list.len().checked_mul(size).ok_or(Refused::Short)?;
        if list.values().len() < n {
            return Err(Refused::Short);
        }
        let inner = list.values().slice(0, n);
        values = inner;
        per_row = per_row.saturating_mul(size);
    }
    if let Some(i) = first_null(&values) {
        return Err(Refused::Null(i.checked_div(per_row).unwrap_or(0)));
    }
    if element_dtype(values.data_type()) != Some(ty.dtype) {
        return Err(Refused::Type(values.data_type().to_string()));
    }
    Ok(values)
}

/// The little-endian bytes of a primitive array's values (not a boolean's: those are bits), or
/// `None` when its buffer is shorter than its length says.
fn primitive_bytes(values: &dyn Array, size: usize) -> Option<Buffer> {
    let data = values.to_data();
    let buffer = data.buffers().first()?;
    let start = data.offset().checked_mul(size)?;
    let len = data.len().checked_mul(size)?;
    (start.checked_add(len)? <= buffer.len()).then(|| buffer.slice_with_length(start, len))
}

impl Part {
    /// Streams column `column` of `table` through `sink` as C-order little-endian rows, decoded
    /// one row group or record batch at a time, in pieces of at most `chunk` bytes (whole
    /// elements). Every group's row count is held to the planned one and every level of every
    /// batch is checked for nulls (the plan looked at the statistics, which a writer may omit).
    ///
    /// Memory: a Parquet column is decoded in batches of about `chunk` bytes (at least one row)
    /// page by page; an IPC record batch is read whole (all its columns: the IPC decoder takes a
    /// batch's body as one buffer), then handed on in pieces.
    pub(super) fn stream_arrow(
        &self,
        table: &Table,
        column: usize,
        chunk: usize,
        buf: &mut Vec<u8>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let field = table
            .schema
            .fields()
            .get(column)
            .ok_or_else(|| table.error(None, format!("has no column {column}")))?;
        let ty = column_type(field).map_err(|reason| table.error(Some(column), reason))?;
        let size = ty.dtype.size();
        let row_elems = ty.row_shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let row_bytes = row_elems
            .and_then(|e| e.checked_mul(size as u64))
            .ok_or_else(|| table.error(Some(column), "has rows too large to count".into()))?;
        let batch_rows = usize::try_from(chunk as u64 / row_bytes.max(1))
            .unwrap_or(usize::MAX)
            .max(1);
        let unit = swap_unit(ty.dtype);
        // The first row of each group, and the rows each has decoded to so far.
        let mut starts = Vec::with_capacity(table.groups.len());
        let mut total = 0u64;
        for &rows in &table.groups {
            starts.push(total);
            total = total.saturating_add(rows);
        }
        let mut seen = vec![0u64; table.groups.len()];
        let mut delivered = 0u64;
        let mut bools = Vec::new();
        let mut put = |piece: &[u8]| -> Result<()> {
            if cfg!(target_endian = "big") {
                // Arrow buffers are in the host's byte order; a stream is little-endian.
                buf.clear();
                buf.extend_from_slice(piece);
                swap_bytes(buf, unit);
                sink(buf)
            } else {
                sink(piece)
            }
        };
        let mut on_batch = |g: usize, array: &ArrayRef| -> Result<()> {
            let damaged = |what: String| {
                table.error(
                    Some(column),
                    format!("{what} in {}: the file is damaged", table.group(g)),
                )
            };
            let (Some(rows), Some(&planned), Some(&start)) =
                (seen.get_mut(g), table.groups.get(g), starts.get(g))
            else {
                return Err(damaged(
                    "decodes to a group the metadata does not list".into(),
                ));
            };
            let first_row = start.saturating_add(*rows);
            *rows = rows.saturating_add(array.len() as u64);
            if *rows > planned {
                return Err(damaged(format!(
                    "holds more than the {planned} rows the metadata says"
                )));
            }
            let values = elements(array, &ty).map_err(|refused| match refused {
                Refused::Null(row) => table.error(
                    Some(column),
                    format!(
                        "holds a null at row {} ({}): a tensor has no nulls, so fill them (pyarrow: pc.fill_null) or drop those rows first",
                        first_row.saturating_add(row as u64),
                        table.group(g)
                    ),
                ),
                Refused::Type(found) => damaged(format!(
                    "decodes to {found}, not the {} its schema says,",
                    ty.described
                )),
                Refused::Short => damaged("has fewer list values than its rows need".into()),
            })?;
            let bytes = (values.len() as u64).saturating_mul(size as u64);
            if delivered.saturating_add(bytes) > self.len {
                return Err(damaged("holds more values than planned".into()));
            }
            let step = (chunk / size).max(1);
            if ty.dtype == Dtype::Bool {
                let bits = values
                    .as_boolean_opt()
                    .ok_or_else(|| damaged("decodes to no booleans".into()))?
                    .values();
                let mut at = 0;
                while at < bits.len() {
                    let n = step.min(bits.len() - at);
                    bools.clear();
                    bools.extend(bits.slice(at, n).iter().map(u8::from));
                    put(&bools)?;
                    at += n;
                }
            } else {
                let data = primitive_bytes(&values, size)
                    .ok_or_else(|| damaged("has a values buffer shorter than its rows".into()))?;
                for piece in data.as_slice().chunks(step * size) {
                    put(piece)?;
                }
            }
            delivered += bytes;
            Ok(())
        };
        match &table.decoder {
            Decoder::Parquet(meta) => {
                parquet_batches(table, meta, column, batch_rows, &mut on_batch)?
            }
            Decoder::Ipc { version, blocks } => {
                ipc_batches(table, *version, blocks, column, &mut on_batch)?
            }
        }
        if let Some(g) = (0..seen.len()).find(|&g| seen.get(g) != table.groups.get(g)) {
            return Err(table.error(
                Some(column),
                format!(
                    "{} decodes to {} rows, not the {} the metadata says: the file is damaged",
                    table.group(g),
                    seen.get(g).copied().unwrap_or(0),
                    table.groups.get(g).copied().unwrap_or(0)
                ),
            ));
        }
        if delivered != self.len {
            return Err(table.error(
                Some(column),
                format!(
                    "decodes to {delivered} bytes, not the {} its metadata says: the file is damaged",
                    self.len
                ),
            ));
        }
        Ok(())
    }
}

/// Decodes column `column` of a Parquet table row group by row group, in batches of `batch_rows`
/// rows, reading only that column's pages.
fn parquet_batches(
    table: &Table,
    meta: &ArrowReaderMetadata,
    column: usize,
    batch_rows: usize,
    on_batch: &mut dyn FnMut(usize, &ArrayRef) -> Result<()>,
) -> Result<()> {
    let path = &table.path;
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let mask = ProjectionMask::roots(meta.parquet_schema(), [column]);
    for g in 0..table.groups.len() {
        let damaged = |e: String| {
            table.error(
                Some(column),
                format!("cannot decode {}: {e}", table.group(g)),
            )
        };
        let input = file.try_clone().map_err(Error::io("cannot open", path))?;
        let mut reader = guarded(|| {
            ParquetRecordBatchReaderBuilder::new_with_metadata(input, meta.clone())
                .with_projection(mask.clone())
                .with_row_groups(vec![g])
                .with_batch_size(batch_rows)
                .build()
        })
        .map_err(damaged)?;
        while let Some(batch) = guarded(|| reader.next().transpose()).map_err(damaged)? {
            let array = batch
                .columns()
                .first()
                .ok_or_else(|| damaged("no column decoded".into()))?;
            on_batch(g, array)?;
        }
    }
    Ok(())
}

/// Decodes column `column` of an IPC table record batch by record batch: each batch's message is
/// read whole with one positioned read (its length was checked against the file when planned).
fn ipc_batches(
    table: &Table,
    version: MetadataVersion,
    blocks: &[IpcBlock],
    column: usize,
    on_batch: &mut dyn FnMut(usize, &ArrayRef) -> Result<()>,
) -> Result<()> {
    let path = &table.path;
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let decoder = FileDecoder::new(table.schema.clone(), version).with_projection(vec![column]);
    for (g, b) in blocks.iter().enumerate() {
        let damaged = |e: String| {
            table.error(
                Some(column),
                format!("cannot decode {}: {e}", table.group(g)),
            )
        };
        let len = u64::from(b.meta_len)
            .checked_add(b.body_len)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| damaged("its message is too large".into()))?;
        let mut bytes = vec![0u8; len];
        pread_exact(&file, &mut bytes, b.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                damaged(format!(
                    "the file ends inside it (it was truncated after it was planned): {e}"
                ))
            } else {
                Error::io("cannot read", path)(e)
            }
        })?;
        let buffer = Buffer::from_vec(bytes);
        let (Ok(offset), Ok(meta_len), Ok(body_len)) = (
            i64::try_from(b.offset),
            i32::try_from(b.meta_len),
            i64::try_from(b.body_len),
        ) else {
            return Err(damaged("its message is too large".into()));
        };
        let block = arrow_ipc::Block::new(offset, meta_len, body_len);
        let batch = guarded(|| decoder.read_record_batch(&block, &buffer))
            .map_err(damaged)?
            .ok_or_else(|| damaged("it is not a record batch".into()))?;
        let array = batch
            .columns()
            .first()
            .ok_or_else(|| damaged("no column decoded".into()))?;
        on_batch(g, array)?;
    }
    Ok(())
}
