#!/usr/bin/env python3
"""Peer comparison: loading one large float32 array with NumPy, safetensors, PyTorch and mmtensor.

Every case runs in a fresh Python process (so one case's page cache use or heap does not leak into
the next), on the same files, in the same run, alternating the cases over several rounds. For each
case it records:

- open: time from nothing to an array/tensor object (for copying loaders this includes the copy);
- pass: time of one full pass over every element (a float64 sum), first touch after open;
- heap: growth of anonymous RSS (RssAnon in /proc/self/status) while the result is held.

With --cold, each file's pages are evicted with posix_fadvise(POSIX_FADV_DONTNEED) before every
case, and a plain sequential read() of the file is measured the same way as the disk's own speed.

    python benches/peers.py --size 2GiB --repeats 5 --cold --out benches/out --plot docs/peers.png

torch and mmtensor are optional: their rows are skipped when the package cannot be imported.
The script needs numpy and safetensors; the plot needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

NAME = "x"
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def parse_size(text: str) -> int:
    units = {"b": 1, "k": KIB, "kb": KIB, "kib": KIB, "m": MIB, "mb": MIB, "mib": MIB,
             "g": GIB, "gb": GIB, "gib": GIB}
    t = text.strip().lower()
    num = t.rstrip("abgikm")
    unit = t[len(num):] or "b"
    if unit not in units:
        raise argparse.ArgumentTypeError(f"unknown size unit in {text!r}")
    return int(float(num) * units[unit])


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * KIB
    return 0


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# Cases: each returns (object held, function doing one full pass over it).


def case_read(files):
    """Plain sequential read() into a reused 8 MiB buffer: the disk's (or page cache's) own speed."""
    buf = bytearray(8 * MIB)
    view = memoryview(buf)

    def full_pass():
        with open(files["npy"], "rb", buffering=0) as f:
            while f.readinto(view):
                pass
        return 0.0

    return None, full_pass


def case_np_load(files):
    import numpy as np
    a = np.load(files["npy"])
    return a, lambda: float(a.sum(dtype=np.float64))


def case_np_mmap(files):
    import numpy as np
    a = np.load(files["npy"], mmap_mode="r")
    return a, lambda: float(a.sum(dtype=np.float64))


def case_st_np_load_file(files):
    import numpy as np
    from safetensors.numpy import load_file
    a = load_file(files["safetensors"])[NAME]
    return a, lambda: float(a.sum(dtype=np.float64))


def case_st_np_get_tensor(files):
    import numpy as np
    from safetensors import safe_open
    with safe_open(files["safetensors"], framework="np") as f:
        a = f.get_tensor(NAME)
    return a, lambda: float(a.sum(dtype=np.float64))


def case_torch_tensor(files):
    import numpy as np
    import torch
    t = torch.tensor(np.load(files["npy"], mmap_mode="r"))
    return t, lambda: float(t.sum(dtype=torch.float64))


def case_torch_from_numpy(files):
    import numpy as np
    import torch
    t = torch.from_numpy(np.load(files["npy"], mmap_mode="r+"))
    return t, lambda: float(t.sum(dtype=torch.float64))


def case_st_pt_load_file(files):
    import torch
    from safetensors.torch import load_file
    t = load_file(files["safetensors"])[NAME]
    return t, lambda: float(t.sum(dtype=torch.float64))


def case_st_pt_get_tensor(files):
    import torch
    from safetensors import safe_open
    with safe_open(files["safetensors"], framework="pt") as f:
        t = f.get_tensor(NAME)
    return t, lambda: float(t.sum(dtype=torch.float64))


def case_torch_load_mmap(files):
    import torch
    t = torch.load(files["pt"], mmap=True, weights_only=True)[NAME]
    return t, lambda: float(t.sum(dtype=torch.float64))


def case_mmtensor(files):
    import numpy as np
    import mmtensor
    store = mmtensor.open(files["mmt"])
    a = store[NAME]
    return (store, a), lambda: float(a.sum(dtype=np.float64))


def case_mmtensor_prefetch(files):
    import numpy as np
    import mmtensor
    store = mmtensor.open(files["mmt"])
    a = store[NAME]

    def full_pass():
        store.prefetch(NAME)
        return float(a.sum(dtype=np.float64))

    return (store, a), full_pass


def case_mmtensor_torch(files):
    import torch
    import mmtensor
    store = mmtensor.open(files["mmt"])
    t = store.torch(NAME)
    return (store, t), lambda: float(t.sum(dtype=torch.float64))


CASES = {
    "read() 8 MiB": (case_read, ["numpy"], "npy"),
    "np.load (copy)": (case_np_load, ["numpy"], "npy"),
    "np.load(mmap_mode='r')": (case_np_mmap, ["numpy"], "npy"),
    "safetensors load_file np": (case_st_np_load_file, ["safetensors"], "safetensors"),
    "safetensors get_tensor np": (case_st_np_get_tensor, ["safetensors"], "safetensors"),
    "torch.tensor(array)": (case_torch_tensor, ["torch"], "npy"),
    "torch.from_numpy(mmap)": (case_torch_from_numpy, ["torch"], "npy"),
    "safetensors load_file pt": (case_st_pt_load_file, ["torch", "safetensors"], "safetensors"),
    "safetensors get_tensor pt": (case_st_pt_get_tensor, ["torch", "safetensors"], "safetensors"),
    "torch.load(mmap=True)": (case_torch_load_mmap, ["torch"], "pt"),
    "mmtensor.open()[x]": (case_mmtensor, ["mmtensor"], "mmt"),
    "mmtensor prefetch + pass": (case_mmtensor_prefetch, ["mmtensor"], "mmt"),
    "mmtensor.torch(x)": (case_mmtensor_torch, ["mmtensor", "torch"], "mmt"),
}


def worker(case: str, files: dict) -> dict:
    fn, modules, _ = CASES[case]
    # Imports are not what we measure: load them (and their lazily built submodules) first.
    for m in set(modules) | {"numpy"}:
        __import__(m)
    if "safetensors" in modules:
        import safetensors.numpy  # noqa: F401
        if "torch" in modules:
            import safetensors.torch  # noqa: F401
    before = rss_anon()
    t0 = time.perf_counter()
    held, full_pass = fn(files)
    t1 = time.perf_counter()
    full_pass()
    t2 = time.perf_counter()
    after = rss_anon()
    del held
    return {"open_s": t1 - t0, "pass_s": t2 - t1, "heap_bytes": after - before}


# ---------------------------------------------------------------------------------------------
# Setup: one float32 array of the requested size in every format, written in chunks.


def make_files(out: Path, size: int, mmt_bin: str | None) -> dict:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    n = size // 4
    cols = 1024
    rows = max(1, n // cols)
    shape = (rows, cols)
    nbytes = rows * cols * 4
    files = {"npy": out / "x.npy", "safetensors": out / "x.safetensors", "mmt": out / "x.mmt",
             "pt": out / "x.pt"}
    stamp = out / f"stamp-{nbytes}"
    if stamp.exists() and all(files[k].exists() for k in ("npy", "safetensors")):
        return {k: str(v) for k, v in files.items() if v.exists()}
    for f in out.glob("stamp-*"):
        f.unlink()

    arr = np.lib.format.open_memmap(files["npy"], mode="w+", dtype="<f4", shape=shape)
    step = max(1, (64 * MIB) // (cols * 4))
    rng = np.random.default_rng(0)
    for r in range(0, rows, step):
        arr[r:r + step] = rng.standard_normal((min(step, rows - r), cols), dtype=np.float32)
    arr.flush()
    del arr

    # safetensors, streamed by hand: 8-byte header length, JSON header padded to 8, raw data.
    header = {NAME: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, nbytes]}}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    src = np.load(files["npy"], mmap_mode="r")
    with open(files["safetensors"], "wb") as f:
        f.write(len(hj).to_bytes(8, "little"))
        f.write(hj)
        for r in range(0, rows, step):
            f.write(np.ascontiguousarray(src[r:r + step]).tobytes())
    del src

    if have("torch"):
        import torch
        torch.save({NAME: torch.from_numpy(np.load(files["npy"]))}, files["pt"])

    if mmt_bin:
        subprocess.run([mmt_bin, "convert", f"{NAME}={files['npy']}", "-o", str(files["mmt"]),
                        "--quiet"], check=True)
    elif have("mmtensor"):
        import mmtensor
        mmtensor.convert([f"{NAME}={files['npy']}"], str(files["mmt"]))
    stamp.touch()
    return {k: str(v) for k, v in files.items() if v.exists()}


def available(case: str, files: dict) -> bool:
    _, modules, kind = CASES[case]
    return kind in files and all(have(m) for m in modules)


def run_case(case: str, files: dict, cold: bool) -> dict:
    if cold:
        evict(Path(files[CASES[case][2]]))
    cmd = [sys.executable, __file__, "--worker", case, "--files", json.dumps(files)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("2GiB"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="also measure after evicting the files")
    ap.add_argument("--out", type=Path, default=Path("benches/out"))
    ap.add_argument("--mmt", default=shutil.which("mmt") or "target/release/mmt",
                    help="the mmt binary used to convert (default: target/release/mmt)")
    ap.add_argument("--plot", type=Path, help="write a PNG plot here (needs matplotlib)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--only", nargs="*", help="run only these cases")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.files))))
        return

    mmt_bin = args.mmt if args.mmt and Path(args.mmt).exists() else None
    files = make_files(args.out, args.size, mmt_bin)
    cases = [c for c in CASES if available(c, files) and (not args.only or c in args.only)]
    skipped = [c for c in CASES if c not in cases]
    modes = ["warm"] + (["cold"] if args.cold else [])
    results: dict = {m: {c: [] for c in cases} for m in modes}
    for mode in modes:
        if mode == "warm":
            for c in cases:  # one untimed round to fill the page cache
                run_case(c, files, cold=False)
        for r in range(args.repeats):
            order = cases[r % len(cases):] + cases[:r % len(cases)]  # rotate: alternate the cases
            for c in order:
                results[mode][c].append(run_case(c, files, cold=(mode == "cold")))

    nbytes = os.path.getsize(files["npy"])
    summary = {"bytes": nbytes, "repeats": args.repeats, "skipped": skipped, "modes": {}}
    for mode in modes:
        rows = {}
        for c in cases:
            ok = [x for x in results[mode][c] if "error" not in x]
            if not ok:
                rows[c] = {"error": results[mode][c][0].get("error")}
                continue
            med = {k: statistics.median(x[k] for x in ok) for k in ("open_s", "pass_s", "heap_bytes")}
            total = med["open_s"] + med["pass_s"]
            med["total_s"] = total
            med["gb_per_s"] = nbytes / total / 1e9 if total > 0 else float("inf")
            rows[c] = med
        summary["modes"][mode] = rows

    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{nbytes / GIB:.2f} GiB float32, {args.repeats} repeats, medians; "
              f"heap = growth of RssAnon while held")
        for mode in modes:
            print(f"\n[{mode}]")
            print(f"{'case':<28} {'open':>10} {'pass':>10} {'total':>10} {'GB/s':>7} {'heap MiB':>9}")
            for c, m in summary["modes"][mode].items():
                if "error" in m:
                    print(f"{c:<28} error: {m['error']}")
                    continue
                print(f"{c:<28} {m['open_s'] * 1e3:>8.2f}ms {m['pass_s'] * 1e3:>8.1f}ms "
                      f"{m['total_s'] * 1e3:>8.1f}ms {m['gb_per_s']:>7.2f} {m['heap_bytes'] / MIB:>9.1f}")
        if skipped:
            print(f"\nskipped (package or file missing): {', '.join(skipped)}")
        print_ratios(summary)
    if args.plot:
        plot(summary, args.plot)


def print_ratios(summary: dict) -> None:
    for mode, rows in summary["modes"].items():
        base = rows.get("np.load (copy)")
        ours = rows.get("mmtensor.open()[x]")
        if base and ours and "error" not in base and "error" not in ours:
            print(f"\n[{mode}] np.load copy / mmtensor open: {base['open_s'] / max(ours['open_s'], 1e-9):,.0f}x; "
                  f"heap saved: {(base['heap_bytes'] - ours['heap_bytes']) / MIB:,.0f} MiB; "
                  f"open+pass, copy / mmap: {base['total_s'] / ours['total_s']:.2f}x")
        disk = rows.get("read() 8 MiB")
        for c in ("mmtensor prefetch + pass", "mmtensor.open()[x]", "np.load(mmap_mode='r')"):
            m = rows.get(c)
            if disk and m and "error" not in m and "error" not in disk:
                print(f"[{mode}] {c}: {m['gb_per_s']:.2f} GB/s = {m['gb_per_s'] / disk['gb_per_s']:.2f}x plain read()")


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary["modes"])
    fig, axes = plt.subplots(1, 1 + len(modes), figsize=(6 * (1 + len(modes)), 5))
    warm = summary["modes"]["warm"]
    names = [c for c, m in warm.items() if "error" not in m and not c.startswith("read()")]
    heap = [warm[c]["heap_bytes"] / MIB for c in names]
    axes[0].barh(names, heap, color="tab:red")
    axes[0].set_xlabel("heap growth while held (MiB, RssAnon)")
    axes[0].invert_yaxis()
    for ax, mode in zip(axes[1:], modes):
        rows = summary["modes"][mode]
        ns = [c for c, m in rows.items() if "error" not in m]
        ax.barh(ns, [rows[c]["open_s"] * 1e3 for c in ns], label="open")
        ax.barh(ns, [rows[c]["pass_s"] * 1e3 for c in ns],
                left=[rows[c]["open_s"] * 1e3 for c in ns], label="full pass")
        ax.set_xlabel(f"time (ms), {mode} page cache, median")
        ax.invert_yaxis()
        ax.legend()
    fig.suptitle(f"{summary['bytes'] / GIB:.1f} GiB float32: open + one full pass, and heap growth")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
