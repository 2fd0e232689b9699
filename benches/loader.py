#!/usr/bin/env python3
"""The training loader (issue 11): shuffled batches of rows from a 2 GiB store, against the usual ways.

Data: `x`, float32 [N, 1024] (4 KiB rows; N = 524,288 makes 2 GiB) and `y`, int64 labels [N], saved
as `x.npy` and `y.npy` (what the baselines read) and converted into one `train.mmt` (what mmtensor
reads). Batches of 1024 rows (4 MiB of x plus 8 KiB of y). Cases:

- `mmt-loader/<order>`: `mmtensor.Loader(train.mmt, 1024, columns=["x", "y"], shuffle=...,
  prefetch=2)`, order full (`shuffle=True`), block (`shuffle="block"`, default 256-row
  blocks in windows of 64) or seq (`shuffle=False`);
- `numpy-fancy/<order>` (the issue's baseline a): a Python loop over a seeded NumPy permutation doing
  `idx = perm[k*B:(k+1)*B]; x[idx]; y[idx]` on `np.load(..., mmap_mode="r")`; the permutation is built
  inside the timed epoch, as each epoch would. `block` builds the same kind of block order in NumPy;
  `seq/slice` copies contiguous batches (`np.array(x[a:b])`): the copy no loader can beat, warm;
  `full/madv-random` (cold, diagnostic, --random-cap batches) sets MADV_RANDOM on NumPy's mappings:
  no read-around on page faults, as on a disk with little readahead;
- `torch-dataloader/full` (baseline b): a map-style Dataset whose `__getitem__` returns
  `(torch.from_numpy(np.array(x[i])), int(y[i]))` over the same NumPy mappings, read through
  `DataLoader(ds, batch_size=1024, shuffle=True, num_workers=2)` with the default collate. The epoch
  includes starting the two workers, as it does for a user (`first ms` shows that part);
- `torch-rowdataset/full`: the same DataLoader over `mmtensor.data.RowDataset(train.mmt)` with
  `collate_fn=mmtensor.data.collate` (one gather per batch in the workers);
- `mmt-take/full`: a Python loop calling `store.take` per column and batch on a NumPy permutation:
  the gather without the Loader's prefetch (`/out`: into two reused buffers);
- `read-pass`: one sequential `read()` of `train.mmt` in 16 MiB chunks (`/1m`: in 1 MiB chunks, faster
  on some disks): the disk's own speed when cold; targets compare with the faster of the two;
- `overlap/<part>`: a fixed compute step per batch, `torch.mm(x_batch, W)` with W float32
  [1024, k] on --compute-threads threads (default 1), k chosen so that one step takes about as long as
  the loader takes per batch (calibrated in this run, or --compute-k). `compute` runs the steps alone on
  8 batches already in memory, `load` is the loader alone, `both` is the loader with the step in the
  loop. `sleep` variants replace the matmul with `time.sleep` of the same length: a step that leaves
  the CPU free, as one on an accelerator would.

`--baseline-module DIR` adds `mmt-loader/<order>/baseline`: the same cases with the mmtensor module
installed in DIR (an older build, `pip install --no-deps --target DIR old.whl`), rotated with the
others, for a before/after comparison in one run.

`--read-ahead 8192,128` runs the cold cases once per value with the read-ahead of the data's block
device (`/sys/dev/block/MAJ:MIN/queue/read_ahead_kb`) set to it, and restores the old value after,
even when a case fails (root only; never in tests). Each cold table prints the read-ahead it ran on.
The targets printed at the end are issue 21's: warm full shuffle >= 1.25x NumPy's fancy-index loop
with no more CPU; cold full shuffle >= 1.0x NumPy and >= 5x NumPy with MADV_RANDOM; cold block
shuffle >= 1.5x NumPy's full shuffle and >= 0.9x the faster `read()`; a sleep step overlapped to
<= 1.05x max(step, load).

Every case runs in its own fresh Python process (imports and opening outside the timing), the cases
of a mode are rotated over --repeats rounds, and medians are reported; each target is printed as the
ratio of the medians and as the median (and range) of the ratios within a round. Warm cases run
--warm-epochs epochs in their process (rows `#2`: a second epoch, mapping already faulted in). "warm": the files the case
reads were read once just before it; "cold": they were evicted with
`posix_fadvise(POSIX_FADV_DONTNEED)` just before it. Cold baselines can be capped to their first
--cold-cap batches (rates are reported, not totals; the table says which rows were capped).
Heap is the growth of RssAnon (/proc/self/status) over its value just before the epoch, sampled every
5 ms by a thread during the epoch, max over the epoch; for the DataLoader the workers' own growth is
shown separately. `cpu s` is the case process's CPU time over the epoch (all its threads). The full
summary, every run included, goes to --out/results-<UTC time>.json.

    python benches/loader.py --repeats 5                 # 2 GiB, warm + cold + overlap
    python benches/loader.py --size 1GiB --read-ahead 8192,128   # cold cases on two read-aheads (root)
    python benches/loader.py --quick                     # 64 MiB smoke run
    python benches/loader.py --only numpy-fancy/full read-pass --modes cold

Data are generated once under --out (default benches/out/loader) and reused; `--clean` deletes them
at the end. Needs numpy; torch for the DataLoader and overlap cases; mmtensor (with `Loader`) for the
mmtensor cases and to convert (or pass --mmt target/release/mmt). Cases whose package is missing are
skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import GIB, MIB, evict, have, parse_size  # noqa: E402

COLS = 1024
ROW_BYTES = COLS * 4 + 8  # one row of x plus its label
SEED = 0
READ_CHUNK = 16 * MIB
PRELOADED = 8  # batches held in memory for "compute alone"


# ---------------------------------------------------------------------------------------------
# Memory: RssAnon of this process (and of its children, for the DataLoader's workers).


def rss_anon_of(path: str) -> int:
    try:
        with open(path, "rb") as f:
            for line in f.read().split(b"\n"):
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds() -> float:
    """User + system CPU time of this process, all its threads (not its children)."""
    t = os.times()
    return t.user + t.system


def children() -> list[int]:
    pids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


class RssSampler:
    """Samples RssAnon every `interval` seconds on a thread; growth is over the value at start()."""

    def __init__(self, interval: float = 0.005, with_children: bool = False):
        self.interval = interval
        self.with_children = with_children
        self.base = 0
        self.peak = 0
        self.child_first: dict[int, int] = {}
        self.child_peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.peak = max(self.peak, rss_anon_of("/proc/self/status"))
        if self.with_children:
            for pid in children():
                r = rss_anon_of(f"/proc/{pid}/status")
                if r:
                    self.child_first.setdefault(pid, r)
                    self.child_peak[pid] = max(self.child_peak.get(pid, 0), r)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.base = rss_anon_of("/proc/self/status")
        self.peak = self.base
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.sample()
        out = {"heap_bytes": self.peak - self.base}
        if self.with_children:
            out["workers_heap_bytes"] = sum(self.child_peak[p] - self.child_first[p] for p in self.child_peak)
        return out


# ---------------------------------------------------------------------------------------------
# Orders and batch sources. Each source returns (batches per epoch, a function starting one epoch
# that yields (x, y) per batch); what is built before that function runs is setup, not timed.


def block_permutation(n: int, block_rows: int, window_blocks: int, rng):
    """Blocks of consecutive rows in random order, rows shuffled within each window of blocks
    (the shape of docs/LOADER.md's block shuffle, drawn with NumPy's generator)."""
    import numpy as np

    nb = -(-n // block_rows)
    order = rng.permutation(nb)
    out = np.empty(n, dtype=np.int64)
    pos = 0
    for w in range(0, nb, window_blocks):
        rows = np.concatenate([np.arange(b * block_rows, min((b + 1) * block_rows, n))
                               for b in order[w:w + window_blocks]])
        rng.shuffle(rows)
        out[pos:pos + len(rows)] = rows
        pos += len(rows)
    return out


def source_mmt(spec: dict, files: dict):
    import mmtensor

    shuffle = {"full": True, "block": "block", "seq": False}[spec["order"]]
    kwargs = {"columns": ["x", "y"], "shuffle": shuffle, "seed": SEED, "prefetch": spec["prefetch"]}
    if spec.get("output"):
        kwargs["output"] = spec["output"]
    loader = mmtensor.Loader(files["mmt"], spec["batch"], **kwargs)

    def epoch(e):
        # The loader itself, no generator around it: the timed loop is then `for batch in loader`,
        # which holds exactly what a user's loop holds (the previous batch while asking for the next).
        loader.set_epoch(e)
        return loader

    return len(loader), epoch, loader


def numpy_order(n: int, order: str, epoch: int):
    """The epoch's row order for the NumPy-driven cases: a NumPy permutation seeded by the epoch."""
    import numpy as np

    rng = np.random.default_rng([SEED, epoch])
    if order == "full":
        return rng.permutation(n)
    if order == "block":
        return block_permutation(n, 256, 64, rng)
    return np.arange(n)


def source_numpy(spec: dict, files: dict):
    import mmap

    import numpy as np

    x = np.load(files["x"], mmap_mode="r")
    y = np.load(files["y"], mmap_mode="r")
    if spec.get("variant") == "madv-random":
        # Diagnostic only: no read-around on page faults, as on a disk with small readahead.
        x._mmap.madvise(mmap.MADV_RANDOM)
        y._mmap.madvise(mmap.MADV_RANDOM)
    n, b = len(x), spec["batch"]

    def epoch(e):
        if spec.get("variant") == "slice":  # the copy ceiling: contiguous batches, one memcpy each
            for k in range(-(-n // b)):
                yield np.array(x[k * b:(k + 1) * b]), np.array(y[k * b:(k + 1) * b])
            return
        perm = numpy_order(n, spec["order"], e)
        for k in range(-(-n // b)):
            idx = perm[k * b:(k + 1) * b]
            yield x[idx], y[idx]

    return -(-n // b), epoch, (x, y)


def source_take(spec: dict, files: dict):
    """store.take per batch on a NumPy permutation: mmtensor's gather without the Loader around it
    (variant "out": into two reused buffers, as a loop that owns its batches can)."""
    import mmtensor
    import numpy as np

    store = mmtensor.open(files["mmt"])
    n, b = store.shape("x")[0], spec["batch"]
    reuse = spec.get("variant") == "out"
    bufs = (np.empty((b, COLS), np.float32), np.empty(b, np.int64)) if reuse else None

    def epoch(e):
        perm = numpy_order(n, spec["order"], e)
        for k in range(-(-n // b)):
            idx = perm[k * b:(k + 1) * b]
            if reuse and len(idx) == b:
                yield store.take("x", idx, out=bufs[0]), store.take("y", idx, out=bufs[1])
            else:
                yield store.take("x", idx), store.take("y", idx)

    return -(-n // b), epoch, store


def source_torch(spec: dict, files: dict):
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    class NpyRows(Dataset):
        """The map-style Dataset people write over np.load(mmap_mode="r"): one row per __getitem__."""

        def __init__(self, xpath: str, ypath: str):
            self.x = np.load(xpath, mmap_mode="r")
            self.y = np.load(ypath, mmap_mode="r")

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i):
            return torch.from_numpy(np.array(self.x[i])), int(self.y[i])

    ds = NpyRows(files["x"], files["y"])
    dl = DataLoader(ds, batch_size=spec["batch"], shuffle=True, num_workers=2,
                    generator=torch.Generator().manual_seed(SEED))

    def epoch(e):
        yield from dl

    return len(dl), epoch, dl


def source_rowdataset(spec: dict, files: dict):
    """torch's DataLoader, 2 workers, over mmtensor.data.RowDataset: one gather per batch."""
    import torch
    from torch.utils.data import DataLoader

    from mmtensor.data import RowDataset, collate

    ds = RowDataset(files["mmt"], columns=["x", "y"], output="torch")
    dl = DataLoader(ds, batch_size=spec["batch"], shuffle=True, num_workers=2, collate_fn=collate,
                    generator=torch.Generator().manual_seed(SEED))

    def epoch(e):
        return dl

    return len(dl), epoch, dl


SOURCES = {"mmt-loader": source_mmt, "mmt-take": source_take, "numpy-fancy": source_numpy,
           "torch-dataloader": source_torch, "torch-rowdataset": source_rowdataset}


# ---------------------------------------------------------------------------------------------
# Cases, run in the worker process.


def column(batch, i: int):
    """Column i (0: x, 1: y) of a batch: a dict from mmtensor, a tuple or list from the others."""
    return batch[("x", "y")[i]] if isinstance(batch, dict) else batch[i]


def make_step(spec: dict):
    """The fixed compute step of the overlap cases: a float32 matmul with W [1024, k], or a sleep."""
    import numpy as np
    import torch

    if spec["step"] == "sleep":
        seconds = spec["sleep_s"]
        return lambda xb: time.sleep(seconds)
    w = torch.randn(COLS, spec["k"], dtype=torch.float32, generator=torch.Generator().manual_seed(1))

    def step(xb):
        t = xb if isinstance(xb, torch.Tensor) else torch.from_numpy(np.asarray(xb))
        return torch.mm(t, w)

    return step


def run_epochs(batches: int, epoch, step, cap: int | None, epochs: int, with_children: bool) -> dict:
    """`epochs` epochs in this process, timed one by one; heap growth is over all of them."""
    sampler = RssSampler(with_children=with_children)
    sampler.start()
    per_epoch = []
    for e in range(epochs):
        n = rows = 0
        t_first = None
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        for batch in epoch(e):
            if t_first is None:
                t_first = time.perf_counter()
            if step is not None:
                step(column(batch, 0))
            n += 1
            rows += len(column(batch, 1))
            if cap and n >= cap:
                break
        t1 = time.perf_counter()
        per_epoch.append({"batches": n, "rows": rows, "epoch_s": t1 - t0, "first_s": (t_first or t1) - t0,
                          "cpu_s": cpu_seconds() - c0, "capped": bool(cap) and n < batches})
    res = sampler.stop()
    res["epochs"] = per_epoch
    return res


def worker_read(files: dict, chunk: int = READ_CHUNK) -> dict:
    buf = bytearray(chunk)
    view = memoryview(buf)
    sampler = RssSampler()
    sampler.start()
    total = 0
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    with open(files["mmt"], "rb", buffering=0) as f:
        while True:
            got = f.readinto(view)
            if not got:
                break
            total += got
    t1 = time.perf_counter()
    res = sampler.stop()
    res["epochs"] = [{"bytes": total, "epoch_s": t1 - t0, "first_s": 0.0, "cpu_s": cpu_seconds() - c0,
                      "capped": False}]
    return res


def worker(spec: dict, files: dict) -> dict:
    import numpy  # noqa: F401  (imports are not what is measured)

    kind = spec["kind"]
    if kind == "read-pass":
        return worker_read(files, spec.get("chunk", READ_CHUNK))
    if kind == "calibrate":
        return worker_calibrate(spec, files)
    if kind == "overlap" or kind.startswith("torch"):
        import torch

        if kind == "overlap":
            torch.set_num_threads(spec["threads"])
    source = spec.get("source", kind)
    batches, epoch, held = SOURCES[source](spec, files)
    step = None
    if kind == "overlap":
        step = make_step(spec)
        if spec["part"] == "compute":
            import numpy as np

            pre = []
            for batch in epoch(0):
                pre.append(np.array(column(batch, 0)))
                if len(pre) == PRELOADED:
                    break
            if hasattr(held, "close"):
                held.close()
            del held, epoch
            steps = min(batches, spec["cap"] or batches)
            sampler = RssSampler()
            sampler.start()
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            for i in range(steps):
                step(pre[i % len(pre)])
            t1 = time.perf_counter()
            res = sampler.stop()
            res["epochs"] = [{"batches": steps, "rows": 0, "epoch_s": t1 - t0, "first_s": 0.0,
                              "cpu_s": cpu_seconds() - c0, "capped": False}]
            return res
        if spec["part"] == "load":
            step = None
    res = run_epochs(batches, epoch, step, spec.get("cap"), spec.get("epochs", 1),
                     with_children=source.startswith("torch"))
    if hasattr(held, "close"):
        held.close()
    return res


def worker_calibrate(spec: dict, files: dict) -> dict:
    """Loader time per batch (one warm full-shuffle epoch), then the matmul width k whose step takes
    about as long on --compute-threads threads."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    src = dict(spec, order="full")
    batches, epoch, held = SOURCES[spec["source"]](src, files)
    r = run_epochs(batches, epoch, None, spec.get("cap"), 2, with_children=False)
    target = min(e["epoch_s"] / e["batches"] for e in r["epochs"])
    xb = torch.from_numpy(np.random.default_rng(2).standard_normal((spec["batch"], COLS), dtype=np.float32))

    def cost(k: int) -> float:
        w = torch.randn(COLS, k)
        torch.mm(xb, w)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(4):
                torch.mm(xb, w)
            times.append((time.perf_counter() - t0) / 4)
        return statistics.median(times)

    k, tried = 64, {}
    for _ in range(8):  # k proportional to the cost, refined; keep the closest
        tried[k] = cost(k)
        k_new = max(8, int(round(k * target / tried[k] / 8)) * 8)
        if k_new in tried:
            break
        k = k_new
    k = min(tried, key=lambda q: abs(tried[q] - target))
    return {"load_per_batch_s": target, "k": k, "step_s": tried[k]}


# ---------------------------------------------------------------------------------------------
# Setup: the data, once.


def make_files(out: Path, rows: int, mmt_bin: str | None) -> dict:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    files = {"x": out / "x.npy", "y": out / "y.npy", "mmt": out / "train.mmt"}
    stamp = out / f"stamp-{rows}"
    if not (stamp.exists() and files["x"].exists() and files["y"].exists()):
        for f in out.glob("stamp-*"):
            f.unlink()
        x = np.lib.format.open_memmap(files["x"], mode="w+", dtype="<f4", shape=(rows, COLS))
        step = (64 * MIB) // (COLS * 4)
        rng = np.random.default_rng(0)
        for r in range(0, rows, step):
            x[r:r + step] = rng.standard_normal((min(step, rows - r), COLS), dtype=np.float32)
        x.flush()
        del x
        np.save(files["y"], rng.integers(0, 1000, size=rows, dtype=np.int64))
        files["mmt"].unlink(missing_ok=True)
        stamp.touch()
    if not files["mmt"].exists():
        if mmt_bin:
            subprocess.run([mmt_bin, "convert", f"x={files['x']}", f"y={files['y']}", "-o",
                            str(files["mmt"]), "--quiet"], check=True)
        elif have("mmtensor"):
            import mmtensor

            mmtensor.convert([f"x={files['x']}", f"y={files['y']}"], str(files["mmt"]))
    # Freshly written pages read slower than pages read back from disk (docs/BENCHMARKS.md, peers):
    # evict everything once, so that "warm" means "read back", as it will be for a user.
    for f in files.values():
        if f.exists():
            evict(f)
    return {k: str(v) for k, v in files.items() if v.exists()}


def read_once(path: str) -> None:
    buf = bytearray(READ_CHUNK)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def read_ahead_file(path: Path) -> Path | None:
    """The sysfs file holding the read-ahead of the block device `path` lives on, or None."""
    dev = os.stat(path).st_dev
    base = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for q in (base / "queue" / "read_ahead_kb", base / ".." / "queue" / "read_ahead_kb"):
        if q.exists():
            return q.resolve()
    return None


def read_ahead_kb(path: Path) -> int | None:
    q = read_ahead_file(path)
    return int(q.read_text().strip()) if q else None


class ReadAhead:
    """Sets the device's read-ahead to `kb` for the `with` block and restores it after, whatever
    happens inside (benchmark only: needs root; never in tests)."""

    def __init__(self, path: Path, kb: int | None):
        self.file, self.kb, self.old = read_ahead_file(path), kb, None

    def __enter__(self):
        if self.kb is not None:
            if self.file is None:
                raise SystemExit(f"--read-ahead: no block device queue found for {self.file}")
            self.old = self.file.read_text().strip()
            self.file.write_text(str(self.kb))
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            self.file.write_text(self.old)
        return False


# ---------------------------------------------------------------------------------------------
# The parent: which cases, in which order, and the summary.


def label(spec: dict) -> str:
    k = spec["kind"]
    if k == "read-pass":
        return "read-pass" + ("/1m" if spec.get("chunk") == MIB else "")
    if k == "overlap":
        step = "sleep-" if spec["step"] == "sleep" else ""
        return f"overlap/{step}{spec['part']}"
    tail = "".join(f"/{spec[f]}" for f in ("output", "variant") if spec.get(f))
    return f"{k}/{spec['order']}{tail}"


def needs(spec: dict) -> tuple[list[str], list[str]]:
    """(modules, files) a case needs."""
    source = spec.get("source", spec["kind"])
    if spec["kind"] == "read-pass":
        return [], ["mmt"]
    mods = {"mmt-loader": ["mmtensor"], "mmt-take": ["mmtensor"], "numpy-fancy": [],
            "torch-dataloader": ["torch"], "torch-rowdataset": ["torch", "mmtensor"]}[source]
    fls = ["x", "y"] if source in ("numpy-fancy", "torch-dataloader") else ["mmt"]
    if spec["kind"] == "overlap":
        mods = mods + ["torch"]
    return mods, fls


def loader_available() -> bool:
    try:
        import mmtensor

        return hasattr(mmtensor, "Loader")
    except Exception:
        return False


def run_case(spec: dict, files: dict, mode: str, timeout: float) -> dict:
    _, fls = needs(spec)
    for k in fls:
        if mode.startswith("cold"):
            evict(Path(files[k]))
        else:
            read_once(files[k])
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec), "--files", json.dumps(files)]
    env = None
    if spec.get("module_path"):  # a baseline build of mmtensor, found first
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (spec["module_path"], os.environ.get("PYTHONPATH")) if p))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def cases_for(mode: str, args) -> list[dict]:
    base = {"batch": args.batch, "prefetch": args.prefetch, "epochs": args.warm_epochs if mode == "warm" else 1}
    cap = args.cold_cap if mode == "cold" else None
    if mode == "overlap":
        return []
    specs = [{"kind": "read-pass"}, {"kind": "read-pass", "chunk": MIB}]
    orders = ["full", "block", "seq"]
    specs += [dict(base, kind="mmt-loader", order=o, cap=(cap if o == "full" else None)) for o in orders]
    if args.baseline_module:
        specs += [dict(base, kind="mmt-loader", order=o, variant="baseline", module_path=args.baseline_module,
                       cap=(cap if o == "full" else None)) for o in orders]
    specs += [dict(base, kind="mmt-take", order="full", cap=cap),
              dict(base, kind="mmt-take", order="full", variant="out", cap=cap)]
    specs += [dict(base, kind="numpy-fancy", order="full", cap=cap)]
    if mode == "warm":
        specs += [dict(base, kind="numpy-fancy", order="seq", variant="slice", cap=None)]
    if mode == "cold":
        specs += [dict(base, kind="numpy-fancy", order="block", cap=None),
                  dict(base, kind="numpy-fancy", order="full", variant="madv-random", cap=args.random_cap)]
    specs += [dict(base, kind="torch-dataloader", order="full", cap=cap),
              dict(base, kind="torch-rowdataset", order="full", cap=cap)]
    return specs


def overlap_cases(args, k: int, sleep_s: float) -> list[dict]:
    base = {"batch": args.batch, "prefetch": args.prefetch, "kind": "overlap", "source": args.overlap_source,
            "order": "full", "cap": None, "threads": args.compute_threads}
    specs = [dict(base, part=p, step="matmul", k=k) for p in ("compute", "load", "both")]
    specs += [dict(base, part=p, step="sleep", sleep_s=sleep_s) for p in ("compute", "both")]
    return specs


def median_row(runs: list[dict], batch_bytes: int, e: int) -> dict:
    """Medians over the runs of one case, for its epoch number e (0-based)."""
    ok = [r for r in runs if "error" not in r and len(r["epochs"]) > e]
    if not ok:
        return {"error": next((r["error"] for r in runs if "error" in r), "not run")}
    eps = [r["epochs"][e] for r in ok]
    m = {"epoch_s": statistics.median(x["epoch_s"] for x in eps),
         "first_s": statistics.median(x["first_s"] for x in eps),
         "cpu_s": statistics.median(x.get("cpu_s", 0.0) for x in eps),
         "heap_bytes_median": statistics.median(r["heap_bytes"] for r in ok),
         "heap_bytes_max": max(r["heap_bytes"] for r in ok),
         "capped": any(x.get("capped") for x in eps), "runs": len(ok), "errors": len(runs) - len(ok)}
    if "bytes" in eps[0]:  # read-pass: bytes of the file, in batch equivalents
        m["bytes"] = eps[0]["bytes"]
        m["batches"] = eps[0]["bytes"] / batch_bytes
    else:
        m["batches"] = eps[0]["batches"]
        m["bytes"] = eps[0]["rows"] * ROW_BYTES if eps[0]["rows"] else m["batches"] * batch_bytes
    m["batches_per_s"] = statistics.median(x.get("batches", m["batches"]) / x["epoch_s"] for x in eps)
    m["mib_per_s"] = m["batches_per_s"] * (m["bytes"] / m["batches"]) / MIB
    if "workers_heap_bytes" in ok[0]:
        m["workers_heap_bytes_max"] = max(r["workers_heap_bytes"] for r in ok)
    return m


def summarize(results: dict, batch_bytes: int) -> dict:
    rows = {}
    for c, runs in results.items():
        epochs = max((len(r["epochs"]) for r in runs if "error" not in r), default=1)
        for e in range(epochs):
            rows[c if e == 0 else f"{c} #{e + 1}"] = median_row(runs, batch_bytes, e)
    return rows


def rate(run: dict, e: int = 0) -> float:
    """Bytes a second of one run's epoch e."""
    ep = run["epochs"][e]
    return (ep.get("bytes") or ep["rows"] * ROW_BYTES) / ep["epoch_s"]


def targets(summary: dict, raw: dict, batch_bytes: int, prefetch: int) -> list[dict]:
    """Each target as the ratio of the medians, and as the median of the ratios within a round
    (the cases of one round ran minutes apart at most, which matters on a shared machine)."""
    out = []
    warm, ov = (summary["modes"].get(m, {}) for m in ("warm", "overlap"))

    def ok(rows, c):
        return c in rows and "error" not in rows[c]

    def paired(mode, f, *cases):
        runs = [raw.get(mode, {}).get(c, []) for c in cases]
        vals = [f(*rs) for rs in zip(*runs) if all("error" not in r for r in rs)]
        return vals

    def add(name, value, goal, better, detail, pairs=()):
        met = value >= goal if better == "higher" else value <= goal
        if pairs:
            detail += (f"; per round: median {statistics.median(pairs):.2f}, "
                       f"{min(pairs):.2f} to {max(pairs):.2f}")
        out.append({"target": name, "value": value, "goal": goal, "better": better, "met": met,
                    "detail": detail, "per_round": list(pairs)})

    # Warm (issue 21): a full-shuffle epoch in a fresh process >= 1.25x NumPy's fancy-index loop
    # (the contiguous single-core copy), with no more CPU time than it.
    for e, suffix, what in ((0, "", "first epoch in a fresh process"), (1, " #2", "second epoch, same process")):
        base, ours = "numpy-fancy/full" + suffix, "mmt-loader/full" + suffix
        if ok(warm, ours) and ok(warm, base):
            v = warm[ours]["batches_per_s"] / warm[base]["batches_per_s"]
            pr = paired("warm", lambda a, b: rate(a, e) / rate(b, e), "mmt-loader/full", "numpy-fancy/full")
            add(f"warm full shuffle vs numpy-fancy/full, {what}", v, 1.25, "higher", "batches/s ratio", pr)
            if e == 0:
                cpu = warm[ours]["cpu_s"] / warm[base]["cpu_s"]
                add("warm full shuffle: CPU s per epoch vs numpy-fancy/full", cpu, 1.0, "lower",
                    f"cpu ratio ({warm[ours]['cpu_s']:.2f} against {warm[base]['cpu_s']:.2f} s)")
    # Cold, on each read-ahead: the full shuffle against NumPy's default loop and NumPy with
    # MADV_RANDOM; the block shuffle against NumPy's full shuffle and the faster sequential read().
    for mode, rows in summary["modes"].items():
        if not mode.startswith("cold"):
            continue
        ra = summary.get("read_ahead_kb", {}).get(mode)
        tag = f"cold, read_ahead_kb {ra}"

        def vs(ours, base, goal, what):
            if ok(rows, ours) and ok(rows, base):
                v = rows[ours]["mib_per_s"] / rows[base]["mib_per_s"]
                pr = paired(mode, lambda a, b: rate(a) / rate(b), ours, base)
                add(f"{tag}: {ours} vs {what}", v, goal, "higher", "MiB/s ratio", pr)

        vs("mmt-loader/full", "numpy-fancy/full", 1.0, "numpy-fancy/full")
        vs("mmt-loader/full", "numpy-fancy/full/madv-random", 5.0, "numpy-fancy/full/madv-random")
        vs("mmt-loader/block", "numpy-fancy/full", 1.5, "numpy-fancy/full")
        reads = [c for c in ("read-pass", "read-pass/1m") if ok(rows, c)]
        if reads:
            fastest = max(reads, key=lambda c: rows[c]["mib_per_s"])
            vs("mmt-loader/block", fastest, 0.9, f"{fastest} (the faster read())")
    for step in ("", "sleep-"):
        names = (f"overlap/{step}both", f"overlap/{step}compute", "overlap/load")
        both, comp, load = (ov.get(n) for n in names)
        if both and comp and load and all("error" not in r for r in (both, comp, load)):
            v = both["epoch_s"] / max(comp["epoch_s"], load["epoch_s"])

            def f(b, c, lo):
                return b["epochs"][0]["epoch_s"] / max(c["epochs"][0]["epoch_s"], lo["epochs"][0]["epoch_s"])

            goal = 1.05 if step else 1.15
            add(f"overlap ({step or 'matmul-'}step): epoch / max(compute, load)", v, goal, "lower",
                "epoch time ratio", paired("overlap", f, *names))
    # The bound is "about (prefetch + 1) x batch bytes"; the loader documents the epoch's
    # order (8 bytes a row) on top, and a process has some fixed overhead (a thread's stack, Python
    # objects): the goal is the bound plus the order plus 1 MiB, and the detail prints the bare bound.
    bound = (prefetch + 1) * batch_bytes
    goal = bound + summary["rows"] * 8 + MIB
    for mode, rows in summary["modes"].items():
        for c, r in rows.items():
            if c.startswith("mmt-loader") and "#" not in c and "error" not in r:
                add(f"heap, {mode} {c} (max over runs)", r["heap_bytes_max"] / MIB, goal / MIB, "lower",
                    f"RssAnon growth MiB; (prefetch + 1) x batch = {bound / MIB:.1f} MiB, + order + 1 MiB")
    return out


def print_summary(summary: dict) -> None:
    print(f"{summary['rows']:,} rows of 4 KiB float32 + int64 label ({summary['bytes'] / GIB:.2f} GiB), "
          f"batches of {summary['batch']}, prefetch {summary['prefetch']}, {summary['repeats']} rounds, "
          f"medians; cpu s = CPU time of the case's process (all threads, not DataLoader workers); "
          f"heap = RssAnon growth during the epoch, max over rounds; load average at start "
          f"{summary['machine']['loadavg'][0]:.1f}, at end {summary['machine'].get('loadavg_end', [0])[0]:.1f} "
          f"on {summary['machine']['cpus']} CPUs")
    for mode, rows in summary["modes"].items():
        ra = summary.get("read_ahead_kb", {}).get(mode)
        print(f"\n[{mode}]" + (f" read_ahead_kb {ra} on the data's device" if ra is not None else ""))
        print(f"{'case':<28} {'batches':>8} {'epoch s':>9} {'batch/s':>9} {'MiB/s':>8} {'first ms':>9} "
              f"{'cpu s':>6} {'heap MiB':>9}")
        for c, m in rows.items():
            if "error" in m:
                print(f"{c:<28} error: {m['error']}")
                continue
            cap = "*" if m["capped"] else " "
            extra = ""
            if "workers_heap_bytes_max" in m:
                extra = f"  (+ workers {m['workers_heap_bytes_max'] / MIB:.1f} MiB)"
            print(f"{c:<28} {m['batches']:>7.0f}{cap} {m['epoch_s']:>9.3f} {m['batches_per_s']:>9.1f} "
                  f"{m['mib_per_s']:>8.0f} {m['first_s'] * 1e3:>9.1f} {m['cpu_s']:>6.2f} "
                  f"{m['heap_bytes_max'] / MIB:>9.1f}{extra}")
    if summary.get("calibration"):
        c = summary["calibration"]
        print(f"\noverlap step: torch.mm(x_batch, W[1024, {c['k']}]) on {summary['compute_threads']} thread(s), "
              f"{c['step_s'] * 1e3:.2f} ms (loader alone: {c['load_per_batch_s'] * 1e3:.2f} ms per batch); "
              f"sleep step {c['sleep_s'] * 1e3:.2f} ms")
    if any(m.get("capped") for rows in summary["modes"].values() for m in rows.values() if "error" not in m):
        print("* capped: a rate over the first N batches (the batches column), not over a whole epoch")
    if summary["skipped"]:
        print(f"skipped (package or file missing): {', '.join(summary['skipped'])}")
    print("\ntargets:")
    for t in summary["targets"]:
        sign = ">=" if t["better"] == "higher" else "<="
        print(f"  {'MET ' if t['met'] else 'MISS'} {t['target']}: {t['value']:.2f} ({t['detail']}; "
              f"target {sign} {t['goal']:.2f})")


def run_mode_cases(mode, kind, run_mode, args, files, summary, raw, batch_bytes, available, wanted) -> None:
    """Runs the cases of one mode (`cold@128`: the cold cases on a read-ahead of 128 KiB) over
    --repeats rotated rounds, into summary["modes"][mode] and raw[mode]."""
    specs = [s for s in cases_for(kind, args) if wanted(s)]
    summary.setdefault("read_ahead_kb", {})[mode] = read_ahead_kb(args.out)
    if mode == "overlap":
        probe = {"kind": "overlap", "source": args.overlap_source}
        if not available(probe):
            summary["skipped"].append("overlap (needs mmtensor.Loader and torch)")
            return
        cal = {"kind": "calibrate", "source": args.overlap_source, "batch": args.batch, "prefetch": args.prefetch,
               "threads": args.compute_threads, "cap": None}
        c = run_case(cal, files, "warm", args.timeout)
        if "error" in c:
            summary["modes"]["overlap"] = {"calibration": {"error": c["error"]}}
            return
        if args.compute_k:
            c["k"] = args.compute_k
        c["sleep_s"] = c["load_per_batch_s"]
        summary["calibration"] = c
        specs = [s for s in overlap_cases(args, c["k"], c["sleep_s"]) if wanted(s)]
    summary["skipped"] += [f"{mode} {label(s)}" for s in specs if not available(s)]
    specs = [s for s in specs if available(s)]
    results = {label(s): [] for s in specs}
    for r in range(args.repeats):
        order = specs[r % len(specs):] + specs[:r % len(specs)] if specs else []
        for s in order:
            res = run_case(s, files, run_mode, args.timeout)
            results[label(s)].append(res)
            if not args.json:
                state = res.get("error") or " ".join(f"{x['epoch_s']:.3f}" for x in res["epochs"]) + " s"
                print(f"  [{mode} {r + 1}/{args.repeats}] {label(s)}: {state}", file=sys.stderr)
    raw[mode] = results
    summary["modes"][mode] = summarize(results, batch_bytes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("2GiB"), help="bytes of x (default 2GiB)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 2 rounds, cold cap 8")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", default="warm,cold,overlap", help="comma-separated: warm, cold, overlap")
    ap.add_argument("--warm-epochs", type=int, default=2,
                    help="warm: epochs per process; the first includes faulting the mapping in, "
                         "later ones are the steady state (rows marked #2, ...)")
    ap.add_argument("--cold-cap", type=int, default=None,
                    help="cold: stop numpy-fancy/full, torch-dataloader and mmt-loader/full after N batches")
    ap.add_argument("--random-cap", type=int, default=16,
                    help="cold: batches of the diagnostic numpy-fancy/full/madv-random case (default 16)")
    ap.add_argument("--compute-k", type=int, default=None, help="overlap: matmul width (default: calibrated)")
    ap.add_argument("--overlap-source", default="mmt-loader", choices=sorted(SOURCES),
                    help="overlap: what loads the batches (default mmt-loader)")
    ap.add_argument("--compute-threads", type=int, default=1, help="overlap: torch threads for the step")
    ap.add_argument("--only", nargs="*", help="run only these cases (labels as printed)")
    ap.add_argument("--baseline-module", default=None, metavar="DIR",
                    help="also run the mmt-loader cases with the mmtensor module installed in DIR "
                         "(pip install --target DIR an older wheel), labelled .../baseline")
    ap.add_argument("--read-ahead", default=None,
                    help="cold: comma-separated read_ahead_kb values; the cold cases run once per value, "
                         "with the device's read-ahead set to it (root) and restored after, even on failure")
    ap.add_argument("--out", type=Path, default=Path("benches/out/loader"))
    ap.add_argument("--mmt", default=None, help="mmt binary to convert with (default: mmtensor.convert)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per case process")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--clean", action="store_true", help="delete the generated data at the end")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), json.loads(args.files))))
        return
    if args.quick:
        args.size = 64 * MIB
        args.repeats = min(args.repeats, 2)
        args.cold_cap = args.cold_cap or 8
        args.out = args.out.with_name(args.out.name + "-quick")

    rows = max(args.batch, args.size // (COLS * 4))
    files = make_files(args.out, rows, args.mmt)
    batch_bytes = args.batch * ROW_BYTES
    modes = [m for m in args.modes.split(",") if m]
    if args.read_ahead:
        modes = [x for m in modes for x in ([f"cold@{kb}" for kb in args.read_ahead.split(",")] if m == "cold"
                                            else [m])]
    has_loader = loader_available()

    def available(spec):
        mods, fls = needs(spec)
        if spec.get("source", spec["kind"]) == "mmt-loader" and not has_loader:
            return False
        return all(k in files for k in fls) and all(have(m) for m in mods)

    def wanted(spec):
        return not args.only or label(spec) in args.only

    summary = {"rows": rows, "bytes": rows * ROW_BYTES, "batch": args.batch, "prefetch": args.prefetch,
               "repeats": args.repeats, "cold_cap": args.cold_cap, "compute_threads": args.compute_threads,
               "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
               "modes": {}, "skipped": [], "calibration": None}
    raw: dict = {}
    for mode in modes:
        run_mode = "warm" if mode == "overlap" else mode
        kind, _, ra = mode.partition("@")
        with ReadAhead(args.out, int(ra) if ra else None):
            run_mode_cases(mode, kind, run_mode, args, files, summary, raw, batch_bytes, available, wanted)
    summary["machine"]["loadavg_end"] = os.getloadavg()
    summary["machine"]["loadavg_end"] = os.getloadavg()
    summary["targets"] = targets(summary, raw, batch_bytes, args.prefetch)
    summary["raw"] = raw
    args.out.mkdir(parents=True, exist_ok=True)
    # One file per run, so a later (partial) run does not overwrite the figures of a full one.
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args.out / f"results-{stamp}.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    if args.clean:
        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
