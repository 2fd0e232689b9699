"""The documented repacking examples (crates/python/examples/*_repack.py): a Hugging Face
`datasets` dataset, an HDF5 file and a zarr group repacked through DatasetWriter, each run once
as a function and once from its command line, every row compared with the source.

Each library is optional here (the test skips without it); scripts/requirements-test.txt installs
all three so CI runs them. Nothing touches the network: the HF dataset is built with from_dict and
read back with load_from_disk, with HF_DATASETS_OFFLINE=1."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mmtensor

EXAMPLES = Path(__file__).parents[3] / "crates" / "python" / "examples"


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(name: str, *args, env=None) -> str:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def rows_of(path) -> dict:
    ds = mmtensor.open_dataset(path)
    ds.verify()
    return {c: ds.take(c, np.arange(ds.num_rows)) for c in ds.columns}


def assert_rows(path, expected: dict) -> None:
    got = rows_of(path)
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_a_hugging_face_dataset_is_repacked_in_arrow_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(18)
    n = 1037
    emb = rng.standard_normal((n, 4, 8)).astype(np.float32)
    vec = rng.standard_normal((n, 16)).astype(np.float16)
    label = rng.integers(0, 5, n).astype(np.int64)
    weight = rng.random(n).astype(np.float64)
    features = datasets.Features(
        {
            "emb": datasets.Array2D(shape=(4, 8), dtype="float32"),
            "vec": datasets.Sequence(datasets.Value("float16"), length=16),
            "label": datasets.ClassLabel(num_classes=5),
            "weight": datasets.Value("float64"),
            "text": datasets.Value("string"),
        }
    )
    source = datasets.Dataset.from_dict(
        {"emb": emb, "vec": vec, "label": label, "weight": weight, "text": [f"row {i}" for i in range(n)]},
        features=features,
    )
    hf = example("hf_datasets_repack")
    expected = {"emb": emb, "vec": vec, "label": label, "weight": weight}

    # Strings are refused up front, naming the column; selecting the numeric ones goes through.
    with pytest.raises(ValueError, match="text"):
        hf.repack(source, str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    summary = hf.repack(source, str(tmp_path / "out"), columns=list(expected), batch_size=100, shard_size="16KiB")
    assert summary["rows"] == n and summary["shards"] > 1
    assert_rows(tmp_path / "out", expected)

    # A selection (an indices mapping over the Arrow table) keeps its own rows and order.
    picked = [int(i) for i in rng.permutation(n)[:300]]
    hf.repack(source.select(picked).remove_columns("text"), str(tmp_path / "picked"), batch_size=64)
    assert_rows(tmp_path / "picked", {k: v[picked] for k, v in expected.items()})

    # The command line, from a save_to_disk folder of a DatasetDict.
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": source, "test": source.select(range(10))}).save_to_disk(str(saved))
    out = run_cli(
        "hf_datasets_repack", saved, tmp_path / "cli", "--split", "train",
        "--columns", *expected, "--batch-size", "256", "--shard-size", "32KiB",
        env=dict(os.environ),
    )
    assert f"{n} rows" in out
    assert_rows(tmp_path / "cli", expected)


def test_an_hdf5_file_is_repacked_chunk_by_chunk(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(5)
    n = 2500
    x = rng.standard_normal((n, 3, 7)).astype(">f4")  # big-endian on disk: read back native
    y = rng.integers(-(2**40), 2**40, n).astype(np.int64)
    mask = rng.random(n) < 0.5
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=x, chunks=(128, 3, 7), compression="gzip")
        f.create_dataset("meta/y", data=y)  # contiguous
        f.create_dataset("meta/mask", data=mask, chunks=(96,))
        f.create_dataset("names", data=np.array([b"a", b"b"]))  # strings: skipped
        f.create_dataset("short", data=np.zeros(10, np.float32))  # another length: named away
        f["scalar"] = 3.0  # no rows: skipped
    h5 = example("hdf5_repack")
    expected = {"x": x, "meta/y": y, "meta/mask": mask}

    assert h5.batch_rows([128, 96], row_bytes=100, batch_bytes=100_000) % 384 == 0
    with pytest.raises(SystemExit, match="first dimensions differ"):
        h5.repack(str(src), str(tmp_path / "refused"))
    # A batch smaller than one chunk still reads whole chunks: lcm(128, 96) = 384 rows a read.
    summary = h5.repack(str(src), str(tmp_path / "out"), names=list(expected), batch_bytes=1000, shard_size="8KiB")
    assert summary["rows"] == n and summary["shards"] > 1
    assert_rows(tmp_path / "out", expected)

    out = run_cli("hdf5_repack", src, tmp_path / "cli", "--datasets", "x", "/meta/y", "meta/mask", "--batch-mib", "0.01")
    assert f"{n} rows" in out
    assert_rows(tmp_path / "cli", expected)


def test_a_zarr_group_is_repacked_block_by_block(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(7)
    n = 1900
    x = rng.standard_normal((n, 5, 2)).astype(np.float32)
    y = rng.integers(0, 1000, n).astype(np.int32)
    z = rng.random(n).astype(np.float16)
    src = tmp_path / "src.zarr"
    group = zarr.open_group(str(src), mode="w")
    v3 = int(zarr.__version__.split(".")[0]) >= 3
    if v3:
        group.create_array("x", shape=x.shape, chunks=(100, 5, 2), dtype=x.dtype)[:] = x
        labels = group.create_group("labels")
        labels.create_array("y", shape=y.shape, chunks=(64,), shards=(256,), dtype=y.dtype)[:] = y
        labels.create_array("z", shape=z.shape, chunks=(300,), dtype=z.dtype)[:] = z
        group.create_array("other", shape=(7,), chunks=(7,), dtype="f8")[:] = np.arange(7.0)
    else:
        group.create_dataset("x", data=x, chunks=(100, 5, 2))
        labels = group.create_group("labels")
        labels.create_dataset("y", data=y, chunks=(64,))
        labels.create_dataset("z", data=z, chunks=(300,))
        group.create_dataset("other", data=np.arange(7.0), chunks=(7,))
    zr = example("zarr_repack")
    expected = {"x": x, "labels/y": y, "labels/z": z}

    with pytest.raises(SystemExit, match="first dimensions differ"):
        zr.repack(str(src), str(tmp_path / "refused"))
    summary = zr.repack(str(src), str(tmp_path / "out"), names=list(expected), batch_bytes=3000, shard_size="8KiB")
    assert summary["rows"] == n and summary["shards"] > 1
    assert_rows(tmp_path / "out", expected)

    # One array alone: one column, named by the array (or by --arrays).
    zr.repack(str(src / "labels" / "y"), str(tmp_path / "alone"))
    assert_rows(tmp_path / "alone", {"y": y})

    out = run_cli("zarr_repack", src, tmp_path / "cli", "--arrays", "x", "labels/y", "labels/z", "--batch-mib", "0.01")
    assert f"{n} rows" in out
    assert_rows(tmp_path / "cli", expected)
