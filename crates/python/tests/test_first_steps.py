"""What a new user trips over (issue 23): errors that name the thing to do, and one rule for the
same argument given two ways. Each test failed before its fix."""

import shutil
import subprocess
import sys
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
    # convert reads Parquet: this one is named as a Parquet file it cannot read.
    with pytest.raises(mmtensor.InvalidFileError, match="cannot read the Parquet footer"):
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


IN_PLACE = r"""
import hashlib, sys
import numpy as np, torch, mmtensor
path, copy = sys.argv[1], sys.argv[2] == "copy"
digest = lambda: hashlib.sha256(open(path, "rb").read()).hexdigest()
before = digest()
with mmtensor.open(path, copy=copy) as store:
    original = store["x"].copy()
    t = store.torch("x")
    t[:10] -= 1                       # the review's segfault
    t.mul_(2)
    assert torch.equal(t[:10], torch.from_numpy((original[:10] - 1) * 2)), "the write was lost"
    assert np.array_equal(store["x"], original), "the store's NumPy view changed"
    assert torch.equal(store.torch("x"), torch.from_numpy(original)), "another torch() changed"
    d = torch.from_dlpack(store.tensor("x"))   # DLPack consumers: the same
    d[5:7] = 0
    assert np.array_equal(store.numpy("x"), original) and float(d[5, 0]) == 0.0
    other = __import__("subprocess").run(
        [sys.executable, "-c", "import mmtensor, sys; s = mmtensor.open(sys.argv[1]);"
         "print(float(s['x'][0, 0]), float(s['x'][5, 0]))", path],
        capture_output=True, text=True, check=True).stdout.split()
    assert [float(v) for v in other] == [float(original[0, 0]), float(original[5, 0])], other
assert digest() == before, "the file changed"
print("ok")
"""


@pytest.mark.parametrize("mode", ["mapped", "copy"])
def test_in_place_ops_on_torch_tensors_are_copy_on_write(tmp_path, mode):
    # The review: store.torch("x") then `x[:10] -= 1` killed the process (SIGSEGV).
    pytest.importorskip("torch")
    np.save(tmp_path / "x.npy", np.arange(4096 * 64, dtype=np.float32).reshape(4096, 64))
    path = tmp_path / "s.mmt"
    mmtensor.convert([tmp_path / "x.npy"], path)
    r = subprocess.run([sys.executable, "-c", IN_PLACE, str(path), mode], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr)


def test_a_torch_write_copies_only_the_pages_it_touches(tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import mappings_of, rss_anon_bytes
    rows, width = 64 * 1024, 256             # 64 MiB of float32
    np.save(tmp_path / "x.npy", np.zeros((rows, width), dtype=np.float32))
    path = tmp_path / "s.mmt"
    mmtensor.convert([tmp_path / "x.npy"], path)
    with mmtensor.open(path) as store:
        t = store.torch("x")
        assert mappings_of(path), "the tensor is not a mapping of the file"
        before = rss_anon_bytes()
        t[:16] += 1                           # 16 KiB: four pages
        grown = rss_anon_bytes() - before
        assert float(t.sum()) == 16 * width
        assert grown < 4 << 20, f"RssAnon grew by {grown} bytes for a 16 KiB write"
        del t


def test_row_dataset_takes_a_dataset_and_a_dataset_folder(tmp_path):
    # It refused both: "RowDataset needs an mmtensor.Store or a path".
    import pickle
    folder = tmp_path / "ds"
    shutil.copytree(GOLDEN, folder)
    full = mmtensor.open_dataset(folder)
    idx = [9, 0, 4, 3, 8]
    for source in (folder, str(folder), full):
        rows = mmtensor.RowDataset(source, output="numpy")
        assert len(rows) == 10 and rows.columns == ("x", "y")
        batch = rows.__getitems__(idx)
        np.testing.assert_array_equal(batch.columns["x"], full.take("x", idx))
        np.testing.assert_array_equal(batch.columns["y"], full.take("y", idx))
        again = pickle.loads(pickle.dumps(rows))
        np.testing.assert_array_equal(again.__getitems__(idx).columns["y"], full.take("y", idx))
    torch = pytest.importorskip("torch")
    rows = mmtensor.RowDataset(full, output="torch")
    b = rows.__getitems__(idx)
    assert b.columns["x"].dtype == torch.uint16 and b.columns["y"].dtype == torch.int64
    loader = torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=mmtensor.data.collate,
                                         num_workers=2, multiprocessing_context="fork")
    assert sorted(int(v) for b in loader for v in b["y"]) == sorted(full.take("y", range(10)).tolist())
    # A dataset pickles as its folder, rank and manifest: rows appended since are refused.
    state = pickle.dumps(mmtensor.RowDataset(full, output="numpy"))
    ds_state = pickle.dumps(full)
    np.save(tmp_path / "x.npy", np.zeros((2, 3), dtype=np.uint16))
    np.save(tmp_path / "y.npy", np.zeros(2, dtype=np.int64))
    mmtensor.append(folder, {"x": tmp_path / "x.npy", "y": tmp_path / "y.npy"})
    with pytest.raises(mmtensor.StoreChangedError, match="manifest changed"):
        pickle.loads(ds_state)
    stale = pickle.loads(state)
    with pytest.raises(mmtensor.StoreChangedError, match="manifest changed"):
        stale.__getitems__([0])


def test_columns_left_out_by_default_are_named_in_a_warning(tmp_path):
    # A tensor with another number of rows was silently left out of every batch.
    np.save(tmp_path / "x.npy", np.zeros((6, 2), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.zeros(6, dtype=np.int64))
    np.save(tmp_path / "names.npy", np.zeros(3, dtype=np.int32))
    path = tmp_path / "s.mmt"
    mmtensor.convert([f"x={tmp_path / 'x.npy'}", f"y={tmp_path / 'y.npy'}",
                      f"names={tmp_path / 'names.npy'}"], path)
    with pytest.warns(UserWarning, match=r"leaves out `names` \(3 rows\)"):
        loader = mmtensor.Loader(path, 2)
    assert loader.columns == ["x", "y"]
    with pytest.warns(UserWarning, match=r"leaves out `names` \(3 rows\)"):
        rows = mmtensor.RowDataset(path, output="numpy")
    assert rows.columns == ("x", "y")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mmtensor.Loader(path, 2, columns=["x", "y"])
        mmtensor.RowDataset(path, columns=["x"], output="numpy")


def test_every_api_hands_out_numpy_unless_asked_for_torch(store):
    # The review: the Loader defaulted to NumPy and RowDataset to torch. One rule now.
    batch = next(iter(mmtensor.Loader(store, 2, columns=["x", "y"])))
    rows = mmtensor.RowDataset(store, columns=["x", "y"]).__getitems__([0, 1]).columns
    with mmtensor.open(store) as s:
        taken = s.take("x", [0, 1])
    for a in (batch["x"], batch["y"], rows["x"], rows["y"], taken):
        assert type(a) is np.ndarray
    torch = pytest.importorskip("torch")
    batch = next(iter(mmtensor.Loader(store, 2, columns=["x"], output="torch")))
    rows = mmtensor.RowDataset(store, columns=["x"], output="torch").__getitems__([0]).columns
    assert isinstance(batch["x"], torch.Tensor) and isinstance(rows["x"], torch.Tensor)
