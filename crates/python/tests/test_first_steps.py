"""What a new user trips over (issue 23): errors that name the thing to do, and one rule for the
same argument given two ways. Each test failed before its fix."""

from pathlib import Path

import numpy as np
import pytest

import mmtensor

GOLDEN = Path(__file__).parents[3] / "fixtures" / "golden" / "dataset"


@pytest.fixture
def store(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.float32).reshape(6, 2))
    np.save(tmp_path / "y.npy", np.arange(6, dtype=np.int64))
    path = tmp_path / "s.mmt"
    mmtensor.convert([f"x={tmp_path / 'x.npy'}", f"y={tmp_path / 'y.npy'}"], path)
    return path


def test_a_torch_dtype_is_a_dtype_and_anything_else_names_the_argument(tmp_path, store):
    torch = pytest.importorskip("torch")
    out = tmp_path / "h.mmt"
    mmtensor.convert({"x": tmp_path / "x.npy"}, out, dtype=torch.float16)
    with mmtensor.open(out) as s:
        assert s.dtype("x") == "F16"
    mmtensor.convert({"x": tmp_path / "x.npy"}, out, dtype={"x": torch.bfloat16})
    with mmtensor.open(out) as s:
        assert s.dtype("x") == "BF16"
    with pytest.raises(TypeError, match=r"dtype: cannot read object\(\) as a dtype|dtype: cannot read <object"):
        mmtensor.convert({"x": tmp_path / "x.npy"}, out, dtype=object())


def test_a_dtype_for_all_tensors_that_is_not_a_float_does_not_read_as_a_file(tmp_path, store):
    # It said "input `I8`: a dtype for all tensors applies to...", as if a file were called I8.
    with pytest.raises(mmtensor.ConvertError, match=r"dtype rule `I8`: .*write NAME=I8") as e:
        mmtensor.convert({"x": tmp_path / "x.npy"}, tmp_path / "o.mmt", dtype="i8")
    assert "input" not in str(e.value)


def test_an_unknown_loader_column_lists_the_columns(store):
    with pytest.raises(mmtensor.TensorNotFoundError, match=r"no tensor named `z`; it has `x`, `y`"):
        mmtensor.Loader(store, 2, columns=["x", "z"])
    with mmtensor.open(store) as s:
        with pytest.raises(KeyError, match=r"it has `x`, `y`"):
            s.tensor("nope")
    ds = mmtensor.open_dataset(GOLDEN)
    with pytest.raises(mmtensor.TensorNotFoundError, match=r"it has `x`, `y`"):
        ds.take("z", [0])


def test_opening_a_dataset_folder_as_a_store_says_to_use_open_dataset(tmp_path):
    with pytest.raises(mmtensor.StoreIsADirectoryError, match="open_dataset"):
        mmtensor.open(GOLDEN)
    # Any other folder is only a folder.
    with pytest.raises(mmtensor.StoreIsADirectoryError) as e:
        mmtensor.open(tmp_path)
    assert "open_dataset" not in str(e.value)


def test_a_parquet_file_is_named_as_one(tmp_path):
    # It was "unknown file type" and "starts with [50, 41, 52, 31]".
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1" + bytes(64) + b"PAR1")
    with pytest.raises(mmtensor.InvalidFileError, match="looks like a Parquet file"):
        mmtensor.open(path)
    with pytest.raises(mmtensor.InvalidFileError, match="looks like a Parquet file"):
        mmtensor.convert([path], tmp_path / "o.mmt")
    h5 = tmp_path / "data.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(mmtensor.InvalidFileError, match="looks like an HDF5 file"):
        mmtensor.open(h5)


def test_dict_inputs_expand_globs_as_name_equals_path_does(tmp_path):
    shards = tmp_path / "npy"
    shards.mkdir()
    for i in range(3):
        np.save(shards / f"x-{i}.npy", np.full((2, 2), i, dtype=np.float32))
    a, b = tmp_path / "a.mmt", tmp_path / "b.mmt"
    mmtensor.convert({"x": str(shards / "x-*.npy")}, a)
    mmtensor.convert([f"x={shards / 'x-*.npy'}"], b)
    with mmtensor.open(a) as sa, mmtensor.open(b) as sb:
        assert sa["x"].shape == (6, 2)
        np.testing.assert_array_equal(sa["x"], sb["x"])
    with pytest.raises(ValueError, match="the input of `x` is empty"):
        mmtensor.convert({"x": ""}, a)


def test_convert_takes_a_dataset_folder_and_a_store(tmp_path):
    # It refused .mmt stores and dataset folders: nothing could merge or cut shards again.
    full = mmtensor.open_dataset(GOLDEN)
    x, y = full.take("x", range(10)), full.take("y", range(10))
    one = tmp_path / "one.mmt"
    mmtensor.convert(GOLDEN, one)
    with mmtensor.open(one) as s:
        np.testing.assert_array_equal(s["x"], x)
        np.testing.assert_array_equal(s["y"], y)
    # Cut again (14 bytes a row: 5 rows a shard), cast, select.
    summary = mmtensor.convert(one, tmp_path / "recut", shard_size=70)
    assert (summary["shards"], summary["rows"]) == (2, 10)
    ds = mmtensor.open_dataset(tmp_path / "recut")
    np.testing.assert_array_equal(ds.take("x", range(10)), x)
    only = tmp_path / "x.mmt"
    mmtensor.convert(GOLDEN, only, dtype={"x": "int32"}, columns=["x"])
    with mmtensor.open(only) as s:
        assert list(s.keys()) == ["x"] and s.dtype("x") == "I32"
        np.testing.assert_array_equal(s["x"], x.astype(np.int32))
    with pytest.raises(mmtensor.ConvertError, match="`z` names no tensor"):
        mmtensor.convert(GOLDEN, only, columns=["z"])
    with pytest.raises(TypeError, match="list of tensor names"):
        mmtensor.convert(GOLDEN, only, columns="x")
    # A corrupt block of a store is refused, never carried into a new file with fresh checksums.
    bad = tmp_path / "bad.mmt"
    raw = bytearray(one.read_bytes())
    data = raw.rfind(np.asarray(y).tobytes()[:16])
    assert data > 0
    raw[data + 3] ^= 1
    bad.write_bytes(bytes(raw))
    with pytest.raises(mmtensor.CorruptedFileError, match="tensor `y` block 0 .* does not match its checksum"):
        mmtensor.convert(bad, tmp_path / "out.mmt")
    assert not (tmp_path / "out.mmt").exists()
