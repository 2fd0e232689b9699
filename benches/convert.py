#!/usr/bin/env python3
"""Conversion against cp: `mmt convert` of a .npy file next to `cp` of the same bytes, same disk, same run.

Cases, alternated over --repeats rounds (medians reported):
- cp: `cp x.npy copy.npy` (the floor for moving the bytes once; its writes may still sit in the page
  cache when it exits);
- cp + fsync: the same, then fsync of the copy: the same durability `mmt convert` always pays for
  (it fsyncs before its atomic rename);
- same dtype: `mmt convert x.npy -o x.mmt` (float32 in, float32 out);
- cast: `mmt convert x64.npy -o x64.mmt --dtype bf16` (float64 in, bfloat16 out), compared with
  `cp x64.npy` of its own input.

Throughput is input bytes / wall time. For every mmt run the script samples the child's anonymous RSS
(RssAnon in /proc/PID/status) every 20 ms and reports the peak, which is what "bounded memory" means
(file pages in the page cache are not the converter's memory).

    python benches/convert.py --size 2GiB --repeats 5            # warm page cache
    python benches/convert.py --size 2GiB --repeats 5 --cold     # inputs evicted before each run
    python benches/convert.py --size 30GiB --repeats 1 --only same  # larger than RAM: peak RSS

Outputs are written next to the inputs (--dir, default benches/out) and deleted after each run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import GIB, MIB, evict, parse_size  # noqa: E402


def make_npy(path: Path, size: int, dtype: str) -> None:
    import numpy as np

    itemsize = np.dtype(dtype).itemsize
    cols = 1024
    rows = max(1, size // (itemsize * cols))
    if path.exists() and path.stat().st_size >= rows * cols * itemsize:
        return
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, cols))
    step = max(1, (64 * MIB) // (cols * itemsize))
    rng = np.random.default_rng(1)
    for r in range(0, rows, step):
        arr[r:r + step] = rng.standard_normal((min(step, rows - r), cols)).astype(dtype)
    arr.flush()
    del arr


def rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(cmd: list[str], sync_path: Path | None) -> tuple[float, int]:
    """Runs cmd, returns (seconds including an fsync of the output, peak anonymous RSS)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_anon(proc.pid))
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    done.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {rc}")
    if sync_path is not None:
        # mmt fsyncs its output; cp does not. Sync cp's copy too so both pay for durability.
        fd = os.open(sync_path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t0, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("2GiB"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--dir", type=Path, default=Path("benches/out"))
    ap.add_argument("--mmt", default="target/release/mmt")
    ap.add_argument("--only", choices=["same", "cast"], help="run only one of the two pairs")
    args = ap.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    if args.only in (None, "same"):
        src = args.dir / "conv-f32.npy"
        make_npy(src, args.size, "<f4")
        pairs.append(("same dtype f32", src, []))
    if args.only in (None, "cast"):
        src = args.dir / "conv-f64.npy"
        make_npy(src, args.size, "<f8")
        pairs.append(("cast f64->bf16", src, ["--dtype", "bf16"]))

    results = {name: {"cp": [], "cp+fsync": [], "mmt": [], "peak": []} for name, _, _ in pairs}
    kinds = ["cp", "cp+fsync", "mmt"]
    for r in range(args.repeats):
        for name, src, extra in pairs:
            order = kinds[r % 3:] + kinds[:r % 3]  # rotate, so no case always runs first
            for which in order:
                if args.cold:
                    evict(src)
                # Start each case with no dirty pages left over from the previous one.
                os.sync()
                out = args.dir / ("out.mmt" if which == "mmt" else "copy.npy")
                if which.startswith("cp"):
                    secs, _ = timed(["cp", str(src), str(out)], out if which == "cp+fsync" else None)
                else:
                    secs, peak = timed([args.mmt, "convert", f"x={src}", "-o", str(out), "--quiet", *extra], None)
                    results[name]["peak"].append(peak)
                results[name][which].append(secs)
                out.unlink()

    mode = "cold" if args.cold else "warm"
    print(f"conversion vs cp, {mode} page cache, {args.repeats} repeats, medians")
    print(f"{'case':<16} {'input':>8} {'cp':>9} {'cp+fsync':>9} {'mmt':>9} "
          f"{'mmt/cp':>7} {'mmt/(cp+fsync)':>15} {'peak RssAnon':>13}")
    for name, src, _ in pairs:
        size = src.stat().st_size
        med = {k: statistics.median(results[name][k]) for k in kinds}
        rate = {k: f"{size / v / 1e9:.2f}GB/s" for k, v in med.items()}
        peak = max(results[name]["peak"])
        print(f"{name:<16} {size / GIB:>6.2f}Gi {rate['cp']:>9} {rate['cp+fsync']:>9} {rate['mmt']:>9} "
              f"{med['cp'] / med['mmt']:>7.2f} {med['cp+fsync'] / med['mmt']:>15.2f} {peak / MIB:>11.1f}Mi")


if __name__ == "__main__":
    main()
