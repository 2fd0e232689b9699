//! A Parquet file or an Arrow IPC file or stream as a reader planned it ([`Table`]: its schema,
//! its row groups or record batches, what the decoder needs to find them again), and the one rule
//! of which Arrow columns make tensors, of what dtype and row shape ([`column_type`]), which the
//! readers that plan tables (`readers/parquet.rs`, `readers/arrow_ipc.rs`) and the stream
//! (`arrow.rs`) both apply. [`guarded`] is how every call into arrow-rs on a file's bytes is made.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use arrow_ipc::MetadataVersion;
use arrow_schema::{DataType, Field, SchemaRef};
use mmtensor_format::Dtype;
use parquet::arrow::arrow_reader::ArrowReaderMetadata;

use crate::Error;

/// The field metadata key that names an Arrow extension type, and the one this crate reads.
const EXTENSION_NAME: &str = "ARROW:extension:name";
const EXTENSION_METADATA: &str = "ARROW:extension:metadata";
const FIXED_SHAPE_TENSOR: &str = "arrow.fixed_shape_tensor";

/// A Parquet file or an Arrow IPC file or stream as its reader planned it, shared by the parts of
/// its columns: the schema, the rows of each row group or record batch, and what the decoder
/// needs to find them again.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) path: PathBuf,
    pub(crate) schema: SchemaRef,
    /// Rows of each row group (Parquet) or record batch (IPC), in file order.
    pub(crate) groups: Vec<u64>,
    pub(crate) decoder: Decoder,
}

/// How a [`Table`]'s groups are decoded.
#[derive(Debug)]
pub(crate) enum Decoder {
    /// A Parquet file: its footer as read when planned (the metadata and the Arrow schema).
    Parquet(ArrowReaderMetadata),
    /// An Arrow IPC file or stream: its metadata version and its record batches' messages.
    Ipc {
        version: MetadataVersion,
        blocks: Vec<IpcBlock>,
    },
}

/// One record batch message of an IPC file or stream, inside the file (checked when planned).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpcBlock {
    /// Where the message starts (its continuation marker or length).
    pub(crate) offset: u64,
    /// Bytes of the message's prefix and metadata, padding included.
    pub(crate) meta_len: u32,
    /// Bytes of its body.
    pub(crate) body_len: u64,
}

impl Table {
    /// What the file's groups are called.
    fn group_word(&self) -> &'static str {
        match self.decoder {
            Decoder::Parquet(_) => "row group",
            Decoder::Ipc { .. } => "record batch",
        }
    }

    /// `row group G (rows A..B)` or `record batch G (rows A..B)`, for messages.
    pub(crate) fn group(&self, g: usize) -> String {
        let first = self
            .groups
            .iter()
            .take(g)
            .fold(0u64, |a, &r| a.saturating_add(r));
        let rows = self.groups.get(g).copied().unwrap_or(0);
        format!(
            "{} {g} (rows {first}..{})",
            self.group_word(),
            first.saturating_add(rows)
        )
    }

    /// The name of column `column`, for messages.
    pub(crate) fn column_name(&self, column: usize) -> String {
        self.schema
            .fields()
            .get(column)
            .map(|f| f.name().clone())
            .unwrap_or_else(|| column.to_string())
    }

    /// An error about this file, or about one of its columns.
    pub(crate) fn error(&self, column: Option<usize>, reason: String) -> Error {
        Error::Arrow {
            path: self.path.clone(),
            column: column.map(|c| self.column_name(c)),
            reason,
        }
    }
}

/// What a column's tensor holds: its element dtype, the `FixedSizeList` sizes around the
/// elements (outermost first) and the shape of one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ColumnType {
    pub(crate) dtype: Dtype,
    pub(crate) lists: Vec<usize>,
    /// The lists' sizes, or a fixed-shape tensor's shape.
    pub(crate) row_shape: Vec<u64>,
    /// The column's type as the file names it (for the plan and provenance).
    pub(crate) described: String,
}

/// The dtype of an Arrow element type that `.mmt` stores as it is.
pub(super) fn element_dtype(t: &DataType) -> Option<Dtype> {
    Some(match t {
        DataType::Boolean => Dtype::Bool,
        DataType::Int8 => Dtype::I8,
        DataType::Int16 => Dtype::I16,
        DataType::Int32 => Dtype::I32,
        DataType::Int64 => Dtype::I64,
        DataType::UInt8 => Dtype::U8,
        DataType::UInt16 => Dtype::U16,
        DataType::UInt32 => Dtype::U32,
        DataType::UInt64 => Dtype::U64,
        DataType::Float16 => Dtype::F16,
        DataType::Float32 => Dtype::F32,
        DataType::Float64 => Dtype::F64,
        _ => return None,
    })
}

/// Why a column of type `full`, whose elements are `leaf`, makes no tensor, and what to do.
fn refusal(full: &DataType, leaf: &DataType) -> String {
    use DataType as T;
    let advice = "convert the other columns with --columns (columns= in Python)";
    match leaf {
        T::Utf8 | T::LargeUtf8 | T::Utf8View => {
            format!("holds strings ({full}), which no tensor dtype holds: encode them as integers first, or {advice}")
        }
        T::Binary | T::LargeBinary | T::BinaryView | T::FixedSizeBinary(_) => {
            format!("holds binary values ({full}), which no tensor dtype holds: {advice}")
        }
        T::List(_) | T::LargeList(_) | T::ListView(_) | T::LargeListView(_) | T::Map(..) => {
            format!("holds variable-length lists ({full}), but every row of a tensor has one shape: store them as a FixedSizeList (pyarrow: pa.list_(pa.float32(), N)) or a fixed_shape_tensor, or {advice}")
        }
        T::Struct(_) => format!(
            "is a struct ({full}): convert its fields as columns of their own (pyarrow: table.flatten()), or {advice}"
        ),
        T::Dictionary(..) => format!(
            "is dictionary-encoded ({full}): decode it first (pyarrow: column.dictionary_decode()) or store its indices as an integer column, or {advice}"
        ),
        T::Timestamp(..)
        | T::Date32
        | T::Date64
        | T::Time32(_)
        | T::Time64(_)
        | T::Duration(_)
        | T::Interval(_) => format!(
            "holds times ({full}), which have no tensor dtype: cast the column to int64 first to keep its raw counts (pyarrow: column.cast(pa.int64())), or {advice}"
        ),
        T::Decimal32(..) | T::Decimal64(..) | T::Decimal128(..) | T::Decimal256(..) => format!(
            "holds decimals ({full}): cast them to float64 or to integers first, or {advice}"
        ),
        _ => format!("has type {full}, which has no tensor dtype: {advice}"),
    }
}

/// The tensor a column makes: numbers and bools as one element a row, `FixedSizeList`s (nested
/// too) of them as rows of the lists' sizes, and Arrow's canonical fixed-shape tensor extension
/// (`arrow.fixed_shape_tensor`, row-major only) as rows of its shape.
///
/// # Errors
/// Why the column makes no tensor (a sentence fragment to follow the column's name).
pub(crate) fn column_type(field: &Field) -> std::result::Result<ColumnType, String> {
    let mut lists = Vec::new();
    let mut leaf = field.data_type();
    while let DataType::FixedSizeList(child, n) = leaf {
        let n = usize::try_from(*n)
            .map_err(|_| format!("is a FixedSizeList of size {n}: the file is damaged"))?;
        lists.push(n);
        leaf = child.data_type();
    }
    let dtype = element_dtype(leaf).ok_or_else(|| refusal(field.data_type(), leaf))?;
    let mut row_shape: Vec<u64> = lists.iter().map(|&n| n as u64).collect();
    let mut described = field.data_type().to_string();
    if field.metadata().get(EXTENSION_NAME).map(String::as_str) == Some(FIXED_SHAPE_TENSOR) {
        row_shape = tensor_shape(field, &lists)?;
        described = format!("{FIXED_SHAPE_TENSOR} {row_shape:?} of {leaf}");
    }
    Ok(ColumnType {
        dtype,
        lists,
        row_shape,
        described,
    })
}

/// The row shape of a fixed-shape tensor column (its extension metadata's `shape`), checked
/// against its storage (a `FixedSizeList` of that many elements) and refused unless its rows are
/// row-major (no `permutation`, or the identity). `dim_names` only name the axes: ignored.
fn tensor_shape(field: &Field, lists: &[usize]) -> std::result::Result<Vec<u64>, String> {
    let what = format!("is an {FIXED_SHAPE_TENSOR} column");
    let &[size] = lists else {
        return Err(format!(
            "{what} whose storage is {}, not a FixedSizeList of numbers: the file is damaged",
            field.data_type()
        ));
    };
    let text = field
        .metadata()
        .get(EXTENSION_METADATA)
        .map(String::as_str)
        .unwrap_or("");
    let meta: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!("{what} whose extension metadata is not JSON ({e}): the file is damaged")
    })?;
    let numbers = |key: &str| -> std::result::Result<Option<Vec<u64>>, String> {
        let Some(v) = meta.get(key) else {
            return Ok(None);
        };
        v.as_array()
            .and_then(|a| a.iter().map(serde_json::Value::as_u64).collect())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "{what} whose `{key}` is {v}, not a list of whole numbers: the file is damaged"
                )
            })
    };
    let shape = numbers("shape")?
        .ok_or_else(|| format!("{what} without a `shape` in its metadata: the file is damaged"))?;
    let elems = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    if elems != Some(size as u64) {
        return Err(format!(
            "{what} of shape {shape:?}, but its rows hold {size} elements: the file is damaged"
        ));
    }
    if let Some(p) = numbers("permutation")? {
        if !p.iter().enumerate().all(|(i, &d)| d == i as u64) || p.len() != shape.len() {
            return Err(format!(
                "{what} with permutation {p:?}: its rows are not stored row-major, and only the identity permutation is converted (write the tensors in row-major order)"
            ));
        }
    }
    Ok(shape)
}

/// Runs arrow-rs on a file that may be damaged: its errors become text, and so does a panic, so
/// that no input makes the converter unwind. (The panic hook still prints the panic's message.)
pub(crate) fn guarded<T, E: std::fmt::Display>(
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(format!("arrow-rs failed on it ({text})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn tensor_field(meta: &str) -> Field {
        let storage =
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 6);
        Field::new("t", storage, false).with_metadata(HashMap::from([
            (EXTENSION_NAME.to_owned(), FIXED_SHAPE_TENSOR.to_owned()),
            (EXTENSION_METADATA.to_owned(), meta.to_owned()),
        ]))
    }

    #[test]
    fn column_types_map_numbers_lists_and_tensors() {
        let f = Field::new("x", DataType::Float16, true);
        assert_eq!(column_type(&f).unwrap().dtype, Dtype::F16);
        let inner = DataType::FixedSizeList(Arc::new(Field::new("i", DataType::Int8, true)), 3);
        let nested = DataType::FixedSizeList(Arc::new(Field::new("o", inner, true)), 2);
        let t = column_type(&Field::new("n", nested, true)).unwrap();
        assert_eq!(
            (t.dtype, t.lists.clone(), t.row_shape),
            (Dtype::I8, vec![2, 3], vec![2, 3])
        );
        let t = column_type(&tensor_field(r#"{"shape":[2,3],"dim_names":["h","w"]}"#)).unwrap();
        assert_eq!(t.row_shape, [2, 3]);
        assert!(column_type(&tensor_field(r#"{"shape":[2,3],"permutation":[0,1]}"#)).is_ok());
        let e = column_type(&tensor_field(r#"{"shape":[2,3],"permutation":[1,0]}"#)).unwrap_err();
        assert!(e.contains("row-major"), "{e}");
        let e = column_type(&tensor_field(r#"{"shape":[4,2]}"#)).unwrap_err();
        assert!(e.contains("damaged"), "{e}");
        let e = column_type(&tensor_field("nope")).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let e = column_type(&Field::new("s", DataType::Utf8, false)).unwrap_err();
        assert!(e.contains("strings"), "{e}");
        let list = DataType::List(Arc::new(Field::new("i", DataType::Int32, true)));
        let e = column_type(&Field::new("l", list, false)).unwrap_err();
        assert!(e.contains("variable-length"), "{e}");
    }

    #[test]
    fn guarded_turns_a_panic_into_text() {
        let r: std::result::Result<(), String> =
            guarded(|| -> std::result::Result<(), String> { panic!("boom") });
        assert!(r.unwrap_err().contains("boom"));
    }
}
