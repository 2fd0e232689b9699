"""Every parallel operation works in a child forked after its parent used rayon's global pool.

Regression (review: "a gather of more than 65,536 rows hangs forever in a forked child"): `take`
sorted more than 65,536 indices with rayon's global pool, outside mmtensor's per-process pool.
`fork` copies only the calling thread, so a child forked after its parent had used the global pool
(any earlier large gather, or tokenizers or polars in the same process) queued its sort on a pool
with no threads and waited forever: `take`, `Dataset.take`, the `Loader` and `RowDataset` in
fork-started DataLoader workers all hung. Every parallel operation now runs in the per-process
pool (`mmtensor::pool`).

Each case runs in a fresh interpreter of its own session: its parent gathers more than 65,536 rows,
then forks a child that runs the case. A case that hangs is killed with its whole process group
(the child and any DataLoader workers) after the timeout and fails its test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmtensor
from conftest import EVICT, run_in_forked_child

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork")

ROWS = 100_000  # more than the 65,536 indices from which a gather sorts in parallel
TIMEOUT = 60  # seconds; each case takes a few (importing torch included)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fork")
    rng = np.random.default_rng(3)
    np.save(d / "x.npy", rng.standard_normal((ROWS, 4), dtype=np.float32))  # 16-byte rows
    np.save(d / "y.npy", rng.integers(0, 256, ROWS, dtype=np.uint8))  # 1-byte rows
    np.save(d / "id.npy", np.arange(ROWS, dtype=np.int64))
    inputs = [f"{n}={d / (n + '.npy')}" for n in ("x", "y", "id")]
    mmtensor.convert(inputs, d / "s.mmt")
    mmtensor.convert(inputs, d / "ds", shard_size="512KiB")  # rows of 21 bytes: 5 shards
    return d / "s.mmt", d / "ds"


PARENT = """
import os, sys, traceback
import numpy as np
import mmtensor
store_path, ds_path, case = sys.argv[1:]
if case == "torch_dataloader":
    import torch  # as a training script would, before anything forks
ROWS = {rows}
store = mmtensor.open(store_path)
idx = np.random.default_rng(0).permutation(ROWS)
x = store.take("x", idx)  # more than 65,536 indices: the parent's gather touched the global pool
assert np.array_equal(x, store["x"][idx])


def check_batches(batches):
    seen = 0
    for b in batches:
        ids = np.asarray(b["id"])
        assert np.array_equal(np.asarray(b["x"]), store["x"][ids]), "wrong rows"
        seen += len(ids)
    assert seen == ROWS, seen


def take():
    assert np.array_equal(store.take("x", idx), x)
    assert np.array_equal(store.take("y", idx), store["y"][idx])
    assert np.array_equal(store.tensor("x").take(idx), x)


def loader():
    for prefetch in (2, 0):
        check_batches(mmtensor.Loader(store, 70_000, shuffle=True, seed=1, prefetch=prefetch))


def dataset():
    ds = mmtensor.open_dataset(ds_path)
    assert ds.num_shards > 1
    assert np.array_equal(ds.take("x", idx), x)
    assert np.array_equal(ds.take("y", idx), store["y"][idx])
    check_batches(mmtensor.Loader(ds, 70_000, shuffle=True, seed=2))
    ds.verify()


def torch_dataloader():
    from torch.utils.data import DataLoader
    from mmtensor.data import RowDataset, collate
    rows = RowDataset(store, columns=["x", "id"], output="torch")
    # DataLoader's own timeout turns a hung worker into an error that stops (and reaps) the
    # workers, instead of leaving them behind.
    batches = DataLoader(rows, batch_size=70_000, shuffle=True, collate_fn=collate, num_workers=2,
                         multiprocessing_context="fork", timeout={timeout} - 10)
    check_batches({{"x": b["x"].numpy(), "id": b["id"].numpy()}} for b in batches)


pid = os.fork()
if pid == 0:
    try:
        globals()[case]()
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
_, status = os.waitpid(pid, 0)
sys.exit(f"the forked child failed: wait status {{status:#x}}" if status else 0)
"""


@pytest.mark.parametrize("case", ["take", "loader", "dataset", "torch_dataloader"])
def test_regression_parallel_work_in_a_forked_child_after_a_large_gather(files, case):
    if case == "torch_dataloader":
        pytest.importorskip("torch", reason="the DataLoader case needs PyTorch")
    store, ds = files
    code = textwrap.dedent(PARENT.format(rows=ROWS, timeout=TIMEOUT))
    # A session of its own, so that a hang can be ended with every process it forked.
    proc = subprocess.Popen([sys.executable, "-c", code, str(store), str(ds), case],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        hung = True
    if hung:
        pytest.fail(f"`{case}` in a forked child hung for {TIMEOUT} s (killed): parallel work "
                    f"reached rayon's global pool, whose threads fork did not copy\n{err}")
    assert proc.returncode == 0, f"`{case}` in a forked child failed:\n{out}{err}"


def test_regression_a_loader_in_a_child_forked_while_its_parent_sweeps_a_cold_file(tmp_path):
    """Regression (new-user trial: "a Loader used in a forked child while the parent's cold sweep is
    running never returns"): a cold epoch that fits in memory is read by a sweep thread, and the
    loader records it so that its other streams join it. A child forked while it ran inherited the
    record but not the thread, joined it, and its gathers waited forever for a sweep that never
    moved. A child now starts its own.

    The file must be on a disk whose pages eviction drops (a tmpfs keeps them: no sweep, and the
    test passes without testing the case).
    """
    rows = 32768  # 128 MiB of 4 KiB rows: the parent's sweep is still reading when it forks
    np.save(tmp_path / "x.npy", np.repeat(np.arange(rows, dtype=np.float32)[:, None], 1024, axis=1))
    np.save(tmp_path / "id.npy", np.arange(rows, dtype=np.int64))
    mmtensor.convert([f"x={tmp_path / 'x.npy'}", f"id={tmp_path / 'id.npy'}"], tmp_path / "s.mmt")
    (tmp_path / "x.npy").unlink()
    setup = EVICT + textwrap.dedent("""
        import sys
        import numpy as np
        import mmtensor
        path = sys.argv[1]
        evict(path)
        loader = mmtensor.Loader(path, 4096, shuffle=True, seed=5, prefetch=2)
        it = iter(loader)  # the stream starts: cold, and it fits, so a sweep reads the file

        def whole_epoch():
            seen = 0
            for b in loader:
                ids = np.asarray(b["id"])
                assert np.array_equal(np.asarray(b["x"])[:, 0], ids.astype(np.float32)), "wrong rows"
                seen += len(ids)
            return seen
    """)
    assert run_in_forked_child(setup, "whole_epoch()", str(tmp_path / "s.mmt")) == str(rows)
