#!/usr/bin/env python3
"""A dataset larger than memory (issue 12): `mmt convert --shard-size`, `mmt verify` and one loader
epoch over 48 GiB on a 24 GiB machine, each with its wall time and peak RssAnon. Run once, by hand;
not in CI (it writes --size bytes, plus 1 GiB of input).

The input is a folder of `.npy` parts of 1 GiB (`x`: float32 [262144, 1024], `y`: int64 [262144]):
one part is written, the others are hard links to it, so the input costs 1 GiB of disk while
`convert` still reads --size bytes through the usual path (the part stays in the page cache, so
convert is bound by writing). The dataset is written into --dir/ds with `--shard-size 1GiB`.

Each step runs as a child process; a thread samples its RssAnon (/proc/PID/status) every 20 ms and
reports the peak, which is the step's heap (the mapped shards and the page cache are not
anonymous memory). Before `verify` and the epoch, every shard is evicted from the page cache
(`posix_fadvise(POSIX_FADV_DONTNEED)`), so both read the dataset from disk.

    python benches/scale.py --dir /big/disk/scale --size 48GiB
    python benches/scale.py --dir /tmp/scale --size 4GiB          # a small rehearsal

Options: --mmt (default target/release/mmt), --loader (default
target/release/examples/loader_epoch: `cargo build --release -p mmtensor --example loader_epoch`),
--shuffle (block, full or none; default block), --keep (keep the dataset afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import GIB, evict, parse_size  # noqa: E402

PART_ROWS = 262144
COLS = 1024


def rss_anon(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(step: str, cmd: list[str]) -> dict:
    """Runs `cmd`, sampling its RssAnon; returns the wall time, the peak and the output's tail."""
    print(f"== {step}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, rss_anon(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{step} failed ({proc.returncode}):\n{out}")
    tail = out.strip().splitlines()[-3:]
    print("\n".join(tail), file=sys.stderr)
    print(f"   {wall:.1f} s, peak RssAnon {peak / 2**20:.1f} MiB", file=sys.stderr, flush=True)
    return {"seconds": round(wall, 2), "peak_rss_anon_mib": round(peak / 2**20, 1), "output": tail}


def make_input(parts_dir: Path, parts: int) -> None:
    import numpy as np

    parts_dir.mkdir(parents=True, exist_ok=True)
    x0, y0 = parts_dir / "x-00000.npy", parts_dir / "y-00000.npy"
    if not x0.exists():
        x = np.lib.format.open_memmap(x0, mode="w+", dtype=np.float32, shape=(PART_ROWS, COLS))
        rng = np.random.default_rng(0)
        for a in range(0, PART_ROWS, 16384):
            x[a:a + 16384] = rng.standard_normal((16384, COLS), dtype=np.float32)
        x.flush()
        del x
        np.save(y0, np.arange(PART_ROWS, dtype=np.int64))
    for i in range(1, parts):
        for name, first in (("x", x0), ("y", y0)):
            link = parts_dir / f"{name}-{i:05d}.npy"
            if not link.exists():
                os.link(first, link)


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--size", default="48GiB")
    ap.add_argument("--mmt", default=str(root / "target" / "release" / "mmt"))
    ap.add_argument("--loader", default=str(root / "target" / "release" / "examples" / "loader_epoch"))
    ap.add_argument("--shuffle", default="block", choices=["block", "full", "none"])
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    parts = max(1, parse_size(args.size) // GIB)
    parts_dir, ds = args.dir / "parts", args.dir / "ds"
    make_input(parts_dir, parts)
    shutil.rmtree(ds, ignore_errors=True)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    summary: dict = {"parts": parts, "bytes_x": parts * PART_ROWS * COLS * 4,
                     "memory_bytes": mem, "cpus": os.cpu_count()}
    summary["convert"] = run("convert", [
        args.mmt, "convert", f"x={parts_dir}/x-*.npy", f"y={parts_dir}/y-*.npy", "-o", str(ds),
        "--shard-size", "1GiB", "-q"])
    shards = sorted(ds.glob("*.mmt"))
    summary["shards"] = len(shards)
    summary["dataset_bytes"] = sum(f.stat().st_size for f in shards)
    for f in shards:
        evict(f)
    summary["verify"] = run("verify", [args.mmt, "verify", str(ds)])
    for f in shards:
        evict(f)
    summary["epoch"] = run("epoch", [args.loader, str(ds), "1024", args.shuffle, "2"])
    print(json.dumps(summary, indent=2))
    if not args.keep:
        shutil.rmtree(ds)


if __name__ == "__main__":
    main()
