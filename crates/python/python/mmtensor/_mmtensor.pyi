"""Type stubs of the native module mmtensor._mmtensor (re-exported by mmtensor)."""

import os
from typing import Any, Dict, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple, TypedDict, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

_Path = Union[str, "os.PathLike[str]"]
_DtypeLike = Any  # a str such as "bf16" or "float16", or anything numpy.dtype() accepts
_Advice = Literal["normal", "sequential", "random", "willneed"]

class ConvertSummary(TypedDict):
    path: str
    tensors: int
    input_bytes: int
    file_len: int

def open(path: _Path, *, copy: bool = False) -> Store:
    """Open a .mmt, .safetensors or .npy file by memory mapping (or copy=True: read into private,
    read-only memory, as the Rust crate's mmtensor::Store::read does).

    Never write the same path while it is open (np.save onto it truncates the mapped file):
    write elsewhere and os.replace() it over, or use mmtensor.convert, which does.
    Raises StoreIsADirectoryError for a folder."""

def convert_tokens(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    raw_dtype: Any = None,
    eot: int | None = None,
    row_tokens: int | None = None,
    shard_size: int | str | None = None,
    mode: str = "create",
) -> dict[str, Any]:
    """A token stream (a Megatron .idx, a raw token file, a 1-D .npy) into a dataset with a ragged `tokens` column."""
    ...

def convert(
    inputs: Union[_Path, Sequence[_Path], Mapping[str, _Path]],
    output: _Path,
    dtype: Union[None, _DtypeLike, Mapping[str, _DtypeLike], Sequence[str]] = None,
    input_dtype: Union[None, _DtypeLike, Mapping[str, _DtypeLike], Sequence[str]] = None,
    alignment: int = 4096,
    metadata: Optional[Mapping[str, str]] = None,
    *,
    block_size: Optional[int] = None,
    normalize_bools: bool = False,
    shard_size: Union[int, str, None] = None,
    columns: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Convert .npy/.npz/.safetensors/.mmt inputs, dataset folders, Parquet and Arrow IPC
    (.arrow/.feather) files into one .mmt store, as `mmt convert` does; with shard_size, into a
    sharded dataset folder (as `mmt convert --shard-size`). `columns` keeps only those tensors (a
    Parquet or Arrow column is one tensor, rows first). The blocks of .mmt inputs are checked as
    they are read.

    A bool byte other than 0 and 1 raises InvalidFileError unless normalize_bools=True."""

class DatasetSummary(TypedDict):
    path: str
    shards: int  # the dataset's, after the write
    rows: int
    shards_written: int
    rows_written: int  # rows added (0 for compact)
    rows_rewritten: int  # rows of existing shards copied into new ones
    replaced: List[str]  # shard files taken out of the manifest (left on disk until prune)
    input_bytes: int
    bytes_written: int

def append(
    dataset: _Path,
    inputs: Union[_Path, Sequence[_Path], Mapping[str, _Path]],
    dtype: Union[None, _DtypeLike, Mapping[str, _DtypeLike], Sequence[str]] = None,
    input_dtype: Union[None, _DtypeLike, Mapping[str, _DtypeLike], Sequence[str]] = None,
    alignment: int = 4096,
    metadata: Optional[Mapping[str, str]] = None,
    *,
    block_size: Optional[int] = None,
    normalize_bools: bool = False,
    shard_size: Union[int, str, None] = None,
    columns: Optional[Sequence[str]] = None,
    fill: bool = True,
) -> DatasetSummary:
    """Append the rows of inputs to a sharded dataset folder, as `mmt append` does: new shards,
    then the manifest by an atomic rename; a schema mismatch is refused before anything is written.

    fill=True: a last shard smaller than shard_size (default: the dataset's own) is replaced by a
    new shard holding its rows and new ones, so appends in a loop leave full shards. The replaced
    file stays on disk, unlisted, for readers of the old manifest, until prune()."""

def compact(dataset: _Path, shard_size: Union[int, str, None] = None) -> DatasetSummary:
    """Merge runs of small shards into full ones in place, as `mmt compact` does (new shards, then
    the manifest by an atomic rename). The replaced shards stay on disk until prune()."""

class PruneSummary(TypedDict):
    path: str
    removed: List[str]
    bytes: int
    kept: List[str]

def prune(dataset: _Path, *, dry_run: bool = False) -> PruneSummary:
    """Delete the shard files the manifest no longer lists and writers' leftovers, as `mmt prune`
    does. Run it when no reader holds an older manifest."""

class DatasetWriter:
    """Streams rows into a dataset folder, batch by batch, with nothing visible until it finishes.

    ``columns``: ``{name: (dtype, row_shape)}`` (or a dtype alone for one value a row); a row shape
    starting with ``None`` declares a ragged column (rows of different lengths: ``("uint16",
    (None,))`` for token ids, ``("float32", (None, 4))`` for boxes); ``None`` takes them from the
    first batch (or from the dataset when appending). ``mode``: "create" or
    "append" (the dataset's columns; its last shard filled first unless ``fill=False``). ``part``:
    this writer is part ``part`` of a write by many writers; :func:`commit` makes every part
    visible together, in the order of the part ids. ``shard_size``: data bytes a shard holds at
    most (int or "256MiB"; default the dataset's own, else 256 MiB). ``path`` may be a URL
    (``s3://bucket/train/``): shards are staged one at a time, uploaded and checked as each is
    complete, and the manifest is put last, conditionally (a writer that loses a race raises and
    leaves nothing of its own); appends to a bucket never rewrite its last shard.

    ``write(batch)`` takes a dict of every column to an array (NumPy of any byte and memory order,
    torch CPU tensors, ml_dtypes, ``__array__``/``__dlpack__`` objects; first axis = rows) or a
    pyarrow Table/RecordBatch. A ragged column's value is a list of arrays (one per row, each
    ``(length,) + item_shape``) or a ``(values, lengths)`` pair (a pyarrow ``list``/``large_list``
    column becomes one); a first batch that gives one declares the column ragged. A batch of
    another dtype or row shape raises before any byte is written (DtypeMismatchError,
    ConvertError), and the writer goes on. ``finish()`` (the end of a
    ``with`` block) makes the rows visible atomically and returns a summary; ``abort()`` (an
    exception in the block, or garbage collection unfinished) deletes what was written."""

    def __init__(
        self,
        path: _Path,
        columns: Optional[Mapping[str, Any]] = None,
        *,
        shard_size: Union[int, str, None] = None,
        mode: Literal["create", "append"] = "create",
        part: Optional[int] = None,
        fill: bool = True,
        alignment: int = 4096,
        block_size: Optional[int] = None,
        metadata: Optional[Dict[str, str]] = None,
    ) -> None: ...
    def write(self, batch: Any) -> int:
        """Writes one batch; returns the rows written so far."""
    def finish(self) -> DatasetSummary:
        """Makes every row visible at once (the manifest, or the part's record)."""
    def abort(self) -> None:
        """Deletes the shards written; the dataset stays exactly as it was."""
    @property
    def columns(self) -> Dict[str, Tuple[str, Tuple[Optional[int], ...]]]:
        """``{name: (dtype, row_shape)}``; a ragged column's row shape is ``(None,) + item_shape``."""
    @property
    def rows_written(self) -> int: ...
    @property
    def path(self) -> str: ...
    def __enter__(self) -> "DatasetWriter": ...
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool: ...

def commit(path: _Path, parts: Optional[int] = None) -> DatasetSummary:
    """Makes the rows of every finished part written into ``path`` (``DatasetWriter(path,
    part=i)``) visible at once, in the order of the part ids, as ``mmt commit`` does. ``parts``:
    the write was made of parts ``0..parts``, all of which must have finished. Raises ConvertError
    naming the parts (and changes nothing) when one is still being written, died, is missing, or
    has other columns."""

def _reopen(path: str, copy: bool, fingerprint: Tuple[str, int, int, int, int]) -> Store:
    """Unpickles a Store (not meant to be called directly): opens `path` and raises
    StoreChangedError unless its (format, length, header xxh3, st_ino, st_mtime_ns) is
    `fingerprint`; ValueError for a fingerprint that is not one (an older mmtensor's 3-tuple)."""

def _tensor(store: Store, name: str, rows: Optional[Tuple[int, int]] = None) -> Tensor:
    """Unpickles a Tensor (not meant to be called directly)."""

class ExportSummary(TypedDict):
    path: str
    tensors: int
    bytes: int

def export(
    source: Union[Store, _Path],
    output: _Path,
    to: Literal["npy", "safetensors"] = "npy",
    *,
    copy: bool = False,
) -> ExportSummary:
    """Write a store's tensors as NAME.npy files in the folder `output`, or as one .safetensors
    file, as `mmt export` does (each file atomically: temp file, fsync, rename)."""

def save(
    path: _Path,
    tensors: Mapping[str, Any],
    metadata: Optional[Mapping[str, str]] = None,
    *,
    shared: Literal["refuse", "copy"] = "refuse",
) -> None:
    """Write `tensors` (names to arrays) and `metadata` (str to str) as the .mmt store `path`,
    atomically (temp file, fsync, rename: an existing file, even an open one, is replaced whole or
    left as it was), in the dict's order; safetensors' `save_file` for mmtensor.

    Values: NumPy arrays of any byte order and memory order (stored C-order little-endian),
    ml_dtypes bfloat16/fp8 arrays, torch CPU tensors (bfloat16 and fp8 included; a CUDA tensor
    raises TypeError: call `.cpu()`), anything with `__array__` or `__dlpack__`. A C-contiguous
    little-endian array is written from its own memory with the GIL released, without a copy.

    A list of arrays (rows of different lengths, one dtype and item shape), a ``(values,
    lengths)`` pair or a RaggedTensor is saved as a ragged tensor (values ``name``, row offsets
    ``name.offsets``), read back by ``Store.ragged(name)``.

    Torch tensors whose bytes overlap (tied weights) raise ConvertError (a ValueError) naming each
    group, unless shared="copy", which stores each one as its own copy (they load untied).
    Raises TypeError (a name not a str, a value not an array, an object array),
    UnsupportedDtypeError, ConvertError (a bool byte other than 0/1, a reserved `mmt.` metadata
    key), StoreNotFoundError (a missing folder)."""

@overload
def load(path: _Path, output: Literal["numpy"] = "numpy", *, copy: bool = False) -> Dict[str, Union[npt.NDArray[Any], RaggedTensor]]: ...
@overload
def load(path: _Path, output: Literal["torch"], *, copy: bool = False) -> Dict[str, Any]: ...
def load(path: _Path, output: Literal["numpy", "torch"] = "numpy", *, copy: bool = False) -> Dict[str, Any]:
    """Read a .mmt store (or .safetensors, .npy file) as a dict of names to zero-copy views, in
    file order: read-only NumPy arrays (bfloat16/fp8 as ml_dtypes arrays) or, with
    output="torch", copy-on-write torch tensors (an in-place op changes that tensor alone, never
    the file). safetensors' `load_file` for mmtensor. The file is memory-mapped as `open` maps it:
    never rewrite it in place while the views live (copy=True reads it into private memory).
    A ragged tensor is one entry, a RaggedTensor (a sequence of zero-copy row arrays; its
    `name.offsets` tensor is not listed apart)."""

class RaggedTensor:
    """A ragged tensor of a store (``Store.ragged``) or ragged column of a dataset
    (``Dataset.ragged``): ``len(t)`` rows of different lengths, row ``i`` of shape
    ``(length_i,) + item_shape``. Keeps the store's bytes alive by itself."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str:
        """The values' dtype as the file names it: "U16", "F32", ..."""
    @property
    def numpy_dtype(self) -> str: ...
    @property
    def item_shape(self) -> Tuple[int, ...]: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def num_values(self) -> int:
        """Items of every row together (of the open shards)."""
    @property
    def path(self) -> str: ...
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> npt.NDArray[Any]:
        """Row ``i`` (negative from the end): a read-only zero-copy view of the file's bytes."""
    def __iter__(self) -> Iterator[npt.NDArray[Any]]: ...
    def row(self, i: int, output: Literal["numpy", "torch"] = "numpy") -> Any:
        """Row ``i`` as a zero-copy read-only NumPy array, or a copy-on-write torch tensor.
        RowRangeError out of range."""
    def lengths(self) -> npt.NDArray[np.int64]:
        """Every row's length."""
    def take(self, indices: npt.ArrayLike, output: Literal["numpy", "torch"] = "numpy") -> Tuple[Any, Any]:
        """Rows ``indices`` gathered into ``(values, offsets)``: the rows' items back to back and
        ``len(indices) + 1`` int64 offsets (row k is ``values[offsets[k]:offsets[k + 1]]``)."""
    def take_padded(
        self,
        indices: npt.ArrayLike,
        pad_value: Any = 0,
        pad_to: Optional[int] = None,
        multiple_of: int = 1,
        truncate: bool = False,
        dtype: Optional[_DtypeLike] = None,
        output: Literal["numpy", "torch"] = "numpy",
    ) -> Tuple[Any, Any]:
        """Rows ``indices`` gathered into ``(batch, lengths)``: a batch of shape
        ``(len(indices), length) + item_shape`` padded with ``pad_value`` to the longest row (or
        ``pad_to``) rounded up to a multiple of ``multiple_of``, and each row's length. A row
        longer than ``pad_to`` raises RaggedError unless ``truncate``; ``dtype`` casts as copied."""

class MappedBuffer:
    """Owner of an array's memory: a read-only span of a store's bytes (keeps the mapping alive)."""

    @property
    def __array_interface__(self) -> dict: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def mapped(self) -> bool: ...

class Tensor:
    """One tensor (or row range) of a store; holds the store's bytes alive by itself."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str:
        """The dtype as the file names it: "F32", "BF16", "F8_E4M3", ..."""
    @property
    def numpy_dtype(self) -> str:
        """The NumPy / ml_dtypes name: "float32", "bfloat16", "float8_e4m3fn", ..."""
    @property
    def shape(self) -> Tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def byte_range(self) -> Tuple[int, int]: ...
    def __len__(self) -> int: ...
    def numpy(self, dtype: Optional[_DtypeLike] = None) -> npt.NDArray[Any]:
        """Read-only zero-copy NumPy array (ml_dtypes for BF16/fp8). A BOOL tensor is read once to
        check every byte is 0 or 1 (CorruptedFileError otherwise), as for every typed export."""
    def raw(self) -> npt.NDArray[np.unsignedinteger[Any]]:
        """Read-only zero-copy unsigned-integer view of the bits (BOOL bytes unchecked)."""
    def torch(self) -> Any:
        """torch.Tensor over the file's bytes, copy-on-write: an in-place op copies the pages it
        writes into this tensor alone, never the file or other views. BOOL bytes are checked."""
    def rows(self, start: int, stop: Optional[int] = None) -> Tensor:
        """Rows start..stop (no data read). Strict: negative indices count from the end (-n is row
        0); an index outside -n..=n or a reversed range raises RowRangeError."""
    def take(
        self,
        indices: npt.ArrayLike,
        out: Optional[npt.NDArray[Any]] = None,
        dtype: Optional[_DtypeLike] = None,
    ) -> npt.NDArray[Any]:
        """Rows `indices` (1-d integers, any order, repeats; negative from the end) gathered into a
        new writable array of shape (len(indices),) + shape[1:] in the tensor's dtype, or into
        `out` (a NumPy array, C-contiguous, writeable, exactly that shape and dtype, as the array
        itself says, whatever a subclass's attributes claim), which is returned. The GIL is
        released; rows are copied in file order on worker threads. RowRangeError out of range.
        `dtype` ("int64", a NumPy or torch dtype) casts the rows as they are copied; only casts
        that cannot fail on a value (widening, float narrowing), else UnsupportedDtypeError."""
    @overload
    def __getitem__(self, key: slice) -> Union[Tensor, npt.NDArray[Any]]:
        """NumPy slicing: a step-1 slice clamps as NumPy does and gives a Tensor of those rows;
        another step gives the read-only NumPy view t.numpy()[key]."""
    @overload
    def __getitem__(self, key: Any) -> npt.NDArray[Any]:
        """Exactly t.numpy()[key]: a read-only view where NumPy makes one."""
    def verify(self) -> None: ...
    def prefetch(self, *, wait: bool = False) -> None:
        """Read the bytes into the page cache in background threads (at most 16 in the process;
        past that, kernel readahead); wait=True returns when they are resident."""
    def advise(self, advice: _Advice) -> None: ...
    def __array__(self, dtype: Optional[_DtypeLike] = None, copy: Optional[bool] = None) -> npt.NDArray[Any]: ...
    def __dlpack__(
        self,
        *,
        stream: Optional[Any] = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def __reduce__(self) -> Tuple[Any, Tuple[Store, str, Optional[Tuple[int, int]]]]:
        """Pickles as its store (path and fingerprint, see Store.__reduce__), name and row range;
        never its data."""

class Store:
    """An open tensor file: names to read-only zero-copy NumPy arrays. Picklable by path (for
    DataLoader workers): the receiving process reopens the file and refuses one that changed."""

    def tensor(self, name: str) -> Tensor: ...
    def ragged(self, name: str) -> RaggedTensor:
        """The ragged tensor `name` (``store[name]`` is its values, all rows back to back).
        RaggedError for a fixed-shape tensor."""
    def ragged_keys(self) -> List[str]:
        """The ragged tensors' names, in file order."""
    def __getitem__(self, name: str) -> npt.NDArray[Any]: ...
    def numpy(self, name: str, dtype: Optional[_DtypeLike] = None) -> npt.NDArray[Any]: ...
    def raw(self, name: str) -> npt.NDArray[np.unsignedinteger[Any]]: ...
    def rows(self, name: str, start: int, stop: Optional[int] = None) -> npt.NDArray[Any]:
        """Rows start..stop as a read-only view; strict, as Tensor.rows (RowRangeError)."""
    def take(
        self,
        name: str,
        indices: npt.ArrayLike,
        out: Optional[npt.NDArray[Any]] = None,
        dtype: Optional[_DtypeLike] = None,
    ) -> npt.NDArray[Any]:
        """Rows `indices` of tensor `name` gathered into a new writable array, or `out`, cast to
        `dtype` if given; see Tensor.take."""
    def torch(self, name: str) -> Any: ...
    def dtype(self, name: str) -> str:
        """The dtype of tensor `name` as the file names it: "F32", "BF16", ..."""
    def shape(self, name: str) -> Tuple[int, ...]: ...
    def keys(self) -> List[str]: ...
    def items(self) -> List[Tuple[str, npt.NDArray[Any]]]: ...
    def get(self, name: str, default: Any = None) -> Any: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object) -> bool: ...
    @property
    def metadata(self) -> "dict[str, str]": ...
    @property
    def path(self) -> str: ...
    @property
    def format(self) -> Literal["mmt", "safetensors", "npy"]: ...
    @property
    def mapped(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def verify(self, name: Optional[str] = None) -> None: ...
    def prefetch(self, name: Optional[str] = None, *, wait: bool = False) -> None: ...
    def advise(self, advice: _Advice, name: Optional[str] = None) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *args: object) -> Literal[False]: ...
    def __reduce__(self) -> Tuple[Any, Tuple[str, bool, Tuple[str, int, int, int, int]]]:
        """Pickles as (absolute path, copy, (format, length, header xxh3, st_ino, st_mtime_ns)),
        never the data, for DataLoader workers (spawn or fork). Unpickling reopens the path, mapped
        or copied as the original was, and raises StoreChangedError if the file was replaced,
        rewritten or truncated (what is detected and what cannot be: the Rust docs of
        mmtensor::Fingerprint); a closed store raises StoreClosedError."""

class BatchBuffer:
    """The owner of one column of a Loader batch (the base of its writable array)."""

    @property
    def __array_interface__(self) -> Dict[str, Any]: ...
    @property
    def nbytes(self) -> int: ...

class LoaderIterator:
    def __iter__(self) -> LoaderIterator: ...
    def __next__(self) -> Dict[str, Any]: ...

class Mix:
    """A weighted mixture of sources for `Loader`: rows drawn from each source in proportion to
    its weight (every prefix within one sample of each source's share). `sources`: name to a
    Store, a Dataset or a path; `weights`: the same names to numbers >= 0, not all 0."""

    def __init__(
        self,
        sources: Mapping[str, Union[_Path, Store, Dataset]],
        weights: Mapping[str, float],
        *,
        seed: int = 0,
        samples_per_epoch: Optional[int] = None,
    ) -> None: ...
    @property
    def names(self) -> List[str]: ...
    @property
    def weights(self) -> Dict[str, float]: ...
    @property
    def seed(self) -> int: ...
    @property
    def samples_per_epoch(self) -> Optional[int]: ...
    def __len__(self) -> int: ...

class Loader:
    def __init__(
        self,
        source: Union[_Path, str, Store, Dataset, StreamingDataset, Mix],
        batch_size: int,
        *,
        columns: Optional[Sequence[str]] = None,
        shuffle: Union[bool, str, None] = False,
        seed: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        drop_last: bool = False,
        split: Optional[str] = None,
        prefetch: int = 2,
        output: str = "numpy",
        pin_memory: bool = False,
        block_rows: Optional[int] = None,
        window_blocks: Optional[int] = None,
        dtype: Optional[Mapping[str, _DtypeLike]] = None,
        seq_len: Optional[int] = None,
        within_documents: bool = False,
        pad: Optional[Mapping[str, Any]] = None,
        group_by_length: Optional[int] = None,
        cache: Optional[_Path] = None,
        cache_size: Union[int, str, None] = None,
    ) -> None:
        """`dtype`: column name to the dtype its batches hold, cast as rows are gathered
        ({"tokens": "int64"}); only casts that cannot fail on a value.

        `seq_len`: read the one ragged column (a token stream) as windows of seq_len + 1 tokens,
        each window a row of the order: batches {"tokens": array[batch_size, seq_len + 1]}.
        `within_documents=True`: no window crosses a document (row) boundary."""
    def __len__(self) -> int:
        """The number of batches per epoch on this rank, as torch's DataLoader counts (rows are
        `num_rows`)."""
    def __iter__(self) -> LoaderIterator: ...
    @property
    def columns(self) -> List[str]: ...
    @property
    def epoch(self) -> int: ...
    @property
    def next_batch(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> Dict[str, Any]: ...
    def load_state_dict(self, state: Dict[str, Any]) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Loader: ...
    def __exit__(self, *exc: Any) -> None: ...

def open_dataset(
    path: Union[_Path, str],
    *,
    cache: Optional[_Path] = None,
    cache_size: Union[int, str, None] = None,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    stream: bool = False,
    part_size: Union[int, str, None] = None,
    ahead: Union[int, str, None] = None,
) -> Union[Dataset, StreamingDataset]:
    """Open a sharded dataset (a folder, or an s3://, gs://, az://, http(s)://, file:// URL whose
    shards are fetched into ``cache``) as one index space of rows; with ``rank`` and
    ``world_size``, only the shards that rank owns under ``Loader(split="shards")``. With
    ``stream=True`` (a URL), nothing is fetched up front: a StreamingDataset, whose Loader fetches
    each batch's parts ahead in the epoch's order within ``cache_size``."""

class StreamingDataset:
    """A dataset on object storage read by a Loader while it downloads (open_dataset(...,
    stream=True))."""

    @property
    def path(self) -> str: ...
    @property
    def num_rows(self) -> int: ...
    @property
    def cache(self) -> str: ...
    @property
    def cache_size(self) -> int: ...
    def keys(self) -> List[str]: ...
    def stats(self) -> Dict[str, int]:
        """Requests sent so far: heads, gets, bytes_downloaded."""
    def __len__(self) -> int: ...

class Dataset:
    """A container of columns, as a Store is of tensors: `len(ds)` is the number of columns,
    `name in ds` checks a column name, `ds.keys()` lists them; `ds.num_rows` counts rows."""

    @property
    def path(self) -> str:
        """The dataset's folder, or the URL it was opened from."""
    @property
    def num_rows(self) -> int: ...
    @property
    def columns(self) -> List[str]:
        """Every column's name, ragged ones included, in manifest order."""
    @property
    def ragged_columns(self) -> List[str]:
        """The ragged columns' names (read them with `ragged(name)` or a Loader with seq_len)."""
    def ragged(self, name: str) -> RaggedTensor:
        """The ragged column `name` over every shard. RaggedError for a fixed-shape column."""
    @property
    def num_shards(self) -> int:
        """The number of shards in the manifest, opened or not."""
    @property
    def opened_shards(self) -> List[int]:
        """The indices of the shards this dataset opened (all unless opened for one rank)."""
    @property
    def rank(self) -> Optional[int]: ...
    @property
    def world_size(self) -> Optional[int]: ...
    def __len__(self) -> int:
        """The number of columns (as `len(store)` counts tensors)."""
    def __contains__(self, name: str) -> bool: ...
    def keys(self) -> List[str]:
        """The column names, in manifest order."""
    def dtype(self, name: str) -> str:
        """The dtype of column `name` as the format names it: "F32", "BF16", ... (as Store.dtype)."""
    def shape(self, name: str) -> Tuple[int, ...]: ...
    def take(
        self,
        name: str,
        indices: Any,
        out: Optional[np.ndarray] = None,
        dtype: Optional[_DtypeLike] = None,
    ) -> np.ndarray: ...
    def verify(self) -> None: ...
