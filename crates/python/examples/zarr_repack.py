"""Repack a zarr array, or the arrays of a zarr group, into a dataset folder, block by block.

    python crates/python/examples/zarr_repack.py SRC.zarr OUT [--arrays x labels/y]
        [--batch-mib 64] [--shard-size 256MiB]

SRC is anything `zarr.open` takes (a local folder or a URL fsspec knows, zarr format 2 or 3;
zarr-python 2.x and 3.x). A group gives one column per numeric array with at least one dimension,
named by its path in the group (`labels/y`), or only those named with --arrays; an array alone
gives one column named by its own name (`--arrays` renames it). All must have the same length
along axis 0 (the rows). Rows are read in blocks aligned to the zarr chunks (and shards, in zarr
format 3) along axis 0, so each chunk is fetched and decompressed once, of about --batch-mib MiB
in all: memory stays bounded whatever the array's size. Dtypes are kept; string and structured
arrays are skipped (or, when named, refused).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

import mmtensor

MiB = 1 << 20


def _numeric(dtype) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind in "biuf"


def batch_rows(block_rows: list[int], row_bytes: int, batch_bytes: int) -> int:
    """Rows per read: a multiple of every block length along axis 0 (their least common multiple,
    or the largest when that is too big), of about `batch_bytes` in all."""
    step = math.lcm(*block_rows) if block_rows else 1
    if block_rows and step * row_bytes > 4 * batch_bytes:
        step = max(block_rows)
    return step * max(1, batch_bytes // max(1, step * row_bytes))


def _arrays_of(group) -> dict:
    """Every array under `group`, by path, with zarr 3's `members` or zarr 2's `visititems`."""
    import zarr

    if hasattr(group, "members"):  # zarr-python 3
        return {name: obj for name, obj in group.members(max_depth=None) if isinstance(obj, zarr.Array)}
    found = {}
    group.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, zarr.Array) else None)
    return found


def sources(src, names=None) -> dict:
    """The zarr arrays to repack, by column name."""
    import zarr

    node = zarr.open(src, mode="r")
    if isinstance(node, zarr.Array):
        name = (node.name or "").strip("/").rsplit("/", 1)[-1]
        if not name and isinstance(src, (str, os.PathLike)):  # an array at the root of its store
            name = os.path.basename(os.fspath(src).rstrip("/")).removesuffix(".zarr")
        name = name or "x"
        if names and len(names) != 1:
            raise SystemExit(f"{src} is one array: give --arrays one column name")
        found = {names[0] if names else name: node}
        for n, a in found.items():
            if a.ndim == 0 or not _numeric(a.dtype):
                raise SystemExit(f"{src}: not a numeric array with a first dimension ({a.dtype} {a.shape})")
        return found
    if names:
        found = {n.strip("/"): node[n.strip("/")] for n in names}
        for n, a in found.items():
            if not isinstance(a, zarr.Array) or a.ndim == 0 or not _numeric(a.dtype):
                raise SystemExit(f"{n}: not a numeric zarr array with a first dimension ({a})")
        return found
    found = {}
    for n, a in sorted(_arrays_of(node).items()):
        if a.ndim >= 1 and _numeric(a.dtype):
            found[n] = a
        else:
            print(f"skipping {n}: {a.dtype} {a.shape}", file=sys.stderr)
    return found


def repack(src, out: str, names=None, batch_bytes: int = 64 * MiB, shard_size="256MiB") -> dict:
    """Writes the zarr array or group `src` (a path, URL or store; all its numeric arrays, or
    `names`) to the dataset folder `out`, reading about `batch_bytes` of rows at a time."""
    data = sources(src, names)
    if not data:
        raise SystemExit(f"{src}: no numeric array to repack")
    lengths = {n: a.shape[0] for n, a in data.items()}
    if len(set(lengths.values())) != 1:
        raise SystemExit(f"{src}: the arrays' first dimensions differ ({lengths}): name those that match with --arrays")
    n = next(iter(lengths.values()))
    columns = {name: (a.dtype, tuple(a.shape[1:])) for name, a in data.items()}
    row_bytes = sum(a.dtype.itemsize * math.prod(a.shape[1:]) for a in data.values())
    # zarr 3 sharding: a shard is the unit of storage, its inner chunks the unit of decoding.
    blocks = [(getattr(a, "shards", None) or a.chunks)[0] for a in data.values()]
    step = batch_rows(blocks, row_bytes, batch_bytes)
    with mmtensor.DatasetWriter(out, columns=columns, shard_size=shard_size) as w:
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            w.write({name: np.asarray(a[lo:hi]) for name, a in data.items()})
    return w.finish()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a zarr array or group (path or URL)")
    p.add_argument("out", help="the dataset folder to write")
    p.add_argument("--arrays", nargs="+", default=None, help="only these arrays (paths in the group)")
    p.add_argument("--batch-mib", type=float, default=64, help="MiB of rows read at a time, about")
    p.add_argument("--shard-size", default="256MiB")
    a = p.parse_args()
    summary = repack(a.src, a.out, a.arrays, int(a.batch_mib * MiB), a.shard_size)
    print(f"{a.out}: {summary['rows']} rows in {summary['shards']} shards")


if __name__ == "__main__":
    main()
