#!/usr/bin/env python3
"""Opening a store of many small tensors: mmtensor against safetensors, and the header's size.

A model's parameters or a dataset of many named arrays make stores of tens of thousands of small
tensors, where opening means parsing a large header. This builds one `.safetensors` file of N
tensors (names like `layer.123.weight`, shapes [4, 8] float32), converts it to `.mmt` with the
current `mmt` converter, then times, in a fresh process per case, alternating the cases over several
rounds (warm page cache):

- open + first lookup: from nothing to a NumPy array of one tensor (`mmtensor.open(f)[name]`,
  safetensors `safe_open(f, "np").get_tensor(name)`);
- heap: growth of anonymous RSS (RssAnon in /proc/self/status) while the store and array are held.

    python benches/many_tensors.py --tensors 100000 --repeats 7 --mmt target/release/mmt

Medians are printed with the ratio to safetensors, and the header sizes of both files.
Needs numpy, safetensors and the mmtensor package (`pip install ./crates/python`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no RssAnon line")


def case_mmtensor(path: str, name: str):
    import mmtensor
    store = mmtensor.open(path)
    return store, store[name]


def case_safetensors(path: str, name: str):
    from safetensors import safe_open
    f = safe_open(path, framework="np")
    return f, f.get_tensor(name)


CASES = {"mmtensor.open(f)[name]": (case_mmtensor, "mmt"),
         "safetensors safe_open(f).get_tensor(name)": (case_safetensors, "safetensors")}


def worker(case: str, files: dict, name: str) -> dict:
    import numpy  # noqa: F401  (imports are not what is measured)
    import mmtensor  # noqa: F401
    import safetensors.numpy  # noqa: F401
    fn, kind = CASES[case]
    before = rss_anon()
    t0 = time.perf_counter()
    held = fn(files[kind], name)
    t1 = time.perf_counter()
    after = rss_anon()
    assert held[1].shape == (4, 8)
    return {"open_s": t1 - t0, "heap_bytes": after - before}


def make_files(out: Path, n: int, mmt: str) -> dict:
    import numpy as np
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    files = {"safetensors": out / f"many-{n}.safetensors", "mmt": out / f"many-{n}.mmt"}
    if not files["safetensors"].exists():
        arrays = {f"layer.{i}.weight": np.full((4, 8), i % 251, dtype=np.float32) for i in range(n)}
        save_file(arrays, str(files["safetensors"]))
    # Always reconvert: the header is what changes between versions of the converter.
    subprocess.run([mmt, "convert", str(files["safetensors"]), "-o", str(files["mmt"]), "--quiet"],
                   check=True)
    return {k: str(v) for k, v in files.items()}


def header_len(kind: str, path: str) -> int:
    with open(path, "rb") as f:
        head = f.read(32)
    if kind == "safetensors":
        return int.from_bytes(head[:8], "little")
    return int.from_bytes(head[16:24], "little")  # .mmt preamble: header length at bytes 16..24


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensors", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("benches/out"))
    ap.add_argument("--mmt", default="target/release/mmt")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.files), args.name)))
        return

    files = make_files(args.out, args.tensors, args.mmt)
    name = f"layer.{args.tensors - 1}.weight"
    results: dict[str, list[dict]] = {c: [] for c in CASES}
    for _ in range(args.repeats):
        for case in CASES:
            cmd = [sys.executable, __file__, "--worker", case, "--files", json.dumps(files),
                   "--name", name]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[case].append(json.loads(res.stdout))
    print(f"{args.tensors} tensors; header bytes: .mmt {header_len('mmt', files['mmt']):,}, "
          f".safetensors {header_len('safetensors', files['safetensors']):,}")
    base = statistics.median(r["open_s"] for r in results["safetensors safe_open(f).get_tensor(name)"])
    for case, rows in results.items():
        t = statistics.median(r["open_s"] for r in rows)
        heap = statistics.median(r["heap_bytes"] for r in rows)
        print(f"{case:45s} open+lookup {t * 1e3:8.1f} ms ({base / t:5.2f}x safetensors)"
              f"  heap {heap / 2**20:6.1f} MiB")


if __name__ == "__main__":
    main()
