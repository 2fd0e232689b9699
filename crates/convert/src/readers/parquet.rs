//! Parquet files: planned from the footer alone (through arrow-rs's `parquet` crate, with the
//! Arrow schema a writer stored there), every row group's column chunks checked to lie inside the
//! file, and nulls refused from the statistics when the writer kept them. Each column streams row
//! group by row group, reading only its own pages (`source/arrow.rs`).

use std::path::Path;
use std::sync::Arc;

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::file::metadata::PageIndexPolicy;

use crate::plan::PlannedTensor;
use crate::readers::columns::{nulls_refused, plan_table};
use crate::source::{guarded, open_input, pread_exact, Decoder, Table};
use crate::{DtypeRules, Error, Result};

const MAGIC: &[u8; 4] = b"PAR1";

/// The tensors of the Parquet file at `path`, one per column (only those `columns` names, when
/// it names any), named by column (`prefix`: the input's `NAME=`).
///
/// Reads the footer only. The footer's sizes are claims: its length is checked against the
/// file's by arrow-rs before it is read, every column chunk's byte range here, and row counts
/// cost nothing until rows are decoded (and are held to the footer's then).
///
/// # Errors
/// [`Error::Arrow`]: not a Parquet file, a footer arrow-rs cannot read, a column chunk outside
/// the file, a column that makes no tensor or holds nulls (named with its row group); as
/// [`plan_table`].
pub(crate) fn plan_parquet(
    path: &Path,
    prefix: Option<&str>,
    input_dtype: &DtypeRules,
    columns: &[String],
) -> Result<Vec<PlannedTensor>> {
    let bad = |reason: String| Error::Arrow {
        path: path.to_path_buf(),
        column: None,
        reason,
    };
    let (file, file_len) = open_input(path)?;
    let mut head = [0u8; 8];
    let n = usize::try_from(file_len.min(8)).unwrap_or(8);
    pread_exact(&file, &mut head[..n], 0).map_err(Error::io("cannot read", path))?;
    let mut tail = [0u8; 4];
    if file_len >= 12 {
        pread_exact(&file, &mut tail, file_len - 4).map_err(Error::io("cannot read", path))?;
    }
    if !head.starts_with(MAGIC) || &tail != MAGIC {
        let kind = match mmtensor_format::looks_like(&head[..n]) {
            Some(kind) if !head.starts_with(MAGIC) => format!("it looks like {kind}"),
            _ => format!("it is {file_len} bytes long and does not end with PAR1: truncated?"),
        };
        return Err(bad(format!(
            "not a Parquet file (a Parquet file starts and ends with PAR1): {kind}"
        )));
    }
    // The page index is not needed to read every row, and not read: nothing but the footer.
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Skip);
    let meta = guarded(|| ArrowReaderMetadata::load(&file, options))
        .map_err(|e| bad(format!("cannot read the Parquet footer: {e}")))?;
    let metadata = meta.metadata();
    let mut groups = Vec::with_capacity(metadata.num_row_groups());
    for (g, rg) in metadata.row_groups().iter().enumerate() {
        let rows = u64::try_from(rg.num_rows())
            .map_err(|_| bad(format!("row group {g} claims {} rows", rg.num_rows())))?;
        for chunk in rg.columns() {
            // The reader seeks to a chunk and reads its pages up to the claimed length: a claim
            // past the end is refused here, before anything is read or allocated for it.
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset());
            let len = chunk.compressed_size();
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l));
            if end.is_none_or(|e| e > file_len) {
                return Err(bad(format!(
                    "row group {g}: the column chunk of `{}` claims {len} bytes at byte {start}, outside the {file_len}-byte file: the file is damaged",
                    chunk.column_path()
                )));
            }
        }
        groups.push(rows);
    }
    // The leaf column of each flat (non-list) root column, whose statistics count its nulls.
    let descr = meta.parquet_schema();
    let mut leaf_of = vec![None; meta.schema().fields().len()];
    for leaf in 0..descr.num_columns() {
        let root = descr.get_column_root_idx(leaf);
        if let Some(slot) = leaf_of.get_mut(root) {
            *slot = Some(leaf);
        }
    }
    let table = Arc::new(Table {
        path: path.to_path_buf(),
        schema: meta.schema().clone(),
        groups,
        decoder: Decoder::Parquet(meta.clone()),
    });
    let stats = table.clone();
    let nulls = move |i: usize, ty: &crate::source::ColumnType| -> Option<String> {
        // A list column's statistics also count empty and null lists at the leaf: only a flat
        // column's are a count of null values. Lists are checked as they decode.
        if !ty.lists.is_empty() {
            return None;
        }
        let leaf = leaf_of.get(i).copied().flatten()?;
        let Decoder::Parquet(meta) = &stats.decoder else {
            return None;
        };
        meta.metadata()
            .row_groups()
            .iter()
            .enumerate()
            .find_map(|(g, rg)| {
                let n = rg.columns().get(leaf)?.statistics()?.null_count_opt()?;
                (n > 0).then(|| nulls_refused(n, &stats.group(g)))
            })
    };
    plan_table(table, prefix, input_dtype, columns, &nulls)
}
