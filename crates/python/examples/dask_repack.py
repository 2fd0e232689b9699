"""Repack a dataset in parallel with Dask: each task reads a range of rows, transforms them and
writes its own part; one commit makes every part visible together, in the order of the parts.

    python crates/python/examples/dask_repack.py SRC_DATASET OUT_DATASET [--tasks 8] [--workers 2]

SRC_DATASET is any dataset folder (`mmt convert ... --shard-size`, `mmtensor.DatasetWriter`).
The transform here standardizes the float column `x` (mean 0, std 1 per feature, from a first
pass) and keeps the other columns; replace `transform` with your own (decode, tokenize, embed).

Why this is safe to retry: a task that dies leaves an unfinished part that `commit` names (and
`mmt prune` cleans); Dask running a task again opens the same part id, which replaces the earlier
attempt. Nothing is visible to readers before `mmtensor.commit`.
"""

from __future__ import annotations

import argparse

import numpy as np

import mmtensor


def transform(batch: dict, mean: np.ndarray, std: np.ndarray) -> dict:
    out = dict(batch)
    out["x"] = ((batch["x"] - mean) / std).astype(np.float32)
    return out


def write_part(src: str, out: str, part: int, start: int, stop: int, mean, std, chunk: int = 65536) -> int:
    """One task: rows start..stop of `src`, transformed, written as part `part` of `out`."""
    ds = mmtensor.open_dataset(src)
    with mmtensor.DatasetWriter(out, part=part) as w:
        for lo in range(start, stop, chunk):
            rows = np.arange(lo, min(lo + chunk, stop))
            batch = {name: ds.take(name, rows) for name in ds.columns}
            w.write(transform(batch, mean, std))
    return stop - start


def repack(src: str, out: str, tasks: int, client) -> dict:
    ds = mmtensor.open_dataset(src)
    n = ds.num_rows
    x = ds.take("x", np.arange(n))  # a first pass for the statistics (small here; use a sample)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    bounds = np.linspace(0, n, tasks + 1).astype(int)
    futures = [
        client.submit(write_part, src, out, i, int(bounds[i]), int(bounds[i + 1]), mean, std, pure=False)
        for i in range(tasks)
    ]
    written = sum(client.gather(futures))
    summary = mmtensor.commit(out, parts=tasks)
    assert summary["rows_written"] == written == n
    return summary


def main() -> None:
    from dask.distributed import Client, LocalCluster

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    with LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        summary = repack(a.src, a.out, a.tasks, client)
    print(f"{a.out}: {summary['rows']} rows in {summary['shards']} shards")


if __name__ == "__main__":
    main()
