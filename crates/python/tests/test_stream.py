"""Streaming a dataset from object storage (moto, started by scripts/test.sh) through a cache
smaller than the data: `open_dataset(url, stream=True)` and `Loader(url, cache=...)` give the
local loader's batches, the cache folder stays within its size, and errors name what is wrong."""

import os
import threading
import time

import numpy as np
import pytest

import mmtensor

from test_dataset import s3_endpoint

ROWS, WIDTH = 2000, 1024  # float32 rows of 4 KiB: 8 MiB


def disk_usage(folder):
    total = 0
    for e in os.scandir(folder):
        try:
            total += e.stat().st_blocks * 512
        except FileNotFoundError:
            pass
    return total


class Sampler:
    """The largest disk usage of a folder seen every 5 ms while it runs."""

    def __init__(self, folder):
        self.folder, self.max, self.stop = folder, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            if self.folder.exists():
                self.max = max(self.max, disk_usage(self.folder))
            time.sleep(0.005)

    def finish(self):
        self.stop = True
        self.thread.join()
        return self.max


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    endpoint = s3_endpoint()
    boto3 = pytest.importorskip("boto3")
    tmp = tmp_path_factory.mktemp("stream")
    x = (np.arange(ROWS, dtype=np.float32)[:, None] * 10 + np.arange(WIDTH, dtype=np.float32))
    np.save(tmp / "x.npy", x)
    np.save(tmp / "id.npy", np.arange(ROWS, dtype=np.int64))
    local = tmp / "ds"
    # 64 KiB checksum blocks: the unit a stream fetches is whole blocks.
    mmtensor.convert({"x": tmp / "x.npy", "id": tmp / "id.npy"}, local, shard_size="1MiB",
                     block_size=64 << 10)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"py-stream-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    for f in local.iterdir():
        s3.put_object(Bucket=bucket, Key=f"train/{f.name}", Body=f.read_bytes())
    return {"url": f"s3://{bucket}/train", "local": local, "s3": s3, "bucket": bucket}


def batches(loader):
    return [(b["id"].copy(), b["x"].copy()) for b in loader]


@pytest.mark.parametrize("shuffle", [True, "block", False])
def test_a_streamed_epoch_equals_the_local_one_within_the_cache(remote, tmp_path, shuffle):
    cache = tmp_path / "cache"
    ds = mmtensor.open_dataset(remote["url"], cache=cache, cache_size="4MiB", stream=True,
                               part_size="64KiB")
    assert isinstance(ds, mmtensor.StreamingDataset)
    assert (ds.num_rows, ds.keys(), ds.cache_size) == (ROWS, ["x", "id"], 4 << 20)
    kw = dict(shuffle=shuffle, seed=3, **({"block_rows": 16} if shuffle == "block" else {}))
    sampler = Sampler(cache)
    got = batches(mmtensor.Loader(ds, 50, **kw))
    peak = sampler.finish()
    want = batches(mmtensor.Loader(mmtensor.open_dataset(remote["local"]), 50, **kw))
    assert len(got) == len(want) == ROWS // 50
    for (gi, gx), (wi, wx) in zip(got, want):
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_array_equal(gx, wx)
    ids = np.concatenate([g[0] for g in got])
    assert sorted(ids.tolist()) == list(range(ROWS))
    assert peak <= 4 << 20, f"the cache folder took {peak} bytes, over 4 MiB"
    # Every row's bytes came over the network at least once.
    assert ds.stats()["bytes_downloaded"] >= ROWS * (WIDTH * 4 + 8)


def test_loader_of_a_url_streams_and_resumes_exactly(remote, tmp_path):
    # Blocks of 128 rows in windows of 4: a batch reads at most 8 parts of 1 MiB.
    kw = dict(cache=tmp_path / "cache", cache_size="10MiB", shuffle="block", seed=1,
              block_rows=128, window_blocks=4)
    loader = mmtensor.Loader(remote["url"], 64, **kw)
    it = iter(loader)
    first = [next(it)["id"].copy() for _ in range(5)]
    state = loader.state_dict()
    rest = [b["id"].copy() for b in it]
    again = mmtensor.Loader(remote["url"], 64, **kw)
    again.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([b["id"] for b in again]), np.concatenate(rest))
    assert sorted(np.concatenate(first + rest).tolist()) == list(range(ROWS))


def test_streaming_refusals_name_what_to_do(remote, tmp_path):
    url = remote["url"]
    with pytest.raises(ValueError, match="cache folder"):
        mmtensor.open_dataset(url, stream=True)
    with pytest.raises(ValueError, match="stream=True"):
        mmtensor.open_dataset(url, cache=tmp_path / "c", part_size="1MiB")
    with pytest.raises(ValueError, match="Loader"):
        mmtensor.open_dataset(url, cache=tmp_path / "c", stream=True, rank=0, world_size=2)
    with pytest.raises(ValueError, match="remote dataset"):
        mmtensor.open_dataset(remote["local"], stream=True)
    with pytest.raises(mmtensor.LoaderError, match="cache"):
        mmtensor.Loader(url, 8)
    with pytest.raises(mmtensor.LoaderError, match="cache_size"):
        mmtensor.Loader(url, 8, cache=tmp_path / "c")
    # A batch whose parts alone exceed the cache: named when it is read.
    small = mmtensor.open_dataset(url, cache=tmp_path / "small", cache_size="256KiB",
                                  stream=True, part_size="64KiB")
    with pytest.raises(mmtensor.MmtError, match="batch 0.*more than the cache"):
        list(mmtensor.Loader(small, 500, shuffle=True))


def test_a_shard_deleted_under_a_stream_is_named(remote, tmp_path):
    s3, bucket = remote["s3"], remote["bucket"]
    # A copy of the dataset under its own prefix, whose last shard goes away mid-epoch.
    names = sorted(f.name for f in remote["local"].iterdir())
    for n in names:
        s3.copy_object(Bucket=bucket, Key=f"gone/{n}", CopySource=f"{bucket}/train/{n}")
    ds = mmtensor.open_dataset(f"s3://{bucket}/gone", cache=tmp_path / "c", cache_size="4MiB",
                               stream=True)
    last = [n for n in names if n.endswith(".mmt")][-1]
    s3.delete_object(Bucket=bucket, Key=f"gone/{last}")
    with pytest.raises(mmtensor.StoreNotFoundError, match=f"gone/{last}"):
        list(mmtensor.Loader(ds, 100))


def test_a_streamed_epoch_saved_on_4_ranks_resumes_on_3_reading_every_row_once(remote, tmp_path):
    # Ranks of one node share the cache folder; each opens it itself, as processes do.
    kw = dict(shuffle="block", seed=7, block_rows=64, window_blocks=4)

    def loader(rank, world_size):
        # Parts of 256 KiB: a block of 64 rows each.
        ds = mmtensor.open_dataset(remote["url"], cache=tmp_path / "cache", cache_size="6MiB",
                                   stream=True, part_size="256KiB")
        return mmtensor.Loader(ds, 25, rank=rank, world_size=world_size, **kw)

    seen = []
    states = []
    for r in range(4):
        ld = loader(r, 4)
        it = iter(ld)
        seen += [next(it)["id"].copy() for _ in range(6)]
        states.append(ld.state_dict())
        del it
    assert {s["samples"] for s in states} == {6 * 25 * 4}
    for r in range(3):
        ld = loader(r, 3)
        ld.load_state_dict(states[0])
        seen += [b["id"].copy() for b in ld]
    ids = np.concatenate(seen)
    # 2000 rows, 600 read on 4 ranks, 1400 left: not a multiple of 3, so one padded position
    # repeats a row read at the epoch's start, as an uninterrupted epoch pads.
    assert sorted(set(ids.tolist())) == list(range(ROWS))
    assert len(ids) == ROWS + (-(ROWS - 600)) % 3
