"""mmtensor.open_dataset: a sharded folder as one index space; take and the Loader span shards and
give exactly what the same rows in one store give."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import mmtensor

REPO = Path(__file__).parents[3]
GOLDEN = REPO / "fixtures" / "golden" / "dataset"


def mmt_bin() -> str:
    path = os.environ.get("MMT_BIN") or str(REPO / "target" / "debug" / "mmt")
    if not Path(path).exists():
        pytest.skip(f"the mmt binary is needed to write sharded datasets ({path} is missing)")
    return path


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    d = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 6), dtype=np.float32)
    y = np.arange(1000, dtype=np.int64) * 3
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    mmtensor.convert([f"x={d / 'x.npy'}", f"y={d / 'y.npy'}"], d / "one.mmt")
    # 1000 rows of 32 bytes in shards of about 2 KiB: many shards.
    subprocess.run([mmt_bin(), "convert", f"x={d / 'x.npy'}", f"y={d / 'y.npy'}", "-o",
                    str(d / "ds"), "--shard-size", "2KiB"], check=True, capture_output=True)
    return {"one": d / "one.mmt", "ds": d / "ds", "x": x, "y": y}


def test_the_golden_dataset_reads_as_one_index_space():
    ds = mmtensor.open_dataset(GOLDEN)
    assert (ds.rows, len(ds), ds.shards, ds.columns) == (10, 10, 4, ["x", "y"])
    assert ds.shape("x") == (10, 3) and ds.dtype("x") == "U16" and "y" in ds
    y = ds.take("y", np.arange(10))
    assert y.dtype == np.int64 and y.flags.writeable
    # Rows 2..4 straddle the first shard boundary, -1 is the last row (in the last shard).
    np.testing.assert_array_equal(ds.take("y", [2, 3, 4, -1]), y[[2, 3, 4, 9]])
    ds.verify()
    with pytest.raises(mmtensor.RowRangeError, match="index 10 is out of range"):
        ds.take("y", [10])
    with pytest.raises(mmtensor.TensorNotFoundError, match="nope"):
        ds.take("nope", [0])


def test_take_across_shards_equals_fancy_indexing(sharded):
    ds = mmtensor.open_dataset(sharded["ds"])
    assert ds.shards > 10 and ds.rows == 1000
    idx = np.random.default_rng(2).integers(-1000, 1000, size=700)
    np.testing.assert_array_equal(ds.take("x", idx), sharded["x"][idx])
    out = np.empty((700,), dtype=np.int64)
    assert ds.take("y", idx, out=out) is out
    np.testing.assert_array_equal(out, sharded["y"][idx])


@pytest.mark.parametrize("shuffle", [False, True, "block"])
def test_a_loader_over_a_dataset_gives_the_batches_of_one_store(sharded, shuffle):
    extra = {"block_rows": 16, "window_blocks": 4} if shuffle == "block" else {}
    ds = mmtensor.open_dataset(sharded["ds"])
    a = mmtensor.Loader(sharded["one"], 64, shuffle=shuffle, seed=5, prefetch=2, **extra)
    b = mmtensor.Loader(ds, 64, shuffle=shuffle, seed=5, prefetch=2, **extra)
    assert len(a) == len(b) and b.columns == ["x", "y"]
    for ba, bb in zip(a, b):
        for name in ("x", "y"):
            np.testing.assert_array_equal(ba[name], bb[name])
    assert b.state_dict()["epoch"] == 1


def s3_endpoint():
    endpoint = os.environ.get("MMT_TEST_S3_ENDPOINT")
    if not endpoint:
        if os.environ.get("CI") == "true":
            pytest.fail("MMT_TEST_S3_ENDPOINT is not set: CI must run the object storage tests")
        pytest.skip("MMT_TEST_S3_ENDPOINT is not set (scripts/test.sh starts moto and sets it)")
    return endpoint


def test_a_dataset_on_s3_opens_through_the_cache(tmp_path):
    endpoint = s3_endpoint()
    boto3 = pytest.importorskip("boto3")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"py-dataset-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    for f in GOLDEN.iterdir():
        s3.put_object(Bucket=bucket, Key=f"train/{f.name}", Body=f.read_bytes())
    local = mmtensor.open_dataset(GOLDEN)
    url = f"s3://{bucket}/train/"
    with pytest.raises(ValueError, match="cache"):
        mmtensor.open_dataset(url)
    ds = mmtensor.open_dataset(url, cache=tmp_path / "cache", cache_size="64MiB")
    assert (ds.rows, ds.shards, ds.columns) == (local.rows, 4, ["x", "y"])
    idx = [9, 0, 3, 4, 8]
    np.testing.assert_array_equal(ds.take("y", idx), local.take("y", idx))
    batches = list(mmtensor.Loader(ds, 4, shuffle=True))
    assert sorted(np.concatenate([b["y"] for b in batches]).tolist()) == sorted(
        local.take("y", range(10)).tolist())
    with pytest.raises(mmtensor.StoreNotFoundError):
        mmtensor.open_dataset(f"s3://{bucket}/nothing/", cache=tmp_path / "cache")
    with pytest.raises(ValueError, match="cache_size"):
        mmtensor.open_dataset(url, cache=tmp_path / "cache", cache_size="lots")
