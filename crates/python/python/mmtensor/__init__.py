"""mmtensor: big arrays, cheap to load.

``.mmt`` files hold aligned, contiguous, little-endian, C-order tensors behind a checksummed header.
:func:`open` memory-maps one (or a ``.safetensors`` or ``.npy`` file) and hands out read-only NumPy
arrays and PyTorch tensors that view the mapping without copying; :func:`convert` repacks ``.npy``,
``.npz``, ``.safetensors``, Parquet and Arrow IPC data into ``.mmt`` once; :func:`export` writes a
store back out as ``.npy`` files or one ``.safetensors`` file. :func:`save` writes a dict of arrays
(NumPy, torch, ml_dtypes) as a store, and :func:`load` reads one back as a dict of zero-copy
views, as safetensors' ``save_file`` and ``load_file`` do.

>>> import mmtensor
>>> mmtensor.convert(["x=features.npy"], "train.mmt", dtype="bf16")   # doctest: +SKIP
>>> with mmtensor.open("train.mmt") as store:                         # doctest: +SKIP
...     x = store["x"]                  # numpy.ndarray, no copy, read-only
...     batch = store.rows("x", 0, 64)  # zero-copy row range
...     t = store.torch("x")            # torch.Tensor over the same memory
>>> mmtensor.save("model.mmt", model.state_dict())                   # doctest: +SKIP
>>> weights = mmtensor.load("model.mmt", output="torch")              # doctest: +SKIP

Every array, tensor or DLPack capsule holds its own reference to the store's bytes: the mapping
stays valid as long as any of them lives, whether or not the Store is closed or collected.

bfloat16 and fp8 tensors come as ``ml_dtypes`` arrays when ``ml_dtypes`` is installed
(``pip install ml_dtypes``); without it, ``store.raw(name)`` gives their bits as unsigned integers.

A :class:`Store` (and a :class:`Tensor`) pickles as its path and its file's fingerprint, never its
data, so it can be handed to PyTorch DataLoader workers (spawn or fork); each worker reopens the
file and raises :class:`StoreChangedError` if it is not the same file, as it was, any more (see
that class for what the fingerprint holds).
:class:`RowDataset` (``mmtensor.data``) is a map-style dataset over a store's rows that hands
DataLoader whole batches, gathered with one :meth:`Store.take` per column.

Read the docstring of :func:`open` for what memory mapping asks of you (nobody may truncate or
rewrite the file in place while it is open), and ``open(path, copy=True)`` for the alternative.

For training, :class:`Loader` reads shuffled, rank-split batches of rows, gathered ahead in Rust
threads into writable arrays:

>>> loader = mmtensor.Loader("train.mmt", batch_size=1024, shuffle=True, seed=0)  # doctest: +SKIP
>>> for epoch in range(10):                                                       # doctest: +SKIP
...     loader.set_epoch(epoch)
...     for batch in loader:            # {"x": ndarray[1024, ...], "y": ndarray[1024]}
...         ...
"""

from mmtensor._mmtensor import (
    BatchBuffer,
    Dataset,
    DatasetWriter,
    StreamingDataset,
    Loader,
    MappedBuffer,
    Mix,
    RaggedTensor,
    Store,
    Tensor,
    __version__,
    append,
    commit,
    compact,
    convert,
    convert_tokens,
    export,
    load,
    open,
    open_dataset,
    prune,
    save,
)
from mmtensor import data
from mmtensor.data import RowDataset
from mmtensor.errors import (
    ChecksumMismatchError,
    ConvertError,
    CorruptedFileError,
    DtypeError,
    DtypeMismatchError,
    InvalidFileError,
    LoaderError,
    MmtError,
    MmtOSError,
    NeedsConvertError,
    NoChecksumsError,
    RaggedError,
    RowRangeError,
    ShardNotOpenError,
    StoreChangedError,
    StoreClosedError,
    StoreIsADirectoryError,
    StoreNotFoundError,
    StorePermissionError,
    TensorNotFoundError,
    UnalignedError,
    UnsupportedDtypeError,
)

__all__ = [
    "open",
    "open_dataset",
    "convert",
    "convert_tokens",
    "append",
    "compact",
    "prune",
    "commit",
    "DatasetWriter",
    "export",
    "save",
    "load",
    "Store",
    "Tensor",
    "RaggedTensor",
    "Loader",
    "Mix",
    "Dataset",
    "StreamingDataset",
    "MappedBuffer",
    "BatchBuffer",
    "RowDataset",
    "data",
    "MmtError",
    "MmtOSError",
    "StoreNotFoundError",
    "StorePermissionError",
    "StoreIsADirectoryError",
    "InvalidFileError",
    "CorruptedFileError",
    "ChecksumMismatchError",
    "NoChecksumsError",
    "NeedsConvertError",
    "TensorNotFoundError",
    "RowRangeError",
    "DtypeError",
    "DtypeMismatchError",
    "UnsupportedDtypeError",
    "UnalignedError",
    "StoreClosedError",
    "StoreChangedError",
    "LoaderError",
    "ShardNotOpenError",
    "RaggedError",
    "ConvertError",
    "__version__",
]
