"""Parquet and Arrow IPC inputs of mmtensor.convert: files written by pyarrow (small row groups and
record batches, every codec pyarrow defaults to) convert column for column, rows first, and what no
tensor can hold is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

import mmtensor

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
feather = pytest.importorskip("pyarrow.feather")

ROWS = 50


def numbers_table(offset: int = 0) -> "pa.Table":
    r = np.arange(offset, offset + ROWS)
    return pa.table(
        {
            "b": pa.array(r % 3 == 0),
            "i8": pa.array((r - 20).astype(np.int8)),
            "i16": pa.array((r * -300).astype(np.int16)),
            "i32": pa.array((r * 70_000).astype(np.int32)),
            "i64": pa.array(r.astype(np.int64) << 40),
            "u8": pa.array((r * 5).astype(np.uint8)),
            "u16": pa.array((r * 1000).astype(np.uint16)),
            "u32": pa.array(r.astype(np.uint32) << 25),
            "u64": pa.array(r.astype(np.uint64) << 58),
            "f16": pa.array((r / 4).astype(np.float16)),
            "f32": pa.array((r * 0.5 - 3).astype(np.float32)),
            "f64": pa.array(np.sqrt(r.astype(np.float64))),
        }
    )


def shaped_table(rows: int = ROWS) -> "pa.Table":
    """Rows of shape [3], [2, 3] (nested lists) and [2, 3] (a fixed_shape_tensor column)."""
    flat = np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3) * 0.25
    vec = pa.FixedSizeListArray.from_arrays(pa.array(flat[:, 0, :].ravel()), 3)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), 3)
    nested = pa.FixedSizeListArray.from_arrays(inner, 2)
    storage = pa.FixedSizeListArray.from_arrays(
        pa.array((np.arange(rows * 6) - 100).astype(np.int16)), 6
    )
    tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.int16(), [2, 3]), storage)
    return pa.table({"vec": vec, "nested": nested, "t": tensor})


def assert_holds(store_path, table: "pa.Table", prefix: str = "") -> None:
    with mmtensor.open(store_path) as store:
        assert sorted(store.keys()) == sorted(prefix + c for c in table.column_names)
        for name in table.column_names:
            got = store[prefix + name]
            column = table.column(name)
            if isinstance(column.type, pa.FixedShapeTensorType):
                want = column.combine_chunks().to_numpy_ndarray()
            elif pa.types.is_fixed_size_list(column.type):
                want = np.stack([np.asarray(v, dtype=got.dtype) for v in column.to_pylist()])
            else:
                want = column.to_numpy()
            assert got.shape == want.shape, name
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("compression", ["snappy", "zstd", "gzip", "lz4", "none"])
def test_parquet_row_groups_convert_column_for_column(tmp_path, compression):
    table = numbers_table()
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=7, compression=compression)
    assert pq.ParquetFile(path).num_row_groups == 8
    summary = mmtensor.convert(str(path), tmp_path / "t.mmt")
    assert summary["tensors"] == len(table.column_names)
    assert_holds(tmp_path / "t.mmt", table)
    mmtensor.convert({"tbl": str(path)}, tmp_path / "named.mmt")
    assert_holds(tmp_path / "named.mmt", table, "tbl.")


@pytest.mark.parametrize("compression", ["lz4", "zstd", "uncompressed"])
def test_feather_files_convert_record_batch_by_record_batch(tmp_path, compression):
    table, shaped = numbers_table(), shaped_table()
    for name in shaped.column_names:
        table = table.append_column(name, shaped.column(name))
    path = tmp_path / "t.feather"
    feather.write_feather(table, path, compression=compression, chunksize=8)
    mmtensor.convert(path, tmp_path / "t.mmt")
    assert_holds(tmp_path / "t.mmt", table)


def test_an_ipc_stream_converts(tmp_path):
    table = numbers_table()
    path = tmp_path / "t.arrows"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=9):
            w.write_batch(batch)
    mmtensor.convert(path, tmp_path / "t.mmt")
    assert_holds(tmp_path / "t.mmt", table)


def test_fixed_size_lists_and_tensor_columns_are_rows_of_their_shape(tmp_path):
    table = shaped_table()
    path = tmp_path / "s.parquet"
    pq.write_table(table, path, row_group_size=6)
    mmtensor.convert(path, tmp_path / "s.mmt")
    assert_holds(tmp_path / "s.mmt", table)
    with mmtensor.open(tmp_path / "s.mmt") as store:
        assert store["nested"].shape == (ROWS, 2, 3)
        assert store["t"].shape == (ROWS, 2, 3)


def test_a_dataset_cut_across_row_groups_and_an_append_of_parquet(tmp_path):
    table = numbers_table()
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=16)
    row_bytes = sum(np.dtype(c.to_numpy().dtype).itemsize for c in table.columns)
    ds = tmp_path / "ds"
    mmtensor.convert(path, ds, shard_size=5 * row_bytes)
    more = tmp_path / "b.parquet"
    pq.write_table(numbers_table(ROWS), more, row_group_size=11)
    mmtensor.append(ds, more)
    both = pa.concat_tables([table, numbers_table(ROWS)])
    d = mmtensor.open_dataset(ds)
    assert d.num_rows == 2 * ROWS and d.num_shards >= 2 * ROWS // 5
    for name in table.column_names:
        np.testing.assert_array_equal(
            d.take(name, np.arange(2 * ROWS)), both.column(name).to_numpy(), err_msg=name
        )


def test_dtype_casts_apply_to_columns(tmp_path):
    path = tmp_path / "c.parquet"
    table = numbers_table()
    pq.write_table(table, path, row_group_size=10)
    mmtensor.convert(path, tmp_path / "c.mmt", dtype=["f16", "u16=i32"], columns=["f64", "u16"])
    with mmtensor.open(tmp_path / "c.mmt") as store:
        assert store["f64"].dtype == np.float16
        np.testing.assert_array_equal(store["f64"], table.column("f64").to_numpy().astype(np.float16))
        assert store["u16"].dtype == np.int32


def test_nulls_are_refused_naming_the_column_and_row_group(tmp_path):
    x = pa.array([float(i) if i != 23 else None for i in range(ROWS)], pa.float32())
    table = pa.table({"x": x, "y": pa.array(np.arange(ROWS))})
    path = tmp_path / "n.parquet"
    pq.write_table(table, path, row_group_size=10)
    with pytest.raises(mmtensor.InvalidFileError, match=r"column `x`.*1 null in row group 2 \(rows 20\.\.30\)"):
        mmtensor.convert(path, tmp_path / "n.mmt")
    assert not (tmp_path / "n.mmt").exists()
    pq.write_table(table, path, row_group_size=10, write_statistics=False)
    with pytest.raises(mmtensor.InvalidFileError, match="a null at row 23"):
        mmtensor.convert(path, tmp_path / "n.mmt")
    feather.write_feather(table, tmp_path / "n.feather", chunksize=10)
    with pytest.raises(mmtensor.InvalidFileError, match=r"null in record batch 2 \(rows 20\.\.30\)"):
        mmtensor.convert(tmp_path / "n.feather", tmp_path / "n.mmt")
    mmtensor.convert(path, tmp_path / "y.mmt", columns=["y"])


@pytest.mark.parametrize("kind", ["parquet", "feather"])
def test_strings_lists_and_dictionaries_are_refused_unless_left_out(tmp_path, kind):
    table = pa.table(
        {
            "name": pa.array([f"row {i}" for i in range(6)]),
            "tags": pa.array([[1] * i for i in range(6)]),
            "cat": pa.array(["a", "b"] * 3).dictionary_encode(),
            "x": pa.array(np.arange(6, dtype=np.float64)),
        }
    )
    path = tmp_path / f"s.{kind}"
    if kind == "parquet":
        pq.write_table(table, path)
    else:
        feather.write_feather(table, path, chunksize=4)
    with pytest.raises(mmtensor.InvalidFileError, match=rf"s\.{kind} \(column `name`\): holds strings"):
        mmtensor.convert(path, tmp_path / "s.mmt")
    with pytest.raises(mmtensor.InvalidFileError, match="variable-length lists"):
        mmtensor.convert(path, tmp_path / "s.mmt", columns=["tags"])
    with pytest.raises(mmtensor.InvalidFileError, match="dictionary-encoded"):
        mmtensor.convert(path, tmp_path / "s.mmt", columns=["cat"])
    mmtensor.convert(path, tmp_path / "s.mmt", columns=["x"])
    with mmtensor.open(tmp_path / "s.mmt") as store:
        np.testing.assert_array_equal(store["x"], np.arange(6, dtype=np.float64))


def test_a_damaged_parquet_file_is_an_invalid_file_error(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(numbers_table(), path, row_group_size=10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(mmtensor.InvalidFileError, match="d.parquet"):
        mmtensor.convert(path, tmp_path / "d.mmt")
    assert not (tmp_path / "d.mmt").exists()
