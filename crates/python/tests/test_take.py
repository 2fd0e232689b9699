"""Tensor.take / Store.take: the parallel gather, against NumPy's fancy indexing `arr[indices]`."""

from __future__ import annotations

import sys
import threading

import ml_dtypes
import numpy as np
import pytest

import mmtensor
from conftest import run_in_forked_child
from test_bool import bad_bool_npy

NUMPY_DTYPES = [
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64", "complex64", "complex128",
]
ML = [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
ML_NAMES = {ml_dtypes.bfloat16: "bf16", ml_dtypes.float8_e4m3fn: "f8_e4m3", ml_dtypes.float8_e5m2: "f8_e5m2"}


def sample(dtype, shape):
    rng = np.random.default_rng(0)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def store_of(tmp_path, arrays, input_dtype=None):
    paths = {}
    for name, a in arrays.items():
        np.save(tmp_path / f"{name}.npy", a)
        paths[name] = tmp_path / f"{name}.npy"
    out = tmp_path / "s.mmt"
    mmtensor.convert(paths, out, input_dtype=input_dtype)
    return mmtensor.open(out)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


INDICES = [7, 0, 3, 3, -1, -8, 4, 5, 6, 1]


@pytest.mark.parametrize("name", NUMPY_DTYPES)
def test_matches_numpy_fancy_indexing_for_every_dtype(tmp_path, name):
    a = sample(name, (8, 3, 2))
    with store_of(tmp_path, {"a": a}) as store:
        for indices in (INDICES, np.array(INDICES, dtype=np.int32), [2, 3, 4]):
            got = store.take("a", indices)
            assert same_bits(got, a[indices])
            assert got.flags.writeable and got.flags.c_contiguous and got.flags.owndata
        got = store.tensor("a").take(np.array([7, 1, 1], dtype=np.uint64))
        assert same_bits(got, a[[7, 1, 1]])


@pytest.mark.parametrize("dt", ML)
def test_bf16_and_fp8_come_as_ml_dtypes(tmp_path, dt):
    a = sample(np.float32, (9, 4)).astype(dt)
    store = store_of(tmp_path, {"w": a}, input_dtype={"w": ML_NAMES[dt]})
    got = store.take("w", INDICES)
    assert got.dtype == np.dtype(dt)
    assert same_bits(got, a[INDICES])
    out = np.empty_like(got)
    assert store.take("w", INDICES, out=out) is out
    assert same_bits(out, a[INDICES])


def test_a_large_shuffled_batch_runs_in_parallel_and_matches(tmp_path):
    a = sample(np.float32, (4096, 256))  # rows of 1 KiB
    with store_of(tmp_path, {"x": a}) as store:
        indices = np.random.default_rng(1).permutation(4096)[:1500]
        assert np.array_equal(store.take("x", indices), a[indices])
        assert np.array_equal(store.take("x", np.arange(4096)), a)


def test_empty_indices(tmp_path):
    a = sample(np.int64, (5, 3))
    with store_of(tmp_path, {"a": a}) as store:
        for empty in ([], np.array([], dtype=np.int64), np.zeros(0, dtype=np.uint8)):
            got = store.take("a", empty)
            assert got.shape == (0, 3) and got.dtype == np.int64


def test_out_is_reused_and_returned(tmp_path):
    a = sample(np.float32, (100, 16))
    with store_of(tmp_path, {"x": a}) as store:
        t = store.tensor("x")
        out = np.empty((4, 16), dtype=np.float32)
        for start in range(0, 100, 4):
            indices = np.arange(start, start + 4)[::-1]
            assert t.take(indices, out=out) is out
            assert np.array_equal(out, a[indices])


def test_indices_are_relative_to_a_row_range(tmp_path):
    a = sample(np.int32, (50, 2))
    with store_of(tmp_path, {"a": a}) as store:
        view = store.tensor("a")[10:20]
        assert np.array_equal(view.take([0, 9, -1, -10]), a[10:20][[0, 9, -1, -10]])
        with pytest.raises(mmtensor.RowRangeError):
            view.take([10])


def test_out_of_range_raises_row_range_error_naming_the_index_and_writes_nothing(tmp_path):
    a = sample(np.float64, (6, 2))
    with store_of(tmp_path, {"a": a}) as store:
        out = np.full((3, 2), 7.0)
        for bad in (6, -7, 2**63 - 1, -(2**63)):
            with pytest.raises(mmtensor.RowRangeError, match=rf"index {bad} is out of range for 6 rows") as info:
                store.take("a", [0, bad, 1], out=out)
            assert isinstance(info.value, IndexError)
            assert info.value.tensor == "a"
            assert np.all(out == 7.0)
        with pytest.raises(IndexError, match=str(2**64 - 1)):
            store.take("a", np.array([2**64 - 1], dtype=np.uint64))


def test_bad_indices_and_bad_out_are_clear_errors(tmp_path):
    a = sample(np.float32, (6, 2))
    with store_of(tmp_path, {"a": a, "s": np.float64(3.0)}) as store:
        t = store.tensor("a")
        with pytest.raises(ValueError, match="1-d"):
            t.take([[0, 1]])
        with pytest.raises(TypeError, match="integer"):
            t.take([0.5])
        with pytest.raises(TypeError, match="flatnonzero"):
            t.take(np.array([True, False, True, False, True, False]))
        with pytest.raises(mmtensor.RowRangeError, match="`s`"):
            store.take("s", [])
        with pytest.raises(TypeError, match="NumPy array"):
            t.take([0], out=bytearray(8))
        with pytest.raises(TypeError, match="dtype float64"):
            t.take([0], out=np.empty((1, 2)))
        with pytest.raises(ValueError, match=r"shape \[2, 2\].*\[1, 2\]"):
            t.take([0], out=np.empty((2, 2), dtype=np.float32))
        with pytest.raises(ValueError, match="C-contiguous"):
            t.take([0, 1], out=np.empty((2, 4), dtype=np.float32)[:, ::2])
        with pytest.raises(ValueError, match="read-only"):
            t.take([0], out=store.numpy("a")[:1])
        with pytest.raises(mmtensor.TensorNotFoundError):
            store.take("nope", [0])


def test_a_bad_bool_row_is_a_corrupted_file_error(tmp_path):
    with mmtensor.open(bad_bool_npy(tmp_path / "m.npy")) as store:
        assert np.array_equal(store.take("m", [1, 0, 3]), [True, False, True])
        with pytest.raises(mmtensor.CorruptedFileError, match="`m`"):
            store.take("m", [0, 2])


def test_take_outlives_close_and_runs_from_threads(tmp_path):
    a = sample(np.float32, (2048, 64))
    store = store_of(tmp_path, {"x": a})
    t = store.tensor("x")
    store.close()
    with pytest.raises(mmtensor.StoreClosedError):
        store.take("x", [0])
    results = {}

    def work(k):
        idx = np.random.default_rng(k).integers(0, 2048, 512)
        results[k] = (idx, t.take(idx))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for idx, got in results.values():
        assert np.array_equal(got, a[idx])


def test_an_npy_array_that_needs_convert_is_refused(tmp_path):
    np.save(tmp_path / "be.npy", np.arange(12, dtype=">f4").reshape(4, 3))
    with mmtensor.open(tmp_path / "be.npy") as store:
        name = store.keys()[0]
        with pytest.raises(mmtensor.NeedsConvertError):
            store.take(name, [0, 1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_take_in_a_forked_child_after_the_parent_gathered_does_not_hang(tmp_path):
    # A fork-started DataLoader worker gathers after its parent did: the parallel gather must not
    # use rayon's global pool, whose threads fork does not copy (the child would wait forever).
    np.save(tmp_path / "x.npy", np.arange(4096 * 1024, dtype=np.float32).reshape(4096, 1024))
    store = tmp_path / "x.mmt"
    mmtensor.convert([tmp_path / "x.npy"], store)
    setup = """
        import sys
        import numpy as np
        import mmtensor
        store = mmtensor.open(sys.argv[1])
        idx = np.random.default_rng(0).permutation(4096)[:1024]  # 4 MiB: the parallel path
        parent = store.take("x", idx)
    """
    child = 'bool(np.array_equal(store.take("x", idx), parent))'
    assert run_in_forked_child(setup, child, str(store)) == "True"
