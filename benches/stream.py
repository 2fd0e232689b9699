#!/usr/bin/env python3
"""Streaming from object storage (issue 20): a dataset bigger than its cache, read over S3 by
mmtensor, MosaicML streaming and LitData, against a plain parallel download of the same bytes.

Data: rows of `x`, float32 [1024] (4 KiB), and `y`, int64, the row's index (so every case can count
the rows it saw); N = --gib GiB // 4104 bytes, rounded down to a multiple of 12 (so that 4 and 3
ranks split it without padding). Row block k (16,384 rows) of `x` is `default_rng([0, k]).random`,
so the three writers make the same rows without holding them. Written once under --out (default
benches/out/stream/data-<gib>), outside any timing:

- `mmt/`: `mmtensor.DatasetWriter(columns={"x": ("float32", (1024,)), "y": ("int64", ())},
  shard_size="64MiB")`, a block at a time: shards of 64 MiB of data;
- `mds/`: `streaming.MDSWriter(columns={"x": "ndarray:float32:1024", "y": "int64"},
  size_limit=64 MiB)`, a row at a time (MosaicML's own way);
- `litdata/`: `litdata.optimize(fn, inputs=block ids, chunk_bytes=64 MiB, num_workers=2)`, `fn`
  yielding `{"x": row, "y": label}` per row.

Server: `moto_server` on 127.0.0.1 (a free port), started by the script, one per system and round:
start it, upload that system's folder under s3://bench/<system>/ (boto3 put_object, 4 at once), run
that system's cases, stop it (moto holds what it stores in memory and temp files; only one copy at
a time). The environment the cases see: AWS_ENDPOINT_URL (boto3/botocore, mmtensor, LitData's
boto3 client and obstore), S3_ENDPOINT_URL (MosaicML streaming), AWS_ALLOW_HTTP=true (mmtensor's
and obstore's HTTP clients), AWS_REGION=us-east-1, AWS_ACCESS_KEY_ID/SECRET=testing.
`--keep-server` uploads all three once to one server that stays up for the whole run (needs memory
for three copies; faster for small --gib).

Cases (each in its own fresh Python process, imports outside the timing, a fresh empty cache folder
deleted afterwards; every timing starts just before the dataset object is made; batches of 1,024):

- `boto3`: the baseline. Every object of `mmt/` fetched with whole GETs, 8 in flight (a
  ThreadPoolExecutor of 8, `get_object` body read in 8 MiB pieces into a file in a fresh folder):
  bytes/s of a plain parallel download of the same bytes;
- `boto3/ranged`: the same objects as ranged GETs of 8 MiB, 8 in flight, each written at its
  offset (os.pwrite) into its file: what a ranged fetcher can get from this server (moto serves a
  ranged GET more slowly than a whole one), for information;
- `mmt/fetch-all`: `open_dataset(url, cache=DIR, cache_size="5GiB")` (every shard fetched before it
  returns) then `Loader(ds, 1024, shuffle="block", seed=0)`: first batch = the fetch-all time; the
  epoch is run to the end too;
- `mmt/stream`: `open_dataset(url, cache=DIR, cache_size="1GiB", stream=True)` and the same Loader:
  first batch, then the whole first epoch. Reported "not available" while `stream=True` is refused;
- `mosaic/w0`, `mosaic/w2`: `StreamingDataset(remote=url, local=DIR, cache_limit=2**30,
  shuffle=True, shuffle_seed=0, batch_size=1024)` in `torch.utils.data.DataLoader(batch_size=1024,
  num_workers=0 or 2)` (default collate), as MosaicML's docs use it; all other settings default
  (predownload 8 * batch_size samples, shuffle py1e);
- `litdata/w0`, `litdata/w2`: `StreamingDataset(url, cache_dir=DIR, max_cache_size=2**30,
  shuffle=True, seed=0)` in `StreamingDataLoader(batch_size=1024, num_workers=0 or 2)`. LitData
  fetches chunks with obstore, whose client options it fixes without `allow_http`: against an
  http:// endpoint every GET fails ("BadScheme"), so the case adds `allow_http` to those options
  (what it does against https S3 is unchanged);
- `mmt/elastic`: not timed. 4 ranks (`Loader(ds, 1024, columns=["y"], shuffle="block", seed=0,
  rank=r, world_size=4)`, in lock step in one process) take k = a third of their batches each and
  save `state_dict()`; 3 new ranks (world_size=3, the dataset opened again) each
  `load_state_dict(<rank 0's state>)` and run to the end of the epoch. Every row must come exactly
  once (missing rows: none; repeated rows: at most the padding of the two splits, fewer than 4 + 3).
  Over the stream (`stream=True`, 1 GiB cache) when it exists, else over the local `mmt/` folder (the
  report says which); "not available" while load_state_dict refuses another world size.

Every timed case records: first batch (s, from before the dataset object), epoch (s, to the last
batch), rows and distinct rows seen (every row once?), bytes/s (the system's stored bytes / epoch
time), CPU s (the case's process, and its DataLoader workers), and the cache folder's allocated size
(sum of st_blocks * 512 over its files, os.scandir) sampled by a thread every 100 ms: max and
whether it ever exceeded the cap. The cases are rotated by round over --repeats rounds (systems
rotated, and the cases inside a system); medians are reported with the ratios the issue sets
goals for: streaming first batch < 2 s and < 1/20 of fetch-all; streaming epoch bytes/s >= 0.8x
boto3's; cache max <= 1 GiB; streaming first batch and epoch faster than every peer case.

    python benches/stream.py                               # 4 GiB, 3 rounds, every case
    python benches/stream.py --gib 0.25 --repeats 1        # a quick check
    python benches/stream.py --cases boto3,mmt/stream,mmt/elastic --keep-server

A case still running after --timeout seconds (default 1800) is stopped and reported with how far
it got (batches, batches/s, first batch, cache max so far).

Results: a table on stdout and --out/results.json (benches/out/stream/results.json; every run's
raw numbers included). Needs numpy, boto3, moto[server] (moto_server beside this interpreter or on
PATH), mmtensor (the release build: PYTHONPATH=benches/out/mmtensor-release), torch,
mosaicml-streaming and litdata; a case whose package is missing is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import GIB, MIB, have  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLS = 1024
ROW_BYTES = COLS * 4 + 8
GEN_ROWS = 16384  # rows per generated block (64 MiB of x)
SEED = 0
BATCH = 1024
SHARD = 64 * MIB
CACHE_CAP = GIB  # the streaming cases' cache limit: 1 GiB for every system
FETCH_ALL_CACHE = "5GiB"
CONCURRENCY = 8
SAMPLE_S = 0.1
BUCKET = "bench"
SYSTEMS = {"mmtensor": ["boto3", "boto3/ranged", "mmt/fetch-all", "mmt/stream", "mmt/stream-64",
                        "mmt/elastic"],
           "mosaic": ["mosaic/w0", "mosaic/w2"],
           "litdata": ["litdata/w0", "litdata/w2"]}
FOLDER = {"mmtensor": "mmt", "mosaic": "mds", "litdata": "litdata"}
ALL_CASES = [c for cs in SYSTEMS.values() for c in cs]


class NotAvailable(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Data: the same rows for the three systems.


def num_rows(gib: float) -> int:
    n = int(gib * GIB) // ROW_BYTES
    return n - n % 12


def block(k: int, n: int):
    """Rows [k * GEN_ROWS, ...) : (x float32 [rows, 1024], y int64 row ids)."""
    import numpy as np

    a, b = k * GEN_ROWS, min(n, (k + 1) * GEN_ROWS)
    x = np.random.default_rng([SEED, k]).random((b - a, COLS), dtype=np.float32)
    return x, np.arange(a, b, dtype=np.int64)


def blocks(n: int) -> int:
    return -(-n // GEN_ROWS)


def build_mmt(dst: Path, n: int) -> dict:
    import mmtensor

    t = time.perf_counter()
    with mmtensor.DatasetWriter(str(dst), columns={"x": ("float32", (COLS,)), "y": ("int64", ())},
                                shard_size=SHARD) as w:
        for k in range(blocks(n)):
            x, y = block(k, n)
            w.write({"x": x, "y": y})
    return {"seconds": time.perf_counter() - t}


def build_mds(dst: Path, n: int) -> dict:
    from streaming import MDSWriter

    t = time.perf_counter()
    with MDSWriter(out=str(dst), columns={"x": f"ndarray:float32:{COLS}", "y": "int64"}, size_limit=SHARD,
                   progress_bar=False) as w:
        for k in range(blocks(n)):
            x, y = block(k, n)
            for i in range(len(y)):
                w.write({"x": x[i], "y": y[i]})
    return {"seconds": time.perf_counter() - t}


def litdata_rows(k: int, n: int):
    x, y = block(k, n)
    for i in range(len(y)):
        yield {"x": x[i], "y": int(y[i])}


def litdata_env(root: Path) -> None:
    """Keeps LitData's own caches under --out (nothing in ~/.lightning or /cache)."""
    os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(root / "litdata-tmp" / "chunks"))
    os.environ.setdefault("DATA_OPTIMIZER_DATA_CACHE_FOLDER", str(root / "litdata-tmp" / "data"))
    os.environ.setdefault("LITDATA_CACHE_DIR", str(root / "litdata-tmp" / "read"))


def build_litdata(dst: Path, n: int) -> dict:
    from functools import partial

    from litdata import optimize

    litdata_env(dst.parent)
    t = time.perf_counter()
    optimize(fn=partial(litdata_rows, n=n), inputs=list(range(blocks(n))), output_dir=str(dst),
             chunk_bytes=SHARD, num_workers=min(2, os.cpu_count() or 1), mode="overwrite", verbose=False)
    shutil.rmtree(dst.parent / "litdata-tmp", ignore_errors=True)
    return {"seconds": time.perf_counter() - t}


BUILDERS = {"mmtensor": build_mmt, "mosaic": build_mds, "litdata": build_litdata}
NEEDS = {"mmtensor": ["mmtensor"], "mosaic": ["streaming", "torch"], "litdata": ["litdata", "torch"]}


def folder_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


# ---------------------------------------------------------------------------------------------
# Measuring inside a case process.


def allocated(path: str) -> int:
    """Bytes allocated on disk under `path` (st_blocks * 512 over every file, recursively)."""
    total = 0
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        total += allocated(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_blocks * 512
                except OSError:  # a file renamed or evicted while we look
                    pass
    except OSError:
        pass
    return total


class CacheSampler:
    """The cache folder's allocated size every SAMPLE_S seconds on a thread: max and count."""

    def __init__(self, path: str):
        self.path = path
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, allocated(self.path))
        self.samples += 1

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def start(self) -> "CacheSampler":
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        return {"cache_max_bytes": self.peak, "cache_samples": self.samples}


def cpu_seconds() -> tuple[float, float]:
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def run_epoch(make, cache: str, progress: str | None = None) -> dict:
    """`make()` builds the dataset and returns an iterable of batches ({"x", "y"}) and what to keep
    alive; timed from before make() to the last batch. `progress`: a file rewritten every 20
    batches, so that a case cut off by --timeout still says how far it got."""
    import numpy as np

    sampler = CacheSampler(cache).start()
    c0, w0 = cpu_seconds()
    t0 = time.perf_counter()
    it, held = make()
    t_made = time.perf_counter()
    first = None
    ys = []
    batches = 0
    for batch in it:
        if first is None:
            first = time.perf_counter()
        x, y = batch["x"], batch["y"]
        if x.shape[1:] != (COLS,) or y.shape != x.shape[:1]:
            raise RuntimeError(f"unexpected batch shapes {tuple(x.shape)} / {tuple(y.shape)}")
        ys.append(np.asarray(y))
        batches += 1
        if progress and batches % 20 == 0:
            tmp = progress + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"batches": batches, "elapsed_s": time.perf_counter() - t0, "first_s": first - t0,
                           "cache_max_bytes": sampler.peak}, f)
            os.replace(tmp, progress)
    t_end = time.perf_counter()
    c1, _ = cpu_seconds()
    res = sampler.stop()
    if hasattr(it, "close"):
        it.close()
    del it, held
    import gc

    gc.collect()
    _, w1 = cpu_seconds()
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    res.update({"open_s": t_made - t0, "first_s": (first or t_end) - t0, "epoch_s": t_end - t0,
                "batches": batches, "rows": int(len(y)), "distinct_rows": int(len(np.unique(y))),
                "cpu_s": c1 - c0, "workers_cpu_s": w1 - w0})
    return res


def endpoint() -> str:
    return os.environ["AWS_ENDPOINT_URL"]


def s3_client(pool: int = 10):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint(), region_name="us-east-1",
                        config=Config(max_pool_connections=pool))


def list_objects(s3, prefix: str) -> list:
    """(key, size) of every object under `prefix` in the bench bucket."""
    objs = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        objs += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    return objs


# ---------------------------------------------------------------------------------------------
# The cases.


def case_boto3(spec: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    dest = Path(spec["cache"])
    sampler = CacheSampler(str(dest)).start()
    c0, _ = cpu_seconds()
    t0 = time.perf_counter()
    s3 = s3_client(CONCURRENCY + 2)
    keys = [key for key, _ in list_objects(s3, spec["prefix"])]

    def one(key: str) -> int:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
        n = 0
        with open(dest / key.replace("/", "_"), "wb") as f:
            while True:
                piece = body.read(8 * MIB)
                if not piece:
                    break
                f.write(piece)
                n += len(piece)
        return n

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        total = sum(pool.map(one, keys))
    t1 = time.perf_counter()
    c1, _ = cpu_seconds()
    res = sampler.stop()
    res.update({"first_s": t1 - t0, "epoch_s": t1 - t0, "bytes": total, "objects": len(keys), "cpu_s": c1 - c0,
                "workers_cpu_s": 0.0})
    return res


def case_boto3_ranged(spec: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    dest = Path(spec["cache"])
    sampler = CacheSampler(str(dest)).start()
    c0, _ = cpu_seconds()
    t0 = time.perf_counter()
    s3 = s3_client(CONCURRENCY + 2)
    objs = list_objects(s3, spec["prefix"])
    fds = {}
    tasks = []
    for key, size in objs:
        fds[key] = os.open(dest / key.replace("/", "_"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        tasks += [(key, a, min(size, a + 8 * MIB)) for a in range(0, size, 8 * MIB)]

    def one(task) -> int:
        key, a, b = task
        body = s3.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={a}-{b - 1}")["Body"].read()
        os.pwrite(fds[key], body, a)
        return len(body)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        total = sum(pool.map(one, tasks))
    for fd in fds.values():
        os.close(fd)
    t1 = time.perf_counter()
    c1, _ = cpu_seconds()
    res = sampler.stop()
    res.update({"first_s": t1 - t0, "epoch_s": t1 - t0, "bytes": total, "objects": len(objs), "requests": len(tasks),
                "cpu_s": c1 - c0, "workers_cpu_s": 0.0})
    return res


# The streamed cases: parts of 8 MiB with shuffle blocks of 8 MiB of rows (2048 rows of 4 KiB) in
# windows of 8 blocks (64 MiB, about one shard), so that a part holds one block and a batch reads at
# most 8 parts; `mmt/stream-64`: parts of a whole shard (64 MiB) and shard-sized blocks in windows of
# 4 (256 MiB). moto copies a whole object for every GET, ranged or not, so against it fewer, larger
# parts cost less; against a real S3 server a ranged GET costs its bytes.
STREAM = {"mmt/stream": {"part_size": "8MiB", "block_rows": 2048, "window_blocks": 8},
          "mmt/stream-64": {"part_size": "64MiB", "block_rows": 16352, "window_blocks": 4}}


def open_mmt(url: str, cache: str, size: str, stream: bool, part_size=None):
    import mmtensor

    if not stream:
        return mmtensor.open_dataset(url, cache=cache, cache_size=size)
    try:
        return mmtensor.open_dataset(url, cache=cache, cache_size=size, stream=True,
                                     **({"part_size": part_size} if part_size else {}))
    except TypeError as e:
        raise NotAvailable(f"open_dataset(..., stream=True) refused: {e}") from e


def case_mmt(spec: dict) -> dict:
    import mmtensor

    conf = STREAM.get(spec["case"])
    size = "1GiB" if conf else FETCH_ALL_CACHE
    def make():
        if conf:
            ds = open_mmt(spec["url"], spec["cache"], size, True, conf["part_size"])
            loader = mmtensor.Loader(ds, BATCH, shuffle="block", seed=SEED,
                                     block_rows=conf["block_rows"], window_blocks=conf["window_blocks"])
        else:
            ds = open_mmt(spec["url"], spec["cache"], size, False)
            loader = mmtensor.Loader(ds, BATCH, shuffle="block", seed=SEED)
        return loader, ds

    return run_epoch(make, spec["cache"], spec.get("progress"))


def case_mosaic(spec: dict) -> dict:
    import torch
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()

    def make():
        ds = StreamingDataset(remote=spec["url"], local=spec["cache"], cache_limit=CACHE_CAP, shuffle=True,
                              shuffle_seed=SEED, batch_size=BATCH)
        dl = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=spec["workers"])
        return iter(dl), (dl, ds)

    return run_epoch(make, spec["cache"], spec.get("progress"))


def case_litdata(spec: dict) -> dict:
    litdata_env(Path(spec["cache"]).parent / "litdata-env")
    import litdata.streaming.downloader as lit_dl
    from litdata import StreamingDataLoader, StreamingDataset

    # LitData fetches chunks with obstore, built with fixed client options that ignore
    # AWS_ALLOW_HTTP, so a plain-http endpoint fails ("builder error: BadScheme"). Allowing http
    # there keeps its own fast path (what it uses against real, https S3).
    if hasattr(lit_dl, "_OBSTORE_CLIENT_OPTIONS"):
        lit_dl._OBSTORE_CLIENT_OPTIONS = {**lit_dl._OBSTORE_CLIENT_OPTIONS, "allow_http": True}

    def make():
        ds = StreamingDataset(spec["url"], cache_dir=spec["cache"], max_cache_size=CACHE_CAP, shuffle=True, seed=SEED)
        dl = StreamingDataLoader(ds, batch_size=BATCH, num_workers=spec["workers"])
        return iter(dl), (dl, ds)

    return run_epoch(make, spec["cache"], spec.get("progress"))


def case_elastic(spec: dict) -> dict:
    import mmtensor
    import numpy as np

    remote = True
    try:
        ds = open_mmt(spec["url"], spec["cache"], "1GiB", True, STREAM["mmt/stream"]["part_size"])
    except NotAvailable as e:
        remote = False
        why = str(e)
        ds = mmtensor.open_dataset(spec["local"])
    n = ds.num_rows

    def reopen():
        return (open_mmt(spec["url"], spec["cache"], "1GiB", True, STREAM["mmt/stream"]["part_size"])
                if remote else mmtensor.open_dataset(spec["local"]))

    kw = {"columns": ["y"], "shuffle": "block", "seed": SEED,
          "block_rows": STREAM["mmt/stream"]["block_rows"], "window_blocks": STREAM["mmt/stream"]["window_blocks"]}
    four = [mmtensor.Loader(ds, BATCH, rank=r, world_size=4, **kw) for r in range(4)]
    k = max(1, len(four[0]) // 3)
    its = [iter(ld) for ld in four]
    seen = []
    for _ in range(k):
        for it in its:
            seen.append(np.asarray(next(it)["y"]))
    states = [ld.state_dict() for ld in four]
    del its
    for ld in four:
        ld.close()
    del four, ds
    ds3 = reopen()
    three = [mmtensor.Loader(ds3, BATCH, rank=r, world_size=3, **kw) for r in range(3)]
    try:
        for ld in three:
            ld.load_state_dict(states[0])
    except Exception as e:  # noqa: BLE001 (whatever it raises, the case says so)
        raise NotAvailable(f"load_state_dict of a world_size=4 state into world_size=3 raised "
                           f"{type(e).__name__}: {e}") from e
    phase1 = sum(len(s) for s in seen)
    its = [iter(ld) for ld in three]
    live = list(range(3))
    while live:
        for r in list(live):
            try:
                seen.append(np.asarray(next(its[r])["y"]))
            except StopIteration:
                live.remove(r)
    counts = np.bincount(np.concatenate(seen), minlength=n)
    missing = int((counts == 0).sum())
    repeated = int((counts[counts > 1] - 1).sum())
    allowed = (4 - 1) + (3 - 1)
    res = {"rows": n, "k": k, "rows_before": phase1, "rows_after": int(counts.sum()) - phase1,
           "missing": missing, "repeated": repeated, "allowed_repeats": allowed,
           "ok": missing == 0 and repeated <= allowed, "source": "stream" if remote else "local folder",
           "state_keys": sorted(states[0])}
    if not remote:
        res["note"] = f"ran over the local folder: {why}"
    return res


def worker(spec: dict) -> dict:
    import numpy  # noqa: F401  (imports are not what is measured)

    kind = spec["kind"]
    if kind == "build":
        return BUILDERS[spec["system"]](Path(spec["dst"]), spec["rows"])
    case = spec["case"]
    try:
        if case == "boto3":
            return case_boto3(spec)
        if case == "boto3/ranged":
            return case_boto3_ranged(spec)
        if case in ("mmt/fetch-all", "mmt/stream", "mmt/stream-64"):
            return case_mmt(spec)
        if case == "mmt/elastic":
            return case_elastic(spec)
        import torch  # noqa: F401

        if case.startswith("mosaic/"):
            return case_mosaic(spec)
        if case.startswith("litdata/"):
            return case_litdata(spec)
    except NotAvailable as e:
        return {"error": f"not available: {e}", "not_available": True}
    raise ValueError(f"unknown case {case}")


# ---------------------------------------------------------------------------------------------
# The parent: data, servers, rounds, report.


def run_worker(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        out = {"error": f"timed out after {timeout:.0f} s"}
        try:
            p = json.loads(Path(spec["progress"]).read_text())
            out["progress"] = p
            out["error"] += (f" ({p['batches']} batches in {p['elapsed_s']:.0f} s, "
                             f"{p['batches'] / p['elapsed_s']:.2f} batches/s; first batch {p['first_s']:.1f} s; "
                             f"cache max {p['cache_max_bytes'] / MIB:.0f} MiB)")
        except (KeyError, OSError, ValueError):
            pass
        return out
    if res.returncode != 0:
        # The exception's own line, not a warning printed after it (or the last line if none).
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        exc = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", ln)]
        why = (exc or lines or [""])[-1][:400]
        return {"error": f"exit {res.returncode}: {why}", "stderr_tail": res.stderr[-3000:]}
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"no result: {res.stdout[-300:]!r}", "stderr_tail": res.stderr[-3000:]}


def make_data(root: Path, n: int, systems: list[str], errors: dict) -> dict:
    out = {}
    for system in systems:
        dst = root / FOLDER[system]
        stamp = root / f"{FOLDER[system]}.done"
        missing = [m for m in NEEDS[system] if not have(m)]
        if missing:
            errors[system] = f"{', '.join(missing)} does not import"
            continue
        if not (stamp.exists() and dst.exists()):
            shutil.rmtree(dst, ignore_errors=True)
            print(f"  writing {dst} ({n:,} rows) ...", file=sys.stderr)
            r = run_worker({"kind": "build", "system": system, "dst": str(dst), "rows": n}, 7200)
            if "error" in r:
                errors[system] = f"writing the data failed: {r['error']}"
                shutil.rmtree(dst, ignore_errors=True)
                continue
            print(f"  {dst.name}: {r['seconds']:.1f} s", file=sys.stderr)
            stamp.write_text(json.dumps(r))
        size, files = folder_bytes(dst)
        out[system] = {"path": str(dst), "bytes": size, "objects": files,
                       "write_s": json.loads(stamp.read_text())["seconds"]}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """moto_server on 127.0.0.1, its environment exported to the cases."""

    def __init__(self):
        beside = Path(sys.executable).parent / "moto_server"  # this venv's moto first, then PATH's
        exe = str(beside) if beside.exists() else shutil.which("moto_server") or "moto_server"
        port = free_port()
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server ({exe}) exited with {self.proc.returncode}")
                time.sleep(0.1)
        os.environ.update({"AWS_ENDPOINT_URL": self.url, "S3_ENDPOINT_URL": self.url, "AWS_ALLOW_HTTP": "true",
                           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        s3_client().create_bucket(Bucket=BUCKET)

    def upload(self, folder: Path, prefix: str) -> float:
        from concurrent.futures import ThreadPoolExecutor

        s3 = s3_client()
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        t = time.perf_counter()

        def put(p: Path) -> None:
            with open(p, "rb") as f:
                s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{p.relative_to(folder).as_posix()}", Body=f)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, files))
        return time.perf_counter() - t

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def median_row(runs: list[dict], data_bytes: int) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": next((r["error"] for r in runs if "error" in r), "not run")}
    if "missing" in ok[0]:  # the elastic check
        return {"ok": all(r["ok"] for r in ok), "missing": max(r["missing"] for r in ok),
                "repeated": max(r["repeated"] for r in ok), "source": ok[0]["source"], "runs": len(ok)}
    med = {k: statistics.median(r[k] for r in ok) for k in ("first_s", "epoch_s", "cpu_s", "workers_cpu_s")}
    nbytes = ok[0].get("bytes", data_bytes)
    med.update({"bytes": nbytes, "bytes_per_s": statistics.median(nbytes / r["epoch_s"] for r in ok),
                "cache_max_bytes": max(r["cache_max_bytes"] for r in ok),
                "cache_over_cap": any(r["cache_max_bytes"] > CACHE_CAP for r in ok),
                "runs": len(ok), "errors": len(runs) - len(ok)})
    if "batches" in ok[0]:
        med["batches"] = ok[0]["batches"]
        med["batches_per_s"] = statistics.median(r["batches"] / r["epoch_s"] for r in ok)
        med["every_row_once"] = all(r["rows"] == r["distinct_rows"] for r in ok)
        med["rows"] = ok[0]["rows"]
        med["distinct_rows"] = min(r["distinct_rows"] for r in ok)
    return med


def per_round(raw: dict, a: str, b: str, key: str) -> list[float]:
    return [x[key] / y[key] for x, y in zip(raw.get(a, []), raw.get(b, [])) if "error" not in x and "error" not in y]


def goals(rows: dict, raw: dict, n_rows: int) -> list[dict]:
    out = []

    def add(name, value, goal, met, pr=None):
        out.append({"goal": name, "value": value, "target": goal, "met": met, "per_round": pr or []})

    s, f, b = rows.get("mmt/stream", {}), rows.get("mmt/fetch-all", {}), rows.get("boto3", {})
    if "error" not in s and s:
        add("stream first batch (s)", s["first_s"], "< 2 s", s["first_s"] < 2)
        add("stream cache max (GiB)", s["cache_max_bytes"] / GIB, "<= 1 GiB", not s["cache_over_cap"])
        add("stream every row once", s["distinct_rows"], f"{n_rows} rows", s["every_row_once"] and s["rows"] == n_rows)
        if "error" not in f and f:
            v = s["first_s"] / f["first_s"]
            add("stream first batch / fetch-all", v, "< 1/20", v < 0.05, per_round(raw, "mmt/stream", "mmt/fetch-all",
                                                                               "first_s"))
        if "error" not in b and b:
            v = s["bytes_per_s"] / b["bytes_per_s"]
            pr = [b2["epoch_s"] / s2["epoch_s"] for s2, b2 in zip(raw.get("mmt/stream", []), raw.get("boto3", []))
                  if "error" not in s2 and "error" not in b2]
            add("stream epoch bytes/s / boto3 bytes/s", v, ">= 0.8", v >= 0.8, pr)
        for peer in ("mosaic/w0", "mosaic/w2", "litdata/w0", "litdata/w2"):
            p = rows.get(peer, {})
            if p and "error" not in p:
                v = p["first_s"] / s["first_s"]
                add(f"{peer} first batch / stream first batch", v, "> 1", v > 1,
                    per_round(raw, peer, "mmt/stream", "first_s"))
                v = p["epoch_s"] / s["epoch_s"]
                add(f"{peer} epoch / stream epoch", v, "> 1", v > 1, per_round(raw, peer, "mmt/stream", "epoch_s"))
    for base in ("boto3", "boto3/ranged"):
        bb = rows.get(base, {})
        for mine in ("mmt/fetch-all", "mmt/stream"):
            m = rows.get(mine, {})
            if m and "error" not in m and bb and "error" not in bb and (mine, base) != ("mmt/stream", "boto3"):
                add(f"{mine} epoch bytes/s / {base} bytes/s (info)", m["bytes_per_s"] / bb["bytes_per_s"], "-", None)
    e = rows.get("mmt/elastic", {})
    if e and "error" not in e:
        add(f"elastic 4 -> 3 ranks, every row once ({e['source']})", f"missing {e['missing']}, repeated "
            f"{e['repeated']}", "missing 0, repeats < 7", e["ok"])
    return out


def print_report(summary: dict) -> None:
    d = summary["data"]
    print(f"\n{summary['rows']:,} rows of 4 KiB float32 + int64 label ({summary['gib']} GiB); batches of {BATCH}; "
          f"cache cap {CACHE_CAP / GIB:.0f} GiB for the streaming cases; moto_server on 127.0.0.1; "
          f"{summary['repeats']} rounds, medians; {summary['machine']['cpus']} CPUs, load "
          f"{summary['machine']['loadavg'][0]:.1f} at start, {summary['machine']['loadavg_end'][0]:.1f} at end")
    for system, info in d.items():
        print(f"  {system:<9} {info['bytes'] / GIB:6.3f} GiB in {info['objects']} objects (written in "
              f"{info['write_s']:.1f} s)")
    print(f"\n{'case':<15} {'first batch':>11} {'epoch s':>9} {'MB/s':>8} {'batch/s':>8} {'cpu s':>7} "
          f"{'+workers':>8} {'cache max':>10} {'rows once':>9}")
    for case, m in summary["cases"].items():
        if "error" in m:
            print(f"{case:<15} {'skipped: ' if case in summary['skipped'] else 'error: '}{m['error']}")
            continue
        if "missing" in m:
            print(f"{case:<15} {'OK' if m['ok'] else 'FAILED'}: missing {m['missing']}, repeated {m['repeated']} "
                  f"({m['source']})")
            continue
        print(f"{case:<15} {m['first_s']:>10.2f}s {m['epoch_s']:>9.2f} {m['bytes_per_s'] / 1e6:>8.1f} "
              f"{m.get('batches_per_s', float('nan')):>8.1f} {m['cpu_s']:>7.1f} {m['workers_cpu_s']:>8.1f} "
              f"{m['cache_max_bytes'] / MIB:>7.0f} MiB {str(m.get('every_row_once', '-')):>9}")
    print("\ngoals:")
    for g in summary["goals"]:
        v = g["value"]
        vs = f"{v:.3f}" if isinstance(v, float) else str(v)
        met = "" if g["met"] is None else (" MET" if g["met"] else " MISS")
        pr = g["per_round"]
        extra = f" (per round {', '.join(f'{x:.2f}' for x in pr)})" if len(pr) > 1 else ""
        print(f"  {g['goal']}: {vs} (goal {g['target']}){met}{extra}")
    if not summary["goals"]:
        print("  none measured (mmt/stream did not run)")


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")  # imports probed in the parent (have()) print deprecations
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0, help="dataset size in GiB (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma list of: {', '.join(ALL_CASES)}")
    ap.add_argument("--keep-server", action="store_true",
                    help="one server for the whole run, every system uploaded to it once")
    ap.add_argument("--out", type=Path, default=REPO / "benches" / "out" / "stream")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case process")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {ALL_CASES}")
    n = num_rows(args.gib)
    root = args.out / f"data-{args.gib:g}"
    root.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    errors: dict[str, str] = {}
    systems = [s for s, cs in SYSTEMS.items() if any(c in cases for c in cs)]
    data = make_data(root, n, systems, errors)
    summary = {"gib": args.gib, "rows": n, "repeats": args.repeats, "data": data, "cases": {}, "skipped": {},
               "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}, "uploads": [],
               "versions": versions()}
    raw: dict[str, list[dict]] = {c: [] for c in cases}
    live = [s for s in systems if s not in errors]
    server = Server() if args.keep_server and live else None
    try:
        if server:
            for s in live:
                summary["uploads"].append({"system": s, "seconds": server.upload(Path(data[s]["path"]), FOLDER[s])})
        for r in range(args.repeats):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for system in order:
                srv = server or Server()
                try:
                    if not server:
                        up = srv.upload(Path(data[system]["path"]), FOLDER[system])
                        summary["uploads"].append({"system": system, "round": r, "seconds": up})
                        print(f"  [{r + 1}/{args.repeats}] {system}: uploaded in {up:.1f} s", file=sys.stderr)
                    mine = [c for c in SYSTEMS[system] if c in cases]
                    mine = mine[r % len(mine):] + mine[:r % len(mine)]
                    for case in mine:
                        time.sleep(2)  # let the server settle after the upload or the last case
                        cache = work / case.replace("/", "-")
                        shutil.rmtree(work, ignore_errors=True)
                        cache.mkdir(parents=True)
                        spec = {"kind": "case", "case": case, "cache": str(cache),
                                "url": f"s3://{BUCKET}/{FOLDER[system]}", "prefix": FOLDER[system] + "/",
                                "local": data[system]["path"], "workers": int(case[-1]) if "/w" in case else 0,
                                "progress": str(work / "progress.json")}
                        if case.startswith("mmt/"):
                            spec["url"] += "/"
                        res = run_worker(spec, args.timeout)
                        shutil.rmtree(work, ignore_errors=True)
                        res["round"] = r
                        raw[case].append(res)
                        if "error" in res:
                            state = res["error"]
                        elif "missing" in res:
                            state = (f"{'ok' if res['ok'] else 'FAILED'}: missing {res['missing']}, repeated "
                                     f"{res['repeated']} ({res['source']})")
                        else:
                            state = (f"first batch {res['first_s']:.2f} s, epoch {res['epoch_s']:.2f} s, cache max "
                                     f"{res['cache_max_bytes'] / MIB:.0f} MiB")
                        print(f"  [{r + 1}/{args.repeats}] {case}: {state}", file=sys.stderr)
                finally:
                    if not server:
                        srv.stop()
    finally:
        if server:
            server.stop()
    for system, why in errors.items():
        for c in SYSTEMS[system]:
            if c in cases:
                summary["skipped"][c] = why
                summary["cases"][c] = {"error": why}
    for c in cases:
        if c in summary["cases"]:
            continue
        system = next(s for s, cs in SYSTEMS.items() if c in cs)
        summary["cases"][c] = median_row(raw[c], data.get(system, {}).get("bytes", 0))
        na = [x for x in raw[c] if x.get("not_available")]
        if na:
            summary["skipped"][c] = na[0]["error"]
    summary["machine"]["loadavg_end"] = os.getloadavg()
    summary["goals"] = goals(summary["cases"], raw, n)
    summary["raw"] = raw
    path = args.out / "results.json"
    path.write_text(json.dumps(summary, indent=2))
    print_report(summary)
    print(f"\nresults: {path}")


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("numpy", "torch", "boto3", "moto", "mosaicml-streaming", "litdata", "obstore", "mmtensor"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    try:
        import mmtensor

        out["mmtensor_path"] = str(Path(mmtensor.__file__).parent)
    except Exception:  # noqa: BLE001
        pass
    return out


if __name__ == "__main__":
    main()
