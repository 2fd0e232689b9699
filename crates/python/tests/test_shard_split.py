"""Whole shards per rank in Python: open_dataset's rank arguments, and state_dict under
split="shards"."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import mmtensor

REPO = Path(__file__).parents[3]
GOLDEN = REPO / "fixtures" / "golden" / "dataset"


def mmt_bin() -> str:
    path = os.environ.get("MMT_BIN") or str(REPO / "target" / "debug" / "mmt")
    if not Path(path).exists():
        pytest.skip(f"the mmt binary is needed to write sharded datasets ({path} is missing)")
    return path


@pytest.mark.parametrize("kw", [dict(rank=True, world_size=2), dict(rank=0, world_size=True)])
def test_open_dataset_refuses_bool_ranks_as_loader_does(kw):
    # Loader(rank=True) is a TypeError; open_dataset(rank=True) silently opened rank 1.
    with pytest.raises(TypeError, match="bool"):
        mmtensor.Loader(GOLDEN, 2, **kw)
    with pytest.raises(TypeError, match="bool"):
        mmtensor.open_dataset(GOLDEN, **kw)


@pytest.mark.parametrize("kw", [dict(rank=-1, world_size=2), dict(rank=0, world_size=-2)])
def test_open_dataset_refuses_negative_ranks_with_a_value_error(kw):
    # Loader gives a LoaderError (a ValueError) naming the argument; open_dataset gave an
    # OverflowError from the conversion, naming nothing.
    with pytest.raises(ValueError, match="rank|world_size"):
        mmtensor.open_dataset(GOLDEN, **kw)


def test_a_state_of_other_shards_is_refused_under_split_shards(tmp_path):
    # The same 1000 rows in shards of two sizes: the same rows, columns and options, but a
    # different order under split="shards" (which depends on each shard's rows).
    rng = np.random.default_rng(1)
    np.save(tmp_path / "y.npy", np.arange(1000, dtype=np.int64))
    for name, size in (("a", "2KiB"), ("b", "3KiB")):
        subprocess.run([mmt_bin(), "convert", f"y={tmp_path / 'y.npy'}", "-o",
                        str(tmp_path / name), "--shard-size", size], check=True,
                       capture_output=True)
    a = mmtensor.open_dataset(tmp_path / "a")
    b = mmtensor.open_dataset(tmp_path / "b")
    assert a.shards != b.shards
    kw = dict(shuffle=True, seed=3, rank=0, world_size=2, split="shards")
    la = mmtensor.Loader(a, 16, **kw)
    lb = mmtensor.Loader(b, 16, **kw)
    it = iter(la)
    for _ in range(3):
        next(it)
    state = la.state_dict()
    rest_a = [x["y"].tolist() for x in it]
    assert [x["y"].tolist() for x in mmtensor.Loader(a, 16, **kw)][3:] == rest_a
    # The order differs, so resuming from a's state on b would not give a's remaining batches.
    assert [x["y"].tolist() for x in mmtensor.Loader(b, 16, **kw)][3:] != rest_a
    with pytest.raises(mmtensor.LoaderError, match="shard"):
        lb.load_state_dict(state)
    # A state of the same shards still loads, from any rank; and the row split ignores shards.
    lb.load_state_dict(mmtensor.Loader(b, 16, **{**kw, "rank": 1}).state_dict())
    rows = {**kw, "split": "rows"}
    mmtensor.Loader(b, 16, **rows).load_state_dict(mmtensor.Loader(a, 16, **rows).state_dict())
