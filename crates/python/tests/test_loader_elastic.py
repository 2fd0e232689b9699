"""Elastic resume (docs/LOADER.md, "Elastic resume"): a state saved on some ranks resumes on more
or fewer, and a state saved before an append resumes over the old rows; each remaining row is
read exactly once, and the next epoch is a whole one."""

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import mmtensor

_spec = importlib.util.spec_from_file_location(
    "order_reference", Path(__file__).parents[2] / "load" / "tests" / "order_reference.py"
)
order_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(order_reference)


def rows_dataset(path, first, count, shard_size="400B"):
    """A dataset (or, appended to, more rows of one) whose column `y` holds the row's index."""
    y = np.arange(first, first + count, dtype=np.int64)
    np.save(path.parent / f"y{first}.npy", y)
    if first == 0:
        mmtensor.convert({"y": path.parent / f"y{first}.npy"}, path, shard_size=shard_size)
    else:
        mmtensor.append(path, {"y": path.parent / f"y{first}.npy"})
    return path


def ys(loader, take=None):
    """The `y` of each batch of the rest of the epoch, or of its next `take` batches."""
    if take is None:
        return [b["y"].tolist() for b in loader]
    it = iter(loader)
    return [next(it)["y"].tolist() for _ in range(take)]


def test_a_state_of_4_ranks_resumes_on_3_reading_every_row_once(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 0, 1000)
    kw = dict(shuffle=True, seed=0, prefetch=1)
    seen, states = [], []
    for r in range(4):
        loader = mmtensor.Loader(ds, 8, rank=r, world_size=4, **kw)
        it = iter(loader)
        for _ in range(20):
            seen.extend(next(it)["y"].tolist())
        states.append(json.loads(json.dumps(loader.state_dict())))
    state = states[0]
    assert (state["epoch"], state["next_batch"], state["samples"], state["rows"],
            state["world_size"]) == (0, 20, 640, 1000, 4)
    for r in range(3):
        loader = mmtensor.Loader(ds, 8, rank=r, world_size=3, **kw)
        assert len(loader) == 42
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loader.load_state_dict(states[r])
            loader.set_epoch(0)
        assert (loader.epoch, loader.next_batch, len(loader)) == (0, 0, 15)
        assert loader.state_dict()["samples"] == 640
        rest = ys(loader)
        # The spec's rest, from the independent reference.
        assert rest == order_reference.resumed_batches(1000, 8, "full", 0, 0, r, 3, False, 640)
        seen.extend(v for b in rest for v in b)
        # Then whole epochs on 3 ranks.
        assert (loader.epoch, loader.next_batch, len(loader)) == (1, 0, 42)
        assert ys(loader) == order_reference.batches(1000, 8, "full", 0, 1, r, 3, False)
    assert sorted(seen) == list(range(1000))


def test_the_documented_known_answer_and_a_state_from_before_positions(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 0, 10, shard_size="32B")
    four = mmtensor.Loader(ds, 2, shuffle=True, seed=0, rank=0, world_size=4)
    assert ys(four, take=1) == [[5, 0]]
    state = four.state_dict()
    assert state["samples"] == 8
    got = []
    for r in range(3):
        three = mmtensor.Loader(ds, 2, shuffle=True, seed=0, rank=r, world_size=3)
        # A state saved before `samples` existed: a batch of a whole epoch on its world size.
        old = {k: v for k, v in state.items() if k != "samples"}
        three.load_state_dict(old)
        assert len(three) == 1
        got.append(ys(three))
    assert got == [[[4]], [[9]], [[5]]]


def test_a_dataset_appended_between_runs_resumes_the_old_epoch_on_the_old_rows(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 0, 100)
    kw = dict(shuffle="block", block_rows=4, window_blocks=2, seed=2, world_size=2)
    seen, states = [], []
    for r in range(2):
        loader = mmtensor.Loader(ds, 5, rank=r, **kw)
        loader.set_epoch(3)
        it = iter(loader)
        for _ in range(4):
            seen.extend(next(it)["y"].tolist())
        states.append(loader.state_dict())
    assert (states[0]["samples"], states[0]["rows"]) == (40, 100)
    rows_dataset(ds, 100, 30)
    for r in range(2):
        # On the same ranks, and on 3 ranks: the rest of epoch 3 over the first 100 rows.
        same = mmtensor.Loader(ds, 5, rank=r, **kw)
        assert same.num_rows == 130
        same.load_state_dict(states[r])
        assert (same.epoch, same.next_batch, len(same)) == (3, 4, 10)
        assert same.state_dict()["rows"] == 100
        rest = ys(same)
        seen.extend(v for b in rest for v in b)
        # The next epoch covers every row.
        assert same.state_dict()["rows"] == 130
        assert len(same) == 13
        nxt = ys(same)
        assert nxt == order_reference.batches(130, 5, (4, 2), 2, 4, r, 2, False)
    assert sorted(seen) == list(range(100))
    moved = []
    for r in range(3):
        three = mmtensor.Loader(ds, 5, rank=r, **{**kw, "world_size": 3})
        three.load_state_dict(states[0])
        assert (three.epoch, three.next_batch, len(three)) == (3, 0, 4)
        moved.extend(v for b in ys(three) for v in b)
    # 60 left on 3 ranks: no padding.
    assert sorted(moved + seen[:40]) == list(range(100))
    # A state of more rows than the data has names both numbers.
    bigger = dict(states[0], rows=200)
    with pytest.raises(mmtensor.LoaderError, match="200 rows: there are only 130 rows"):
        mmtensor.Loader(ds, 5, rank=0, **kw).load_state_dict(bigger)


def test_windows_resume_on_other_ranks_as_rows_do(tmp_path):
    tokens_per_doc = [37, 5, 80, 12, 66]
    tokens = np.arange(sum(tokens_per_doc), dtype=np.uint16)
    path = tmp_path / "corpus"
    with mmtensor.DatasetWriter(path, columns={"tokens": ("uint16", (None,))}) as w:
        w.write({"tokens": (tokens, np.array(tokens_per_doc))})
    kw = dict(seq_len=4, shuffle=True, seed=1)
    # Token k is k, so a packed window's first token over 4 is its number.
    seen = []
    loader = mmtensor.Loader(path, 3, rank=0, world_size=2, **kw)
    it = iter(loader)
    for _ in range(2):
        seen.extend(int(w[0]) // 4 for w in next(it)["tokens"])
    other = mmtensor.Loader(path, 3, rank=1, world_size=2, **kw)
    it = iter(other)
    for _ in range(2):
        seen.extend(int(w[0]) // 4 for w in next(it)["tokens"])
    state = loader.state_dict()
    one = mmtensor.Loader(path, 3, **kw)
    one.load_state_dict(state)
    for b in one:
        seen.extend(int(w[0]) // 4 for w in b["tokens"])
    windows = (sum(tokens_per_doc) - 1) // 4
    assert sorted(seen) == list(range(windows))


def test_orders_that_depend_on_the_world_size_refuse_a_state_of_other_ranks(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 0, 120, shard_size="80B")
    two = mmtensor.Loader(ds, 4, world_size=2, split="shards")
    next(iter(two))
    with pytest.raises(mmtensor.LoaderError, match='split="rows"'):
        mmtensor.Loader(ds, 4, world_size=3, split="shards").load_state_dict(two.state_dict())
    # The start of an epoch is one on any ranks.
    start = mmtensor.Loader(ds, 4, world_size=2, split="shards").state_dict()
    mmtensor.Loader(ds, 4, world_size=3, split="shards").load_state_dict(start)
    # A mixture's batches are global batches of its world size.
    mix = mmtensor.Mix({"a": ds, "b": ds}, weights={"a": 1, "b": 1}, seed=0)
    saved = mmtensor.Loader(mix, 4, world_size=2).state_dict()
    with pytest.raises(mmtensor.LoaderError, match="world_size"):
        mmtensor.Loader(mix, 4, world_size=1).load_state_dict(saved)
    # Length-grouped batches are regrouped within each rank's windows.
    lengths = [(i * 7919) % 23 for i in range(60)]
    with mmtensor.DatasetWriter(tmp_path / "g", columns={"tokens": ("uint32", (None,))}) as w:
        w.write({"tokens": (np.arange(sum(lengths), dtype=np.uint32), np.array(lengths))})
    kw = dict(shuffle=True, seed=5, pad={"tokens": 0}, group_by_length=3)
    grouped = mmtensor.Loader(tmp_path / "g", 4, world_size=2, **kw)
    next(iter(grouped))
    with pytest.raises(mmtensor.LoaderError, match="group_by_length"):
        mmtensor.Loader(tmp_path / "g", 4, **kw).load_state_dict(grouped.state_dict())
