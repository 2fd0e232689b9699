"""Casting on output (issue 23): `Loader(..., dtype={...})` and `take(..., dtype=...)` cast rows as
they are gathered. The batches are the uncast batches, cast; `out` is checked against the target
dtype; casts that could fail on a value, and arguments that are not dtypes, are clear errors."""

import numpy as np
import pytest

import mmtensor

ROWS = 157


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cast")
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 65536, size=(ROWS, 6), dtype=np.uint16)
    tokens[0, 0] = 65535  # the largest uint16 stays 65535, not -1
    x = rng.standard_normal((ROWS, 3), dtype=np.float32)
    y = np.arange(ROWS, dtype=np.int64) * 7
    mask = (np.arange(ROWS) % 3 == 0)
    for name, a in [("tokens", tokens), ("x", x), ("y", y), ("mask", mask)]:
        np.save(d / f"{name}.npy", a)
    inputs = [f"{n}={d / (n + '.npy')}" for n in ("tokens", "x", "y", "mask")]
    path = d / "train.mmt"
    mmtensor.convert(inputs, path)
    mmtensor.convert(inputs, d / "ds", shard_size="1KiB")
    return {"path": path, "ds": d / "ds", "tokens": tokens, "x": x, "y": y, "mask": mask}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_uint16_column_cast_to_int64_gives_the_uncast_batches_as_int64(data, prefetch):
    kw = dict(shuffle=True, seed=4, prefetch=prefetch)
    plain = list(mmtensor.Loader(data["path"], 16, **kw))
    cast = mmtensor.Loader(data["path"], 16, dtype={"tokens": "int64", "mask": np.float32}, **kw)
    got = list(cast)
    assert len(got) == len(plain) == 10
    for a, b in zip(plain, got):
        assert a["tokens"].dtype == np.uint16 and b["tokens"].dtype == np.int64
        np.testing.assert_array_equal(b["tokens"], a["tokens"].astype(np.int64))
        assert b["mask"].dtype == np.float32
        np.testing.assert_array_equal(b["mask"], a["mask"].astype(np.float32))
        for name in ("x", "y"):  # columns not named keep their dtype and bytes
            assert b[name].dtype == a[name].dtype
            np.testing.assert_array_equal(b[name], a[name])
        assert b["tokens"].flags.writeable and b["tokens"].flags.c_contiguous
    assert got[0]["tokens"].max() <= 65535 and (got[-1]["tokens"] >= 0).all()
    # The order and the state do not depend on the casts.
    assert cast.state_dict() == mmtensor.Loader(data["path"], 16, **kw).state_dict() | {
        "epoch": 1, "next_batch": 0}


def test_torch_output_and_the_torch_buffer_path_hold_the_target_dtype(data):
    torch = pytest.importorskip("torch")
    kw = dict(columns=["tokens", "x"], shuffle=True, seed=1, output="torch")
    plain = list(mmtensor.Loader(data["path"], 20, **kw))
    for extra in ({}, {"_torch_buffers": True}):
        got = list(mmtensor.Loader(data["path"], 20, dtype={"tokens": torch.int64, "x": "bf16"},
                                   **kw, **extra))
        assert len(got) == len(plain)
        for a, b in zip(plain, got):
            assert b["tokens"].dtype == torch.int64 and b["x"].dtype == torch.bfloat16
            assert torch.equal(b["tokens"], a["tokens"].to(torch.int64))
            assert torch.equal(b["x"], a["x"].to(torch.bfloat16))
        # nn.Embedding takes the cast ids as they come.
        emb = torch.nn.Embedding(65536, 2)
        assert emb(got[0]["tokens"]).shape == (20, 6, 2)
    if torch.cuda.is_available():
        pinned = next(iter(mmtensor.Loader(data["path"], 20, dtype={"tokens": "int64"},
                                           pin_memory=True, **kw)))
        assert pinned["tokens"].is_pinned() and pinned["tokens"].dtype == torch.int64
        assert torch.equal(pinned["tokens"], plain[0]["tokens"].to(torch.int64))


def test_a_cast_loader_over_a_dataset_gives_the_cast_batches_of_one_store(data):
    ds = mmtensor.open_dataset(data["ds"])
    assert ds.num_shards > 5
    kw = dict(shuffle=True, seed=2, dtype={"tokens": "int32", "x": "float64"})
    a = list(mmtensor.Loader(data["path"], 32, **kw))
    b = list(mmtensor.Loader(ds, 32, **kw))
    assert len(a) == len(b)
    for ba, bb in zip(a, b):
        assert bb["tokens"].dtype == np.int32 and bb["x"].dtype == np.float64
        for name in ba:
            np.testing.assert_array_equal(ba[name], bb[name])


def test_take_casts_on_tensors_stores_and_datasets(data):
    idx = np.random.default_rng(5).integers(-ROWS, ROWS, size=300)
    want = data["tokens"][idx].astype(np.int64)
    with mmtensor.open(data["path"]) as s:
        for dtype in ("int64", np.int64, np.dtype("<i8")):
            got = s.take("tokens", idx, dtype=dtype)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(s.tensor("tokens").take(idx, dtype="float32"),
                                      data["tokens"][idx].astype(np.float32))
        np.testing.assert_array_equal(s.tensor("tokens")[10:20].take([0, 9], dtype="int64"),
                                      data["tokens"][[10, 19]].astype(np.int64))
        # `out` is checked against the target dtype, and reused.
        out = np.empty((300, 6), dtype=np.int64)
        assert s.take("tokens", idx, out=out, dtype="int64") is out
        np.testing.assert_array_equal(out, want)
        with pytest.raises(TypeError, match=r"out has dtype uint16, but the rows are gathered as int64"):
            s.take("tokens", idx, out=np.empty((300, 6), dtype=np.uint16), dtype="int64")
        with pytest.raises(TypeError, match=r"out has dtype int64, but the rows are gathered as uint16"):
            s.take("tokens", idx, out=out)
        assert s.take("tokens", idx, dtype=None).dtype == np.uint16
        torch = pytest.importorskip("torch")
        np.testing.assert_array_equal(s.take("x", idx, dtype=torch.float64),
                                      data["x"][idx].astype(np.float64))
    ds = mmtensor.open_dataset(data["ds"])
    got = ds.take("tokens", idx, dtype="int64")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_casts_that_could_lose_values_are_refused_naming_the_tensor_and_both_dtypes(data):
    with mmtensor.open(data["path"]) as s:
        with pytest.raises(mmtensor.UnsupportedDtypeError,
                           match=r"tensor `y` holds I64, which is not cast to I32") as e:
            s.take("y", [0, 1], dtype="int32")
        assert e.value.tensor == "y"
        assert 'mmtensor.convert(..., dtype={"y": "int32"})' in str(e.value)
        with pytest.raises(mmtensor.UnsupportedDtypeError, match=r"there is no such cast \(F32 is read as"):
            s.tensor("x").take([0], dtype="int64")
    with pytest.raises(mmtensor.UnsupportedDtypeError, match="`tokens` holds U16, which is not cast to I8") as e:
        mmtensor.Loader(data["path"], 8, dtype={"tokens": "int8"})
    assert e.value.tensor == "tokens"
    with pytest.raises(mmtensor.UnsupportedDtypeError, match="holds U16, which is not cast to I8"):
        mmtensor.open_dataset(data["ds"]).take("tokens", [0], dtype="i8")


def test_bad_dtype_arguments_are_clear_errors_naming_the_argument_and_column(data):
    path = data["path"]
    with pytest.raises(mmtensor.LoaderError, match="output dtype is given for `nope`, which is not "
                       "one of the loader's columns") as e:
        mmtensor.Loader(path, 8, dtype={"nope": "int64"})
    assert e.value.tensor == "nope"
    with pytest.raises(mmtensor.LoaderError, match="`y`"):
        mmtensor.Loader(path, 8, columns=["tokens"], dtype={"y": "float64"})
    with pytest.raises(TypeError, match="dtype must be a dict of column name to dtype"):
        mmtensor.Loader(path, 8, dtype="int64")
    with pytest.raises(TypeError, match="keys must be column names"):
        mmtensor.Loader(path, 8, dtype={1: "int64"})
    with pytest.raises(mmtensor.UnsupportedDtypeError, match="dtype of column `tokens`: \"int128\""):
        mmtensor.Loader(path, 8, dtype={"tokens": "int128"})
    with pytest.raises(TypeError, match="dtype of column `tokens`: cannot read <object"):
        mmtensor.Loader(path, 8, dtype={"tokens": object()})
    with mmtensor.open(path) as s:
        with pytest.raises(TypeError, match="take of `tokens`: dtype: \"wide\" is not a dtype"):
            s.take("tokens", [0], dtype="wide")
    assert mmtensor.Loader(path, 8, dtype={}).columns == ["tokens", "x", "y", "mask"]
    assert mmtensor.Loader(path, 8, dtype=None).columns == ["tokens", "x", "y", "mask"]
