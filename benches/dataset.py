#!/usr/bin/env python3
"""Sharded datasets (issue 12): a loader epoch over 16 shards against one file, and over a dataset
in object storage (a loopback S3 server) against a plain parallel download and against local files.

Data: `x`, float32 [N, 1024] (4 KiB rows) and `y`, int64 [N], written once as one store
(`one.mmt`), as a dataset of 16 shards (`ds16/`, `mmt convert --shard-size` with a size that
cuts exactly 16) and as a dataset of one shard (`ds1/`). Each case runs in its own fresh Python process (imports and the files' creation
outside the timing); cases are rotated over --repeats rounds and medians are reported, with the
ratios the issue sets targets for. Every epoch is `mmtensor.Loader(source, 1024, shuffle=...,
prefetch=2)` over `x` and `y`, iterated to the end.

Local (`--part local`), for each shuffle (full, block):
- `one/<shuffle>`, `ds16/<shuffle>`, `ds1/<shuffle>`: the files evicted (`posix_fadvise(POSIX_FADV_DONTNEED)`), then
  in one process three epochs: `cold` is the first, `warm` the median of the next two (the page
  cache and the process's page tables filled by the first);
- `... warm-new`: right after, a new process runs one epoch over the pages the previous one read:
  a restarted job on a warm machine (its page tables start empty).

Object storage (`--part s3`): the script starts `moto_server` on 127.0.0.1 (or uses
--s3-endpoint), uploads `ds16/` under a prefix, then:
- `download`: a plain parallel download of the same objects with boto3 (`download_file`, 8 MiB
  parts, 8 in flight per object, objects one after another), into a fresh folder; `download 4 at
  once`: the same with four objects at once (what `open_dataset` does);
- `first-epoch`: `open_dataset(url, cache=<fresh folder>)` (four shards at once, each fetched with
  8 ranged GETs of 8 MiB in flight, every block verified) plus one full-shuffle epoch;
- `second-epoch`: a new process, the same cache: `open_dataset` (one HEAD per shard) plus one epoch,
  against `local-epoch`: `open_dataset(ds16/)` plus one epoch, same page-cache state (both warm);
  three of each per round, alternated, after `sync` and 3 s for the server to settle.

    python benches/dataset.py --size 2GiB --repeats 5            # both parts
    python benches/dataset.py --part s3 --size 1GiB --repeats 3

Needs numpy and mmtensor (with open_dataset and Loader), the `mmt` binary (--mmt, default
target/release/mmt) to write the dataset, and boto3 + moto[server] for the S3 part.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import MIB, evict, parse_size  # noqa: E402

COLS = 1024
ROW_BYTES = COLS * 4 + 8
SHARDS = 16
BATCH = 1024


def make_data(out: Path, size: int, mmt: str) -> tuple[Path, Path, Path]:
    import numpy as np

    rows = size // ROW_BYTES
    one, ds, ds1 = out / "one.mmt", out / "ds16", out / "ds1"
    stamp = out / f"rows-{rows}"
    if stamp.exists() and one.exists() and ds.exists() and ds1.exists():
        return one, ds, ds1
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    x = np.lib.format.open_memmap(out / "x.npy", mode="w+", dtype=np.float32, shape=(rows, COLS))
    rng = np.random.default_rng(0)
    for a in range(0, rows, 16384):
        b = min(rows, a + 16384)
        x[a:b] = rng.standard_normal((b - a, COLS), dtype=np.float32)
    x.flush()
    del x
    np.save(out / "y.npy", np.arange(rows, dtype=np.int64))
    inputs = [f"x={out / 'x.npy'}", f"y={out / 'y.npy'}"]
    subprocess.run([mmt, "convert", *inputs, "-o", str(one), "-q"], check=True)
    per_shard = -(-rows // SHARDS) * ROW_BYTES
    subprocess.run([mmt, "convert", *inputs, "-o", str(ds), "--shard-size", str(per_shard), "-q"],
                   check=True)
    shards = sorted(ds.glob("*.mmt"))
    assert len(shards) == SHARDS, f"{len(shards)} shards"
    subprocess.run([mmt, "convert", *inputs, "-o", str(ds1), "--shard-size",
                    str(rows * ROW_BYTES), "-q"], check=True)
    assert len(list(ds1.glob("*.mmt"))) == 1
    (out / "x.npy").unlink()
    stamp.touch()
    return one, ds, ds1


# ---------------------------------------------------------------------------------------------
# Cases: each runs in a child process (`--case NAME ARGS`) and prints one JSON line.


def epoch(source, shuffle: str) -> float:
    import mmtensor

    loader = mmtensor.Loader(source, BATCH, columns=["x", "y"], shuffle=shuffle, prefetch=2)
    t = time.perf_counter()
    for batch in loader:
        del batch
    return time.perf_counter() - t


def case_local(path: str, shuffle: str, epochs: int) -> dict:
    import mmtensor

    p = Path(path)
    source = mmtensor.open_dataset(p) if p.is_dir() else mmtensor.open(p)
    times = [epoch(source, shuffle) for _ in range(epochs)]
    return {"epochs": times}


def case_download(endpoint: str, bucket: str, prefix: str, dest: str, at_once: str) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from boto3.s3.transfer import TransferConfig

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB,
                            max_concurrency=8)
    t = time.perf_counter()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]

    def one(key: str) -> int:
        target = Path(dest) / Path(key).name
        s3.download_file(bucket, key, str(target), Config=config)
        return target.stat().st_size

    with ThreadPoolExecutor(int(at_once)) as pool:
        total = sum(pool.map(one, sorted(keys)))
    return {"seconds": time.perf_counter() - t, "bytes": total}


def case_remote(url: str, cache: str, shuffle: str) -> dict:
    import mmtensor

    t = time.perf_counter()
    ds = mmtensor.open_dataset(url, cache=cache, cache_size="100GiB")
    opened = time.perf_counter() - t
    e = epoch(ds, shuffle)
    return {"open": opened, "epoch": e, "seconds": opened + e}


def case_local_open(path: str, shuffle: str) -> dict:
    import mmtensor

    t = time.perf_counter()
    ds = mmtensor.open_dataset(path)
    opened = time.perf_counter() - t
    e = epoch(ds, shuffle)
    return {"open": opened, "epoch": e, "seconds": opened + e}


def run_case(*args: str) -> dict:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, __file__, "--case", *args], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def local_part(one: Path, ds: Path, ds1: Path, repeats: int) -> dict:
    results: dict[str, list[float]] = {}
    sources = [("one", one), ("ds16", ds), ("ds1", ds1)]
    for r in range(repeats):
        for shuffle in ("full", "block"):
            for name, path in sources[r % 3:] + sources[:r % 3]:
                evict(path) if path.is_file() else [evict(f) for f in path.iterdir()]
                e = run_case("local", str(path), shuffle, "3")["epochs"]
                results.setdefault(f"{name}/{shuffle} cold", []).append(e[0])
                results.setdefault(f"{name}/{shuffle} warm", []).append(statistics.median(e[1:]))
                e = run_case("local", str(path), shuffle, "1")["epochs"]
                results.setdefault(f"{name}/{shuffle} warm-new", []).append(e[0])
        print(f"round {r + 1}/{repeats} done", file=sys.stderr)
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_part(ds: Path, out: Path, repeats: int, endpoint: str | None) -> dict:
    import boto3

    moto = None
    if endpoint is None:
        port = free_port()
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        moto = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true",
                       "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"})
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        bucket = f"bench-{os.getpid()}"
        s3.create_bucket(Bucket=bucket)
        for f in sorted(ds.iterdir()):
            s3.upload_file(str(f), bucket, f"train/{f.name}")
        url = f"s3://{bucket}/train/"
        results: dict[str, list[float]] = {}
        for r in range(repeats):
            dl = out / "download"
            cache = out / "cache"
            for d in (dl, cache):
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir()
            def download(at_once: str) -> dict:
                shutil.rmtree(dl, ignore_errors=True)
                dl.mkdir()
                return run_case("download", endpoint, bucket, "train/", str(dl), at_once)

            first = [("download", lambda: download("1")),
                     ("download 4 at once", lambda: download("4")),
                     ("first-epoch", lambda: run_case("remote", url, str(cache), "full"))]
            for name, f in first[r % 3:] + first[:r % 3]:
                res = f()
                results.setdefault(name, []).append(res["seconds"])
                if name == "first-epoch":
                    results.setdefault("first-epoch open", []).append(res["open"])
            # The server keeps working for a moment after a download (its threads wind down):
            # let it settle, then alternate the two warm cases several times.
            os.sync()
            time.sleep(3)
            second = [("second-epoch", lambda: run_case("remote", url, str(cache), "full")),
                      ("local-epoch", lambda: run_case("local-open", str(ds), "full"))]
            for k in range(3):
                for name, f in (second if (r + k) % 2 == 0 else second[::-1]):
                    res = f()
                    results.setdefault(name, []).append(res["seconds"])
                    results.setdefault(f"{name} open", []).append(res["open"])
            print(f"round {r + 1}/{repeats} done", file=sys.stderr)
        return results
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()


def report(results: dict[str, list[float]], pairs: list[tuple[str, str, str]]) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in results.items():
        print(f"{k:28s} median {med[k] * 1000:9.1f} ms   runs {[round(x * 1000, 1) for x in v]}")
    for label, a, b in pairs:
        if a in med and b in med:
            per_round = [x / y for x, y in zip(results[a], results[b])]
            print(f"{label:48s} {med[a] / med[b]:.3f}x   (per round {[round(x, 3) for x in per_round]})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        kind, *args = sys.argv[2:]
        f = {"local": lambda p, s, e: case_local(p, s, int(e)), "download": case_download,
             "remote": case_remote, "local-open": case_local_open}[kind]
        print(json.dumps(f(*args)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--part", choices=["local", "s3", "both"], default="both")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "dataset")
    ap.add_argument("--mmt", default=str(Path(__file__).parent.parent / "target" / "release" / "mmt"))
    ap.add_argument("--s3-endpoint", default=None, help="an S3 endpoint to use instead of starting moto")
    args = ap.parse_args()
    one, ds, ds1 = make_data(args.out / f"data-{args.size}", parse_size(args.size), args.mmt)
    print(f"data: {one} and {ds} ({SHARDS} shards), {args.size}", file=sys.stderr)
    if args.part in ("local", "both"):
        res = local_part(one, ds, ds1, args.repeats)
        report(res, [(f"{n} / one file, {s} {m}", f"{d}/{s} {m}", f"one/{s} {m}")
                     for n, d in (("16 shards", "ds16"), ("1 shard", "ds1"))
                     for s in ("full", "block") for m in ("cold", "warm", "warm-new")])
    if args.part in ("s3", "both"):
        res = s3_part(ds, args.out, args.repeats, args.s3_endpoint)
        report(res, [("plain download / (open + first epoch): >= 0.8", "download", "first-epoch"),
                     ("plain download, 4 at once / (open + first epoch)", "download 4 at once",
                      "first-epoch"),
                     ("local / (reopen + second epoch from cache): >= 0.95", "local-epoch", "second-epoch")])


if __name__ == "__main__":
    main()
