#!/usr/bin/env python3
"""Where a warm loader epoch's time goes: the gathers of benches/loader.py, side by side in ONE process.

benches/loader.py runs every case in its own process, which is right for recording figures but
leaves each case at the mercy of what the shared machine does in the seconds it runs. This script
is for attribution instead: one process, the store's pages resident and already mapped (one untimed
epoch of each case first), the `x` column only, and the cases alternated over --rounds rounds, each
reported as its median and as the median of its per-round ratio to NumPy's `x[idx]`:

- `x[idx]`: NumPy fancy indexing on `np.load(mmap_mode="r")` (baseline a's gather);
- `x[a:b] copy`: contiguous batches copied with `np.array` (what any copying loader tends to);
- `store.take out=`: mmtensor's gather into one reused buffer, on the calling thread's turn;
- `Loader full` / `Loader seq`: `mmtensor.Loader(columns=["x"], prefetch=2)`, full shuffle / in order.

    python benches/loader_gather.py --rounds 5                       # rayon's default threads
    RAYON_NUM_THREADS=1 python benches/loader_gather.py --rounds 5   # the gather on one thread
    python benches/loader_gather.py --heap                           # RssAnon: `for` loop vs `del`

`--heap` measures the peak RssAnon growth of one block-shuffle epoch iterated with a plain
`for batch in loader:` (which still holds the previous batch while asking for the next) and with
`del batch` before each `next()`, in fresh processes. Uses the data benches/loader.py generated.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def epochs(out: Path):
    import mmtensor
    import numpy as np

    store = mmtensor.open(str(out / "train.mmt"))
    x = np.load(out / "x.npy", mmap_mode="r")
    n, b = len(x), 1024
    buf = np.empty((b, x.shape[1]), x.dtype)

    def perm(e):
        return np.random.default_rng(e).permutation(n)

    def fancy(e):
        p = perm(e)
        for k in range(n // b):
            x[p[k * b:(k + 1) * b]]

    def slices(e):
        for k in range(n // b):
            np.array(x[k * b:(k + 1) * b])

    def take(e):
        p = perm(e)
        for k in range(n // b):
            store.take("x", p[k * b:(k + 1) * b], out=buf)

    def loader(shuffle):
        lo = mmtensor.Loader(store, b, columns=["x"], shuffle=shuffle, prefetch=2)

        def run(e):
            lo.set_epoch(e)
            for _ in lo:
                pass
        return run

    return {"x[idx]": fancy, "x[a:b] copy": slices, "store.take out=": take,
            "Loader full": loader(True), "Loader seq": loader(False)}


def heap_child(out: Path, style: str) -> None:
    import mmtensor

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    lo = mmtensor.Loader(str(out / "train.mmt"), 1024, columns=["x", "y"], shuffle="block", prefetch=2)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.wait(0.002):
            peak[0] = max(peak[0], rss())

    base = peak[0] = rss()
    th = threading.Thread(target=sample)
    th.start()
    if style == "for":
        for batch in lo:
            pass
    else:
        it = iter(lo)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            del batch
    stop.set()
    th.join()
    print(f"{(peak[0] - base) / 2**20:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benches/out/loader"), help="benches/loader.py's data")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--heap", action="store_true")
    ap.add_argument("--heap-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.heap_child:
        heap_child(args.out, args.heap_child)
        return
    if args.heap:
        for style in ("for", "del") * args.rounds:
            r = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--heap-child", style],
                               capture_output=True, text=True, check=True)
            print(f"{style:4s} RssAnon growth {r.stdout.strip()} MiB")
        return
    cases = epochs(args.out)
    for f in cases.values():
        f(0)  # fault the mapping in: these are steady-state epochs
    res: dict = {c: [] for c in cases}
    for r in range(args.rounds):
        for c, f in cases.items():
            t0 = time.perf_counter()
            f(r + 1)
            res[c].append(time.perf_counter() - t0)
    base = res["x[idx]"]
    for c, v in res.items():
        ratio = statistics.median(b / a for a, b in zip(v, base))
        print(f"{c:16s} {statistics.median(v):.3f} s an epoch ({512 / statistics.median(v):6.0f} batches/s), "
              f"{ratio:.2f}x x[idx]'s speed")


if __name__ == "__main__":
    main()
