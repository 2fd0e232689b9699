//! Parquet and Arrow IPC inputs: files written here with arrow-rs's own writers (no committed
//! binaries) convert column for column into stores and datasets, and every file or column that
//! cannot become a tensor is refused by name before anything is visible.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, Int8Array, PrimitiveArray, RecordBatch, StringArray,
    UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use arrow_ipc::writer::{FileWriter, IpcWriteOptions, StreamWriter};
use arrow_schema::{DataType, Field, Schema};
use half::f16;
use mmtensor::{Dataset, Store};
use mmtensor_convert::{
    append, convert, convert_dataset, ConvertOptions, Error, Input, NoProgress,
};
use mmtensor_format::Dtype;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

const ROWS: usize = 25;

fn no() -> AtomicBool {
    AtomicBool::new(false)
}

/// A table of `ROWS` rows with one column of every element type a tensor takes.
fn every_type(offset: i64) -> RecordBatch {
    let r = |i: usize| i as i64 + offset;
    let cols: Vec<(&str, ArrayRef)> = vec![
        (
            "b",
            Arc::new(BooleanArray::from_iter(
                (0..ROWS).map(|i| Some(r(i) % 3 == 0)),
            )),
        ),
        (
            "i8",
            Arc::new(Int8Array::from_iter_values(
                (0..ROWS).map(|i| (r(i) - 12) as i8),
            )),
        ),
        (
            "i16",
            Arc::new(Int16Array::from_iter_values(
                (0..ROWS).map(|i| (r(i) * -300) as i16),
            )),
        ),
        (
            "i32",
            Arc::new(Int32Array::from_iter_values(
                (0..ROWS).map(|i| (r(i) * 70_000) as i32),
            )),
        ),
        (
            "i64",
            Arc::new(Int64Array::from_iter_values((0..ROWS).map(|i| r(i) << 40))),
        ),
        (
            "u8",
            Arc::new(UInt8Array::from_iter_values(
                (0..ROWS).map(|i| (r(i) * 9) as u8),
            )),
        ),
        (
            "u16",
            Arc::new(UInt16Array::from_iter_values(
                (0..ROWS).map(|i| (r(i) * 2000) as u16),
            )),
        ),
        (
            "u32",
            Arc::new(UInt32Array::from_iter_values(
                (0..ROWS).map(|i| (r(i) as u32) << 26),
            )),
        ),
        (
            "u64",
            Arc::new(UInt64Array::from_iter_values(
                (0..ROWS).map(|i| (r(i) as u64) << 60),
            )),
        ),
        (
            "f16",
            Arc::new(Float16Array::from_iter_values(
                (0..ROWS).map(|i| f16::from_f32(r(i) as f32 / 4.0)),
            )),
        ),
        (
            "f32",
            Arc::new(Float32Array::from_iter_values(
                (0..ROWS).map(|i| r(i) as f32 * 0.5 - 3.0),
            )),
        ),
        (
            "f64",
            Arc::new(Float64Array::from_iter_values(
                (0..ROWS).map(|i| (r(i) as f64).sqrt()),
            )),
        ),
    ];
    RecordBatch::try_from_iter(cols).unwrap()
}

/// The little-endian bytes a store must hold for `column` (a primitive or boolean array).
fn le_bytes(column: &dyn Array) -> Vec<u8> {
    if let Some(b) = column.as_any().downcast_ref::<BooleanArray>() {
        return b.values().iter().map(u8::from).collect();
    }
    let data = column.to_data();
    let size = column.data_type().primitive_width().unwrap();
    data.buffers()[0].as_slice()[data.offset() * size..][..data.len() * size].to_vec()
}

fn write_parquet(path: &Path, batches: &[RecordBatch], props: WriterProperties) {
    let mut w = ArrowWriter::try_new(
        File::create(path).unwrap(),
        batches[0].schema(),
        Some(props),
    )
    .unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

/// Row groups of `rows` rows each, with `compression`.
fn props(rows: usize, compression: Compression) -> WriterProperties {
    WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows))
        .set_compression(compression)
        .build()
}

fn write_ipc_file(path: &Path, batches: &[RecordBatch], options: IpcWriteOptions) {
    let mut w = FileWriter::try_new_with_options(
        File::create(path).unwrap(),
        &batches[0].schema(),
        options,
    )
    .unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
}

/// `batch` cut into record batches of `rows` rows.
fn cut(batch: &RecordBatch, rows: usize) -> Vec<RecordBatch> {
    (0..batch.num_rows())
        .step_by(rows)
        .map(|at| batch.slice(at, rows.min(batch.num_rows() - at)))
        .collect()
}

fn convert_one(input: &str, out: &Path, options: &ConvertOptions) -> Result<(), Error> {
    convert(
        &[Input::parse(input).unwrap()],
        out,
        options,
        &NoProgress,
        &no(),
    )
    .map(|_| ())
}

/// Asserts that the store at `out` holds every column of `batch` (named `prefix` + column).
fn assert_store_holds(out: &Path, batch: &RecordBatch, prefix: &str) {
    let store = Store::read(out).unwrap();
    assert_eq!(store.tensors().len(), batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let t = store.tensor(&format!("{prefix}{}", field.name())).unwrap();
        assert_eq!(t.shape(), [batch.num_rows() as u64], "{}", field.name());
        assert_eq!(t.bytes().unwrap(), le_bytes(column), "{}", field.name());
    }
}

#[test]
fn every_numeric_and_bool_column_converts_from_parquet_row_groups_and_codecs() {
    let dir = tempfile::tempdir().unwrap();
    let batch = every_type(0);
    for (i, compression) in [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::ZSTD(ZstdLevel::default()),
        Compression::LZ4_RAW,
        Compression::GZIP(Default::default()),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("t{i}.parquet"));
        // Row groups of 7 rows, written in two calls: 4 row groups, the last one short.
        write_parquet(
            &path,
            &[batch.slice(0, 10), batch.slice(10, 15)],
            props(7, compression),
        );
        let out = dir.path().join(format!("t{i}.mmt"));
        convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap();
        assert_store_holds(&out, &batch, "");
        let store = Store::read(&out).unwrap();
        assert_eq!(store.tensor("f16").unwrap().dtype(), Dtype::F16);
        assert_eq!(store.tensor("b").unwrap().dtype(), Dtype::Bool);
    }
    // NAME= prefixes every column, as for npz.
    let path = dir.path().join("t0.parquet");
    let out = dir.path().join("named.mmt");
    convert_one(
        &format!("tbl={}", path.display()),
        &out,
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_store_holds(&out, &batch, "tbl.");
}

#[test]
fn ipc_files_and_streams_convert_batch_by_batch_compressed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let batch = every_type(3);
    let batches = cut(&batch, 6);
    let lz4 = IpcWriteOptions::default()
        .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))
        .unwrap();
    let zstd = IpcWriteOptions::default()
        .try_with_compression(Some(arrow_ipc::CompressionType::ZSTD))
        .unwrap();
    for (name, options) in [
        ("plain.arrow", IpcWriteOptions::default()),
        ("lz4.feather", lz4),
        ("zstd.arrow", zstd),
    ] {
        let path = dir.path().join(name);
        write_ipc_file(&path, &batches, options);
        let out = dir.path().join(format!("{name}.mmt"));
        convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap();
        assert_store_holds(&out, &batch, "");
    }
    // The stream format (no footer), with an end-of-stream marker and without one.
    let path = dir.path().join("s.arrows");
    let mut w = StreamWriter::try_new(File::create(&path).unwrap(), &batch.schema()).unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    let out = dir.path().join("s.mmt");
    convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap();
    assert_store_holds(&out, &batch, "");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
    convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap();
    assert_store_holds(&out, &batch, "");
}

fn list_field(name: &str, item: DataType, size: i32) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new(name, item, false)), size)
}

/// A table of rows of shape [2, 3] three ways: nested FixedSizeLists, a fixed-shape tensor
/// column, and a flat FixedSizeList of 5 bools.
fn lists_and_tensors(rows: usize) -> RecordBatch {
    let inner = list_field("item", DataType::Float32, 3);
    let nested_type = list_field("item", inner.clone(), 2);
    let values = Float32Array::from_iter_values((0..rows * 6).map(|v| v as f32 * 0.25));
    let inner_array = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        3,
        Arc::new(values),
        None,
    )
    .unwrap();
    let nested = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", inner, false)),
        2,
        Arc::new(inner_array),
        None,
    )
    .unwrap();
    let tensor_values = Int16Array::from_iter_values((0..rows * 6).map(|v| v as i16 - 100));
    let tensor = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Int16, false)),
        6,
        Arc::new(tensor_values),
        None,
    )
    .unwrap();
    let tensor_field = Field::new("t", list_field("item", DataType::Int16, 6), false)
        .with_metadata(HashMap::from([
            (
                "ARROW:extension:name".to_owned(),
                "arrow.fixed_shape_tensor".to_owned(),
            ),
            (
                "ARROW:extension:metadata".to_owned(),
                r#"{"shape":[2,3],"dim_names":["h","w"],"permutation":[0,1]}"#.to_owned(),
            ),
        ]));
    let bools = BooleanArray::from_iter((0..rows * 5).map(|v| Some(v % 4 == 1)));
    let flags = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Boolean, false)),
        5,
        Arc::new(bools),
        None,
    )
    .unwrap();
    let schema = Schema::new(vec![
        Field::new("nested", nested_type, false),
        tensor_field,
        Field::new("flags", list_field("item", DataType::Boolean, 5), false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(nested), Arc::new(tensor), Arc::new(flags)],
    )
    .unwrap()
}

#[test]
fn fixed_size_lists_nested_and_the_tensor_extension_become_row_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let batch = lists_and_tensors(11);
    let pq = dir.path().join("l.parquet");
    write_parquet(
        &pq,
        std::slice::from_ref(&batch),
        props(4, Compression::SNAPPY),
    );
    let ipc = dir.path().join("l.arrow");
    write_ipc_file(&ipc, &cut(&batch, 3), IpcWriteOptions::default());
    for path in [pq, ipc] {
        let out = path.with_extension("mmt");
        convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap();
        let store = Store::read(&out).unwrap();
        let nested = store.tensor("nested").unwrap();
        assert_eq!(
            (nested.dtype(), nested.shape()),
            (Dtype::F32, &[11u64, 2, 3][..])
        );
        let want: Vec<f32> = (0..66).map(|v| v as f32 * 0.25).collect();
        assert_eq!(nested.to_vec::<f32>().unwrap(), want);
        let t = store.tensor("t").unwrap();
        assert_eq!((t.dtype(), t.shape()), (Dtype::I16, &[11u64, 2, 3][..]));
        let want: Vec<i16> = (0..66).map(|v| v as i16 - 100).collect();
        assert_eq!(t.to_vec::<i16>().unwrap(), want);
        let flags = store.tensor("flags").unwrap();
        assert_eq!(
            (flags.dtype(), flags.shape()),
            (Dtype::Bool, &[11u64, 5][..])
        );
        let want: Vec<u8> = (0..55).map(|v| u8::from(v % 4 == 1)).collect();
        assert_eq!(flags.bytes().unwrap(), want);
    }
}

#[test]
fn a_tensor_column_that_is_not_row_major_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let batch = lists_and_tensors(4);
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut meta = fields[1].metadata().clone();
    meta.insert(
        "ARROW:extension:metadata".to_owned(),
        r#"{"shape":[2,3],"permutation":[1,0]}"#.to_owned(),
    );
    fields[1] = fields[1].clone().with_metadata(meta);
    let batch =
        RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec()).unwrap();
    let path = dir.path().join("p.parquet");
    write_parquet(&path, &[batch], props(4, Compression::SNAPPY));
    let out = dir.path().join("p.mmt");
    let e = convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::Arrow { column: Some(c), .. } if c == "t"),
        "{e}"
    );
    assert!(e.to_string().contains("permutation [1, 0]"), "{e}");
    assert!(!out.exists());
    // The other columns convert when the tensor is not selected.
    let mut options = ConvertOptions::default();
    options.columns = vec!["nested".into()];
    convert_one(path.to_str().unwrap(), &out, &options).unwrap();
    assert_eq!(Store::read(&out).unwrap().tensors().len(), 1);
}

fn with_nulls(rows: usize, null_at: usize) -> RecordBatch {
    let x = Float32Array::from_iter((0..rows).map(|i| (i != null_at).then_some(i as f32)));
    let y = Int32Array::from_iter_values(0..rows as i32);
    RecordBatch::try_from_iter(vec![
        ("x", Arc::new(x) as ArrayRef),
        ("y", Arc::new(y) as ArrayRef),
    ])
    .unwrap()
}

#[test]
fn nulls_are_refused_naming_the_column_and_where_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.mmt");
    let batch = with_nulls(20, 13);
    // With statistics, from the footer: the row group.
    let pq = dir.path().join("n.parquet");
    write_parquet(
        &pq,
        std::slice::from_ref(&batch),
        props(5, Compression::SNAPPY),
    );
    let e = convert_one(pq.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, Error::Arrow { column: Some(c), .. } if c == "x"),
        "{text}"
    );
    assert!(
        text.contains("n.parquet") && text.contains("1 null in row group 2 (rows 10..15)"),
        "{text}"
    );
    assert!(!out.exists());
    // Without statistics, as the rows decode: the first null row.
    let bare = WriterProperties::builder()
        .set_max_row_group_row_count(Some(5))
        .set_statistics_enabled(EnabledStatistics::None)
        .build();
    write_parquet(&pq, std::slice::from_ref(&batch), bare);
    let e = convert_one(pq.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("a null at row 13 (row group 2 (rows 10..15))"),
        "{text}"
    );
    assert!(!out.exists());
    // IPC, from the record batch's field nodes.
    let ipc = dir.path().join("n.arrow");
    write_ipc_file(&ipc, &cut(&batch, 8), IpcWriteOptions::default());
    let e = convert_one(ipc.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("1 null in record batch 1 (rows 8..16)"),
        "{text}"
    );
    // A column without nulls beside it converts.
    let mut options = ConvertOptions::default();
    options.columns = vec!["y".into()];
    convert_one(ipc.to_str().unwrap(), &out, &options).unwrap();
    // A null element inside a FixedSizeList, found as it decodes (row 2 holds element 7).
    let values = Float32Array::from_iter((0..12).map(|i| (i != 7).then_some(i as f32)));
    let list = FixedSizeListArray::try_new(
        Arc::new(Field::new("item", DataType::Float32, true)),
        3,
        Arc::new(values),
        None,
    )
    .unwrap();
    let batch = RecordBatch::try_from_iter(vec![("l", Arc::new(list) as ArrayRef)]).unwrap();
    write_parquet(&pq, &[batch], props(2, Compression::SNAPPY));
    let e = convert_one(pq.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("a null at row 2 (row group 1 (rows 2..4))"),
        "{e}"
    );
}

#[test]
fn strings_and_other_types_are_refused_unless_left_out_with_columns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.mmt");
    let name = StringArray::from_iter_values((0..6).map(|i| format!("row {i}")));
    let when =
        PrimitiveArray::<arrow_array::types::TimestampMicrosecondType>::from_iter_values(0..6);
    let x = Float64Array::from_iter_values((0..6).map(f64::from));
    let batch = RecordBatch::try_from_iter(vec![
        ("name", Arc::new(name) as ArrayRef),
        ("x", Arc::new(x) as ArrayRef),
        ("when", Arc::new(when) as ArrayRef),
    ])
    .unwrap();
    let pq = dir.path().join("s.parquet");
    write_parquet(
        &pq,
        std::slice::from_ref(&batch),
        props(4, Compression::SNAPPY),
    );
    let ipc = dir.path().join("s.feather");
    write_ipc_file(&ipc, &[batch], IpcWriteOptions::default());
    for path in [&pq, &ipc] {
        let e = convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, Error::Arrow { column: Some(c), .. } if c == "name"),
            "{text}"
        );
        assert!(
            text.contains("strings") && text.contains("--columns"),
            "{text}"
        );
        let mut options = ConvertOptions::default();
        options.columns = vec!["when".into()];
        let e = convert_one(path.to_str().unwrap(), &out, &options).unwrap_err();
        assert!(e.to_string().contains("int64"), "{e}");
        options.columns = vec!["x".into()];
        convert_one(path.to_str().unwrap(), &out, &options).unwrap();
        let store = Store::read(&out).unwrap();
        assert_eq!(
            store.tensor("x").unwrap().to_vec::<f64>().unwrap(),
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        // A selection that names a column no input gives lists those that make tensors.
        options.columns = vec!["nope".into()];
        let e = convert_one(path.to_str().unwrap(), &out, &options).unwrap_err();
        assert!(matches!(e, Error::UnknownColumn { .. }), "{e}");
    }
}

#[test]
fn dtype_rules_cast_and_check_parquet_columns() {
    let dir = tempfile::tempdir().unwrap();
    let batch = every_type(0);
    let pq = dir.path().join("c.parquet");
    write_parquet(
        &pq,
        std::slice::from_ref(&batch),
        props(6, Compression::SNAPPY),
    );
    let out = dir.path().join("c.mmt");
    // `bf16` casts every float column; `u16=i32` widens one integer column.
    let mut options = ConvertOptions::default();
    options.dtype.add("bf16").unwrap().add("u16=i32").unwrap();
    convert_one(pq.to_str().unwrap(), &out, &options).unwrap();
    let store = Store::read(&out).unwrap();
    for name in ["f16", "f32", "f64"] {
        assert_eq!(store.tensor(name).unwrap().dtype(), Dtype::BF16, "{name}");
    }
    let f32s = batch.column_by_name("f32").unwrap();
    let f32s = f32s.as_any().downcast_ref::<Float32Array>().unwrap();
    let got = store.tensor("f32").unwrap().to_vec::<half::bf16>().unwrap();
    let want: Vec<half::bf16> = f32s
        .values()
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    assert_eq!(got, want);
    let u16s: Vec<i32> = (0..ROWS).map(|i| i32::from((i * 2000) as u16)).collect();
    assert_eq!(store.tensor("u16").unwrap().to_vec::<i32>().unwrap(), u16s);
    assert_eq!(store.tensor("i32").unwrap().dtype(), Dtype::I32);
    // A narrowing cast checks every value, naming the first that does not fit.
    let mut options = ConvertOptions::default();
    options.columns = vec!["i64".into()];
    options.dtype.add("i64=i32").unwrap();
    let e = convert_one(pq.to_str().unwrap(), &out, &options).unwrap_err();
    assert!(matches!(e, Error::ValueOutOfRange { index: 1, .. }), "{e}");
    // An input-dtype rule reads the stored bits as another dtype of the same size.
    let mut options = ConvertOptions::default();
    options.columns = vec!["u16".into()];
    options.input_dtype.add("u16=bf16").unwrap();
    convert_one(pq.to_str().unwrap(), &out, &options).unwrap();
    let t = Store::read(&out).unwrap();
    let t = t.tensor("u16").unwrap();
    assert_eq!(t.dtype(), Dtype::BF16);
    assert_eq!(
        t.bytes().unwrap(),
        le_bytes(batch.column_by_name("u16").unwrap())
    );
}

/// Every column of a dataset, shards concatenated, as (name, shape, bytes).
fn dataset_columns(dir: &Path) -> Vec<(String, Vec<u64>, Vec<u8>)> {
    let m = Dataset::read_manifest(dir).unwrap();
    let mut cols: Vec<_> = m
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.shape(m.num_rows()), Vec::new()))
        .collect();
    for s in m.shards() {
        let store = Store::read(dir.join(s.file())).unwrap();
        for col in &mut cols {
            col.2
                .extend_from_slice(store.tensor(&col.0).unwrap().bytes().unwrap());
        }
    }
    cols
}

#[test]
fn shards_of_a_dataset_cut_across_row_groups_and_appends_add_parquet_rows() {
    let dir = tempfile::tempdir().unwrap();
    let first = every_type(0);
    let lists = lists_and_tensors(ROWS);
    let mut fields: Vec<Field> = first
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.extend(lists.schema().fields().iter().map(|f| f.as_ref().clone()));
    let mut columns = first.columns().to_vec();
    columns.extend(lists.columns().iter().cloned());
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let pq = dir.path().join("d.parquet");
    write_parquet(
        &pq,
        std::slice::from_ref(&batch),
        props(7, Compression::SNAPPY),
    );
    // The single store, as the reference.
    let store_path = dir.path().join("d.mmt");
    convert_one(
        pq.to_str().unwrap(),
        &store_path,
        &ConvertOptions::default(),
    )
    .unwrap();
    let store = Store::read(&store_path).unwrap();
    let row_bytes: u64 = store
        .tensors()
        .map(|t| t.byte_range().end - t.byte_range().start)
        .sum::<u64>()
        / ROWS as u64;
    // 3 rows a shard: shards end inside row groups of 7 rows.
    let ds = dir.path().join("ds");
    let inputs = [Input::parse(pq.to_str().unwrap()).unwrap()];
    let summary = convert_dataset(
        &inputs,
        &ds,
        &ConvertOptions::default(),
        3 * row_bytes,
        &NoProgress,
        &no(),
    )
    .unwrap();
    assert_eq!(summary.manifest.shards().len(), ROWS.div_ceil(3));
    let cols = dataset_columns(&ds);
    assert_eq!(cols.len(), store.tensors().len());
    for (name, shape, bytes) in &cols {
        let t = store.tensor(name).unwrap();
        assert_eq!(
            (shape.as_slice(), bytes.as_slice()),
            (t.shape(), t.bytes().unwrap()),
            "{name}"
        );
    }
    // Appending another Parquet file (other row groups) adds its rows after the dataset's.
    let more = dir.path().join("more.parquet");
    write_parquet(
        &more,
        &[batch.slice(0, 10)],
        props(4, Compression::ZSTD(ZstdLevel::default())),
    );
    append(
        &ds,
        &[Input::parse(more.to_str().unwrap()).unwrap()],
        &ConvertOptions::default(),
        None,
        &NoProgress,
        &no(),
    )
    .unwrap();
    let after = dataset_columns(&ds);
    assert_eq!(
        Dataset::read_manifest(&ds).unwrap().num_rows(),
        ROWS as u64 + 10
    );
    for ((name, shape, bytes), (_, _, before)) in after.iter().zip(&cols) {
        let t = store.tensor(name).unwrap();
        let per_row = before.len() / ROWS;
        assert_eq!(shape[0], ROWS as u64 + 10, "{name}");
        assert_eq!(&bytes[..before.len()], before.as_slice(), "{name}");
        assert_eq!(
            &bytes[before.len()..],
            &t.bytes().unwrap()[..10 * per_row],
            "{name}"
        );
    }
}

/// Rewrites the footer of the Parquet file at `path` through `edit`.
fn rewrite_footer(path: &Path, edit: impl FnOnce(ParquetMetaData) -> ParquetMetaData) {
    let bytes = std::fs::read(path).unwrap();
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&File::open(path).unwrap())
        .unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let mut out = bytes[..n - 8 - footer].to_vec();
    ParquetMetaDataWriter::new(&mut out, &edit(meta))
        .finish()
        .unwrap();
    std::fs::write(path, out).unwrap();
}

fn small_parquet(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    write_parquet(
        &path,
        &[with_nulls(20, usize::MAX)],
        props(8, Compression::SNAPPY),
    );
    path
}

#[test]
fn hostile_and_damaged_parquet_files_are_errors_naming_the_file_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.mmt");
    let refused = |path: &Path, what: &str| {
        let e = convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(path.file_name().unwrap().to_str().unwrap()),
            "{text}"
        );
        assert!(text.contains(what), "{what}: {text}");
        assert!(!out.exists());
    };
    // A row group claiming 2^40 rows: planned (nothing is allocated or reserved for it), then
    // refused as the rows decode.
    let path = small_parquet(dir.path(), "rows.parquet");
    rewrite_footer(&path, |m| {
        let rgs = m
            .row_groups()
            .iter()
            .map(|rg| {
                rg.clone()
                    .into_builder()
                    .set_num_rows(1 << 40)
                    .build()
                    .unwrap()
            })
            .collect();
        m.into_builder().set_row_groups(rgs).build()
    });
    refused(&path, "the file is damaged");
    // A column chunk claiming bytes past the end of the file.
    let path = small_parquet(dir.path(), "chunk.parquet");
    rewrite_footer(&path, |m| {
        let rgs = m
            .row_groups()
            .iter()
            .map(|rg| {
                let cols = rg
                    .columns()
                    .iter()
                    .map(|c| {
                        c.clone()
                            .into_builder()
                            .set_total_compressed_size(1 << 50)
                            .build()
                            .unwrap()
                    })
                    .collect();
                rg.clone()
                    .into_builder()
                    .set_column_metadata(cols)
                    .build()
                    .unwrap()
            })
            .collect();
        m.into_builder().set_row_groups(rgs).build()
    });
    refused(&path, "outside the");
    // A footer whose row group list claims 2^31 - 1 entries in a few bytes.
    let mut meta = vec![0x15, 0x02, 0x19, 0x1c, 0x48, 0x06];
    meta.extend_from_slice(b"schema");
    meta.extend_from_slice(&[
        0x15, 0x00, 0x00, 0x16, 0x02, 0x19, 0xfc, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00,
    ]);
    let mut file = b"PAR1".to_vec();
    file.extend_from_slice(&meta);
    file.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    file.extend_from_slice(b"PAR1");
    let path = dir.path().join("list.parquet");
    std::fs::write(&path, file).unwrap();
    refused(&path, "cannot read the Parquet footer");
    // Truncated, and not Parquet at all.
    let path = small_parquet(dir.path(), "cut.parquet");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 30]).unwrap();
    refused(&path, "truncated?");
    let path = dir.path().join("zip.parquet");
    std::fs::write(&path, b"PK\x03\x04 not parquet at all").unwrap();
    refused(&path, "it looks like a zip archive");
    // Every byte of the data pages zeroed in turn never panics (errors or other values only).
    let path = small_parquet(dir.path(), "flip.parquet");
    let good = std::fs::read(&path).unwrap();
    let footer =
        u32::from_le_bytes(good[good.len() - 8..good.len() - 4].try_into().unwrap()) as usize;
    for at in (4..good.len() - 8 - footer).step_by(3) {
        let mut bad = good.clone();
        bad[at] ^= 0xa5;
        std::fs::write(&path, &bad).unwrap();
        let _ = convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default());
    }
}

#[test]
fn hostile_and_damaged_ipc_files_are_errors_naming_the_file_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.mmt");
    let batch = with_nulls(20, usize::MAX);
    let path = dir.path().join("good.arrow");
    write_ipc_file(&path, &cut(&batch, 8), IpcWriteOptions::default());
    let good = std::fs::read(&path).unwrap();
    let refused = |bytes: &[u8], what: &str| {
        let path = dir.path().join("bad.arrow");
        std::fs::write(&path, bytes).unwrap();
        let e = convert_one(path.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("bad.arrow") && text.contains(what),
            "{what}: {text}"
        );
        assert!(!out.exists());
    };
    refused(&good[..good.len() - 3], "does not end with ARROW1");
    let mut huge = good.clone();
    let n = huge.len();
    huge[n - 10..n - 6].copy_from_slice(&i32::MAX.to_le_bytes());
    refused(&huge, "footer claims");
    // A stream's first message (the schema) claiming 2 GiB of metadata.
    let stream = dir.path().join("s.arrows");
    let mut w = StreamWriter::try_new(File::create(&stream).unwrap(), &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let mut meta = std::fs::read(&stream).unwrap();
    meta[4..8].copy_from_slice(&i32::MAX.to_le_bytes());
    refused(&meta, "bytes of metadata");
    refused(b"FEA1 an old feather file", "Feather version 1");
    refused(
        b"\x89HDF\r\n\x1a\n an hdf5 file",
        "it looks like an HDF5 file",
    );
    // Every byte flipped in turn never panics (errors or other values only).
    let flip = dir.path().join("flip.arrow");
    for at in (0..good.len()).step_by(3) {
        let mut bad = good.clone();
        bad[at] ^= 0xa5;
        std::fs::write(&flip, &bad).unwrap();
        let _ = convert_one(flip.to_str().unwrap(), &out, &ConvertOptions::default());
    }
}

#[test]
fn a_plan_comes_from_metadata_alone() {
    let dir = tempfile::tempdir().unwrap();
    let batch = every_type(0);
    let path = dir.path().join("t.arrow");
    write_ipc_file(&path, &cut(&batch, 10), IpcWriteOptions::default());
    let pq = dir.path().join("t.parquet");
    write_parquet(
        &pq,
        std::slice::from_ref(&batch),
        props(10, Compression::SNAPPY),
    );
    // Zeroing the Parquet data pages changes nothing the plan reads.
    let mut bytes = std::fs::read(&pq).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    bytes[4..n - 8 - footer].fill(0);
    std::fs::write(&pq, bytes).unwrap();
    for path in [&path, &pq] {
        let plan =
            mmtensor_convert::plan(&[Input::path(path)], &ConvertOptions::default()).unwrap();
        assert_eq!(plan.tensors().len(), batch.num_columns());
        let t = &plan.tensors()[1];
        assert_eq!(
            (t.name(), t.shape(), t.dtype()),
            ("i8", &[ROWS as u64][..], Dtype::I8)
        );
        assert!(t.source().ends_with(":i8"), "{}", t.source());
    }
    let out = dir.path().join("o.mmt");
    let e = convert_one(pq.to_str().unwrap(), &out, &ConvertOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Arrow { .. }), "{e}");
    assert!(!out.exists());
}
