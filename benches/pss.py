#!/usr/bin/env python3
"""Page sharing: N processes mapping one .mmt store against one, measured by proportional set size.

Makes a store of about --size-mib MiB with `mmt convert` (from a .npy of float32 values that are not
all zero), then for 1 and for N reader processes: each reader maps the store read-only and shared
(PROT_READ, MAP_SHARED: what `mmtensor::Store::open` does through memmap2), touches one byte of every
page of the data section, reports ready and waits. While all readers hold their mappings, the parent
reads /proc/PID/smaps_rollup of each and sums:

- Pss: the reader's resident pages, each shared page divided by the number of processes mapping it;
- Pss_File: the file-backed part (the store's page-cache pages);
- Pss_Anon: the anonymous part (the interpreter's own heap; the store adds nothing here);
- Rss: resident pages counted in full in every process (what `top` shows).

If the pages are shared, the summed Pss_File of N readers stays at about one store's size while
their summed Rss grows N times. For comparison, `--copy` runs the same readers reading the store into
a private heap buffer instead (what np.load does), where summed Pss_Anon grows N times.

    python benches/pss.py --readers 8 --size-mib 1024 [--copy] [--mmt target/release/mmt] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import tempfile

FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File")

READER = r"""
import mmap, os, sys
path, offset, length, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fd = os.open(path, os.O_RDONLY)
if mode == "map":
    m = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    page = mmap.PAGESIZE
    total = 0
    for i in range(offset, offset + length, page):
        total += m[i]
    keep = m
else:
    keep = bytearray(length)
    os.preadv(fd, [keep], offset)
    total = sum(keep[:: mmap.PAGESIZE])
sys.stdout.write("ready %d\n" % total)
sys.stdout.flush()
sys.stdin.readline()
"""


def rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup, in KiB."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].rstrip(":") in FIELDS:
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def measure(path: str, offset: int, length: int, readers: int, mode: str) -> dict[str, int]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", READER, path, str(offset), str(length), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(readers)
    ]
    try:
        for p in procs:
            line = p.stdout.readline()
            if not line.startswith("ready"):
                raise SystemExit(f"a reader failed: {line!r}")
        totals = {k: 0 for k in FIELDS}
        for p in procs:
            for k, v in rollup(p.pid).items():
                totals[k] += v
        return totals
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()


def make_store(mmt: str, folder: str, size_mib: int) -> tuple[str, int, int]:
    import numpy as np

    n = size_mib * (1 << 20) // 4
    src = os.path.join(folder, "x.npy")
    # Not all zeros, so no filesystem can keep the data as holes.
    np.save(src, np.arange(n, dtype=np.float32))
    store = os.path.join(folder, "x.mmt")
    subprocess.run([mmt, "convert", src, "-o", store, "--quiet"], check=True)
    os.remove(src)
    info = json.loads(subprocess.run([mmt, "info", store, "--json"], check=True,
                                     capture_output=True, text=True).stdout)
    t = info["tensors"][0]
    return store, t["offset"], t["bytes"]


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--copy", action="store_true", help="also measure private heap copies")
    default_mmt = os.path.join(root, "target/release/mmt")
    if not os.path.exists(default_mmt):
        default_mmt = os.path.join(root, "target/debug/mmt")
    ap.add_argument("--mmt", default=default_mmt)
    ap.add_argument("--dir", default=None, help="where to make the store (default: a temp folder)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        store, offset, length = make_store(args.mmt, folder, args.size_mib)
        print(f"store: {length / 2**20:.0f} MiB of tensor data, {os.path.getsize(store)} bytes; "
              f"kernel {os.uname().release}")
        results = {}
        modes = ["map"] + (["copy"] if args.copy else [])
        for mode in modes:
            for n in (1, args.readers):
                results[f"{mode} x{n}"] = measure(store, offset, length, n, mode)
        print(f"{'case':<10} " + " ".join(f"{k + ' MiB':>13}" for k in FIELDS))
        for case, r in results.items():
            print(f"{case:<10} " + " ".join(f"{r[k] / 1024:>13.1f}" for k in FIELDS))
        for mode in modes:
            one, many = results[f"{mode} x1"], results[f"{mode} x{args.readers}"]
            print(f"{mode}: {args.readers} readers / 1 reader: Pss {many['Pss'] / one['Pss']:.2f}x, "
                  f"Pss_File {many['Pss_File'] / max(one['Pss_File'], 1):.2f}x, "
                  f"Pss_Anon {many['Pss_Anon'] / max(one['Pss_Anon'], 1):.2f}x, "
                  f"Rss {many['Rss'] / one['Rss']:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"readers": args.readers, "data_bytes": length, "kib": results}, f, indent=2)


if __name__ == "__main__":
    main()
