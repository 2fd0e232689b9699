"""Repack the datasets of an HDF5 file (h5py) that share a first dimension into a dataset folder.

    python crates/python/examples/hdf5_repack.py SRC.h5 OUT [--datasets images labels meta/id]
        [--batch-mib 64] [--shard-size 256MiB]

Every numeric HDF5 dataset with at least one dimension becomes a column named by its path in the
file (`meta/id`), or only those named with --datasets; they must all have the same length along
axis 0 (the rows). Rows are read in slices aligned to the HDF5 chunking (a multiple of every
dataset's chunk length along axis 0, so each chunk is read and decompressed once) of about
--batch-mib MiB in all: memory stays bounded whatever the file's size. Dtypes (any byte order,
float16, bools) are kept; string, compound and variable-length datasets are skipped (or, when
named, refused): split a compound dataset into one dataset per field first.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

import mmtensor

MiB = 1 << 20


def _numeric(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf"


def batch_rows(chunk_rows: list[int], row_bytes: int, batch_bytes: int) -> int:
    """Rows per read: a multiple of every chunk length along axis 0 (their least common multiple,
    or the largest when that is too big), of about `batch_bytes` in all."""
    step = math.lcm(*chunk_rows) if chunk_rows else 1
    if chunk_rows and step * row_bytes > 4 * batch_bytes:
        step = max(chunk_rows)
    return step * max(1, batch_bytes // max(1, step * row_bytes))


def sources(f, names=None) -> dict:
    """The h5py datasets to repack, by column name: `names`, or every numeric dataset with ndim >= 1."""
    import h5py

    if names:
        found = {n.strip("/"): f[n] for n in names}
        for n, d in found.items():
            if not isinstance(d, h5py.Dataset) or d.ndim == 0 or not _numeric(d.dtype):
                raise SystemExit(f"{n}: not a numeric HDF5 dataset with a first dimension ({d})")
        return found
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            if obj.ndim >= 1 and _numeric(obj.dtype):
                found[name] = obj
            else:
                print(f"skipping {name}: {obj.dtype} {obj.shape}", file=sys.stderr)

    f.visititems(visit)
    return found


def repack(src: str, out: str, names=None, batch_bytes: int = 64 * MiB, shard_size="256MiB") -> dict:
    """Writes the datasets of the HDF5 file `src` (all numeric ones, or `names`) to the dataset
    folder `out`, one column each, reading about `batch_bytes` of rows at a time."""
    import h5py

    with h5py.File(src, "r") as f:
        data = sources(f, names)
        if not data:
            raise SystemExit(f"{src}: no numeric dataset to repack")
        lengths = {n: d.shape[0] for n, d in data.items()}
        if len(set(lengths.values())) != 1:
            raise SystemExit(
                f"{src}: the datasets' first dimensions differ ({lengths}): name those that match with --datasets"
            )
        n = next(iter(lengths.values()))
        columns = {name: (d.dtype, d.shape[1:]) for name, d in data.items()}
        row_bytes = sum(d.dtype.itemsize * math.prod(d.shape[1:]) for d in data.values())
        step = batch_rows([d.chunks[0] for d in data.values() if d.chunks], row_bytes, batch_bytes)
        with mmtensor.DatasetWriter(out, columns=columns, shard_size=shard_size) as w:
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                w.write({name: d[lo:hi] for name, d in data.items()})
        return w.finish()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="the HDF5 file")
    p.add_argument("out", help="the dataset folder to write")
    p.add_argument("--datasets", nargs="+", default=None, help="only these HDF5 datasets (paths)")
    p.add_argument("--batch-mib", type=float, default=64, help="MiB of rows read at a time, about")
    p.add_argument("--shard-size", default="256MiB")
    a = p.parse_args()
    summary = repack(a.src, a.out, a.datasets, int(a.batch_mib * MiB), a.shard_size)
    print(f"{a.out}: {summary['rows']} rows in {summary['shards']} shards")


if __name__ == "__main__":
    main()
