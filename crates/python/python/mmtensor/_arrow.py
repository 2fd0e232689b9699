"""pyarrow tables and record batches as DatasetWriter batches: each column one NumPy array.

A column becomes an array whose first axis is the rows: primitive types (integers, floats,
half floats, bools) as they are; fixed-size lists (nested too) as rows of that shape; Arrow's
fixed-shape tensor extension type as rows of its shape. Every conversion is per column, never
per row: a column in one chunk of a numeric type is viewed without a copy, a table column in
several chunks is concatenated once, and bools (bit-packed in Arrow) are unpacked.

Variable-length lists (``list<...>``, ``large_list<...>``) of those become ragged columns: a
``(values, lengths)`` pair, the values viewed as above and the lengths from the list's offsets
(Arrow's list layout is exactly a ragged column's: values and row offsets).

Anything else (strings, structs, lists of lists of any length, a column with nulls, in a list's
rows or in its values) raises TypeError or ValueError naming the column.
"""

from __future__ import annotations

from typing import Any, Dict


def columns(batch: Any) -> Dict[str, Any]:
    """The columns of a ``pyarrow.Table`` or ``pyarrow.RecordBatch`` as NumPy arrays (a ragged
    column as a ``(values, lengths)`` pair), by name."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        arrays = [c.combine_chunks() if c.num_chunks != 1 else c.chunk(0) for c in batch.columns]
    elif isinstance(batch, pa.RecordBatch):
        arrays = list(batch.columns)
    else:
        raise TypeError(
            f"DatasetWriter.write: a pyarrow batch is a Table or a RecordBatch, not {type(batch).__name__}"
        )
    return {name: _column(name, a) for name, a in zip(batch.schema.names, arrays)}


def _column(name: str, array: Any) -> Any:
    """One column: an array, or ``(values, lengths)`` for a variable-length list column."""
    import numpy as np
    import pyarrow as pa

    t = array.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return _array(name, array)
    if array.null_count:
        raise ValueError(
            f"DatasetWriter.write: column `{name}` has {array.null_count} null rows: a ragged "
            "column holds a list (perhaps empty) in every row; fill them first"
        )
    # `offsets` and `flatten()` both respect a sliced array's offset.
    offsets = array.offsets.to_numpy(zero_copy_only=False)
    values = _array(name, array.flatten())
    return values, np.diff(offsets).astype(np.uint64)


def _array(name: str, array: Any) -> Any:
    import pyarrow as pa

    if array.null_count:
        raise ValueError(
            f"DatasetWriter.write: column `{name}` has {array.null_count} nulls: a dataset column "
            "holds a value in every row; fill them first (pyarrow.compute.fill_null)"
        )
    t = array.type
    if isinstance(t, pa.FixedShapeTensorType):
        return array.to_numpy_ndarray()
    if pa.types.is_fixed_size_list(t):
        values = _array(name, array.flatten())
        return values.reshape((len(array), t.list_size) + values.shape[1:])
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return array.to_numpy(zero_copy_only=False)
    raise TypeError(
        f"DatasetWriter.write: column `{name}` is of the Arrow type {t}, which is not a numeric "
        "column: a dataset column holds numbers, bools, fixed-size lists of them, fixed-shape "
        "tensors, or (a ragged column) variable-length lists of those"
    )
