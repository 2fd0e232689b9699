"""Repack a Hugging Face `datasets` dataset into a dataset folder, streaming Arrow batches.

    python crates/python/examples/hf_datasets_repack.py SRC OUT [--split train] [--name CONFIG]
        [--columns emb label] [--batch-size 10000] [--shard-size 256MiB]

SRC is a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read with
`load_from_disk`), else anything `datasets.load_dataset` takes (a Hub name, a folder of
parquet/csv/json files). Batches are read as pyarrow Tables (`with_format("arrow")`): no Python
object per row, and numeric columns reach the writer without a copy.

What goes through: fixed-shape numeric columns, i.e. `Value` numbers and bools, `ClassLabel`,
fixed-length lists (`List(Value("float32"), length=768)`, formerly `Sequence(..., length=768)`)
and `Array2D`..`Array5D` with a fixed shape (embeddings, images as arrays). Every dtype is kept.

What does not: strings, variable-length lists, `Image`/`Audio` (structs), nulls. Drop or encode
them first, e.g. in a few lines calling `repack`:

    ds = ds.remove_columns(["text", "url"])            # or --columns emb label
    ds = ds.class_encode_column("category")            # string labels -> ClassLabel ints
    ds = ds.map(lambda b: tok(b["text"], padding="max_length", truncation=True, max_length=128),
                batched=True, remove_columns=["text"])  # text -> token ids, then fix their length:
    ds = ds.cast_column("input_ids", datasets.List(datasets.Value("int32"), length=128))
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import pyarrow as pa

import mmtensor


def _is_array_xd(t: pa.DataType) -> bool:
    """Whether `t` is the Arrow type of a datasets `Array2D`..`Array5D` feature."""
    return isinstance(t, pa.ExtensionType) and type(t).__name__.startswith("Array") and hasattr(t, "shape")


def _fixed_shape(t: pa.DataType) -> bool:
    """Whether a column of Arrow type `t` holds fixed-shape numeric rows."""
    if _is_array_xd(t):  # nested lists; shape[0] None: a variable first dimension
        inner = t.storage_type
        for _ in t.shape:
            inner = inner.value_type
        return t.shape[0] is not None and _fixed_shape(inner)
    if isinstance(t, pa.FixedShapeTensorType):
        return True
    if pa.types.is_fixed_size_list(t):
        return _fixed_shape(t.value_type)
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _array_xd(name: str, column: pa.ChunkedArray) -> pa.Array:
    """A datasets `ArrayXD` column (nested variable-length lists under an extension type) as an
    Arrow fixed-shape tensor column, which the writer takes as rows of that shape."""
    chunk = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    shape = tuple(chunk.type.shape)
    if chunk.null_count:
        raise ValueError(f"column `{name}` has {chunk.null_count} nulls")
    values = chunk.storage
    for _ in shape:
        values = values.flatten()  # honours slicing offsets
    if len(values) != len(chunk) * int(np.prod(shape)):
        raise ValueError(f"column `{name}`: a row's shape is not {shape}")
    array = values.to_numpy(zero_copy_only=False).reshape((len(chunk),) + shape)
    return pa.FixedShapeTensorArray.from_numpy_ndarray(array)


def _batch(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if _is_array_xd(field.type):
            table = table.set_column(i, field.name, _array_xd(field.name, table.column(i)))
    return table


def repack(dataset, out: str, columns=None, batch_size: int = 10_000, shard_size="256MiB") -> dict:
    """Writes the rows of `dataset` (a `datasets.Dataset` or `IterableDataset`) to the dataset
    folder `out`, `batch_size` rows at a time; `columns` (names) keeps only those columns."""
    if columns:
        dataset = dataset.select_columns(list(columns))
    if dataset.features is not None:  # an IterableDataset may not know them; the writer checks
        schema = dataset.features.arrow_schema
        bad = [f"{f.name} ({dataset.features[f.name]})" for f in schema if not _fixed_shape(f.type)]
        if bad:
            raise ValueError(
                "not fixed-shape numeric columns: " + ", ".join(bad) + "; drop them (--columns, "
                "remove_columns) or encode them (class_encode_column, map + cast_column), see "
                "this script's docstring"
            )
    with mmtensor.DatasetWriter(out, shard_size=shard_size) as w:
        for table in dataset.with_format("arrow").iter(batch_size=batch_size):
            w.write(_batch(table))
    return w.finish()


def load(src: str, split: str | None, name: str | None = None):
    """`load_from_disk` for a `save_to_disk` folder, else `load_dataset`."""
    import datasets

    if os.path.isdir(src) and (
        os.path.exists(os.path.join(src, "state.json")) or os.path.exists(os.path.join(src, "dataset_dict.json"))
    ):
        ds = datasets.load_from_disk(src)
    else:
        ds = datasets.load_dataset(src, name, split=split)
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split is None:
            raise SystemExit(f"{src} holds the splits {list(ds)}: pick one with --split")
        ds = ds[split]
    return ds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="a save_to_disk folder, a Hub dataset name or a data folder")
    p.add_argument("out", help="the dataset folder to write")
    p.add_argument("--split", default=None, help="the split (required when SRC has several)")
    p.add_argument("--name", default=None, help="the configuration, for load_dataset")
    p.add_argument("--columns", nargs="+", default=None, help="keep only these columns")
    p.add_argument("--batch-size", type=int, default=10_000)
    p.add_argument("--shard-size", default="256MiB")
    a = p.parse_args()
    ds = load(a.src, a.split, a.name)
    summary = repack(ds, a.out, a.columns, a.batch_size, a.shard_size)
    print(f"{a.out}: {summary['rows']} rows in {summary['shards']} shards")


if __name__ == "__main__":
    main()
