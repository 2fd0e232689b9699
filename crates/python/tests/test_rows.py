"""Row ranges: `rows()` is strict, `tensor[...]` is exactly NumPy's indexing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import mmtensor
from conftest import data_pointer


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rows")
    arrays = {f"x{n}": np.arange(n * 3, dtype=np.int32).reshape(n, 3) for n in (0, 1, 2, 10)}
    arrays["s"] = np.array(7, dtype=np.int64)
    np.savez(tmp / "a.npz", **arrays)
    mmtensor.convert([tmp / "a.npz"], tmp / "a.mmt", alignment=64)
    with mmtensor.open(tmp / "a.mmt") as store:
        yield store, arrays


def strict(x, start, stop):
    """What rows(start, stop) must give: Python indices, no clamping, nothing reversed."""
    n = len(x)

    def position(i):
        p = i + n if i < 0 else i
        if not 0 <= p <= n:
            raise IndexError(i)
        return p

    s = position(start)
    e = n if stop is None else position(stop)
    if s > e:
        raise IndexError((start, stop))
    return x[s:e]


def test_rows_negative_out_of_range_raises(stores):
    # Defect 5 of issue 10: rows(-100) on 10 rows silently clamped to all rows.
    store, _ = stores
    with pytest.raises(mmtensor.RowRangeError, match=r"row index -100 is out of range for 10 rows"):
        store.rows("x10", -100)
    with pytest.raises(mmtensor.RowRangeError):
        store.tensor("x10").rows(0, -11)
    with pytest.raises(mmtensor.RowRangeError):
        store.rows("x10", 100)
    assert np.array_equal(store.rows("x10", -10), store["x10"])


@pytest.mark.parametrize("name", ["x0", "x1", "x2", "x10"])
def test_rows_against_python_indices(stores, name):
    store, arrays = stores
    x = arrays[name]
    n = len(x)
    t = store.tensor(name)
    bounds = range(-n - 3, n + 4)
    for start, stop in itertools.product(bounds, [*bounds, None]):
        try:
            want = strict(x, start, stop)
        except IndexError:
            with pytest.raises(mmtensor.RowRangeError):
                t.rows(start, stop)
            with pytest.raises(mmtensor.RowRangeError):
                store.rows(name, start, stop)
            continue
        got = t.rows(start, stop)
        assert got.shape == want.shape, (start, stop)
        assert np.array_equal(got.numpy(), want), (start, stop)
        assert np.array_equal(store.rows(name, start, stop), want), (start, stop)


@pytest.mark.parametrize("name", ["x0", "x1", "x2", "x10"])
def test_slicing_is_numpy_slicing(stores, name):
    store, arrays = stores
    x = arrays[name]
    n = len(x)
    t = store.tensor(name)
    bounds = [None, *range(-n - 3, n + 4)]
    for start, stop in itertools.product(bounds, bounds):
        got = t[start:stop]
        want = x[start:stop]
        assert isinstance(got, mmtensor.Tensor), (start, stop)
        assert got.shape == want.shape and np.array_equal(got.numpy(), want), (start, stop)
        # Nested ranges are relative to the outer one, as NumPy's are.
        for a, b in ((None, None), (1, -1), (-2, None)):
            assert np.array_equal(got[a:b].numpy(), want[a:b]), (start, stop, a, b)
    for start, stop, step in itertools.product(bounds[:6], bounds[-4:], (-3, -1, 2, 3)):
        got = t[start:stop:step]
        want = x[start:stop:step]
        assert isinstance(got, np.ndarray) and not got.flags.writeable
        assert got.shape == want.shape and np.array_equal(got, want), (start, stop, step)
    for i in range(-n - 2, n + 2):
        if -n <= i < n:
            assert np.array_equal(t[i], x[i]) and not t[i].flags.writeable
        else:
            with pytest.raises(IndexError):
                t[i]
    with pytest.raises(ValueError):
        t[::0]


def test_slices_are_views(stores):
    store, arrays = stores
    t = store.tensor("x10")
    whole = t.numpy()
    assert data_pointer(t[3:7].numpy()) == data_pointer(whole) + 3 * 12
    assert data_pointer(t[-2:].numpy()) == data_pointer(whole) + 8 * 12
    assert data_pointer(t[4]) == data_pointer(whole) + 4 * 12
    assert data_pointer(t[::2]) == data_pointer(whole)
    assert np.array_equal(t[2:9, 1], arrays["x10"][2:9, 1])
    assert repr(t[2:5]).startswith("<mmtensor.Tensor `x10` rows 2..5: I32 [3, 3] in ")


def test_scalars_have_no_rows(stores):
    store, _ = stores
    with pytest.raises(mmtensor.RowRangeError, match="0-dimensional"):
        store.tensor("s").rows(0)
    with pytest.raises(IndexError):
        store.tensor("s")[0:1]
    assert store.tensor("s")[()] == 7
