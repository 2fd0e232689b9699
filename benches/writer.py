#!/usr/bin/env python3
"""Writing datasets: `mmtensor.DatasetWriter` against `.npy` + convert, MosaicML `MDSWriter`, LitData
`optimize`, and against itself with 4 writers in parallel (`part=i` + `mmtensor.commit`).

Every case writes the same rows: `x` float32 [1024] (4 KiB) and `y` int64, in batches of --batch
(4,096) rows, shards of about 256 MiB. Row r is a fixed random row of a pool of --batch rows
(`default_rng(0)`, made before the timing) with x[0] = r, x[1] = r // batch, and y = r; each batch is
made in place in one reused buffer, the same way in every case (inside the timing, and a few
microseconds a batch), so no case reads a pre-made input from disk.

Cases (each in a fresh Python process; imports and the pool made before the timing):
- `DatasetWriter`: `mmtensor.DatasetWriter(out, columns=..., shard_size="256MiB")`, one `write` a batch;
- `npy + convert`: what a user does without it: each batch into an `np.lib.format.open_memmap` `.npy`
  per column, then `mmtensor.convert(["x=x.npy", "y=y.npy"], out, shard_size="256MiB")` (the same
  Rust code as `mmt convert --shard-size`); the `.npy` files are kept (their writes count);
- `MDSWriter`: `streaming.MDSWriter(columns={"x": "ndarray:float32:1024", "y": "int64"},
  compression=None, size_limit=256 MiB)`, one `write` a sample (its API);
- `litdata.optimize`: `optimize(fn, inputs=batch indices, num_workers=1, chunk_bytes=256 MiB)`, `fn`
  yielding one `{"x": row, "y": int}` a sample;
- `4 parts + commit`: 4 processes (multiprocessing, spawn), each a `DatasetWriter(out, part=i)` of a
  quarter of the batches, then `mmtensor.commit(out, parts=4)`; timed from before the processes
  start (their start and imports included) to `commit`'s return.

For each case and round it records:
- `write`: from the first batch to the API's return (writer finished, `convert`/`optimize`/`commit`
  returned); `durable`: the same plus an fsync of every output file and folder (mmtensor fsyncs its
  shards and manifest itself; MDS and LitData do not). The `.npy` intermediates are not fsynced.
- CPU: user + system seconds of the case's process and its reaped children over the same span;
- disk traffic from /proc/self/io of the case's process, which includes its reaped children (and of
  any child still alive at the end): `write_bytes` (bytes it dirtied in the page cache, i.e. that
  go to the disk, mmap writes included), `read_bytes` (read from the disk), `wchar`/`rchar` (bytes
  through write()/read() calls, page cache or not);
- memory: RssAnon (/proc/PID/status) of every process of the case, sampled every 10 ms by this
  (parent) process. `heap` is the largest growth of one process (the case's process from just
  before its first batch; a worker process from when it starts to write, reported by the worker);
  `all procs` is the peak of the sum over the case's processes less their sum before the first
  batch, so it includes the interpreters of workers started during the write.
- a check after the timing (row count, and rows 0, 1, the middle, the last and 4 random ones
  compared with what was written), so a broken case cannot look fast.

Between cases: `sync`, `posix_fadvise(POSIX_FADV_DONTNEED)` on every file the case produced, then
they are deleted, then `sync` and a 1 s pause. Before the first round of each size, one untimed
DatasetWriter case. Cases alternate in a rotated order every round; medians over rounds.

    .venv/bin/python benches/writer.py --quick          # 256 MiB, 1 round: under a minute
    .venv/bin/python benches/writer.py                  # 256 MiB and 4 GiB, 3 rounds each
    .venv/bin/python benches/writer.py --sizes 1GiB --repeats 5 --only dw npy --json out.json

Outputs go under --dir (default benches/out/writer). A size that would leave less than 4 GiB of the
disk free is shrunk to fit, with a printed warning. Time a release build of the module: the script
prints which extension it imports and warns when it is target/debug's.

The peers are optional (a case whose package is not installed is skipped and named; one that fails
is reported with its error): `.venv/bin/pip install mosaicml-streaming litdata` (benchmarks only;
mosaicml-streaming 0.13 pins numpy<2.2, see docs/BENCHMARKS.md).
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
from peers import GIB, MIB, parse_size  # noqa: E402

COLS = 1024
ROW_BYTES = COLS * 4 + 8
SHARD = 256 * MIB
PARTS = 4
CASES = {
    # name: (label, modules needed)
    "dw": ("DatasetWriter", ["mmtensor"]),
    "npy": ("npy + convert", ["mmtensor"]),
    "mds": ("MDSWriter", ["streaming"]),
    "litdata": ("litdata.optimize", ["litdata"]),
    "parts": (f"{PARTS} parts + commit", ["mmtensor"]),
}
IO_KEYS = ("rchar", "wchar", "read_bytes", "write_bytes", "cancelled_write_bytes")


# ---------------------------------------------------------------------------------------------
# /proc helpers


def proc_status(pid: int, key: str = "RssAnon:") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_io(pid: int | str = "self") -> dict:
    out = dict.fromkeys(IO_KEYS, 0)
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, v = line.split(":")
                if k in out:
                    out[k] = int(v)
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid (children of all its threads, recursively)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def tree_io(before: dict | None = None) -> dict:
    """/proc/self/io (which includes reaped children) plus that of live descendants, per pid."""
    snap = {"self": proc_io()}
    for p in descendants(os.getpid()):
        snap[p] = proc_io(p)
    if before is None:
        return snap
    total = dict.fromkeys(IO_KEYS, 0)
    for p, io in snap.items():
        prev = before.get(p, dict.fromkeys(IO_KEYS, 0))
        for k in IO_KEYS:
            total[k] += io[k] - prev[k]
    return total


def evict_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under path, then every folder (what makes a peer's output durable)."""
    dirs = [path]
    for p in path.rglob("*"):
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# The rows: the same generator in every case and process.


class Rows:
    def __init__(self, rows: int, batch: int):
        import numpy as np

        self.rows, self.batch = rows, batch
        self.nbatches = -(-rows // batch)
        self.pool = np.random.default_rng(0).random((batch, COLS), dtype=np.float32)
        self.x = self.pool.copy()
        self.y = np.empty(batch, dtype=np.int64)

    def make(self, k: int):
        """Batch k, in the reused buffers: rows [k * batch, ...)."""
        import numpy as np

        a = k * self.batch
        n = min(self.batch, self.rows - a)
        x, y = self.x[:n], self.y[:n]
        x[:, 0] = np.arange(a, a + n, dtype=np.float32)
        x[:, 1] = k
        y[:] = np.arange(a, a + n, dtype=np.int64)
        return x, y

    def expected(self, r: int):
        row = self.pool[r % self.batch].copy()
        row[0] = r
        row[1] = r // self.batch
        return row, r

    def check_indices(self) -> list[int]:
        import numpy as np

        n = self.rows
        rnd = np.random.default_rng(123).integers(0, n, 4).tolist()
        return sorted(set([0, min(1, n - 1), n // 2, n - 1] + rnd))


PHASES: dict = {}  # a case's own split of its time, reported with its result


def register_baseline(ctl: str) -> None:
    """A worker process tells the parent its RssAnon just before it starts writing."""
    Path(ctl, f"base-{os.getpid()}").write_text(str(proc_status(os.getpid())))


# ---------------------------------------------------------------------------------------------
# Cases: each runs in the case process; returns the paths that hold its output.


def case_dw(rows: Rows, out: Path, ctl: str) -> list[Path]:
    import mmtensor

    ds = out / "ds"
    with mmtensor.DatasetWriter(str(ds), columns={"x": ("f32", (COLS,)), "y": ("i64", ())},
                                shard_size=SHARD) as w:
        for k in range(rows.nbatches):
            x, y = rows.make(k)
            w.write({"x": x, "y": y})
    return [ds]


def case_npy(rows: Rows, out: Path, ctl: str) -> list[Path]:
    import numpy as np
    import mmtensor

    xp, yp, ds = out / "x.npy", out / "y.npy", out / "ds"
    xm = np.lib.format.open_memmap(xp, mode="w+", dtype=np.float32, shape=(rows.rows, COLS))
    ym = np.lib.format.open_memmap(yp, mode="w+", dtype=np.int64, shape=(rows.rows,))
    for k in range(rows.nbatches):
        x, y = rows.make(k)
        a = k * rows.batch
        xm[a:a + len(x)] = x
        ym[a:a + len(y)] = y
    del xm, ym  # what a user does: no msync; the pages are dirty in the page cache
    t = time.perf_counter()
    mmtensor.convert([f"x={xp}", f"y={yp}"], str(ds), shard_size=SHARD)
    PHASES["convert_s"] = time.perf_counter() - t
    return [ds]


def case_mds(rows: Rows, out: Path, ctl: str) -> list[Path]:
    from streaming import MDSWriter

    ds = out / "mds"
    with MDSWriter(out=str(ds), columns={"x": f"ndarray:float32:{COLS}", "y": "int64"},
                   compression=None, size_limit=SHARD, progress_bar=False) as w:
        for k in range(rows.nbatches):
            x, y = rows.make(k)
            for i in range(len(x)):
                w.write({"x": x[i], "y": int(y[i])})
    return [ds]


_LIT: dict = {}


def _lit_fn(k: int):
    """LitData's fn: one input (a batch index), one sample yielded per row."""
    if "rows" not in _LIT:
        _LIT["rows"] = Rows(int(os.environ["WB_ROWS"]), int(os.environ["WB_BATCH"]))
        register_baseline(os.environ["WB_CTL"])
    x, y = _LIT["rows"].make(k)
    for i in range(len(x)):
        yield {"x": x[i], "y": int(y[i])}


def case_litdata(rows: Rows, out: Path, ctl: str) -> list[Path]:
    import litdata

    ds = out / "lit"
    os.environ.update(WB_ROWS=str(rows.rows), WB_BATCH=str(rows.batch), WB_CTL=ctl)
    litdata.optimize(fn=_lit_fn, inputs=list(range(rows.nbatches)), output_dir=str(ds),
                     num_workers=1, chunk_bytes=SHARD, verbose=False)
    return [ds]


def _part_worker(ds: str, part: int, nrows: int, batch: int, lo: int, hi: int, ctl: str) -> None:
    import mmtensor

    rows = Rows(nrows, batch)
    register_baseline(ctl)
    t0 = time.perf_counter()
    with mmtensor.DatasetWriter(ds, columns={"x": ("f32", (COLS,)), "y": ("i64", ())},
                                shard_size=SHARD, part=part) as w:
        for k in range(lo, hi):
            x, y = rows.make(k)
            w.write({"x": x, "y": y})
    Path(ctl, f"part-{part}.json").write_text(json.dumps({"start": t0, "end": time.perf_counter()}))


def case_parts(rows: Rows, out: Path, ctl: str) -> list[Path]:
    import multiprocessing as mp
    import mmtensor

    ds = out / "ds"
    ctx = mp.get_context("spawn")
    nb = rows.nbatches
    procs = [ctx.Process(target=_part_worker, args=(str(ds), i, rows.rows, rows.batch,
                                                    i * nb // PARTS, (i + 1) * nb // PARTS, ctl))
             for i in range(PARTS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"part writer exited with {p.exitcode}")
    mmtensor.commit(str(ds), parts=PARTS)
    return [ds]


RUN = {"dw": case_dw, "npy": case_npy, "mds": case_mds, "litdata": case_litdata, "parts": case_parts}


# ---------------------------------------------------------------------------------------------
# Checks, after the timing: the row count and a few rows.


def read_back(case: str, path: Path, idx: list[int]):
    import numpy as np

    if case in ("dw", "npy", "parts"):
        import mmtensor
        ds = mmtensor.open_dataset(str(path))
        return ds.num_rows, ds.take("x", idx), ds.take("y", idx), ds.num_shards
    if case == "mds":
        from streaming.base.format import reader_from_json
        index = json.loads((path / "index.json").read_text())
        shards = [reader_from_json(str(path), None, s) for s in index["shards"]]
        starts = np.cumsum([0] + [s.samples for s in shards])
        xs, ys = [], []
        for r in idx:
            i = int(np.searchsorted(starts, r, side="right")) - 1
            item = shards[i].get_item(r - int(starts[i]))
            xs.append(item["x"])
            ys.append(item["y"])
        return int(starts[-1]), np.stack(xs), np.array(ys), len(shards)
    if case == "litdata":
        import litdata
        ds = litdata.StreamingDataset(str(path))
        items = [ds[r] for r in idx]
        nshards = len(list(path.glob("*.bin")))
        return len(ds), np.stack([np.asarray(it["x"]) for it in items]), \
            np.array([int(it["y"]) for it in items]), nshards
    raise ValueError(case)


def check(case: str, rows: Rows, path: Path) -> dict:
    import numpy as np

    idx = rows.check_indices()
    n, xs, ys, nshards = read_back(case, path, idx)
    if n != rows.rows:
        raise AssertionError(f"{case}: {n} rows, expected {rows.rows}")
    for j, r in enumerate(idx):
        ex, ey = rows.expected(r)
        if not np.array_equal(np.asarray(xs[j], dtype=np.float32), ex) or int(ys[j]) != ey:
            raise AssertionError(f"{case}: row {r} differs from what was written")
    return {"rows": n, "checked": len(idx), "shards": nshards}


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def case_main(case: str, nrows: int, batch: int, out: Path, ctl: str) -> None:
    """The case process: set up, tell the parent, wait for it, write, measure, check."""
    import numpy as np  # noqa: F401

    for m in CASES[case][1]:
        __import__(m)
    if case == "mds":
        import streaming.base.format  # noqa: F401
    rows = Rows(nrows, batch)
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    sys.stdin.readline()  # the parent has read our baseline RssAnon
    io0 = tree_io()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    paths = RUN[case](rows, out, ctl)
    t1 = time.perf_counter()
    for p in paths:
        fsync_tree(p)
    t2 = time.perf_counter()
    io = tree_io(io0)
    cpu = cpu_seconds() - cpu0
    res = {"write_s": t1 - t0, "durable_s": t2 - t0, "cpu_s": cpu, "io": io, **PHASES}
    parts = sorted(Path(ctl).glob("part-*.json"))
    if parts:
        times = [json.loads(p.read_text()) for p in parts]
        res["parts_start_s"] = max(t["start"] for t in times) - t0  # spawn + imports of the slowest
        res["parts_write_s"] = max(t["end"] for t in times) - min(t["start"] for t in times)
    res["check"] = check(case, rows, paths[0])
    res["out_bytes"] = sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())
    print(json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: runs one case process, samples its memory, cleans up.


class Sampler:
    def __init__(self, root: int):
        self.root = root
        self.peak: dict[int, int] = {}
        self.base_sum = 0
        self.peak_sum = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        pids = [self.root] + descendants(self.root)
        self.base = {p: proc_status(p) for p in pids}
        self.base_sum = sum(self.base.values())
        self.peak_sum = self.base_sum
        self.peak = dict(self.base)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            total = 0
            for p in [self.root] + descendants(self.root):
                v = proc_status(p)
                total += v
                if v > self.peak.get(p, 0):
                    self.peak[p] = v
            self.peak_sum = max(self.peak_sum, total)
            time.sleep(0.01)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def run_case(case: str, nrows: int, batch: int, workdir: Path) -> dict:
    out = workdir / case
    ctl = workdir / f"ctl-{case}"
    for p in (out, ctl):
        shutil.rmtree(p, ignore_errors=True)
    ctl.mkdir(parents=True)
    errf = open(workdir / f"{case}.stderr", "w+")
    cmd = [sys.executable, __file__, "--case", case, "--rows", str(nrows), "--batch", str(batch),
           "--dir", str(out), "--ctl", str(ctl)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, text=True)
    sampler = Sampler(proc.pid)
    res: dict = {}
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the case process died before it was ready")
        sampler.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        sampler.stop()
        proc.wait()
        if proc.returncode != 0 or not line:
            raise RuntimeError(f"exit code {proc.returncode}")
        res = json.loads(line)
    except Exception as e:  # a failed case is reported, never timed
        sampler.stop() if sampler.thread.is_alive() else None
        proc.kill()
        proc.wait()
        errf.seek(0)
        tail = [ln for ln in errf.read().strip().splitlines() if ln.strip()][-3:]
        res = {"error": f"{e}: {' | '.join(tail)}"}
    errf.close()
    if "error" not in res:
        Path(errf.name).unlink()  # kept only to explain a failed case
    # Memory: per process growth (workers from the baseline they reported), and the tree's sum.
    growth = {}
    for p, peak in sampler.peak.items():
        if p in sampler.base:
            growth[p] = peak - sampler.base[p]
        elif (ctl / f"base-{p}").exists():
            growth[p] = peak - int((ctl / f"base-{p}").read_text())
    res["heap_growth"] = max(growth.values(), default=0)
    res["tree_growth"] = sampler.peak_sum - sampler.base_sum
    res["nprocs"] = len(sampler.peak)
    # Between cases: nothing dirty left, nothing of this case in the page cache.
    os.sync()
    if out.exists():
        evict_tree(out)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(ctl, ignore_errors=True)
    os.sync()
    time.sleep(1)  # the virtual disk has a cache of its own: let it settle too
    return res


def have(module: str) -> bool:
    """Installed? (Not imported here: a package that is installed but fails to import is reported by
    its case, with the error.)"""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def module_build() -> str:
    """Which mmtensor extension the cases import, and whether it is this tree's debug build (what
    `maturin develop` without --release installs): its timings are not representative."""
    import importlib.util

    spec = importlib.util.find_spec("mmtensor._mmtensor")
    if spec is None or not spec.origin:
        return "mmtensor: not found"
    so = Path(spec.origin)
    st = so.stat()
    root = Path(__file__).resolve().parent.parent
    kind = "not a build found in target/"
    for profile in ("debug", "release"):
        built = root / "target" / profile / "lib_mmtensor.so"
        if built.exists() and built.stat().st_size == st.st_size and built.read_bytes() == so.read_bytes():
            kind = f"the {profile} build in target/{profile}"
    if kind.startswith("the debug"):
        kind += " (WARNING: not optimized; build with `maturin develop --release` before timing it)"
    return f"mmtensor: {so} ({st.st_size / MIB:.0f} MiB, {kind})"


def fmt_bytes(b: float) -> str:
    if abs(b) >= GIB:
        return f"{b / GIB:.2f} GiB"
    return f"{b / MIB:.1f} MiB"


def report(size_label: str, nrows: int, cases: list[str], results: dict, repeats: int) -> dict:
    input_bytes = nrows * ROW_BYTES
    print(f"\n{size_label}: {nrows:,} rows, {input_bytes / GIB:.3f} GiB of rows, {repeats} round(s), medians")
    hdr = (f"{'case':<20} {'write':>8} {'durable':>8} {'x DW':>6} {'MB/s':>6} {'CPU':>7} {'write_bytes':>11} {'x DW':>5} "
           f"{'read_bytes':>10} {'wchar':>10} {'rchar':>10} {'heap':>10} {'all procs':>10}")
    print(hdr)
    summary = {}
    base = [r for r in results.get("dw", []) if "error" not in r]
    for c in cases:
        ok = [r for r in results[c] if "error" not in r]
        if not ok:
            err = results[c][0]["error"] if results[c] else "not run"
            print(f"{CASES[c][0]:<20} error: {err}")
            summary[c] = {"error": err}
            continue
        med = lambda key: statistics.median(r[key] for r in ok)  # noqa: E731
        medio = lambda key: statistics.median(r["io"][key] for r in ok)  # noqa: E731
        s = {"write_s": med("write_s"), "durable_s": med("durable_s"), "cpu_s": med("cpu_s"),
             "io": {k: medio(k) for k in IO_KEYS},
             "heap_growth": max(r["heap_growth"] for r in ok), "tree_growth": max(r["tree_growth"] for r in ok),
             "check": ok[0]["check"], "out_bytes": ok[0]["out_bytes"], "rounds": len(ok),
             "durable_all": [r["durable_s"] for r in ok]}
        if "convert_s" in ok[0]:
            s["convert_s"] = med("convert_s")
        if "parts_start_s" in ok[0]:
            s["parts_start_s"] = med("parts_start_s")
            s["parts_write_s"] = med("parts_write_s")
        if base:
            bd = statistics.median(r["durable_s"] for r in base)
            bw = statistics.median(r["io"]["write_bytes"] for r in base)
            s["ratio_durable"] = s["durable_s"] / bd
            s["ratio_write"] = s["write_s"] / statistics.median(r["write_s"] for r in base)
            s["ratio_write_bytes"] = s["io"]["write_bytes"] / bw if bw else float("nan")
            # Per round (same round, adjacent in time): a check on the ratio of medians.
            per = [r["durable_s"] / b["durable_s"] for r, b in zip(results[c], results["dw"])
                   if "error" not in r and "error" not in b]
            s["ratio_durable_rounds"] = statistics.median(per) if per else None
        summary[c] = s
        print(f"{CASES[c][0]:<20} {s['write_s']:>7.2f}s {s['durable_s']:>7.2f}s "
              f"{s.get('ratio_durable', float('nan')):>5.2f}x {input_bytes / s['durable_s'] / 1e6:>6.0f} "
              f"{s['cpu_s']:>6.2f}s "
              f"{fmt_bytes(s['io']['write_bytes']):>11} {s.get('ratio_write_bytes', float('nan')):>4.2f}x "
              f"{fmt_bytes(s['io']['read_bytes']):>10} {fmt_bytes(s['io']['wchar']):>10} "
              f"{fmt_bytes(s['io']['rchar']):>10} {fmt_bytes(s['heap_growth']):>10} "
              f"{fmt_bytes(s['tree_growth']):>10}")
    for c in cases:
        s = summary[c]
        if "error" in s:
            continue
        extra = f"; the {PARTS} writers started after {s['parts_start_s']:.2f}s and wrote for " \
                f"{s['parts_write_s']:.2f}s" if "parts_start_s" in s else ""
        if "convert_s" in s:
            extra = f"; of which convert {s['convert_s']:.2f}s (the .npy writes the rest)"
        print(f"  {CASES[c][0]}: durable per round {', '.join(f'{t:.2f}' for t in s['durable_all'])} s; "
              f"median of per-round ratios to DW {s.get('ratio_durable_rounds') or float('nan'):.2f}x; "
              f"write (API returns) {s.get('ratio_write', float('nan')):.2f}x DW; "
              f"{s['check']['shards']} shards, {fmt_bytes(s['out_bytes'])} on disk{extra}")
    return {"rows": nrows, "input_bytes": input_bytes, "repeats": repeats, "cases": summary}


def machine() -> str:
    def first(path: str, default: str = "?") -> str:
        try:
            return Path(path).read_text().split("\n")[0].strip()
        except OSError:
            return default

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    dirty = f"vm.dirty_background_ratio {first('/proc/sys/vm/dirty_background_ratio')}, " \
            f"vm.dirty_ratio {first('/proc/sys/vm/dirty_ratio')}"
    return f"machine: {os.cpu_count()} CPUs, {ram:.1f} GiB RAM, kernel {os.uname().release}, {dirty}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB, 1 round (under a minute)")
    ap.add_argument("--sizes", nargs="*", type=parse_size, help="sizes of rows to write (default 256MiB 4GiB)")
    ap.add_argument("--repeats", type=int, help="rounds per size (default 3; 1 with --quick)")
    ap.add_argument("--batch", type=int, default=4096, help="rows a batch")
    ap.add_argument("--dir", type=Path, default=Path("benches/out/writer"))
    ap.add_argument("--only", nargs="*", choices=list(CASES), help="run only these cases")
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ctl", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.case:
        case_main(args.case, args.rows, args.batch, args.dir, args.ctl)
        return

    sizes = args.sizes or ([256 * MIB] if args.quick else [256 * MIB, 4 * GIB])
    repeats = args.repeats or (1 if args.quick else 3)
    wanted = args.only or list(CASES)
    cases = [c for c in wanted if all(have(m) for m in CASES[c][1])]
    skipped = [c for c in wanted if c not in cases]
    for c in skipped:
        print(f"skipped {CASES[c][0]}: cannot import {', '.join(CASES[c][1])} "
              f"(pip install mosaicml-streaming litdata)")
    if "dw" not in cases:
        raise SystemExit("the DatasetWriter case is the baseline: it must run")

    args.dir.mkdir(parents=True, exist_ok=True)
    # The largest case on disk at once: npy + convert holds the .npy files and the dataset. The disk
    # may be shared: leave 4 GiB free for everyone else.
    free, keep = shutil.disk_usage(args.dir).free, 4 * GIB
    fitted = []
    for size in sizes:
        fit = min(size, int((free - keep) / 2.2))
        if fit < size:
            print(f"WARNING: {free / GIB:.1f} GiB free under {args.dir}: {fmt_bytes(size)} needs about "
                  f"{fmt_bytes(2.2 * size + keep)} (leaving {fmt_bytes(keep)} free); writing "
                  f"{fmt_bytes(max(fit, 0))} instead")
        if fit < 16 * MIB:
            raise SystemExit("not enough free disk space")
        fitted.append(fit)

    print(module_build())
    print(f"{machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"cases: {', '.join(CASES[c][0] for c in cases)}")
    out = {"machine": machine(), "module": module_build(), "sizes": [], "skipped": skipped}
    for size in fitted:
        nrows = size // ROW_BYTES
        results: dict = {c: [] for c in cases}
        # Untimed: one write of the same size first, so that the first timed case does not pay alone
        # for the kernel freeing memory for the page cache (up to 5x on a 256 MiB case here).
        warm = run_case("dw", nrows, args.batch, args.dir)
        if "error" in warm:
            raise SystemExit(f"DatasetWriter failed: {warm['error']}")
        for r in range(repeats):
            order = cases[r % len(cases):] + cases[:r % len(cases)]
            for c in order:
                t = time.perf_counter()
                load = os.getloadavg()[0]
                res = run_case(c, nrows, args.batch, args.dir)
                res["load"] = load
                results[c].append(res)
                status = res.get("error") or f"durable {res['durable_s']:.2f}s"
                print(f"  [{fmt_bytes(size)} round {r + 1}] {CASES[c][0]}: {status} "
                      f"(case wall {time.perf_counter() - t:.1f}s, load average {load:.1f})", flush=True)
        summary = report(fmt_bytes(size), nrows, cases, results, repeats)
        summary["raw"] = results
        out["sizes"].append(summary)
    print("\nratios: time / DatasetWriter's (below 1: faster than it); write_bytes / DatasetWriter's; "
          "heap = largest RssAnon growth of one process; all procs = growth of their sum")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
