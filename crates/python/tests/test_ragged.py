"""Ragged tensors and columns (format 1.1) from Python: RaggedTensor (zero-copy rows, take,
take_padded), save/load of lists of rows, DatasetWriter's ragged columns (lists of arrays,
values + lengths, pyarrow lists), and the Loader's sequence windows (seq_len)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import mmtensor
from conftest import data_pointer, inside, mappings_of

# Four documents of 3, 0, 5 and 1 tokens.
ROWS = [np.array([1, 2, 3], np.uint16), np.array([], np.uint16), np.arange(10, 15, dtype=np.uint16),
        np.array([7], np.uint16)]


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "docs.mmt"
    boxes = [np.arange(8, dtype=np.float32).reshape(2, 4), np.ones((1, 4), np.float32)]
    mmtensor.save(path, {"tokens": ROWS, "w": np.ones(2, np.float32), "boxes": boxes})
    return path


def stream_dataset(path, lengths, shard_size=24):
    """A dataset whose one ragged column `tokens` holds token k = k, in documents of `lengths`."""
    tokens = np.arange(sum(lengths), dtype=np.uint16)
    with mmtensor.DatasetWriter(path, columns={"tokens": ("uint16", (None,))}, shard_size=shard_size) as w:
        w.write({"tokens": (tokens, np.array(lengths))})
    return mmtensor.open_dataset(path)


# ---------------------------------------------------------------------------------------------
# RaggedTensor over a store
# ---------------------------------------------------------------------------------------------


def test_rows_are_zero_copy_views_of_the_mapping_that_keep_the_store_alive(store_path):
    store = mmtensor.open(store_path)
    assert store.keys() == ["tokens", "tokens.offsets", "w", "boxes", "boxes.offsets"]
    assert store.ragged_keys() == ["tokens", "boxes"]
    t = store.ragged("tokens")
    assert isinstance(t, mmtensor.RaggedTensor)
    assert (t.name, t.dtype, t.numpy_dtype, t.item_shape, len(t), t.num_rows, t.num_values) == (
        "tokens", "U16", "uint16", (), 4, 4, 9
    )
    assert t.path == str(store_path)
    assert repr(t) == f"<mmtensor.RaggedTensor `tokens`: 4 rows of U16[*], 9 values in {store_path}>"
    row = t[2]
    np.testing.assert_array_equal(row, ROWS[2])
    assert not row.flags.writeable
    assert inside(data_pointer(row), row.nbytes, mappings_of(store_path))
    assert np.shares_memory(row, store["tokens"])  # the values, all rows back to back
    np.testing.assert_array_equal(store["tokens"], np.concatenate(ROWS))
    for i in range(-4, 4):
        np.testing.assert_array_equal(t[i], ROWS[i])
        np.testing.assert_array_equal(t.row(i), ROWS[i])
    assert t[1].shape == (0,)
    assert [r.tolist() for r in t] == [r.tolist() for r in ROWS]
    np.testing.assert_array_equal(t.lengths(), [3, 0, 5, 1])
    assert t.lengths().dtype == np.int64
    # The store's bytes live as long as a row or the RaggedTensor does.
    store.close()
    del store
    np.testing.assert_array_equal(row, ROWS[2])
    np.testing.assert_array_equal(t[3], ROWS[3])
    b = mmtensor.open(store_path).ragged("boxes")
    assert b.item_shape == (4,) and b.num_values == 3
    assert repr(b).startswith("<mmtensor.RaggedTensor `boxes`: 2 rows of F32[*, 4], 3 values in ")
    np.testing.assert_array_equal(b[0], np.arange(8, dtype=np.float32).reshape(2, 4))


def test_torch_rows_and_gathers(store_path):
    torch = pytest.importorskip("torch")
    t = mmtensor.open(store_path).ragged("tokens")
    r = t.row(2, output="torch")
    assert isinstance(r, torch.Tensor) and r.tolist() == ROWS[2].tolist()
    b = mmtensor.open(store_path).ragged("boxes")
    r = b.row(0, output="torch")
    r += 1  # copy-on-write: the file and the NumPy view are untouched
    assert r.tolist() == (np.arange(8).reshape(2, 4) + 1).tolist()
    np.testing.assert_array_equal(b[0], np.arange(8, dtype=np.float32).reshape(2, 4))
    values, offsets = t.take([2, 0], output="torch")
    assert values.tolist() == [10, 11, 12, 13, 14, 1, 2, 3] and offsets.tolist() == [0, 5, 8]
    batch, lengths = t.take_padded([0, 3], dtype=torch.int64, output="torch")
    assert batch.dtype == torch.int64 and batch.tolist() == [[1, 2, 3], [7, 0, 0]]
    assert lengths.tolist() == [3, 1]
    with pytest.raises(ValueError, match='output must be "numpy" or "torch", not "jax"'):
        t.row(0, output="jax")


def test_take_gathers_values_and_offsets(store_path):
    t = mmtensor.open(store_path).ragged("tokens")
    values, offsets = t.take([2, 0, -1, 1, 2])
    np.testing.assert_array_equal(values, np.concatenate([ROWS[2], ROWS[0], ROWS[3], ROWS[2]]))
    np.testing.assert_array_equal(offsets, [0, 5, 8, 9, 9, 14])
    assert values.dtype == np.uint16 and offsets.dtype == np.int64 and values.flags.writeable
    values[0] = 99  # a copy
    np.testing.assert_array_equal(t[2], ROWS[2])
    values, offsets = t.take(np.array([], dtype=np.int64))
    assert values.shape == (0,) and offsets.tolist() == [0]
    values, offsets = mmtensor.open(store_path).ragged("boxes").take([1, 0])
    assert values.shape == (3, 4) and offsets.tolist() == [0, 1, 3]


def test_take_padded_pads_truncates_and_casts(store_path):
    t = mmtensor.open(store_path).ragged("tokens")
    batch, lengths = t.take_padded([0, 1, 2])
    assert batch.dtype == np.uint16 and batch.shape == (3, 5)
    np.testing.assert_array_equal(batch, [[1, 2, 3, 0, 0], [0] * 5, [10, 11, 12, 13, 14]])
    np.testing.assert_array_equal(lengths, [3, 0, 5])
    batch, _ = t.take_padded([0, 3], pad_value=9, pad_to=6)
    np.testing.assert_array_equal(batch, [[1, 2, 3, 9, 9, 9], [7, 9, 9, 9, 9, 9]])
    batch, _ = t.take_padded([0, 2], multiple_of=4)
    assert batch.shape == (2, 8)  # the longest row, 5, rounded up to 8
    batch, _ = t.take_padded([0], pad_to=5, multiple_of=4)
    assert batch.shape == (1, 8)
    batch, lengths = t.take_padded([2, 0], pad_to=2, truncate=True)
    np.testing.assert_array_equal(batch, [[10, 11], [1, 2]])
    np.testing.assert_array_equal(lengths, [2, 2])
    batch, _ = t.take_padded([3, 0], pad_value=-1, dtype="int64")
    assert batch.dtype == np.int64
    np.testing.assert_array_equal(batch, [[7, -1, -1], [1, 2, 3]])
    boxes, lengths = mmtensor.open(store_path).ragged("boxes").take_padded([1, 0], pad_value=np.nan)
    assert boxes.shape == (2, 2, 4) and lengths.tolist() == [1, 2]
    assert np.isnan(boxes[0, 1]).all() and (boxes[0, 0] == 1).all()
    boxes, _ = mmtensor.open(store_path).ragged("boxes").take_padded([1, 0], pad_value=0.1)
    assert boxes[0, 1, 0] == np.float32(0.1)  # a float pad rounds to the dtype


def test_ragged_errors_name_the_tensor_and_the_row(store_path):
    store = mmtensor.open(store_path)
    t = store.ragged("tokens")
    with pytest.raises(mmtensor.RaggedError) as info:
        store.ragged("w")
    assert str(info.value) == f"{store_path}: `w` is not a ragged tensor (it has no row offsets)"
    assert isinstance(info.value, ValueError) and info.value.tensor == "w"
    with pytest.raises(mmtensor.TensorNotFoundError):
        store.ragged("absent")
    for i in (4, -5):
        with pytest.raises(mmtensor.RowRangeError) as info:
            t[i]
        assert str(info.value) == (
            f"{store_path}: ragged tensor `tokens`: row index {i} is out of range for 4 rows "
            "(indices run from -4 to 3; negative ones count from the end)"
        )
        assert isinstance(info.value, IndexError)
    with pytest.raises(TypeError, match=r"an index is one row's number \(an int\), not slice: "
                                        r"take\(indices\) gathers several rows"):
        t[0:2]
    with pytest.raises(mmtensor.RowRangeError, match="index 4 is out of range for 4 rows"):
        t.take([0, 4])
    with pytest.raises(mmtensor.RaggedError) as info:
        t.take_padded([0, 2], pad_to=4)
    assert str(info.value) == (
        f"{store_path}: column `tokens`: row 2 has 5 items, more than pad_to = 4 (pass truncate to cut it)"
    )
    with pytest.raises(mmtensor.RaggedError, match="pad multiple_of is 0; it must be at least 1"):
        t.take_padded([0], multiple_of=0)
    with pytest.raises(ValueError, match=re.escape("take_padded of `tokens`: pad_value -1 is not a uint16 value")):
        t.take_padded([0], pad_value=-1)
    with pytest.raises(ValueError, match=re.escape("take_padded of `tokens`: pad_value 0.5 is not a uint16 value")):
        t.take_padded([0], pad_value=0.5)
    with pytest.raises(ValueError, match=re.escape("pad_value [1, 2] is not a uint16 value: give one number")):
        t.take_padded([0], pad_value=[1, 2])
    with pytest.raises(mmtensor.UnsupportedDtypeError):
        t.take_padded([0], dtype="int8")  # uint16 to int8 could fail on a value


def test_load_gives_a_ragged_tensor_and_save_takes_it_back(store_path, tmp_path):
    loaded = mmtensor.load(store_path)
    assert list(loaded) == ["tokens", "w", "boxes"]
    t = loaded["tokens"]
    assert isinstance(t, mmtensor.RaggedTensor)
    assert [r.tolist() for r in t] == [r.tolist() for r in ROWS]
    copy = tmp_path / "copy.mmt"
    mmtensor.save(copy, loaded)
    with mmtensor.open(copy) as s:
        assert s.ragged_keys() == ["tokens", "boxes"]
        assert [r.tolist() for r in s.ragged("tokens")] == [r.tolist() for r in ROWS]
        np.testing.assert_array_equal(s.ragged("boxes")[0], np.arange(8, dtype=np.float32).reshape(2, 4))
    # A (values, lengths) pair is the same tensor.
    pair = tmp_path / "pair.mmt"
    mmtensor.save(pair, {"tokens": (np.concatenate(ROWS), [3, 0, 5, 1])})
    assert copy.read_bytes() != pair.read_bytes()
    with mmtensor.open(pair) as s:
        assert [r.tolist() for r in s.ragged("tokens")] == [r.tolist() for r in ROWS]
        np.testing.assert_array_equal(s["tokens.offsets"], [0, 3, 3, 8, 9])


def test_save_refuses_bad_ragged_values_and_writes_nothing(tmp_path):
    out = tmp_path / "bad.mmt"
    cases = [
        ({"t": [np.zeros(2, np.uint16), np.zeros(3, np.int64)]}, mmtensor.DtypeMismatchError,
         "save: tensor `t`: row 1 is I64, but row 0 is U16: every row has the column's dtype (cast it "
         "first, e.g. x.astype(...)); nothing was written"),
        ({"t": [np.zeros((2, 4), np.float32), np.zeros((1, 3), np.float32)]}, mmtensor.ConvertError,
         "save: tensor `t`: row 1 has shape (1, 3), so items of shape (3,), but row 0 has items of "
         "shape (4,); nothing was written"),
        ({"t": [np.zeros(2, np.uint16), np.uint16(3)]}, mmtensor.ConvertError,
         "save: tensor `t`: row 1 is a 0-d array: each row is an array of shape (length,) + "
         "item_shape; nothing was written"),
        ({"t": []}, mmtensor.ConvertError,
         "save: tensor `t`: is an empty list of rows, whose dtype and item shape cannot be known: "
         "give them (DatasetWriter's columns=), or give (values, lengths) arrays; nothing was written"),
        ({"t": (np.arange(5, dtype=np.uint16), [3, 1])}, mmtensor.ConvertError,
         "save: tensor `t`: its 2 lengths add up to 4 items, but its values have 5 (their first "
         "axis); nothing was written"),
        ({"t": (np.arange(5, dtype=np.uint16), [3, 3, -1])}, mmtensor.ConvertError,
         "save: tensor `t`: its lengths hold -1: they are a 1-d array of non-negative integers, one "
         "per row; nothing was written"),
        ({"t": (np.arange(5, dtype=np.uint16), [[5]])}, mmtensor.ConvertError,
         "save: tensor `t`: its lengths are an array of 2 dimensions: they are a 1-d array of "
         "non-negative integers, one per row; nothing was written"),
        ({"t": (np.arange(5, dtype=np.uint16), [2.5, 2.5])}, mmtensor.ConvertError,
         "save: tensor `t`: its lengths are of dtype float64: they are a 1-d array of non-negative "
         "integers, one per row; nothing was written"),
        ({"t": (np.arange(5), [5], 1)}, mmtensor.ConvertError,
         "save: tensor `t`: is a tuple of 3 items; ragged rows are a list of arrays (one per row) or "
         "a (values, lengths) pair; nothing was written"),
    ]
    for tensors, cls, text in cases:
        with pytest.raises(cls) as info:
            mmtensor.save(out, tensors)
        assert str(info.value) == text
        assert isinstance(info.value, (ValueError, TypeError)) and info.value.tensor == "t"
        assert not out.exists()


# ---------------------------------------------------------------------------------------------
# DatasetWriter's ragged columns, Dataset.ragged
# ---------------------------------------------------------------------------------------------


def test_writer_round_trip_over_many_shards(tmp_path):
    out = tmp_path / "ds"
    rng = np.random.default_rng(0)
    tokens, boxes, labels = [], [], []
    columns = {"tokens": ("uint16", (None,)), "boxes": ("float32", (None, 4)), "label": "i64"}
    with mmtensor.DatasetWriter(out, columns=columns, shard_size=256) as w:
        assert w.columns == {"tokens": ("U16", (None,)), "boxes": ("F32", (None, 4)), "label": ("I64", ())}
        for n in [5, 0, 17, 1, 30]:
            t = [rng.integers(0, 60000, rng.integers(0, 40)).astype(np.uint16) for _ in range(n)]
            b = [rng.standard_normal((rng.integers(0, 5), 4), dtype=np.float32) for _ in range(n)]
            y = rng.integers(0, 100, n)
            if n == 17:  # values and lengths, as Arrow lays a list column out
                w.write({"label": y, "boxes": b,
                         "tokens": (np.concatenate(t) if t else np.zeros(0, np.uint16), [len(r) for r in t])})
            else:
                w.write({"tokens": t, "boxes": b, "label": y})
            tokens += t
            boxes += b
            labels.append(y)
        assert w.rows_written == 53
    ds = mmtensor.open_dataset(out)
    ds.verify()
    assert ds.num_shards > 5
    assert ds.columns == ["tokens", "boxes", "label"] and ds.keys() == ds.columns and len(ds) == 3
    assert ds.ragged_columns == ["tokens", "boxes"] and "tokens" in ds
    assert ds.dtype("tokens") == "U16" and ds.dtype("label") == "I64"
    np.testing.assert_array_equal(ds.take("label", np.arange(53)), np.concatenate(labels))
    t = ds.ragged("tokens")
    assert len(t) == 53 and t.num_values == sum(map(len, tokens))
    for i in range(53):
        np.testing.assert_array_equal(t[i], tokens[i])
    np.testing.assert_array_equal(t.lengths(), [len(r) for r in tokens])
    values, offsets = t.take([52, 0, 30])
    np.testing.assert_array_equal(values, np.concatenate([tokens[52], tokens[0], tokens[30]]))
    b = ds.ragged("boxes")
    assert b.item_shape == (4,)
    for i in range(53):
        np.testing.assert_array_equal(b[i], boxes[i])
    padded, lengths = b.take_padded(np.arange(53), pad_value=-1)
    assert padded.shape == (53, max(len(r) for r in boxes), 4)
    np.testing.assert_array_equal(padded[7, : lengths[7]], boxes[7])
    # A ragged column is not a fixed one, and the reverse.
    for read in (lambda: ds.take("tokens", [0]), lambda: ds.shape("tokens")):
        with pytest.raises(mmtensor.RaggedError) as info:
            read()
        assert str(info.value).startswith(
            f"{out}: column `tokens` is ragged (its rows have different lengths): read it with "
            '`ragged("tokens")` (`row(i)`, `take`, `take_padded`)'
        )
        assert info.value.tensor == "tokens"
    with pytest.raises(mmtensor.RaggedError, match=re.escape("`label` is not a ragged tensor")):
        ds.ragged("label")
    # An append adds rows (in new shards) to the ragged columns too.
    with mmtensor.DatasetWriter(out, mode="append") as w:
        assert w.columns["tokens"] == ("U16", (None,))
        w.write({"tokens": [np.array([1, 2], np.uint16)], "boxes": [np.zeros((0, 4), np.float32)],
                 "label": np.array([5])})
    ds = mmtensor.open_dataset(out)
    assert ds.num_rows == 54 and ds.ragged("tokens")[53].tolist() == [1, 2]


def test_ragged_columns_are_inferred_from_the_first_batch(tmp_path):
    out = tmp_path / "ds"
    torch = pytest.importorskip("torch")
    with mmtensor.DatasetWriter(out) as w:
        w.write({"tokens": [np.array([1, 2, 3], np.int32), torch.tensor([4], dtype=torch.int32)],
                 "x": np.zeros((2, 3), np.float32)})
        assert w.columns == {"tokens": ("I32", (None,)), "x": ("F32", (3,))}
        w.write({"tokens": (np.array([5, 6], np.int32), np.array([0, 2], np.uint8)),
                 "x": np.ones((2, 3), np.float32)})
    ds = mmtensor.open_dataset(out)
    assert ds.ragged_columns == ["tokens"]
    assert [r.tolist() for r in ds.ragged("tokens")] == [[1, 2, 3], [4], [], [5, 6]]


def test_writer_refuses_bad_ragged_batches_and_writes_none_of_them(tmp_path):
    out = tmp_path / "ds"
    columns = {"tokens": ("uint16", (None,)), "label": "i64"}
    good = {"tokens": [np.array([1, 2], np.uint16)], "label": np.array([1])}
    tail = "; nothing of this batch was written"
    cases = [
        ({"tokens": [np.array([1], np.uint16), np.array([2], np.int32)], "label": np.arange(2)},
         mmtensor.DtypeMismatchError,
         "DatasetWriter.write: column `tokens`: row 1 is I32, but the column is U16: every row has "
         "the column's dtype (cast it first, e.g. x.astype(...))" + tail),
        ({"tokens": np.zeros((2, 3), np.uint16), "label": np.arange(2)}, mmtensor.ConvertError,
         "DatasetWriter.write: column `tokens` is ragged (rows of different lengths): give a list of "
         "arrays, one per row, or a (values, lengths) pair, not an array of shape (2, 3)" + tail),
        ({"tokens": (np.arange(4, dtype=np.uint16), [1, 2]), "label": np.arange(2)}, mmtensor.ConvertError,
         "DatasetWriter.write: column `tokens`: its 2 lengths add up to 3 items, but its values have "
         "4 (their first axis)" + tail),
        ({"tokens": (np.arange(4, dtype=np.int64), [2, 2]), "label": np.arange(2)},
         mmtensor.DtypeMismatchError,
         "DatasetWriter.write: column `tokens`: its values are I64, but the column is U16: cast them "
         "first (e.g. x.astype(...))" + tail),
        ({"tokens": [np.zeros((1, 2), np.uint16)], "label": np.arange(1)}, mmtensor.ConvertError,
         "DatasetWriter.write: column `tokens`: row 0 has shape (1, 2), so items of shape (2,), but "
         "the column has items of shape ()" + tail),
        ({"tokens": [np.array([1], np.uint16)], "label": np.arange(2)}, mmtensor.ConvertError,
         "DatasetWriter.write: column `label` has 2 rows, but column `tokens` has 1: every column of "
         "a batch has the same rows" + tail),
        ({"tokens": [np.array([1], np.uint16)], "label": [np.array([1])]}, mmtensor.ConvertError,
         "DatasetWriter.write: column `label` has rows of shape (): give one array with the rows "
         "along its first axis, not a list of rows" + tail),
    ]
    with mmtensor.DatasetWriter(out, columns=columns) as w:
        w.write(good)
        for batch, cls, text in cases:
            with pytest.raises(cls) as info:
                w.write(batch)
            assert str(info.value) == text
            assert isinstance(info.value, (ValueError, TypeError))
        w.write(good)
    ds = mmtensor.open_dataset(out)
    assert ds.num_rows == 2 and [r.tolist() for r in ds.ragged("tokens")] == [[1, 2], [1, 2]]
    with pytest.raises(TypeError, match=re.escape("only the first axis of a row shape may be None")):
        mmtensor.DatasetWriter(tmp_path / "other", columns={"t": ("u16", (4, None))})


def test_pyarrow_list_columns_are_ragged(tmp_path):
    pa = pytest.importorskip("pyarrow")
    out = tmp_path / "ds"
    table = pa.table({
        "tokens": pa.array([[1, 2, 3], [], [4]], type=pa.list_(pa.uint16())),
        "big": pa.array([[1.5], [2.5, 3.5], []], type=pa.large_list(pa.float32())),
        "boxes": pa.array([[[1, 2]], [], [[3, 4], [5, 6]]], type=pa.list_(pa.list_(pa.int32(), 2))),
        "y": pa.array([7, 8, 9], type=pa.int64()),
    })
    with mmtensor.DatasetWriter(out, shard_size=64) as w:
        w.write(table)
        w.write(table.slice(1, 2))  # a sliced list array starts at its offset
        assert w.columns["boxes"] == ("I32", (None, 2))
    ds = mmtensor.open_dataset(out)
    assert ds.ragged_columns == ["tokens", "big", "boxes"]
    assert [r.tolist() for r in ds.ragged("tokens")] == [[1, 2, 3], [], [4], [], [4]]
    assert [r.tolist() for r in ds.ragged("big")] == [[1.5], [2.5, 3.5], [], [2.5, 3.5], []]
    assert [r.tolist() for r in ds.ragged("boxes")] == [[[1, 2]], [], [[3, 4], [5, 6]], [], [[3, 4], [5, 6]]]
    with mmtensor.DatasetWriter(tmp_path / "nulls") as w:
        with pytest.raises(ValueError, match=re.escape("column `tokens` has 1 null rows")):
            w.write(pa.table({"tokens": pa.array([[1], None], type=pa.list_(pa.uint16()))}))
        with pytest.raises(ValueError, match=re.escape("column `tokens` has 1 nulls")):
            w.write(pa.table({"tokens": pa.array([[1, None]], type=pa.list_(pa.uint16()))}))
        with pytest.raises(TypeError, match=re.escape("column `s` is of the Arrow type string")):
            w.write(pa.table({"s": pa.array([["a"]], type=pa.list_(pa.string()))}))
        w.abort()


# ---------------------------------------------------------------------------------------------
# Loader(seq_len=...): sequence windows
# ---------------------------------------------------------------------------------------------

LENGTHS = [7, 3, 10, 1, 9]  # 30 tokens, token k = k


def windows_of(loader):
    return [row.tolist() for batch in loader for row in batch["tokens"]]


def test_packed_windows_are_known_and_widened(tmp_path):
    ds = stream_dataset(tmp_path / "ds", LENGTHS)
    assert ds.num_shards > 1
    loader = mmtensor.Loader(ds, batch_size=2, seq_len=4)
    # (30 - 1) // 4 windows; window w is tokens 4w .. 4w + 5.
    assert (loader.num_rows, len(loader), loader.columns) == (7, 4, ["tokens"])
    batches = list(loader)
    assert [b["tokens"].shape for b in batches] == [(2, 5)] * 3 + [(1, 5)]
    assert batches[0]["tokens"].dtype == np.uint16
    assert windows_of(batches) == [list(range(4 * w, 4 * w + 5)) for w in range(7)]
    wide = mmtensor.Loader(ds, batch_size=3, seq_len=4, dtype={"tokens": "int64"}, drop_last=True)
    got = list(wide)
    assert len(got) == 2 and all(b["tokens"].dtype == np.int64 for b in got)
    assert windows_of(got) == [list(range(4 * w, 4 * w + 5)) for w in range(6)]
    # A store's ragged tensor, by path, gives the same windows.
    path = tmp_path / "s.mmt"
    mmtensor.save(path, {"tokens": (np.arange(30, dtype=np.uint16), LENGTHS), "other": np.zeros(3)})
    assert windows_of(mmtensor.Loader(path, batch_size=4, seq_len=4)) == windows_of(batches)


def test_shuffled_windows_cover_each_once_and_resume_exactly(tmp_path):
    ds = stream_dataset(tmp_path / "ds", LENGTHS)
    make = lambda: mmtensor.Loader(ds, batch_size=2, seq_len=4, shuffle=True, seed=3)
    loader = make()
    loader.set_epoch(1)
    full = windows_of(loader)
    assert sorted(full) == [list(range(4 * w, 4 * w + 5)) for w in range(7)]
    assert full != sorted(full)
    loader = make()
    loader.set_epoch(1)
    it = iter(loader)
    first = [row.tolist() for _ in range(2) for row in next(it)["tokens"]]
    state = loader.state_dict()
    assert (state["seq_len"], state["within_documents"], state["next_batch"]) == (4, False, 2)
    resumed = make()
    resumed.load_state_dict(state)
    assert first + windows_of(resumed) == full
    # Another seq_len or within_documents is another order.
    for key, value in (("seq_len", 5), ("within_documents", True)):
        other = dict(state, **{key: value})
        with pytest.raises(mmtensor.LoaderError) as info:
            make().load_state_dict(other)
        assert str(info.value) == (
            f"{ds.path}: the state is of another loader: its {key} is {value!r}, this loader's is "
            f"{state[key]!r}"
        )
    # Ranks split the windows as they split rows: together they read every window.
    ranks = [windows_of(mmtensor.Loader(ds, batch_size=2, seq_len=4, shuffle=True, seed=3,
                                        rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    assert sorted(set(map(tuple, ranks[0] + ranks[1]))) == sorted(map(tuple, full))
    # A state from before seq_len existed read rows, not windows.
    old = {k: v for k, v in state.items() if k not in ("seq_len", "within_documents")}
    with pytest.raises(mmtensor.LoaderError, match="its seq_len is None, this loader's is 4"):
        make().load_state_dict(old)


def test_windows_within_documents(tmp_path):
    ds = stream_dataset(tmp_path / "ds", LENGTHS)
    loader = mmtensor.Loader(ds, batch_size=8, seq_len=4, within_documents=True)
    starts = np.cumsum([0] + LENGTHS)
    # A document of d tokens gives (d - 1) // 4 windows at its start + 4k.
    want = [list(range(s + 4 * k, s + 4 * k + 5))
            for s, d in zip(starts, LENGTHS) for k in range((d - 1) // 4)]
    assert want == [list(range(0, 5)), list(range(10, 15)), list(range(14, 19)),
                    list(range(21, 26)), list(range(25, 30))]
    assert windows_of(loader) == want
    assert loader.state_dict()["within_documents"] is True


def test_window_errors(tmp_path):
    ds = stream_dataset(tmp_path / "ds", LENGTHS)
    with pytest.raises(mmtensor.LoaderError, match=re.escape(
            "within_documents=True cuts sequence windows within documents: pass seq_len too")):
        mmtensor.Loader(ds, batch_size=2, within_documents=True)
    with pytest.raises(mmtensor.LoaderError) as info:
        mmtensor.Loader(ds, batch_size=2, seq_len=0)
    assert str(info.value) == f"{ds.path}: column `tokens`: seq_len is 0; it must be at least 1"
    assert info.value.tensor == "tokens"
    with pytest.raises(mmtensor.LoaderError) as info:
        mmtensor.Loader(ds, batch_size=2, seq_len=30)
    assert str(info.value) == (
        f"{ds.path}: column `tokens`: seq_len = 30 needs at least 31 items for one window of "
        "seq_len + 1, but the stream has 30"
    )
    with pytest.raises(mmtensor.LoaderError, match=re.escape(
            "the longest has 10")):
        mmtensor.Loader(ds, batch_size=2, seq_len=10, within_documents=True)
    with pytest.raises(mmtensor.LoaderError, match=re.escape(
            'sequence windows are split across ranks by windows (split="rows"), not by shards')):
        mmtensor.Loader(ds, batch_size=2, seq_len=4, split="shards")
    with pytest.raises(TypeError, match="seq_len must be an integer"):
        mmtensor.Loader(ds, batch_size=2, seq_len="4")
    path = tmp_path / "fixed.mmt"
    mmtensor.save(path, {"x": np.zeros((4, 2))})
    with pytest.raises(mmtensor.LoaderError, match=re.escape(
            "seq_len needs a ragged column (a token stream), and there is none")):
        mmtensor.Loader(path, batch_size=2, seq_len=4)


def test_row_datasets_leave_ragged_columns_out_by_default(store_path, tmp_path):
    out = tmp_path / "ds"
    with mmtensor.DatasetWriter(out) as w:
        w.write({"tokens": ROWS, "y": np.arange(4)})
    rows = mmtensor.RowDataset(mmtensor.open_dataset(out))
    assert rows.columns == ("y",) and len(rows) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ragged tensors are not "left out" rows
        store_rows = mmtensor.RowDataset(mmtensor.open(store_path))
    assert store_rows.columns == ("w",) and len(store_rows) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = mmtensor.Loader(store_path, batch_size=2)
    assert loader.columns == ["w"]
