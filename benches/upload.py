#!/usr/bin/env python3
"""Upload to object storage: `mmt push DIR s3://...` against boto3's `upload_file` of the same
shard files with the same parallelism, to a local S3 server (moto), same run.

Parallelism, alike on both sides: 2 files at once, each a multipart upload of 8 MiB parts with 4
parts in flight (mmt push: SHARDS_IN_FLIGHT x PARTS_IN_FLIGHT in crates/remote/src/upload.rs;
boto3: 2 threads, each `upload_file` with TransferConfig(multipart_chunksize=8 MiB,
max_concurrency=4)). mmt push also checks every shard after its upload (a HEAD and a ranged GET)
and puts the manifest conditionally; boto3 does neither, so the comparison favours boto3.

Each repeat alternates the two cases, each into a fresh bucket (deleted afterwards, so the
in-memory server does not grow); medians and the ratio are reported. The server is a moto_server
this script starts on a free port (or MMT_TEST_S3_ENDPOINT if set): it is Python, so both sides
are bounded by it; the ratio, not the absolute rate, is the figure.

    .venv/bin/python benches/upload.py [--size 1GiB] [--shard-size 64MiB] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from peers import MIB, parse_size  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mmt_binary() -> str:
    for kind in ("release", "debug"):
        p = REPO / "target" / kind / "mmt"
        if p.exists():
            return str(p)
    sys.exit("build the CLI first: cargo build --release -p mmtensor-cli")


def main() -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig

    import mmtensor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--shard-size", default="64MiB")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    size, shard = parse_size(a.size), parse_size(a.shard_size)

    server = None
    endpoint = os.environ.get("MMT_TEST_S3_ENDPOINT")
    if not endpoint:
        port = free_port()
        moto = Path(sys.executable).parent / "moto_server"
        server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true", AWS_REGION="us-east-1",
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    mmt = mmt_binary()
    work = Path(tempfile.mkdtemp(prefix="mmt-upload-bench-"))
    try:
        ds = work / "ds"
        rows = size // (1024 * 4)
        with mmtensor.DatasetWriter(ds, columns={"x": ("f32", (1024,))}, shard_size=shard) as w:
            rng = np.random.default_rng(0)
            step = 16384
            for lo in range(0, rows, step):
                w.write({"x": rng.standard_normal((min(step, rows - lo), 1024), dtype=np.float32)})
        files = sorted(ds.iterdir())
        total = sum(f.stat().st_size for f in files)
        config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)

        def run_boto(bucket: str) -> None:
            def one(f: Path) -> None:
                s3.upload_file(str(f), bucket, f"ds/{f.name}", Config=config)

            shards = [f for f in files if f.name != "manifest.mmtm"]
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(one, shards))
            s3.upload_file(str(ds / "manifest.mmtm"), bucket, "ds/manifest.mmtm")

        def run_push(bucket: str) -> None:
            r = subprocess.run([mmt, "push", str(ds), f"s3://{bucket}/ds/", "-q"], env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"mmt push failed: {r.stderr}")

        def empty(bucket: str) -> None:
            listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
            for o in listed:
                s3.delete_object(Bucket=bucket, Key=o["Key"])
            s3.delete_bucket(Bucket=bucket)

        times: dict[str, list[float]] = {"mmt push": [], "boto3 upload_file": []}
        cases = [("mmt push", run_push), ("boto3 upload_file", run_boto)]
        for rep in range(a.repeats):
            for name, fn in (cases if rep % 2 == 0 else cases[::-1]):
                bucket = f"bench-{rep}-{name.split()[0]}-{os.getpid()}"
                s3.create_bucket(Bucket=bucket)
                t = time.perf_counter()
                fn(bucket)
                times[name].append(time.perf_counter() - t)
                got = sum(o["Size"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
                assert got == total, f"{name}: {got} bytes in the bucket, expected {total}"
                empty(bucket)
        print(f"{len(files) - 1} shards + manifest, {total / MIB:.0f} MiB, endpoint {endpoint}, "
              f"{a.repeats} repeats (alternated)")
        base = statistics.median(times["boto3 upload_file"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:<18} median {med:6.2f} s  {total / MIB / med:7.1f} MiB/s  "
                  f"rate vs boto3 {base / med:4.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
