"""Pickling: a Store (or Tensor) travels to another process as its path and its file's
fingerprint, never its data, and reopens there (DataLoader workers, spawn and fork); a file that
changed in between is refused with StoreChangedError."""

from __future__ import annotations

import copy
import hashlib
import multiprocessing
import os
import pickle
import sys

import numpy as np
import pytest

import mmtensor
from mmtensor import StoreChangedError

from conftest import run_in_forked_child, sparse_npy

# fork is POSIX-only; spawn runs everywhere.
CONTEXTS = ["spawn"] + (["fork"] if sys.platform.startswith("linux") else [])


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def read_in_worker(item) -> tuple:
    """Runs in a worker process: what it sees of a store (or tensor) it received pickled."""
    if isinstance(item, mmtensor.Tensor):
        return ("tensor", item.name, tuple(item.shape), digest(item.numpy()), os.getpid())
    return ("store", item.mapped, item.path, digest(item["x"]), digest(item["y"]), os.getpid())


def unpickle_in_worker(data: bytes) -> tuple:
    """Runs in a worker process: unpickles there, and reports the error as plain values (an
    unpickling error inside a Pool's task queue would kill the worker instead)."""
    try:
        store = pickle.loads(data)
    except mmtensor.MmtError as e:
        return (type(e).__name__, e.path, str(e))
    return ("ok", store.path, None)


def write_store(path, x: np.ndarray, y: np.ndarray) -> None:
    """Writes an .mmt store at `path` (mmtensor.convert: temp file and rename)."""
    folder = path.parent / f"{path.stem}-inputs"
    folder.mkdir(exist_ok=True)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    mmtensor.convert([folder / "x.npy", folder / "y.npy"], path)


@pytest.fixture
def store_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "train.mmt"
    write_store(path, rng.standard_normal((256, 16)).astype(np.float32), np.arange(256, dtype=np.int64))
    return path


def test_a_store_round_trips_through_pickle_in_process(store_path):
    with mmtensor.open(store_path) as store, mmtensor.open(store_path, copy=True) as copied:
        for original in (store, copied):
            again = pickle.loads(pickle.dumps(original))
            assert type(again) is mmtensor.Store
            assert again is not original
            assert again.path == str(store_path)
            assert again.mapped == original.mapped
            assert again.format == "mmt"
            assert again.keys() == ["x", "y"]
            np.testing.assert_array_equal(again["x"], original["x"])
            # copy.copy and deepcopy go through the same reduction: they reopen the file.
            assert copy.deepcopy(original).keys() == ["x", "y"]
            # Every protocol works (the reconstructor is a module-level function).
            for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
                assert pickle.loads(pickle.dumps(original, protocol=protocol)).mapped == original.mapped


def test_a_relative_path_is_pickled_absolute(store_path, monkeypatch):
    monkeypatch.chdir(store_path.parent)
    store = mmtensor.open(store_path.name)
    data = pickle.dumps(store)
    monkeypatch.chdir("/")
    again = pickle.loads(data)
    assert again.path == str(store_path)
    assert again.keys() == ["x", "y"]


def test_the_pickle_holds_no_data(tmp_path):
    # A 64 MiB .mmt store and a 64 MiB .npy file pickle in well under 4 KiB: path, copy flag,
    # fingerprint.
    npy = sparse_npy(tmp_path / "big.npy", "float32", (16 << 20,))
    mmt = tmp_path / "big.mmt"
    mmtensor.convert([npy], mmt)
    assert os.path.getsize(mmt) >= 64 << 20
    for path in (mmt, npy):
        for copied in (False, True):
            store = mmtensor.open(path, copy=copied)
            assert len(pickle.dumps(store)) < 4096
            assert len(pickle.dumps(store.tensor("big")[1000:2000])) < 4096
            store.close()


def test_a_closed_store_refuses_to_pickle(store_path):
    store = mmtensor.open(store_path)
    store.close()
    with pytest.raises(mmtensor.StoreClosedError, match="the store is closed"):
        pickle.dumps(store)


def test_tensors_and_row_ranges_round_trip(store_path):
    store = mmtensor.open(store_path)
    for t in (store.tensor("x"), store.tensor("x")[10:20], store.tensor("y")[-5:], store.tensor("x")[3:3]):
        again = pickle.loads(pickle.dumps(t))
        assert (again.name, again.shape, again.dtype) == (t.name, t.shape, t.dtype)
        assert repr(again) == repr(t)
        np.testing.assert_array_equal(again.numpy(), t.numpy())
    # A tensor pickled after its store was closed still pickles: it holds the bytes itself.
    t = store.tensor("y")[100:110]
    store.close()
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(t)).numpy(), np.arange(100, 110))


def test_a_zero_dimensional_tensor_round_trips(tmp_path):
    np.save(tmp_path / "s.npy", np.float64(2.5))
    store = mmtensor.open(tmp_path / "s.npy")
    again = pickle.loads(pickle.dumps(store.tensor("s")))
    assert again.shape == ()
    assert again.numpy() == 2.5


def test_safetensors_and_npy_stores_round_trip(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.save(tmp_path / "x.npy", x)
    mmtensor.export(mmtensor.open(tmp_path / "x.npy"), tmp_path / "m.safetensors", to="safetensors")
    for name in ("x.npy", "m.safetensors"):
        store = mmtensor.open(tmp_path / name)
        again = pickle.loads(pickle.dumps(store))
        np.testing.assert_array_equal(again["x"], x)


@pytest.mark.parametrize("method", CONTEXTS)
def test_workers_read_the_same_bytes(store_path, method):
    # A worker function receives the store pickled (mapped and copied) and a row range of a
    # tensor, reopens them and hashes what it reads; the hashes are the parent's.
    mapped = mmtensor.open(store_path)
    copied = mmtensor.open(store_path, copy=True)
    rows = mapped.tensor("x")[32:64]
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(read_in_worker, [mapped, copied, rows])
    expected_x, expected_y = digest(mapped["x"]), digest(mapped["y"])
    assert results[0][:5] == ("store", True, str(store_path), expected_x, expected_y)
    assert results[1][:5] == ("store", False, str(store_path), expected_x, expected_y)
    assert results[2][:4] == ("tensor", "x", (32, 16), digest(mapped["x"][32:64]))
    assert all(r[-1] != os.getpid() for r in results)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_a_forked_child_can_use_an_inherited_store(store_path):
    # Under fork (the DataLoader default on Linux), a dataset is inherited rather than pickled:
    # the mapping is inherited with it.
    store = mmtensor.open(store_path)
    expected = digest(store["x"])
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child():
        queue.put(digest(store["x"]))

    process = ctx.Process(target=child)
    process.start()
    try:
        assert queue.get(timeout=30) == expected
    finally:
        process.join(timeout=30)
    assert process.exitcode == 0


def test_a_store_renamed_over_the_path_is_refused(store_path, tmp_path):
    for copied in (False, True):
        write_store(store_path, np.ones((256, 16), np.float32), np.arange(256, dtype=np.int64))
        store = mmtensor.open(store_path, copy=copied)
        data = pickle.dumps(store)
        # The same names, dtypes and shapes (so the same length); other values. mmtensor.convert
        # renames the new file over the old one, as a careful writer does: the open store keeps
        # the old bytes, and the pickle must not silently reopen the new ones.
        write_store(store_path, np.zeros((256, 16), np.float32), np.arange(256, dtype=np.int64))
        with pytest.raises(StoreChangedError) as info:
            pickle.loads(data)
        e = info.value
        assert isinstance(e, mmtensor.MmtOSError) and isinstance(e, mmtensor.MmtError)
        assert e.path == str(store_path)
        assert "the file changed since the store was first opened" in str(e)
        assert "open it afresh" in str(e)
        # A pickled tensor of it is refused the same way.
        t = pickle.dumps(mmtensor.open(store_path).tensor("x")[0:4])
        write_store(store_path, np.full((256, 16), 2, np.float32), np.arange(256, dtype=np.int64))
        with pytest.raises(StoreChangedError):
            pickle.loads(t)
        # The parent's store still reads the file it opened.
        assert store["x"][0, 0] == 1.0


def test_another_kind_of_file_renamed_over_the_path_is_refused(store_path, tmp_path):
    store = mmtensor.open(store_path)
    data = pickle.dumps(store)
    np.save(tmp_path / "other.npy", np.arange(10))
    os.replace(tmp_path / "other.npy", store_path)
    with pytest.raises(StoreChangedError, match=r"it is now a \.npy file"):
        pickle.loads(data)


def test_a_truncated_or_rewritten_file_is_refused(store_path):
    for copied in (False, True):
        # An old modification time, so that every write below moves it whatever the clock's tick.
        age(store_path)
        stamp = os.stat(store_path)
        store = mmtensor.open(store_path, copy=copied)
        data = pickle.dumps(store)
        size = os.path.getsize(store_path)
        # Drop every reference to the old mapping first: cutting a mapped file is what the
        # mapping contract forbids.
        store.close()
        del store
        original = store_path.read_bytes()
        os.truncate(store_path, size - 100)
        with pytest.raises(StoreChangedError, match="bytes long") as info:
            pickle.loads(data)
        assert info.value.path == str(store_path)
        # Rewritten in place at the same length with garbage: no longer a tensor file at all.
        store_path.write_bytes(b"\0" * size)
        with pytest.raises(StoreChangedError, match="not a valid tensor file"):
            pickle.loads(data)
        # Put back exactly: the same bytes, but written since, and a fingerprint names a version of
        # a file, not its content.
        store_path.write_bytes(original)
        with pytest.raises(StoreChangedError, match="or the same file written since"):
            pickle.loads(data)
        # With the modification time set back too, nothing tells the two apart (the documented
        # limit, see mmtensor::Fingerprint): here the bytes are the same, so the pickle opens.
        os.utime(store_path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        assert pickle.loads(data).keys() == ["x", "y"]


def test_a_file_that_is_gone_is_store_not_found(store_path):
    data = pickle.dumps(mmtensor.open(store_path, copy=True))
    os.remove(store_path)
    with pytest.raises(mmtensor.StoreNotFoundError):
        pickle.loads(data)


@pytest.mark.parametrize("method", CONTEXTS)
def test_a_worker_that_finds_a_changed_file_raises_store_changed(store_path, method):
    data = pickle.dumps(mmtensor.open(store_path))
    write_store(store_path, np.zeros((256, 16), np.float32), np.arange(256, dtype=np.int64))
    with multiprocessing.get_context(method).Pool(1) as pool:
        name, path, message = pool.apply(unpickle_in_worker, (data,))
    assert (name, path) == ("StoreChangedError", str(store_path))
    assert "the file changed" in message


def test_a_hand_made_pickle_with_an_unknown_format_is_refused(store_path):
    with pytest.raises(ValueError, match="unknown format"):
        mmtensor._mmtensor._reopen(str(store_path), False, ("zip", 1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"not an mmtensor store fingerprint \(format, length"):
        mmtensor._mmtensor._reopen(str(store_path), False, ("mmt", 1, 2, "inode", 4))
    with pytest.raises(ValueError, match="not an mmtensor store fingerprint"):
        mmtensor._mmtensor._reopen(str(store_path), False, "mmt")


def test_a_pickle_of_an_older_mmtensor_is_refused_with_a_clear_error(store_path):
    # Its fingerprint (format, length, header xxh3) cannot tell a file replaced with the same
    # header from the one pickled, so it is not trusted.
    _, (path, copied, (fmt, length, header, inode, mtime_ns)) = mmtensor.open(store_path).__reduce__()
    assert (inode, mtime_ns) == (os.stat(store_path).st_ino, os.stat(store_path).st_mtime_ns)
    with pytest.raises(ValueError, match="pickled by an older mmtensor.*open the file afresh"):
        mmtensor._mmtensor._reopen(path, copied, (fmt, length, header))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_verify_in_a_forked_child_after_the_parent_verified_does_not_hang(store_path):
    # fork copies only the calling thread: a child forked after its parent ran verify() on rayon's
    # global pool inherited a pool without threads, and its own verify() waited forever (a
    # fork-started DataLoader worker calling verify). The loader's pool is now per process.
    setup = """
        import sys
        import mmtensor
        store = mmtensor.open(sys.argv[1])
        store.verify()
        def work():
            store.verify()
            mmtensor.open(sys.argv[1], copy=True).verify("x")
            return "verified"
    """
    assert run_in_forked_child(setup, "work()", str(store_path)) == "verified"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")
def test_a_casting_convert_in_a_forked_child_after_the_parent_converted_does_not_hang(tmp_path):
    # The converter's cast and byte-swap kernels ran on rayon's global pool too: a child forked
    # after its parent converted waited forever in its own conversion. They now run in the same
    # per-process pool as verify.
    np.save(tmp_path / "x.npy", np.arange(1 << 20, dtype=">f8"))  # big-endian: swap, then cast
    setup = """
        import sys
        import mmtensor
        src, out = sys.argv[1], sys.argv[2]
        mmtensor.convert([src], out + ".parent.mmt", dtype="bf16")
        def work():
            mmtensor.convert([src], out + ".child.mmt", dtype="bf16")
            return "converted"
    """
    assert run_in_forked_child(setup, "work()", str(tmp_path / "x.npy"), str(tmp_path / "o")) \
        == "converted"
    a = mmtensor.open(tmp_path / "o.parent.mmt")["x"]
    b = mmtensor.open(tmp_path / "o.child.mmt")["x"]
    assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


# Defect 8 of the second review: the fingerprint of a .npy or .safetensors file was its format,
# length and header hash, so a file replaced by one with the same names, dtypes and shapes (the
# same header and length) but other values reopened in a worker with no StoreChangedError. It now
# also holds the file's inode number and modification time (see mmtensor::Fingerprint).

def write_foreign(path, x: np.ndarray) -> None:
    """Writes `x` as the one tensor `x` of a .npy or .safetensors file at `path`, as a careful
    writer does: a temporary file renamed over the path."""
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, x)
    else:
        from safetensors.numpy import save_file

        save_file({"x": x}, str(tmp))
    os.replace(tmp, path)


def age(path) -> None:
    """Sets the file's modification time to 2001, so that a write made next moves it whatever the
    filesystem's timestamp granularity."""
    os.utime(path, ns=(10**18, 10**18))


@pytest.mark.parametrize("name", ["x.npy", "m.safetensors"])
@pytest.mark.parametrize("copied", [False, True])
def test_a_foreign_file_renamed_over_with_the_same_shape_is_refused(tmp_path, name, copied):
    path = tmp_path / name
    write_foreign(path, np.arange(64, dtype=np.float32).reshape(16, 4))
    store = mmtensor.open(path, copy=copied)
    assert store.format == path.suffix[1:]
    pickled = {
        "store": pickle.dumps(store),
        "tensor": pickle.dumps(store.tensor("x")[2:6]),
        "dataset": pickle.dumps(mmtensor.data.RowDataset(store, columns=["x"], output="numpy")),
    }
    # The same name, dtype and shape, so the same header and length; other values.
    write_foreign(path, -np.arange(64, dtype=np.float32).reshape(16, 4))
    for what in ("store", "tensor"):
        with pytest.raises(StoreChangedError, match="the file changed since the store was first opened") as info:
            pickle.loads(pickled[what])
        assert info.value.path == str(path)
    # A RowDataset reopens on first use, in the worker's fetch.
    dataset = pickle.loads(pickled["dataset"])
    with pytest.raises(StoreChangedError):
        dataset[0]
    # The parent's store still reads the file it opened.
    assert store["x"][1, 0] == 4.0


@pytest.mark.parametrize("name", ["x.npy", "m.safetensors", "train.mmt"])
def test_a_file_rewritten_in_place_at_the_same_length_is_refused(tmp_path, name):
    path = tmp_path / name
    if path.suffix == ".mmt":
        write_store(path, np.ones((16, 4), np.float32), np.arange(16, dtype=np.int64))
    else:
        write_foreign(path, np.ones((16, 4), np.float32))
    age(path)
    store = mmtensor.open(path, copy=True)
    data = pickle.dumps(store)
    original = path.read_bytes()
    # The last 8 bytes (tensor data) change in place; the header and the length stay.
    changed = bytearray(original)
    for i in range(len(changed) - 8, len(changed)):
        changed[i] ^= 0x5A
    with open(path, "r+b") as f:
        f.write(changed)
    with pytest.raises(StoreChangedError):
        pickle.loads(data)
