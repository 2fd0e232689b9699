"""mmtensor.data.RowDataset: a map-style dataset whose batches are one `take` per column, for torch's
DataLoader (main process, spawn and fork workers, DistributedSampler), against NumPy's fancy
indexing of the same store."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="RowDataset's DataLoader tests need PyTorch")
ml_dtypes = pytest.importorskip("ml_dtypes")

from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, default_collate  # noqa: E402

import mmtensor  # noqa: E402
from mmtensor.data import Batch, RowDataset, collate  # noqa: E402

from conftest import inside, linux_only, mappings_of  # noqa: E402

ROWS = 38
COLUMNS = ("x", "id", "w", "q", "r", "m", "img")
TORCH_DTYPES = {
    "x": torch.float32, "id": torch.int64, "w": torch.bfloat16, "q": torch.float8_e4m3fn,
    "r": torch.float8_e5m2, "m": torch.bool, "img": torch.uint8,
}
# fork is POSIX-only; spawn runs everywhere.
CONTEXTS = ["spawn"] + (["fork"] if sys.platform.startswith("linux") else [])
# The DataLoader warns about the machine (fewer CPUs than workers), not about the data.
CPU_COUNT_WARNING = "ignore:This DataLoader will create"


def write_store(path, seed: int = 0):
    """A small store: a 0-dimensional tensor first, seven columns of ROWS rows (`id` is the row
    number, so a batch says which rows it holds), and a tensor with other rows."""
    rng = np.random.default_rng(seed)
    arrays = {
        "scale": np.float64(2.5),
        "x": rng.standard_normal((ROWS, 3)).astype(np.float32),
        "id": np.arange(ROWS, dtype=np.int64),
        "w": rng.standard_normal((ROWS, 2)).astype(ml_dtypes.bfloat16),
        "q": rng.standard_normal((ROWS, 4)).astype(ml_dtypes.float8_e4m3fn),
        "r": rng.standard_normal((ROWS,)).astype(ml_dtypes.float8_e5m2),
        "m": rng.integers(0, 2, ROWS).astype(bool),
        "img": rng.integers(0, 256, (ROWS, 2, 3, 2)).astype(np.uint8),
        "vocab": np.arange(5 * 2, dtype=np.int32).reshape(5, 2),
    }
    folder = path.parent / f"{path.stem}-{seed}-inputs"
    folder.mkdir(exist_ok=True)
    for name, a in arrays.items():
        np.save(folder / f"{name}.npy", a)
    mmtensor.convert({name: folder / f"{name}.npy" for name in arrays}, path,
                     input_dtype={"w": "bf16", "q": "f8_e4m3", "r": "f8_e5m2"})
    return path


@pytest.fixture
def store_path(tmp_path):
    return write_store(tmp_path / "train.mmt")


def as_numpy(value):
    """A batch value as NumPy, bf16 and fp8 as the ml_dtypes types the store gives."""
    if isinstance(value, np.ndarray):
        return value
    dtype = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
             torch.float8_e5m2: ml_dtypes.float8_e5m2}.get(value.dtype)
    if dtype is None:
        return value.numpy()
    bits = value.contiguous().view(torch.uint8 if value.element_size() == 1 else torch.int16)
    return bits.numpy().view(dtype)


def assert_rows(columns: dict, store, indices) -> None:
    """`columns` are exactly NumPy's fancy indexing `store[name][indices]`, bit for bit."""
    assert set(columns) == set(COLUMNS)
    for name, value in columns.items():
        expected = store[name][np.asarray(indices, dtype=np.int64)]
        got = as_numpy(value)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.tobytes() == expected.tobytes(), name


def test_default_columns_are_the_tensors_sharing_the_first_tensors_rows(store_path):
    # `scale` has no rows, so `x` is the first tensor with rows; `vocab` has 5 rows, not 38, and
    # is left out with a warning that names it.
    with pytest.warns(UserWarning, match=r"leaves out `vocab` \(5 rows\)"):
        ds = RowDataset(store_path)
    assert ds.columns == COLUMNS
    assert len(ds) == ROWS
    assert ds.output == "numpy"  # NumPy unless asked, as every mmtensor API
    assert ds.store.path == str(store_path)
    assert RowDataset(mmtensor.open(store_path), columns=["id"]).columns == ("id",)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("output", ["torch", "numpy"])
def test_rows_and_batches_equal_numpy_fancy_indexing(store_path, output):
    store = mmtensor.open(store_path)
    ds = RowDataset(store, columns=COLUMNS, output=output)
    rng = np.random.default_rng(1)
    for size in (1, 5, 17, ROWS, 3 * ROWS):
        indices = rng.integers(0, ROWS, size).tolist()
        batch = ds.__getitems__(indices)
        assert isinstance(batch, Batch) and len(batch) == size
        assert_rows(batch.columns, store, indices)
        # As a sequence, row j of the batch is the dataset's row indices[j].
        for j in (0, size - 1, -1):
            assert_rows({k: v[None] for k, v in batch[j].items()}, store, [indices[j]])
    for i in (0, 7, ROWS - 1, -1, -ROWS):
        row = ds[i]
        assert_rows({k: v[None] for k, v in row.items()}, store, [i])
    empty = ds.__getitems__([])
    assert len(empty) == 0
    assert_rows(empty.columns, store, [])


@pytest.mark.filterwarnings("error")
def test_torch_output_has_torch_dtypes_and_writable_memory_of_its_own(store_path):
    ds = RowDataset(store_path, columns=COLUMNS, output="torch")
    batch = collate(ds.__getitems__([3, 1, 4, 1, 5]))
    mapped = mappings_of(store_path)
    assert mapped
    for name, t in batch.items():
        assert isinstance(t, torch.Tensor) and t.dtype == TORCH_DTYPES[name], name
        assert not inside(t.data_ptr(), t.nbytes, mapped), name
        assert not t.is_shared(), name  # shared memory only in DataLoader workers
    # Writable: torch.from_numpy of a read-only array would have warned above, and a write here
    # into a mapping would fault.
    batch["x"] += 1
    batch["w"].fill_(1)
    assert batch["w"].dtype == torch.bfloat16 and bool((batch["w"] == 1).all())
    assert ds[0]["w"].dtype == torch.bfloat16
    assert ds[0]["q"].dtype == torch.float8_e4m3fn and ds[0]["r"].dtype == torch.float8_e5m2


@pytest.mark.filterwarnings("error")
def test_numpy_output_gives_ml_dtypes_arrays(store_path):
    ds = RowDataset(store_path, columns=COLUMNS, output="numpy")
    batch = collate(ds.__getitems__([2, 0]))
    assert all(isinstance(v, np.ndarray) and v.flags.writeable for v in batch.values())
    assert batch["w"].dtype == ml_dtypes.bfloat16 and batch["q"].dtype == ml_dtypes.float8_e4m3fn


def count_takes(run):
    """Runs `run()` and counts the calls of Store.take and Tensor.take it made in this thread."""
    calls = []

    def profile(frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", None) == "take" and isinstance(
            getattr(arg, "__self__", None), (mmtensor.Store, mmtensor.Tensor)
        ):
            calls.append(arg)

    sys.setprofile(profile)
    try:
        result = run()
    finally:
        sys.setprofile(None)
    return len(calls), result


@pytest.mark.parametrize("collate_fn", [collate, None], ids=["collate", "default_collate"])
def test_one_take_per_column_per_batch(store_path, collate_fn):
    store = mmtensor.open(store_path)
    ds = RowDataset(store, columns=["x", "w", "id"], output="torch")
    ds[0]  # builds the per-process gather plan (which asks take for each column's dtype)
    loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_fn)
    calls, batches = count_takes(lambda: list(loader))
    assert len(batches) == 5  # 38 rows: four batches of 8 and one of 6
    assert calls == 5 * 3  # one gather per column per batch; one per row would be 38 * 3
    seen = []
    for b in batches:
        seen += b["id"].tolist()
        for name in ("x", "w", "id"):
            assert as_numpy(b[name]).tobytes() == store[name][b["id"].numpy()].tobytes()
    assert sorted(seen) == list(range(ROWS))


def test_collate_hands_over_the_gathered_arrays_and_default_collate_copies_them(store_path):
    ds = RowDataset(store_path, columns=COLUMNS, output="torch")
    batch = ds.__getitems__([5, 6, 7])
    mine = collate(batch)
    assert mine is batch.columns  # the tensors `take` wrote: one copy in all
    assert RowDataset.collate is collate and ds.collate is collate
    stacked = default_collate(batch)  # a dict of per-row views, stacked: a second copy
    assert set(stacked) == set(mine)
    for name in mine:
        assert stacked[name].dtype == mine[name].dtype and torch.equal(
            stacked[name].view(torch.uint8), mine[name].view(torch.uint8)
        )
        assert stacked[name].data_ptr() != mine[name].data_ptr()
    # Anything but a Batch goes to default_collate.
    assert torch.equal(collate([torch.ones(2), torch.zeros(2)]), torch.tensor([[1.0, 1], [0, 0]]))


def both_collates(batch):
    """Runs in the worker: mmtensor's collate, checking that the gather already wrote shared
    memory (so sending the batch to the main process passes a handle and copies no bytes), and
    torch's default_collate of the same batch."""
    mine = collate(batch)
    for name, t in mine.items():
        if not t.is_shared():
            raise AssertionError(f"column {name} was gathered into private memory in a worker")
    return mine, default_collate(batch)


class Switch(torch.utils.data.Sampler):
    """A sampler that yields whichever sampler it is given for the next epoch, so that one loader
    (whose workers start once: a spawned worker takes seconds to import torch) runs several."""

    def __init__(self):
        self.current = None

    def __iter__(self):
        return iter(self.current)

    def __len__(self):
        return len(self.current)


@pytest.mark.filterwarnings(CPU_COUNT_WARNING)
@pytest.mark.parametrize("method", CONTEXTS)
def test_workers_serve_every_row_once_per_epoch(store_path, method):
    store = mmtensor.open(store_path)
    ds = RowDataset(store, output="torch")
    ds[0]  # a fork child inherits a store that the parent already gathered from
    switch = Switch()
    loader = DataLoader(ds, batch_size=5, sampler=switch, num_workers=2, persistent_workers=True,
                        multiprocessing_context=method, collate_fn=both_collates)

    def epoch(make_sampler):
        """Runs an epoch of the sampler `make_sampler()` makes, and checks its batches: in the
        order of a second such sampler, each row equal to the store's, in shared memory, and the
        same through default_collate."""
        switch.current = make_sampler()
        order = list(make_sampler())
        batches = list(loader)
        assert [b["id"].tolist() for b, _ in batches] == [order[i:i + 5] for i in range(0, len(order), 5)]
        for mine, stacked in batches:
            assert_rows(mine, store, mine["id"].numpy())
            assert_rows(stacked, store, mine["id"].numpy())
            assert mine["w"].dtype == torch.bfloat16 and mine["x"].is_shared()
        return order

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        # Python 3.12+ warns of any fork in a process with threads (here the gather's pool, which
        # is fork-safe: a forked child builds its own).
        warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded",
                                category=DeprecationWarning)
        # RandomSampler: every row once, in the sampler's order.
        order = epoch(lambda: RandomSampler(ds, generator=torch.Generator().manual_seed(3)))
        assert sorted(order) == list(range(ROWS))
        # DistributedSampler over two ranks: each rank's batches are its sampler's, and the two
        # ranks together read every row exactly once.
        seen = []
        for rank in (0, 1):

            def distributed(rank=rank):
                sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=7)
                sampler.set_epoch(1)
                return sampler

            seen += epoch(distributed)
        assert sorted(seen) == list(range(ROWS))
    del loader


def test_the_pickle_holds_no_rows_and_reopens_on_first_use(store_path, tmp_path):
    store = mmtensor.open(store_path)
    ds = RowDataset(store, columns=["x", "id"], output="torch")
    ds[0]
    data = pickle.dumps(ds)
    assert len(data) < 1000
    assert store["x"].tobytes()[:64] not in data
    again = pickle.loads(data)
    assert len(again) == ROWS and again.columns == ("x", "id")
    assert again.__getitems__([4, 2]).columns["x"].numpy().tobytes() == store["x"][[4, 2]].tobytes()
    # A pickle of a dataset unpickled (and never used) is the same small pickle.
    assert pickle.loads(pickle.dumps(pickle.loads(data))).store.path == str(store_path)

    # The file changes after the pickle: unpickling still works (so a spawned worker starts),
    # and the first use raises StoreChangedError naming the file.
    data = pickle.dumps(RowDataset(store, output="torch"))
    write_store(store_path, seed=1)
    changed = pickle.loads(data)
    assert len(changed) == ROWS
    with pytest.raises(mmtensor.StoreChangedError, match="the file changed") as info:
        changed[0]
    assert info.value.path == str(store_path)


@pytest.mark.filterwarnings(CPU_COUNT_WARNING)
@pytest.mark.parametrize("method", CONTEXTS)
def test_a_store_changed_under_the_workers(store_path, method):
    store = mmtensor.open(store_path)
    old = store["x"].copy()
    ds = RowDataset(store, columns=["x", "id"], output="torch")
    # mmtensor.convert renames a new file over the path, as a careful writer does.
    write_store(store_path, seed=1)
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context=method,
                        collate_fn=collate)
    if method == "fork":
        # A forked worker inherits the parent's mapping: the file the dataset was made from.
        for b in loader:
            assert b["x"].numpy().tobytes() == old[b["id"].numpy()].tobytes()
        return
    # A spawned worker reopens the path, finds another file, and DataLoader re-raises the error
    # in the main process with the worker's message.
    with pytest.raises(mmtensor.StoreChangedError, match="the file changed") as info:
        list(loader)
    assert str(store_path) in str(info.value)


def test_bad_columns_and_arguments_are_clear_errors(store_path, tmp_path):
    path = str(store_path)
    with pytest.raises(mmtensor.TensorNotFoundError, match=r"column `nope` is not a tensor") as info:
        RowDataset(store_path, columns=["x", "nope"])
    assert info.value.tensor == "nope" and info.value.path == path and path in str(info.value)
    with pytest.raises(ValueError, match=r"column `vocab` has 5 rows but column `x` has 38"):
        RowDataset(store_path, columns=["x", "vocab"])
    with pytest.raises(ValueError, match=r"column `scale` is 0-dimensional"):
        RowDataset(store_path, columns=["scale"])
    with pytest.raises(ValueError, match=r"column `x` is listed twice"):
        RowDataset(store_path, columns=["x", "id", "x"])
    with pytest.raises(ValueError, match="at least one column"):
        RowDataset(store_path, columns=[])
    with pytest.raises(TypeError, match="list of tensor names"):
        RowDataset(store_path, columns="x")
    with pytest.raises(ValueError, match="output must be"):
        RowDataset(store_path, output="jax")
    with pytest.raises(TypeError, match="mmtensor.Store, an mmtensor.Dataset or a path"):
        RowDataset(np.zeros(3))
    with pytest.raises(mmtensor.StoreNotFoundError):
        RowDataset(tmp_path / "missing.mmt")
    np.save(tmp_path / "s.npy", np.float32(1))
    with pytest.raises(ValueError, match="no tensor has rows"):
        RowDataset(tmp_path / "s.npy")
    ds = RowDataset(store_path, columns=COLUMNS, output="torch")
    with pytest.raises(mmtensor.RowRangeError, match="index 38 is out of range for 38 rows"):
        ds[ROWS]
    with pytest.raises(IndexError):
        ds[-ROWS - 1]
    with pytest.raises(TypeError, match="one integer"):
        ds["x"]
    with pytest.raises(ValueError, match="1-d"):
        ds.__getitems__([[0, 1]])
    closed = mmtensor.open(store_path)
    ds = RowDataset(closed, output="torch")
    closed.close()
    with pytest.raises(mmtensor.StoreClosedError):
        pickle.dumps(ds)


def test_importing_mmtensor_does_not_import_torch_and_numpy_output_needs_no_torch(store_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import mmtensor\n"
        "ds = mmtensor.RowDataset(sys.argv[1], columns=['id'], output='numpy')\n"
        "assert ds.__getitems__([1, 2]).columns['id'].tolist() == [1, 2]\n"
        "try:\n"
        "    mmtensor.RowDataset(sys.argv[1], columns=['id'], output='torch')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(store_path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 0, done.stderr
    assert "needs PyTorch" in done.stdout and 'output="numpy" works without it' in done.stdout


def test_a_column_torch_cannot_view_in_place_is_still_served(tmp_path):
    # complex128 at 8 mod 16 in a .npy file: Store.torch refuses it (torch needs 16), but the
    # dataset gathers into aligned memory of its own, so the column is served as torch.complex128.
    from test_alignment import npy_at

    w = (np.arange(6) - 2j * np.arange(6)).astype(np.complex128).reshape(3, 2)
    store = mmtensor.open(npy_at(tmp_path / "w.npy", w, 8))
    with pytest.raises(mmtensor.UnalignedError):
        store.tensor(store.keys()[0])[0:0].torch()
    batch = collate(RowDataset(store, output="torch").__getitems__([2, 0]))
    (got,) = batch.values()
    assert got.dtype == torch.complex128 and np.array_equal(got.numpy(), w[[2, 0]])
