//! A table's columns as planned tensors, what the Parquet and the Arrow IPC readers share: each
//! column one tensor, named after it (`NAME.col` under a `NAME=` prefix, `NAME` for a table's
//! only column), its first axis the table's rows, its dtype and row shape by
//! [`column_type`]'s rule (`source/table.rs`). Its parts are decoded by `source/arrow.rs`.

use std::sync::Arc;

use crate::plan::{child_name, planned, PlannedTensor};
use crate::source::{column_type, read_dtype, ColumnType, Location, Part, Table};
use crate::{DtypeRules, Error, Result};

/// The tensors of `table`'s columns, in schema order; only those named in `columns` when it is
/// not empty (so that a column no tensor can hold is refused only when it is asked for).
///
/// `nulls` says, from the file's metadata, why column `i` holds nulls (or `None`); the stream
/// checks every batch again, since a writer may leave the statistics out.
///
/// # Errors
/// [`Error::Arrow`] naming the column: a type that makes no tensor, or nulls;
/// [`Error::InputDtypeSize`] for an input-dtype rule of another element size;
/// [`Error::Format`] when the rows and the row shape describe more than 2^64 bytes.
pub(crate) fn plan_table(
    table: Arc<Table>,
    prefix: Option<&str>,
    input_dtype: &DtypeRules,
    columns: &[String],
    nulls: &dyn Fn(usize, &ColumnType) -> Option<String>,
) -> Result<Vec<PlannedTensor>> {
    let rows = table
        .groups
        .iter()
        .try_fold(0u64, |a, &r| a.checked_add(r))
        .ok_or_else(|| table.error(None, "its groups' rows add up to more than 2^64".into()))?;
    let fields = table.schema.fields();
    let only = fields.len() == 1;
    let mut out = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let name = child_name(prefix, field.name(), only);
        if !columns.is_empty() && !columns.contains(&name) {
            continue;
        }
        let ty = column_type(field).map_err(|reason| table.error(Some(i), reason))?;
        if let Some(reason) = nulls(i, &ty) {
            return Err(table.error(Some(i), reason));
        }
        let location = Location::Arrow {
            table: table.clone(),
            column: i,
        };
        let dtype = read_dtype(
            &location,
            &name,
            &ty.described,
            Some(ty.dtype),
            ty.dtype.size(),
            input_dtype.get(&name),
        )?;
        let mut shape = Vec::with_capacity(1 + ty.row_shape.len());
        shape.push(rows);
        shape.extend_from_slice(&ty.row_shape);
        let len = mmtensor_format::checked_byte_len(&name, dtype, &shape).map_err(|source| {
            Error::Format {
                path: table.path.clone(),
                source,
            }
        })?;
        let part = Part {
            location,
            reinterpreted: dtype != ty.dtype,
            dtype,
            descr: ty.described,
            big_endian: false,
            fortran: false,
            shape,
            len,
            verify: None,
        };
        let source = part.location.describe();
        out.push(planned(name, vec![part], source)?);
    }
    Ok(out)
}

/// Why a column that the file's metadata says holds `n` nulls in `group` is refused.
pub(crate) fn nulls_refused(n: u64, group: &str) -> String {
    let nulls = if n == 1 {
        "1 null".to_owned()
    } else {
        format!("{n} nulls")
    };
    format!(
        "holds {nulls} in {group}: a tensor has no nulls, so fill them (pyarrow: pc.fill_null) or drop those rows first"
    )
}
