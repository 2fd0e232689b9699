"""A map-style dataset over a store's rows, for ``torch.utils.data.DataLoader``.

:class:`RowDataset` serves the rows of one or more tensors that share their first dimension (the
columns). ``DataLoader`` asks it for a whole batch at once (``__getitems__``), and it answers with
one parallel :meth:`Store.take` per column, straight from the mapping, never one read per row:

>>> import torch, mmtensor
>>> from mmtensor.data import RowDataset, collate
>>> ds = RowDataset("train.mmt", columns=["x", "y"], output="torch")      # doctest: +SKIP
>>> loader = torch.utils.data.DataLoader(                                  # doctest: +SKIP
...     ds, batch_size=256, shuffle=True, collate_fn=collate,
...     num_workers=2, multiprocessing_context="spawn")
>>> for batch in loader:                                                   # doctest: +SKIP
...     batch["x"], batch["y"]       # torch tensors of 256 rows each

**Collate.** A batch comes back as a :class:`Batch`: the gathered columns (``batch.columns``, one
array of all the batch's rows per column) that also reads as a list of per-row dicts, each value a
view into those arrays. So torch's ``default_collate`` works on it as on any dataset of dicts, but
stacks the rows into a new tensor: two copies of every byte (the gather, then the stack).
:func:`collate` (also ``RowDataset.collate``) recognises a :class:`Batch` and returns its columns
as they are: one copy (the gather). In a DataLoader worker the gather writes straight into shared
memory (as ``default_collate`` does for its stack), so sending the batch to the main process passes
a handle and copies nothing; ``pin_memory=True`` adds its own copy in either case.

**Workers.** A ``RowDataset`` pickles as its store's path and fingerprint, the column names and the
row count, never any array. A ``spawn`` (or ``forkserver``) worker reopens the file on its first
batch and raises :class:`mmtensor.StoreChangedError`, which DataLoader re-raises in the main
process, if it is no longer the file the dataset was made from, in the version it was made from:
replaced at the path (by a rename too, with the same shapes), rewritten in place or truncated, for
every format. The fingerprint is the file's inode number, modification time, length and header
hash; what it detects and what it cannot (a write in place that sets the modification time back)
is stated once, in the Rust docs of ``mmtensor::Fingerprint``. A ``fork`` worker uses the mapping
it inherited. A ``RowDataset`` of a sharded :class:`mmtensor.Dataset` pickles as the dataset's
folder (or URL, cache folder and size), the rank it was opened for and its manifest's xxh3, and a
worker raises :class:`mmtensor.StoreChangedError` if the manifest changed (rows appended).
"""

from __future__ import annotations

import collections.abc
import operator
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

import functools
import warnings

from mmtensor._mmtensor import Dataset, Store
from mmtensor._mmtensor import open as _open
from mmtensor._mmtensor import open_dataset as _open_dataset
from mmtensor.errors import MmtError, TensorNotFoundError

__all__ = ["RowDataset", "Batch", "collate"]

_OUTPUTS = ("torch", "numpy")


class Batch(collections.abc.Sequence):
    """The rows of one ``__getitems__`` call.

    ``columns`` maps each column's name to one array (a ``torch.Tensor``, or a NumPy array with
    ``output="numpy"``) holding all the batch's rows, in the order they were asked for. As a
    sequence, ``batch[j]`` is row ``j`` as a dict ``{name: columns[name][j]}`` of views into those
    arrays (no copy), which is what torch's ``default_collate`` expects of a dataset's samples.
    """

    __slots__ = ("columns", "_len")

    def __init__(self, columns: Dict[str, Any], length: int) -> None:
        self.columns = columns
        self._len = length

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return Batch({name: c[j] for name, c in self.columns.items()}, len(range(*j.indices(self._len))))
        j = operator.index(j)
        if not -self._len <= j < self._len:
            raise IndexError(f"row {j} of a batch of {self._len} rows")
        if j < 0:
            j += self._len
        return {name: c[j] for name, c in self.columns.items()}

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for j in range(self._len):
            yield {name: c[j] for name, c in self.columns.items()}

    def __repr__(self) -> str:
        return f"<mmtensor.data.Batch of {self._len} rows: {', '.join(self.columns)}>"


def collate(batch: Any) -> Any:
    """A ``collate_fn`` for ``DataLoader``: a :class:`Batch` becomes its ``columns`` dict as is
    (no copy); anything else goes to ``torch.utils.data.default_collate``."""
    if isinstance(batch, Batch):
        return batch.columns
    from torch.utils.data import default_collate

    return default_collate(batch)


class _Column:
    """What one process needs to gather a column: its tensor handle, row shape and dtypes."""

    __slots__ = ("take", "row_shape", "row_nbytes", "numpy_dtype", "torch_dtype")

    def __init__(self, source: Union[Store, Dataset], name: str, torch: Any) -> None:
        if isinstance(source, Store):
            tensor = source.tensor(name)
            self.take = tensor.take
            shape = tensor.shape
        else:
            tensor = None
            self.take = functools.partial(source.take, name)
            shape = source.shape(name)
        self.row_shape = tuple(shape[1:])
        # The dtypes of `take`'s result and of `Store.torch`, asked of the binding itself (whose
        # mmtensor::interop tables decide them) on an empty gather and an empty row range.
        self.numpy_dtype = self.take([]).dtype
        self.row_nbytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.numpy_dtype.itemsize
        self.torch_dtype = None
        if torch is not None:
            try:
                if tensor is None:
                    raise LookupError  # a dataset column: torch's own names serve, as below
                self.torch_dtype = tensor[0:0].torch().dtype
            except (MmtError, LookupError):
                # No view to ask (a dataset column), or an empty view the binding will not
                # export (say, complex data unaligned in a .npy file): the gather lands in an
                # aligned buffer of ours, so torch's own mapping of the NumPy dtype serves, and
                # ml_dtypes' bf16 and fp8 types are named as torch names them.
                if self.numpy_dtype.type.__module__ == "numpy":
                    self.torch_dtype = torch.from_numpy(np.empty(0, self.numpy_dtype)).dtype
                else:
                    self.torch_dtype = getattr(torch, self.numpy_dtype.name)


class RowDataset:
    """A map-style dataset of a store's rows: ``ds[i]`` is row ``i`` of every column as a dict.

    Parameters
    ----------
    store:
        An open :class:`mmtensor.Store` or :class:`mmtensor.Dataset` (a sharded dataset, from
        :func:`mmtensor.open_dataset`: its rows across every shard), or a path to open: a file
        (mapped, as :func:`mmtensor.open`) or a dataset folder (as :func:`mmtensor.open_dataset`).
    columns:
        The names of the tensors to serve, which must share their first dimension (the rows).
        By default, every tensor whose first dimension equals that of the first tensor with one
        (in the store's order; a dataset's columns all do); 0-dimensional tensors and ragged
        tensors and columns (rows of different lengths: read them with ``ragged(name)``) are never
        columns, and tensors with another number of rows are left out with a ``UserWarning``
        naming them.
    output:
        ``"numpy"`` (default, as everywhere in mmtensor): NumPy arrays (bf16 and fp8 as
        ``ml_dtypes`` types). ``"torch"``: ``torch.Tensor`` values, bf16 and fp8 as
        ``torch.bfloat16``, ``torch.float8_e4m3fn`` and ``torch.float8_e5m2``, every tensor
        writable and owning its memory; in a DataLoader worker the gather writes them straight
        into shared memory, so with ``collate_fn=collate`` the batch reaches the main process
        without a copy (NumPy arrays are pickled through the worker's pipe instead): pass it
        for training with workers.

    ``len(ds)`` is the number of rows, as a torch ``Dataset`` counts its samples (a
    :class:`Store` or :class:`Dataset` counts its tensors or columns instead). ``ds.__getitems__(indices)`` gathers a whole batch with one
    :meth:`Store.take` per column and returns it as a :class:`Batch`; use ``collate_fn=collate``
    (or ``ds.collate``) to get its columns without the copy ``default_collate`` makes.

    Raises
    ------
    TensorNotFoundError
        A column that is not in the store (the message names it and the file).
    ValueError
        A column with no rows (0-dimensional) or other rows than the first column, a repeated
        column, no columns, or an unknown ``output``.
    TypeError
        ``columns`` given as one string rather than a list of names.
    ImportError
        ``output="torch"`` without torch installed.
    """

    collate = staticmethod(collate)

    def __init__(
        self,
        store: Union[Store, str, "os.PathLike[str]"],
        columns: Optional[Sequence[str]] = None,
        output: str = "numpy",
    ) -> None:
        if output not in _OUTPUTS:
            raise ValueError(f"RowDataset output must be \"torch\" or \"numpy\", not {output!r}")
        if output == "torch":
            _import_torch()
        if isinstance(store, (str, os.PathLike)):
            if os.path.isfile(os.path.join(os.fspath(store), "manifest.mmtm")):
                store = _open_dataset(store)
            else:
                store = _open(store)
        elif not isinstance(store, (Store, Dataset)):
            raise TypeError(
                "RowDataset needs an mmtensor.Store, an mmtensor.Dataset or a path, not "
                f"{type(store).__name__}"
            )
        self._columns, self._rows = _choose_columns(store, columns)
        self._output = output
        self._store: Optional[Union[Store, Dataset]] = store
        self._reopen: Optional[Tuple[Any, Tuple[Any, ...]]] = None
        self._gather_plan: Optional[List[_Column]] = None

    # Pickling: the store's own pickle (path and fingerprint), deferred until the first use in the
    # receiving process, so that a changed file raises StoreChangedError inside DataLoader's fetch
    # (which sends it to the main process) rather than while a spawned worker starts (where it
    # would only kill the worker).
    def __getstate__(self) -> Dict[str, Any]:
        reopen = self._reopen if self._store is None else self._store.__reduce__()
        return {"reopen": reopen, "columns": self._columns, "rows": self._rows, "output": self._output}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._reopen = state["reopen"]
        self._columns = state["columns"]
        self._rows = state["rows"]
        self._output = state["output"]
        self._store = None
        self._gather_plan = None

    @property
    def store(self) -> Union[Store, Dataset]:
        """The store or dataset (reopened on first use in a process that received the dataset
        pickled)."""
        if self._store is None:
            assert self._reopen is not None
            reopen, args = self._reopen
            self._store = reopen(*args)
        return self._store

    @property
    def columns(self) -> Tuple[str, ...]:
        """The names of the tensors served, in output order."""
        return self._columns

    @property
    def output(self) -> str:
        """``"torch"`` or ``"numpy"``."""
        return self._output

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        where = self._store.path if self._store is not None else self._reopen[1][0]  # type: ignore[index]
        return (
            f"<mmtensor.data.RowDataset of {self._rows} rows, columns {', '.join(self._columns)}, "
            f"output {self._output}, from {where}>"
        )

    def __getitem__(self, i: int) -> Dict[str, Any]:
        """Row ``i`` (negative counts from the end) of every column; RowRangeError (an
        IndexError) past the end."""
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(
                f"RowDataset rows are indexed by one integer, not {type(i).__name__} "
                "(DataLoader batches go through __getitems__)"
            ) from None
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """The rows at `indices` (a 1-d sequence of integers) of every column, gathered with one
        ``take`` per column; see :class:`Batch`."""
        idx = np.asarray(indices)
        if idx.ndim != 1:
            raise ValueError(f"RowDataset.__getitems__ needs a 1-d list of row indices, not {idx.ndim}-d")
        if idx.size == 0:
            idx = idx.astype(np.int64)
        k = len(idx)
        plan = self._plan()
        columns: Dict[str, Any] = {}
        if self._output == "numpy":
            for name, col in zip(self._columns, plan):
                columns[name] = col.take(idx)
            return Batch(columns, k)
        torch = _import_torch()
        shared = torch.utils.data.get_worker_info() is not None
        for name, col in zip(self._columns, plan):
            shape = (k,) + col.row_shape
            flat = _new_bytes(torch, k * col.row_nbytes, shared)
            col.take(idx, out=flat.numpy().view(col.numpy_dtype).reshape(shape))
            columns[name] = flat.view(col.torch_dtype).reshape(shape)
        return Batch(columns, k)

    def _plan(self) -> List[_Column]:
        if self._gather_plan is None:
            store = self.store
            torch = _import_torch() if self._output == "torch" else None
            self._gather_plan = [_Column(store, name, torch) for name in self._columns]
        return self._gather_plan


def _new_bytes(torch: Any, nbytes: int, shared: bool) -> Any:
    """A new 1-d uint8 tensor of `nbytes`, in shared memory if `shared`: allocated there, as
    ``default_collate`` does, rather than allocated and then moved by ``share_memory_()`` (which
    would copy it)."""
    if shared:
        new_shared = getattr(torch.UntypedStorage, "_new_shared", None)
        if new_shared is not None:
            return torch.empty(0, dtype=torch.uint8, device="cpu").set_(new_shared(nbytes))
        return torch.empty(nbytes, dtype=torch.uint8, device="cpu").share_memory_()
    return torch.empty(nbytes, dtype=torch.uint8, device="cpu")


def _choose_columns(
    store: Union[Store, Dataset], columns: Optional[Sequence[str]]
) -> Tuple[Tuple[str, ...], int]:
    """The column names and their shared row count; errors name the file and the column."""
    path = store.path
    if columns is None:
        # As the Loader's default: a ragged tensor's values and row offsets (format 1.1: the
        # values' name + ".offsets") are not rows, nor is a dataset's ragged column.
        if isinstance(store, Dataset):
            ragged = set(store.ragged_columns)
        else:
            ragged = {n for r in store.ragged_keys() for n in (r, r + ".offsets")}
        names = [name for name in store.keys() if name not in ragged]
        shapes = [(name, store.shape(name)) for name in names]
        with_rows = [(name, shape) for name, shape in shapes if len(shape) >= 1]
        if not with_rows:
            raise ValueError(f"{path}: no tensor has rows (every one is 0-dimensional), so RowDataset has no columns")
        rows = with_rows[0][1][0]
        left = [f"`{name}` ({shape[0]} rows)" for name, shape in with_rows if shape[0] != rows]
        if left:
            # As the Loader's: a column missing from every batch would show only in training.
            warnings.warn(
                f"{path}: RowDataset reads the tensors with {rows} rows (the first tensor's) and "
                f"leaves out {', '.join(left)}: pass columns=[...] to choose",
                UserWarning,
                stacklevel=3,
            )
        return tuple(name for name, shape in with_rows if shape[0] == rows), rows
    if isinstance(columns, (str, bytes)):
        raise TypeError(f"RowDataset columns must be a list of tensor names, not the string {columns!r}")
    names = tuple(columns)
    if not names:
        raise ValueError(f"{path}: RowDataset needs at least one column")
    rows = None
    first = None
    seen = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"RowDataset column names are strings, not {type(name).__name__} ({name!r})")
        if name in seen:
            raise ValueError(f"{path}: column `{name}` is listed twice")
        seen.add(name)
        if name not in store:
            keys = store.keys() if isinstance(store, Store) else store.columns
            shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
            error = TensorNotFoundError(
                f"{path}: column `{name}` is not a tensor of this store (it has {shown})"
            )
            error.path, error.tensor = path, name
            raise error
        shape = store.shape(name)
        if not shape:
            raise ValueError(f"{path}: column `{name}` is 0-dimensional, so it has no rows to serve")
        if rows is None:
            rows, first = shape[0], name
        elif shape[0] != rows:
            raise ValueError(
                f"{path}: column `{name}` has {shape[0]} rows but column `{first}` has {rows}; "
                "the columns of a RowDataset must share their first dimension"
            )
    assert rows is not None
    return names, rows


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "RowDataset(output=\"torch\") needs PyTorch (`pip install torch`); "
            "output=\"numpy\" works without it"
        ) from e
    import torch.utils.data  # noqa: F401  (get_worker_info)

    return torch
