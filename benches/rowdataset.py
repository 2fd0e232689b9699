#!/usr/bin/env python3
"""mmtensor.data.RowDataset in torch's DataLoader: the cost of a batch by collate path.

Makes a store of one F32 tensor (--rows rows of --row-bytes, resident in the page cache), then times
a batch of --batch random distinct rows, each case alternated over --rounds rounds (medians):

- copy: `torch.empty(n).copy_(src)` of the batch's size: one copy into fresh memory, the baseline;
- collate: `mmtensor.data.collate(ds.__getitems__(idx))`: one `take` into fresh memory (one copy);
- default_collate: torch's `default_collate(ds.__getitems__(idx))`: the same gather, then a dict and
  a view per row, stacked into a new tensor (two copies);
- per-row: what a hand-written dataset does without `__getitems__`: `{"x": torch.from_numpy(
  store["x"][i].copy())}` for each row, then `default_collate` (a copy per row, then the stack).

Then, unless --no-workers, one epoch through `DataLoader(num_workers=2, multiprocessing_context=
"fork")` with each collate (after a warm-up epoch, persistent workers): milliseconds per batch as the
main process sees them.

    python benches/rowdataset.py [--rows 65536] [--row-bytes 1024] [--batch 4096] [--rounds 31]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

import mmtensor
from mmtensor.data import RowDataset, collate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--row-bytes", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--no-workers", action="store_true")
    args = parser.parse_args()
    width = args.row_bytes // 4
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x = np.random.default_rng(0).standard_normal((args.rows, width)).astype(np.float32)
        np.save(tmp / "x.npy", x)
        mmtensor.convert({"x": tmp / "x.npy"}, tmp / "s.mmt")
        del x
        store = mmtensor.open(tmp / "s.mmt")
        store.prefetch(wait=True)
        ds = RowDataset(store, output="torch")
        rng = np.random.default_rng(1)
        src = torch.ones(args.batch * width)

        def per_row(idx):
            view = store["x"]
            return default_collate([{"x": torch.from_numpy(view[i].copy())} for i in idx])

        cases = {
            "copy": lambda idx: torch.empty(src.numel()).copy_(src),
            "collate": lambda idx: collate(ds.__getitems__(idx)),
            "default_collate": lambda idx: default_collate(ds.__getitems__(idx)),
            "per-row": per_row,
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            idx = rng.choice(args.rows, args.batch, replace=False).tolist()
            for name, run in cases.items():
                start = time.perf_counter()
                run(idx)
                times[name].append(time.perf_counter() - start)
        mib = args.batch * args.row_bytes / 2**20
        print(f"{args.batch} random rows of {args.row_bytes} B ({mib:.1f} MiB) of {args.rows}; "
              f"medians of {args.rounds} rounds")
        base = statistics.median(times["copy"])
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"  {name:16s} {1e3 * m:8.2f} ms  {m / base:5.2f}x copy")

        if args.no_workers:
            return
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        for name, fn in (("collate", collate), ("default_collate", None)):
            loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=2,
                                multiprocessing_context="fork", persistent_workers=True,
                                collate_fn=fn)
            for _ in loader:
                pass
            start, n = time.perf_counter(), 0
            for _ in loader:
                n += 1
            print(f"  workers, {name:16s} {1e3 * (time.perf_counter() - start) / n:8.2f} ms per batch")
            del loader


if __name__ == "__main__":
    main()
