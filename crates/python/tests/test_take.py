"""Tensor.take / Store.take: the parallel gather, against NumPy's fancy indexing `arr[indices]`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
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



# Defect 3 of the second review: `take(out=...)` took the output's address, length, shape, dtype
# and flags from Python attributes (`__array_interface__`, `nbytes`, `shape`, `dtype`, `flags`),
# which an ndarray subclass can override: 8 real bytes claiming 4,000 rows made the gather write
# 256,000 bytes into them (a segmentation fault). The facts now come from a plain `numpy.ndarray`
# view of `out` made by ndarray's own C code, which no Python attribute can change.
#
# Each hostile `out` runs in a child process, so that a regression fails its test with the child's
# signal instead of killing the whole pytest run.

HOSTILE_SETUP = """
import json, sys
import numpy as np
import mmtensor
a = np.arange(4000 * 16, dtype=np.float32).reshape(4000, 16)
store = mmtensor.open(sys.argv[1])
idx = np.arange(4000)[::-1].copy()
real = np.empty((4000, 16), dtype=np.float32)  # the right size, shape and dtype

class Flags:
    c_contiguous = writeable = True
    aligned = owndata = True
    def __getitem__(self, key):
        return True

def outcome(out):
    try:
        got = store.take("x", idx, out=out)
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e)}
    base = np.ndarray.view(out, np.ndarray)
    return {"same": got is out, "correct": bool(np.array_equal(base, a[idx]))}
"""

# (what the hostile `out` lies about, the code that makes it, the error it must raise, or None
# when the gather must work and write the right rows into the real memory).
HOSTILE_OUTS = [
    ("nbytes and shape (8 real bytes claiming 4,000 rows)", """
class Liar(np.ndarray):
    nbytes = property(lambda self: 4000 * 16 * 4)
    shape = property(lambda self: (4000, 16))
    size = property(lambda self: 4000 * 16)
out = np.empty(2, dtype=np.float32).view(Liar)
""", ("ValueError", r"`x`: out has shape \[2\], but 4000 rows need shape \[4000, 16\]")),
    ("size, itemsize and len", """
class Liar(np.ndarray):
    size = property(lambda self: 4000 * 16)
    itemsize = property(lambda self: 4)
    __len__ = lambda self: 4000
out = np.empty((1, 16), dtype=np.float32).view(Liar)
""", ("ValueError", r"out has shape \[1, 16\]")),
    ("strides and flags (a strided array claiming to be C-contiguous)", """
class Liar(np.ndarray):
    strides = property(lambda self: (64, 4))
    flags = property(lambda self: Flags())
out = np.empty((8000, 16), dtype=np.float32)[::2].view(Liar)
""", ("ValueError", "out must be C-contiguous")),
    ("flags (a read-only array claiming to be writeable)", """
class Liar(np.ndarray):
    flags = property(lambda self: Flags())
ro = np.zeros((4000, 16), dtype=np.float32)
ro.setflags(write=False)
out = ro.view(Liar)
""", ("ValueError", "out is read-only")),
    ("dtype and itemsize (uint8 bytes claiming to be float32)", """
class Liar(np.ndarray):
    dtype = property(lambda self: np.dtype(np.float32))
    itemsize = property(lambda self: 4)
    nbytes = property(lambda self: 4000 * 16 * 4)
out = np.empty((4000, 16), dtype=np.uint8).view(Liar)
""", ("TypeError", r"out has dtype uint8, but the rows are gathered as float32")),
    ("__array_interface__ (pointing at address 16)", """
class Liar(np.ndarray):
    @property
    def __array_interface__(self):
        return {"version": 3, "shape": (4000, 16), "typestr": "<f4", "data": (16, False)}
out = real.view(Liar)
""", None),
    ("ctypes, data and base", """
class FakeCtypes:
    data = 16
class Liar(np.ndarray):
    ctypes = property(lambda self: FakeCtypes())
    data = property(lambda self: memoryview(bytearray(8)))
    base = property(lambda self: None)
out = real.view(Liar)
""", None),
    ("view, reshape and __array__ (returning other arrays)", """
class Liar(np.ndarray):
    def view(self, *args, **kwargs):
        return np.empty(2, dtype=np.float32)
    def reshape(self, *args, **kwargs):
        return np.empty(2, dtype=np.float32)
    def __array__(self, *args, **kwargs):
        return np.empty(2, dtype=np.float32)
out = np.ndarray.view(real, Liar)
""", None),
    ("every attribute at once, over 8 real bytes", """
class Liar(np.ndarray):
    nbytes = property(lambda self: 4000 * 16 * 4)
    shape = property(lambda self: (4000, 16))
    size = property(lambda self: 4000 * 16)
    strides = property(lambda self: (64, 4))
    itemsize = property(lambda self: 4)
    dtype = property(lambda self: np.dtype(np.float32))
    flags = property(lambda self: Flags())
    @property
    def __array_interface__(self):
        return {"version": 3, "shape": (4000, 16), "typestr": "<f4", "data": (16, False)}
out = np.empty(8, dtype=np.uint8).view(Liar)
""", ("TypeError", "out has dtype uint8")),
    ("its class (an object that is not an array, claiming __class__ = np.ndarray)", """
class Liar:
    __class__ = property(lambda self: np.ndarray)
    nbytes = 4000 * 16 * 4
    shape = (4000, 16)
    dtype = np.dtype(np.float32)
    flags = Flags()
    __array_interface__ = {"version": 3, "shape": (4000, 16), "typestr": "<f4", "data": (16, False)}
assert isinstance(Liar(), np.ndarray)
out = Liar()
""", ("TypeError", "`x`: out must be a NumPy array, not Liar")),
    ("nothing (an honest subclass is written and returned)", """
class Honest(np.ndarray):
    pass
out = real.view(Honest)
""", None),
    ("nothing (a np.memmap)", """
import tempfile, os
out = np.memmap(os.path.join(tempfile.mkdtemp(), "out.bin"), dtype=np.float32, mode="w+", shape=(4000, 16))
""", None),
]


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "x.npy"
    np.save(path, np.arange(4000 * 16, dtype=np.float32).reshape(4000, 16))
    return path


@pytest.mark.parametrize("lie, make, expected", HOSTILE_OUTS, ids=[h[0] for h in HOSTILE_OUTS])
def test_an_out_that_lies_about_its_attributes_never_makes_take_write_past_its_memory(
    hostile_store, lie, make, expected
):
    code = HOSTILE_SETUP + textwrap.dedent(make) + "\nprint(json.dumps(outcome(out)))\n"
    done = subprocess.run([sys.executable, "-c", code, str(hostile_store)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, (
        f"an out lying about {lie} killed the process (return code {done.returncode}): {done.stderr}"
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if expected is None:
        assert result == {"same": True, "correct": True}, result
    else:
        kind, pattern = expected
        assert result.get("error") == kind, result
        assert re.search(pattern, result["message"]), result["message"]


def test_read_only_strided_too_small_and_torch_outs_are_refused_by_name(tmp_path):
    a = sample(np.float32, (6, 2))
    with store_of(tmp_path, {"a": a}) as store:
        t = store.tensor("a")
        with pytest.raises(ValueError, match="`a`: out is read-only"):
            t.take([0], out=_read_only((1, 2)))
        with pytest.raises(ValueError, match="`a`: out must be C-contiguous"):
            t.take([0, 1], out=np.empty((2, 2), np.float32, order="F"))
        with pytest.raises(ValueError, match=r"`a`: out has shape \[1, 2\], but 3 rows need shape \[3, 2\]"):
            t.take([0, 1, 2], out=np.empty((1, 2), np.float32))
        with pytest.raises(ValueError, match=r"out has shape \[0\]"):
            t.take([0], out=np.empty(0, np.float32))
        torch = pytest.importorskip("torch")
        with pytest.raises(TypeError, match=r"`a`: out must be a NumPy array, not Tensor \(for a torch tensor, pass tensor.numpy\(\)\)"):
            t.take([0], out=torch.empty((1, 2), dtype=torch.float32))
        # Its NumPy view works, and writes into the tensor.
        out = torch.zeros((2, 2), dtype=torch.float32)
        t.take([1, 0], out=out.numpy())
        assert np.array_equal(out.numpy(), a[[1, 0]])


def _read_only(shape):
    arr = np.zeros(shape, np.float32)
    arr.setflags(write=False)
    return arr
