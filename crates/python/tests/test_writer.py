"""mmtensor.DatasetWriter and mmtensor.commit: rows streamed into datasets in batches, nothing
visible before the end, many writers (multiprocessing, torch.distributed, a Dask cluster) and one
commit."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mmtensor

REPO = Path(__file__).parents[3]


def rows_of(path) -> dict:
    ds = mmtensor.open_dataset(path)
    ds.verify()
    return {c: ds.take(c, np.arange(ds.num_rows)) for c in ds.columns}


def snapshot(path: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_batches_stream_into_shards_and_appear_at_the_end(tmp_path):
    out = tmp_path / "ds"
    rng = np.random.default_rng(0)
    xs, ys = [], []
    with mmtensor.DatasetWriter(out, columns={"x": ("f32", (3,)), "y": "i64"}, shard_size=1000) as w:
        assert w.columns == {"x": ("F32", (3,)), "y": ("I64", ())}
        for n in [1, 0, 50, 7, 200, 3]:
            x = rng.standard_normal((n, 3), dtype=np.float32)
            y = rng.integers(0, 1 << 40, n)
            w.write({"y": y, "x": x})  # any key order
            xs.append(x)
            ys.append(y)
            assert not (out / "manifest.mmtm").exists()
        assert w.rows_written == 261
    got = rows_of(out)
    np.testing.assert_array_equal(got["x"], np.concatenate(xs))
    np.testing.assert_array_equal(got["y"], np.concatenate(ys))
    ds = mmtensor.open_dataset(out)
    # 20 bytes a row, 1000-byte shards: 50 rows a shard.
    assert ds.num_shards == 6


def test_columns_are_inferred_from_the_first_batch_and_any_array_kind_is_taken(tmp_path):
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    out = tmp_path / "ds"
    a = np.arange(24, dtype=">i4").reshape(6, 4)  # big-endian
    b = np.asfortranarray(np.arange(12, dtype=np.float64).reshape(6, 2))
    c = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
    with mmtensor.DatasetWriter(out) as w:
        w.write({"a": a, "b": b, "c": c, "t": torch.arange(6, dtype=torch.int16)})
        w.write({"a": a[::2], "b": b[::2], "c": c[::2], "t": torch.arange(3, dtype=torch.int16)})
        assert w.columns["a"] == ("I32", (4,)) and w.columns["c"] == ("BF16", ())
    got = rows_of(out)
    np.testing.assert_array_equal(got["a"], np.concatenate([a, a[::2]]).astype("<i4"))
    np.testing.assert_array_equal(got["b"], np.concatenate([b, b[::2]]))
    assert got["c"].view(np.uint16).tolist() == np.concatenate([c, c[::2]]).view(np.uint16).tolist()
    np.testing.assert_array_equal(got["t"], [0, 1, 2, 3, 4, 5, 0, 1, 2])


def test_a_batch_that_does_not_fit_the_schema_is_refused_naming_the_column(tmp_path):
    out = tmp_path / "ds"
    with mmtensor.DatasetWriter(out, columns={"x": ("f32", (3,)), "y": "i64"}) as w:
        good = {"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int64)}
        w.write(good)
        with pytest.raises(mmtensor.DtypeMismatchError, match=r"column `x` is F32 in the dataset, but the batch gives F64"):
            w.write({"x": np.zeros((2, 3)), "y": np.zeros(2, np.int64)})
        with pytest.raises(mmtensor.ConvertError, match=r"column `x` has rows of shape \(3,\) in the dataset, but the batch's array has shape \(2, 4\)"):
            w.write({"x": np.zeros((2, 4), np.float32), "y": np.zeros(2, np.int64)})
        with pytest.raises(mmtensor.ConvertError, match=r"column `y` is missing"):
            w.write({"x": np.zeros((2, 3), np.float32)})
        with pytest.raises(mmtensor.ConvertError, match=r"column `z` is not a column of the dataset"):
            w.write({**good, "z": np.zeros(2)})
        with pytest.raises(mmtensor.ConvertError, match=r"column `y` has 3 rows, but column `x` has 2"):
            w.write({"x": np.zeros((2, 3), np.float32), "y": np.zeros(3, np.int64)})
        with pytest.raises(TypeError, match="object"):
            w.write({"x": np.zeros((2, 3), np.float32), "y": np.array([1, None], dtype=object)})
        w.write(good)  # the writer goes on after a refused batch
    assert mmtensor.open_dataset(out).num_rows == 4
    with pytest.raises(mmtensor.ConvertError, match="bool"):
        with mmtensor.DatasetWriter(tmp_path / "b", columns={"m": "bool"}) as w:
            w.write({"m": np.array([0, 1, 2], np.uint8).view(np.bool_)})
    assert not (tmp_path / "b" / "manifest.mmtm").exists()


def test_an_exception_in_the_block_leaves_the_dataset_exactly_as_it_was(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with mmtensor.DatasetWriter(out, shard_size=256) as w:
            w.write({"x": np.ones((100, 4), np.float32)})
            raise RuntimeError("the pipeline failed")
    assert list(out.iterdir()) == []
    with mmtensor.DatasetWriter(out, shard_size=256) as w:
        w.write({"x": np.ones((10, 4), np.float32)})
    before = snapshot(out)
    with pytest.raises(KeyError):
        with mmtensor.DatasetWriter(out, mode="append") as w:
            w.write({"x": np.zeros((100, 4), np.float32)})
            raise KeyError("later")
    assert snapshot(out) == before
    with pytest.raises(mmtensor.ConvertError, match="already holds a dataset"):
        mmtensor.DatasetWriter(out)


def test_append_fills_the_last_shard_and_checks_the_columns(tmp_path):
    out = tmp_path / "ds"
    with mmtensor.DatasetWriter(out, columns={"x": ("u8", (4,))}, shard_size=40) as w:
        w.write({"x": np.full((13, 4), 1, np.uint8)})
    with mmtensor.DatasetWriter(out, mode="append") as w:
        assert w.columns == {"x": ("U8", (4,))}
        w.write({"x": np.full((4, 4), 2, np.uint8)})
    summary = w.finish()  # finishing again gives the same summary
    assert summary["rows"] == 17 and summary["rows_rewritten"] == 3
    assert [s for s in summary["replaced"]] == ["shard-00001.mmt"]
    got = rows_of(out)["x"]
    assert got[:13].min() == 1 and got[13:].min() == 2
    with pytest.raises(mmtensor.ConvertError, match="columns"):
        mmtensor.DatasetWriter(out, mode="append", columns={"x": ("u16", (4,))})
    with pytest.raises(ValueError, match="finished"):
        w.write({"x": np.zeros((1, 4), np.uint8)})


def test_pyarrow_tables_and_record_batches_are_batches(tmp_path):
    pa = pytest.importorskip("pyarrow")
    out = tmp_path / "ds"
    emb = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    flat = pa.array(emb.reshape(-1))
    nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, 3), 2)
    table = pa.table({"emb": nested, "label": pa.array([1, 2, 3, 4], pa.int32()), "ok": pa.array([True, False, True, True])})
    with mmtensor.DatasetWriter(out) as w:
        w.write(table)
        w.write(table.to_batches()[0].slice(1, 2))
        tensor_type = pa.fixed_shape_tensor(pa.float32(), (2, 3))
        storage = pa.FixedSizeListArray.from_arrays(flat, 6)
        w.write(pa.table({"emb": pa.ExtensionArray.from_storage(tensor_type, storage), "label": pa.array([9] * 4, pa.int32()), "ok": pa.array([False] * 4)}))
        with pytest.raises(ValueError, match="column `label` has 1 nulls"):
            w.write(pa.table({"emb": nested, "label": pa.array([1, None, 3, 4], pa.int32()), "ok": pa.array([True] * 4)}))
        with pytest.raises(TypeError, match="column `label` is of the Arrow type string"):
            w.write(pa.table({"emb": nested, "label": pa.array(list("abcd")), "ok": pa.array([True] * 4)}))
    got = rows_of(out)
    np.testing.assert_array_equal(got["emb"], np.concatenate([emb, emb[1:3], emb]))
    np.testing.assert_array_equal(got["label"], [1, 2, 3, 4, 2, 3, 9, 9, 9, 9])
    assert got["ok"].tolist() == [True, False, True, True, False, True] + [False] * 4


def _write_part(out: str, part: int, rows: int, delay: float) -> None:
    import time

    time.sleep(delay)
    with mmtensor.DatasetWriter(out, columns={"part": "i32", "row": "i64"}, part=part, shard_size=64) as w:
        w.write({"part": np.full(rows, part, np.int32), "row": np.arange(rows, dtype=np.int64)})


def test_multiprocessing_parts_commit_in_the_order_of_their_ids(tmp_path):
    out = tmp_path / "ds"
    ctx = multiprocessing.get_context("spawn")
    sizes = [5, 0, 17, 9]
    with ctx.Pool(4) as pool:
        # The later parts finish first.
        pool.starmap(_write_part, [(str(out), i, n, 0.3 * (3 - i)) for i, n in enumerate(sizes)])
    assert not (out / "manifest.mmtm").exists()
    with pytest.raises(mmtensor.ConvertError, match=r"part\(s\) 4 of the 5 expected are missing"):
        mmtensor.commit(out, parts=5)
    summary = mmtensor.commit(out, parts=4)
    assert summary["rows"] == sum(sizes)
    got = rows_of(out)
    assert got["part"].tolist() == [i for i, n in enumerate(sizes) for _ in range(n)]
    assert got["row"].tolist() == [r for n in sizes for r in range(n)]
    # The CLI commits the same way.
    mmt = os.environ.get("MMT_BIN")
    if mmt:
        _write_part(str(out), 0, 3, 0)
        r = subprocess.run([mmt, "commit", str(out), "--parts", "1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "3 rows" in r.stderr and mmtensor.open_dataset(out).num_rows == sum(sizes) + 3


KILLED_WRITER = textwrap.dedent(
    """
    import sys, numpy as np, mmtensor
    out, mode, part = sys.argv[1], sys.argv[2], sys.argv[3]
    kw = {"part": int(part)} if part != "-" else {"mode": mode}
    w = mmtensor.DatasetWriter(out, shard_size="64KiB", **kw)
    print("ready", flush=True)
    i = 0
    while True:
        w.write({"x": np.full((1024, 16), i, np.float32)})
        i += 1
    """
)


def _kill_mid_write(out: Path, mode: str, part: str) -> None:
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out), mode, part], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        # Wait until it has written shards, then kill it without warning.
        for _ in range(600):
            if sum(1 for f in out.iterdir() if f.suffix == ".mmt") >= 3:
                break
            import time

            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
        p.stdout.close()


def test_kill_9_mid_write_leaves_the_previous_dataset_readable_and_complete(tmp_path):
    out = tmp_path / "ds"
    with mmtensor.DatasetWriter(out, shard_size="64KiB") as w:
        w.write({"x": np.full((100, 16), -1, np.float32)})
    before = rows_of(out)
    manifest = (out / "manifest.mmtm").read_bytes()
    _kill_mid_write(out, "append", "-")
    assert (out / "manifest.mmtm").read_bytes() == manifest
    np.testing.assert_array_equal(rows_of(out)["x"], before["x"])
    # A killed part writer: commit names it; prune deletes what it left.
    _kill_mid_write(out, "-", "3")
    with pytest.raises(mmtensor.ConvertError, match=r"part\(s\) 3 stopped before they finished"):
        mmtensor.commit(out)
    pruned = mmtensor.prune(out)
    assert pruned["removed"] and all("shard-00000.mmt" != name for name in pruned["removed"])
    assert sorted(f.name for f in out.iterdir()) == ["manifest.mmtm", "shard-00000.mmt"]
    np.testing.assert_array_equal(rows_of(out)["x"], before["x"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torch_rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        with mmtensor.DatasetWriter(out, columns={"rank": "i64", "v": ("f32", (2,))}, part=rank) as w:
            for step in range(3):
                w.write({"rank": np.full(rank + 1, rank), "v": np.full((rank + 1, 2), step, np.float32)})
        dist.barrier()
        if rank == 0:
            mmtensor.commit(out, parts=world)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_torch_distributed_ranks_write_one_part_each(tmp_path):
    pytest.importorskip("torch")
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out = tmp_path / "ds"
    mp.spawn(_torch_rank, args=(3, _free_port(), str(out)), nprocs=3, join=True)
    got = rows_of(out)
    assert got["rank"].tolist() == [0] * 3 + [1] * 6 + [2] * 9


def test_a_dask_cluster_repacks_a_dataset_through_parts(tmp_path):
    """The documented example, run as documented: a Dask LocalCluster of worker processes, one
    part per task, one commit."""
    pytest.importorskip("dask.distributed")
    src = tmp_path / "src"
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5000, 8)) * 4 + 2).astype(np.float32)
    y = np.arange(5000, dtype=np.int64)
    with mmtensor.DatasetWriter(src, shard_size="32KiB") as w:
        w.write({"x": x, "y": y})
    out = tmp_path / "out"
    example = REPO / "crates" / "python" / "examples" / "dask_repack.py"
    r = subprocess.run(
        [sys.executable, str(example), str(src), str(out), "--tasks", "7", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "5000 rows" in r.stdout
    got = rows_of(out)
    np.testing.assert_array_equal(got["y"], y)  # the parts' order is the rows' order
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    np.testing.assert_allclose(got["x"], (x - mean) / std, rtol=1e-5, atol=1e-5)


def _s3():
    endpoint = os.environ.get("MMT_TEST_S3_ENDPOINT")
    if not endpoint:
        if os.environ.get("CI") == "true":
            pytest.fail("MMT_TEST_S3_ENDPOINT is not set: CI must run the object storage tests")
        pytest.skip("MMT_TEST_S3_ENDPOINT is not set (scripts/test.sh starts moto and sets it)")
    boto3 = pytest.importorskip("boto3")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"py-writer-{os.getpid()}-{np.random.default_rng().integers(1 << 30)}"
    s3.create_bucket(Bucket=bucket)
    return s3, bucket


def _keys(s3, bucket, prefix):
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"].rsplit("/", 1)[-1] for o in listed)


S3_WRITER = textwrap.dedent(
    """
    import sys, numpy as np, mmtensor
    url, mode = sys.argv[1], sys.argv[2]
    w = mmtensor.DatasetWriter(url, mode=mode, shard_size="256KiB")
    i = 0
    while True:
        w.write({"x": np.full((1024, 64), i, np.float32)})
        i += 1
        if i == 3:
            print("uploading", flush=True)
    """
)


def test_a_writer_streams_straight_to_a_bucket_and_a_kill_leaves_the_dataset_as_it_was(tmp_path):
    s3, bucket = _s3()
    url = f"s3://{bucket}/train/"
    with mmtensor.DatasetWriter(url, shard_size="256KiB") as w:
        for i in range(3):
            w.write({"x": np.full((1000, 64), i, np.float32)})
        assert "manifest.mmtm" not in _keys(s3, bucket, "train/")
    assert w.finish()["rows"] == 3000
    ds = mmtensor.open_dataset(url, cache=tmp_path / "cache")
    np.testing.assert_array_equal(ds.take("x", [0, 1999, 2999])[:, 0], [0, 1, 2])
    manifest = s3.get_object(Bucket=bucket, Key="train/manifest.mmtm")["Body"].read()

    # An appender killed mid-upload: the manifest is the old one, every shard it lists is there.
    p = subprocess.Popen([sys.executable, "-c", S3_WRITER, url, "append"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "uploading"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
        p.stdout.close()
    assert s3.get_object(Bucket=bucket, Key="train/manifest.mmtm")["Body"].read() == manifest
    ds = mmtensor.open_dataset(url, cache=tmp_path / "cache2")
    ds.verify()
    assert ds.num_rows == 3000

    # An exception inside the block: nothing of it is listed, and its uploads are deleted.
    before = _keys(s3, bucket, "train/")
    with pytest.raises(RuntimeError):
        with mmtensor.DatasetWriter(url, mode="append") as w:
            w.write({"x": np.zeros((5000, 64), np.float32)})
            raise RuntimeError("stop")
    assert _keys(s3, bucket, "train/") == before


def test_two_appenders_to_a_bucket_race_and_the_loser_changes_nothing(tmp_path):
    s3, bucket = _s3()
    url = f"s3://{bucket}/ds"
    with mmtensor.DatasetWriter(url, columns={"v": "i64"}) as w:
        w.write({"v": np.arange(10)})
    a = mmtensor.DatasetWriter(url, mode="append")
    b = mmtensor.DatasetWriter(url, mode="append")
    a.write({"v": np.arange(10, 20)})
    b.write({"v": np.arange(100, 105)})
    a.finish()
    with pytest.raises(mmtensor.MmtError, match="another writer replaced the manifest"):
        b.finish()
    ds = mmtensor.open_dataset(url, cache=tmp_path / "cache")
    assert ds.take("v", np.arange(ds.num_rows)).tolist() == list(range(20))


def test_the_cli_writes_to_a_bucket_convert_append_and_push(tmp_path):
    s3, bucket = _s3()
    mmt = os.environ.get("MMT_BIN")
    if not mmt:
        if os.environ.get("CI") == "true":
            pytest.fail("MMT_BIN is not set: CI must run the CLI tests")
        pytest.skip("MMT_BIN is not set (scripts/test.sh sets it)")
    x = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    np.save(tmp_path / "x.npy", x)
    url = f"s3://{bucket}/cli/"

    def run(*args):
        r = subprocess.run([mmt, *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stderr

    r = subprocess.run([mmt, "convert", f"x={tmp_path / 'x.npy'}", "-o", url], capture_output=True, text=True)
    assert r.returncode != 0 and "give --shard-size" in r.stderr, r.stderr
    run("convert", f"x={tmp_path / 'x.npy'}", "-o", url, "--shard-size", "4KiB")
    run("append", url, f"x={tmp_path / 'x.npy'}")
    ds = mmtensor.open_dataset(url, cache=tmp_path / "c1")
    np.testing.assert_array_equal(ds.take("x", np.arange(2000)), np.concatenate([x, x]))
    # push: a local dataset with more rows goes up; the shards already there are not sent again.
    local = tmp_path / "local"
    with mmtensor.DatasetWriter(local, columns={"x": ("f32", (4,))}, shard_size="4KiB") as w:
        w.write({"x": np.concatenate([x, x, x])})
    out = run("push", str(local), f"s3://{bucket}/pushed/")
    assert "uploaded" in out and "3000 rows" in out
    out = run("push", str(local), f"s3://{bucket}/pushed/")
    assert "0 shards uploaded" in out, out
    # A local dataset with fewer rows than the bucket's is not pushed over it.
    small = tmp_path / "small"
    with mmtensor.DatasetWriter(small, columns={"x": ("f32", (4,))}) as w:
        w.write({"x": x[:10]})
    r = subprocess.run([mmt, "push", str(small), f"s3://{bucket}/pushed/"], capture_output=True, text=True)
    assert r.returncode != 0 and "more than the local one's 10" in r.stderr, r.stderr
    ds = mmtensor.open_dataset(f"s3://{bucket}/pushed/", cache=tmp_path / "c2")
    assert ds.num_rows == 3000
