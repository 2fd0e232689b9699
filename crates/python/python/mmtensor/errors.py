"""Exceptions raised by mmtensor.

Every exception is an :class:`MmtError` and also an instance of the builtin a Python user would
catch for that kind of failure (``FileNotFoundError``, ``KeyError``, ``ValueError``, ``TypeError``,
``IndexError``, ``OSError``). The message is the one the ``mmt`` command line prints after
``error:``: it names the file and, where it applies, the tensor, the byte offset and what to do.

Attributes set on every instance raised by mmtensor: ``path`` (the file, or None) and ``tensor``
(the tensor's name, or None); OS errors also carry ``errno``.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "MmtError",
    "StoreNotFoundError",
    "StorePermissionError",
    "StoreIsADirectoryError",
    "MmtOSError",
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
]


class MmtError(Exception):
    """Base class of every error mmtensor raises."""

    path: Optional[str] = None
    """The file the error is about, when known."""
    tensor: Optional[str] = None
    """The tensor the error is about, when known."""

    def __str__(self) -> str:
        # KeyError would print repr(message); every mmtensor error prints its message as is.
        return str(self.args[0]) if self.args else ""


class MmtOSError(MmtError, OSError):
    """An operating-system call failed (open, stat, read, mmap, madvise, write; ``errno`` is set),
    or the file shrank while it was open (it was truncated or rewritten in place: reopen it)."""


class StoreNotFoundError(MmtOSError, FileNotFoundError):
    """The file does not exist (a ``FileNotFoundError``)."""


class StorePermissionError(MmtOSError, PermissionError):
    """The file cannot be read or written for lack of permission (a ``PermissionError``)."""


class StoreIsADirectoryError(MmtOSError, IsADirectoryError):
    """The path names a directory, not a tensor file (an ``IsADirectoryError``)."""


class InvalidFileError(MmtError, ValueError):
    """The file is not a valid .mmt, .safetensors, .npy or .npz file: the message names the field,
    tensor or byte offset that is wrong."""


class CorruptedFileError(InvalidFileError):
    """``verify()`` found corrupted data (nonzero padding, a BOOL byte other than 0 or 1; see also
    ChecksumMismatchError).
    ``mmt verify`` exits with code 3 for these."""


class ChecksumMismatchError(CorruptedFileError):
    """A block of a tensor (or the checksum table) does not match its checksum; the message names
    the tensor, the block and its byte range."""


class NoChecksumsError(MmtError, ValueError):
    """``verify()`` on a .safetensors or .npy file, which carry no checksums."""


class NeedsConvertError(MmtError, ValueError):
    """A .npy array is big-endian or in Fortran order and has no little-endian C-order view:
    convert it with ``mmtensor.convert`` first."""


class TensorNotFoundError(MmtError, KeyError):
    """No tensor has this name (a ``KeyError``, so ``store[name]`` behaves like a dict)."""


class RowRangeError(MmtError, IndexError):
    """A row range is reversed, an index is outside ``-n..=n`` for ``n`` rows (``rows()`` never
    clamps), or the tensor is 0-dimensional (an ``IndexError``)."""


class DtypeError(MmtError, TypeError):
    """Base class of dtype problems (a ``TypeError``)."""


class DtypeMismatchError(DtypeError):
    """The tensor does not have the dtype asked for (``store.numpy(name, dtype=...)``)."""


class UnsupportedDtypeError(DtypeError):
    """The dtype has no NumPy type here (bfloat16 and fp8 need ``ml_dtypes``; use ``raw()`` for the
    bits), the file holds a dtype mmtensor does not support, raw void .npy data needs an
    ``input_dtype``, or a ``dtype=`` of ``take`` or :class:`Loader` asks for a cast the gather does
    not make (one that could fail on a value, such as int64 to int32, or none at all: ``tensor``
    names the tensor or column)."""


class UnalignedError(MmtError, ValueError):
    """The data's address is not a multiple of what DLPack and PyTorch assume for its element type:
    the element size (8 bytes for complex64 and 16 for complex128, as PyTorch's complex types need).
    Possible in .safetensors and .npy files, never in .mmt stores. NumPy arrays of it still work
    without a copy; for PyTorch or DLPack, copy it (``torch.from_numpy(t.numpy().copy())``,
    ``np.from_dlpack(t, copy=True)``) or convert the file with ``mmtensor.convert``."""


class StoreClosedError(MmtError, ValueError):
    """The Store was closed; arrays made before ``close()`` still work."""


class StoreChangedError(MmtOSError):
    """An unpickled Store (in a DataLoader worker or another process) found another file at its
    path: the file was replaced, rewritten or truncated after the store was opened, so this process
    would not read the tensors the parent read. ``path`` is set; ``errno`` is not. The message gives
    the file's old and new fingerprints (format, length, header xxh3, inode number, modification
    time). Open the new file afresh. What the check detects and what it cannot (a write in place
    that sets the modification time back) is stated once, in the Rust docs of
    ``mmtensor::Fingerprint`` (``crates/load/src/fingerprint.rs``).

    Also raised by ``open_dataset(url, ...)`` when a shard on the server is not the one the
    dataset's manifest lists (its length or header checksum differs; the message names the shard's
    URL): the dataset changed on the server while it was opened. Open it again."""


class LoaderError(MmtError, ValueError):
    """A :class:`Loader`'s options cannot work: batch size 0, a rank not below the world size, a
    block shuffle with a zero size, no columns, a column named twice, or columns whose first
    dimensions differ (``tensor`` names the column). Also a ``ValueError``."""


class ShardNotOpenError(MmtError, LookupError):
    """A row lies in a shard the :class:`Dataset` was opened without: ``open_dataset(...,
    rank=r, world_size=w)`` opens (and fetches) only the shards of rank ``r``. Read such a dataset
    with ``Loader(ds, split="shards", rank=r, world_size=w)``, or open every shard. ``path`` names
    the dataset; the message names the shard and the row. Also a ``LookupError``."""


class RaggedError(MmtError, ValueError):
    """A ragged tensor or column (rows of different lengths) was read as a fixed-shape one
    (``Dataset.take``, ``Dataset.shape``: read it with ``ragged(name)`` or a :class:`Loader` with
    ``seq_len``), a fixed one was asked for with ``ragged(name)``, or a row is longer than
    ``take_padded``'s ``pad_to`` without ``truncate=True`` (or its padding cannot be made).
    ``tensor`` names the tensor or column. Also a ``ValueError``."""


class ConvertError(MmtError, ValueError):
    """``convert`` refused its arguments or a tensor: an unknown dtype, a name collision, a cast it
    does not make, a value that does not fit, a bad alignment. Also ``save``'s refusals: torch
    tensors that share memory (the message names each group), a bool byte other than 0 and 1, an
    invalid tensor name, a reserved metadata key."""
