"""mmtensor.save and mmtensor.load: a dict of arrays as one .mmt store and back, as safetensors'
save_file and load_file do, atomically, from the arrays' own memory."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest

import mmtensor

ml_dtypes = pytest.importorskip("ml_dtypes")

# Every dtype a store holds, as NumPy (or ml_dtypes) names it, with the name the store gives it.
NUMPY_DTYPES = [
    ("bool", "BOOL"),
    ("uint8", "U8"),
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
    ("int8", "I8"),
    ("int16", "I16"),
    ("int32", "I32"),
    ("int64", "I64"),
    ("float16", "F16"),
    ("float32", "F32"),
    ("float64", "F64"),
    ("complex64", "C64"),
    ("complex128", "C128"),
    ("bfloat16", "BF16"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
]


def np_dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def sample(name: str, shape=(3, 4)) -> np.ndarray:
    """Distinct values of dtype `name` that every dtype holds exactly."""
    n = int(np.prod(shape))
    values = np.arange(n) % 7
    if name == "bool":
        return (values % 2 == 1).reshape(shape)
    if name.startswith("complex"):
        return (values + 1j * values[::-1]).astype(name).reshape(shape)
    return values.astype(np_dtype(name)).reshape(shape)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (bits, so that fp8 and bf16 compare without casts)."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------------------------------
# NumPy and ml_dtypes round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,stored", NUMPY_DTYPES)
def test_every_numpy_dtype_round_trips(tmp_path, name, stored):
    a = sample(name)
    path = tmp_path / "a.mmt"
    assert mmtensor.save(path, {"x": a}) is None
    loaded = mmtensor.load(path)
    assert list(loaded) == ["x"]
    assert same(loaded["x"], a)
    assert not loaded["x"].flags.writeable
    with mmtensor.open(path) as store:
        assert store.dtype("x") == stored
        store.verify()


def test_tensors_keep_the_dicts_order_and_the_metadata_round_trips(tmp_path):
    arrays = {name: sample(name, (2, 3)) for name, _ in reversed(NUMPY_DTYPES)}
    metadata = {"step": "1000", "note": "ünïcode ✓", "": "empty key is allowed"}
    mmtensor.save(tmp_path / "all.mmt", arrays, metadata)
    with mmtensor.open(tmp_path / "all.mmt") as store:
        assert store.keys() == list(arrays)
        assert store.metadata == metadata
    loaded = mmtensor.load(tmp_path / "all.mmt")
    assert list(loaded) == list(arrays)
    for name, a in arrays.items():
        assert same(loaded[name], a), name


@pytest.mark.parametrize("name", ["uint16", "int32", "float32", "float64", "complex128"])
def test_big_endian_arrays_are_stored_little_endian(tmp_path, name):
    a = sample(name).astype(np.dtype(name).newbyteorder(">"))
    mmtensor.save(tmp_path / "b.mmt", {"x": a})
    x = mmtensor.load(tmp_path / "b.mmt")["x"]
    assert x.dtype == np.dtype(name).newbyteorder("<")
    assert np.array_equal(x, a)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: np.asfortranarray(a),
        lambda a: a[:, ::2],
        lambda a: a[::-1, ::-3],
        lambda a: a.T,
        lambda a: np.moveaxis(a.reshape(2, 3, 4), 0, 2),
        lambda a: np.asfortranarray(a).astype(">f8"),
    ],
    ids=["fortran", "step", "negative-strides", "transposed", "moved-axis", "fortran-big-endian"],
)
def test_non_contiguous_arrays_are_stored_in_c_order(tmp_path, make):
    a = make(np.arange(24, dtype=np.float64).reshape(4, 6))
    assert not a.flags.c_contiguous
    mmtensor.save(tmp_path / "c.mmt", {"x": a})
    x = mmtensor.load(tmp_path / "c.mmt")["x"]
    assert x.shape == a.shape and np.array_equal(x, a)


@pytest.mark.parametrize("name", ["float32", "bfloat16", "bool", "complex64"])
def test_0d_and_zero_size_arrays(tmp_path, name):
    arrays = {
        "scalar": sample(name, ()),
        "empty": sample(name, (0,)),
        "empty_rows": sample(name, (0, 5)),
        "empty_inner": sample(name, (3, 0, 2)),
    }
    mmtensor.save(tmp_path / "z.mmt", arrays)
    loaded = mmtensor.load(tmp_path / "z.mmt")
    for key, a in arrays.items():
        assert same(loaded[key], a), key


def test_numpy_scalars_and_ndarray_subclasses_are_arrays(tmp_path):
    class Marked(np.ndarray):
        pass

    arrays = {"scalar": np.float32(2.5), "sub": np.arange(4, dtype=np.int16).view(Marked)}
    mmtensor.save(tmp_path / "s.mmt", arrays)
    loaded = mmtensor.load(tmp_path / "s.mmt")
    assert loaded["scalar"].shape == () and loaded["scalar"] == np.float32(2.5)
    assert type(loaded["sub"]) is np.ndarray and np.array_equal(loaded["sub"], np.arange(4))


def test_a_subclass_that_lies_about_itself_is_saved_as_its_real_memory(tmp_path):
    # Every fact the write relies on is read from a plain ndarray view of the array, never from
    # attributes a subclass can override: the saved tensor is the real array.
    class Liar(np.ndarray):
        shape = property(lambda self: (1 << 20,))
        nbytes = property(lambda self: 1 << 40)
        dtype = property(lambda self: np.dtype(np.complex128))
        strides = property(lambda self: (1,))
        __array_interface__ = property(lambda self: {"data": (8, True)})

    real = np.arange(6, dtype=np.float32).reshape(2, 3)
    mmtensor.save(tmp_path / "l.mmt", {"x": real.view(Liar)})
    x = mmtensor.load(tmp_path / "l.mmt")["x"]
    assert same(x, real)


# ---------------------------------------------------------------------------------------------
# Objects that are not NumPy arrays
# ---------------------------------------------------------------------------------------------


class ArrayOnly:
    """Offers its data only through __array__."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class DlpackOnly:
    """Offers its data only through DLPack (no __array__)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_array_only_and_dlpack_only_objects(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    b = np.linspace(0, 1, 5, dtype=np.float32)
    assert not hasattr(DlpackOnly(b), "__array__")
    mmtensor.save(tmp_path / "o.mmt", {"a": ArrayOnly(a), "b": DlpackOnly(b)})
    loaded = mmtensor.load(tmp_path / "o.mmt")
    assert same(loaded["a"], a) and same(loaded["b"], b)


def test_mmtensor_views_save_into_another_store_and_over_their_own_file(tmp_path):
    arrays = {"x": np.arange(10, dtype=np.float32), "m": np.array([True, False])}
    mmtensor.save(tmp_path / "a.mmt", arrays)
    with mmtensor.open(tmp_path / "a.mmt") as store:
        # A Tensor has __array__ (and __dlpack__); arrays of a load are views of the mapping.
        mmtensor.save(tmp_path / "b.mmt", {"x": store.tensor("x"), "m": store["m"]})
    loaded = mmtensor.load(tmp_path / "a.mmt")
    # Saving over the file the views map: the old file is renamed over, never rewritten, so the
    # views read on while the new store is written.
    mmtensor.save(tmp_path / "a.mmt", {k: v for k, v in reversed(loaded.items())})
    for name in arrays:
        assert same(mmtensor.load(tmp_path / "b.mmt")[name], arrays[name])
        assert same(loaded[name], arrays[name])
    assert mmtensor.open(tmp_path / "a.mmt").keys() == ["m", "x"]


# ---------------------------------------------------------------------------------------------
# torch (CPU only; nothing here needs CUDA)
# ---------------------------------------------------------------------------------------------

TORCH_DTYPES = [
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16",
    "bfloat16", "float32", "float64", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
]


def torch_bits(t):
    """A torch tensor's bytes, whatever its dtype (fp8 and bf16 have no NumPy type)."""
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


@pytest.mark.parametrize("name", TORCH_DTYPES)
def test_every_torch_dtype_round_trips(tmp_path, name):
    torch = pytest.importorskip("torch")
    if not hasattr(torch, name):
        pytest.skip(f"this torch has no {name}")
    dtype = getattr(torch, name)
    t = (torch.arange(12, dtype=torch.float32) % 5).reshape(3, 4)
    t = (t % 2 == 1) if name == "bool" else t.to(dtype)
    mmtensor.save(tmp_path / "t.mmt", {"t": t})
    back = mmtensor.load(tmp_path / "t.mmt", output="torch")["t"]
    assert back.dtype == dtype and back.shape == t.shape
    assert torch_bits(back) == torch_bits(t)
    # The NumPy output (ml_dtypes for bf16 and fp8) holds the same bits.
    assert mmtensor.load(tmp_path / "t.mmt")["t"].tobytes() == torch_bits(t)


def test_torch_views_parameters_and_state_dicts(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    base = torch.arange(24.0).reshape(4, 6)
    tensors = dict(model.state_dict())
    tensors.update({
        "param": model[0].weight,                     # requires_grad: saved detached
        "transposed": torch.arange(6.0).reshape(2, 3).t(),
        "strided": torch.arange(20, dtype=torch.int32)[::3],
        "bf16_t": base.to(torch.bfloat16).t(),
        "conj": torch.tensor([1 + 2j, 3 - 4j]).conj(),
        "neg": torch.tensor([1.0, 2.0])._neg_view(),
        "scalar": torch.tensor(3.5, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3, dtype=torch.float16),
    })
    mmtensor.save(tmp_path / "m.mmt", tensors, shared="copy")
    back = mmtensor.load(tmp_path / "m.mmt", output="torch")
    assert list(back) == list(tensors)
    for name, t in tensors.items():
        expected = t.detach().resolve_conj().resolve_neg()
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert torch.equal(back[name], expected), name
    # load_state_dict takes them as they are.
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    fresh.load_state_dict({k: back[k] for k in model.state_dict()})
    assert torch.equal(fresh[0].weight, model[0].weight)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_torch_tensors_without_dense_host_data_or_a_store_dtype_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="tensor `m` is a torch tensor on the meta device"):
        mmtensor.save(tmp_path / "x.mmt", {"m": torch.empty(3, device="meta")})
    with pytest.raises(TypeError, match=r"layout torch\.sparse_coo.*to_dense"):
        mmtensor.save(tmp_path / "x.mmt", {"s": torch.eye(3).to_sparse()})
    with pytest.raises(mmtensor.UnsupportedDtypeError, match="tensor `q` has dtype"):
        mmtensor.save(tmp_path / "x.mmt", {"q": torch.zeros(2, dtype=torch.complex32)})
    assert listing(tmp_path) == []


def test_a_cuda_tensor_is_refused_saying_to_call_cpu(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")

    with pytest.raises(TypeError, match=r"tensor `w` is a torch tensor on cuda:0.*\.cpu\(\)"):
        mmtensor.save(tmp_path / "x.mmt", {"w": torch.ones(3, device="cuda")})
    assert listing(tmp_path) == []


def tied_lm():
    """A model whose output layer shares the embedding's weight, as language models tie them."""
    import torch

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.norm = torch.nn.LayerNorm(4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    return LM()


def test_tied_weights_are_refused_naming_them(tmp_path):
    pytest.importorskip("torch")
    sd = tied_lm().state_dict()
    with pytest.raises(ValueError, match="share memory") as e:
        mmtensor.save(tmp_path / "lm.mmt", sd)
    assert isinstance(e.value, mmtensor.ConvertError)
    assert '["embed.weight", "head.weight"]' in str(e.value)
    assert "norm" not in str(e.value) and 'shared="copy"' in str(e.value)
    assert listing(tmp_path) == []


def test_shared_copy_stores_each_tied_weight_as_its_own_copy(tmp_path):
    torch = pytest.importorskip("torch")
    model = tied_lm()
    sd = model.state_dict()
    mmtensor.save(tmp_path / "lm.mmt", sd, shared="copy")
    back = mmtensor.load(tmp_path / "lm.mmt", output="torch")
    assert torch.equal(back["embed.weight"], back["head.weight"])
    assert torch.equal(back["head.weight"], model.head.weight)
    back["head.weight"][0, 0] += 1  # copies: untied once loaded
    assert not torch.equal(back["embed.weight"], back["head.weight"])


def test_overlapping_views_are_shared_and_disjoint_slices_are_not(tmp_path):
    torch = pytest.importorskip("torch")
    flat = torch.arange(12.0)
    # Two halves of one buffer do not overlap: saved as they are.
    mmtensor.save(tmp_path / "a.mmt", {"lo": flat[:6], "hi": flat[6:]})
    assert torch.equal(mmtensor.load(tmp_path / "a.mmt", output="torch")["hi"], flat[6:])
    # Overlapping windows of one buffer, and a strided view whose span covers another: shared.
    cases = {
        "windows": {"a": flat[:7], "b": flat[5:], "c": torch.ones(2)},
        "strided": {"even": flat[::2], "mid": flat[5:6]},
        "same object": {"x": flat, "y": flat},
    }
    for label, tensors in cases.items():
        with pytest.raises(mmtensor.ConvertError, match="share memory") as e:
            mmtensor.save(tmp_path / "b.mmt", tensors)
        assert '"c"' not in str(e.value), label
    # NumPy arrays are not looked at: the dict is saved as given.
    a = np.arange(4)
    mmtensor.save(tmp_path / "n.mmt", {"x": a, "y": a})


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "x.mmt"
    ok = np.zeros(3)
    with pytest.raises(TypeError, match=r"tensor names must be str, not int \(3\)"):
        mmtensor.save(path, {"a": ok, 3: ok})
    with pytest.raises(TypeError, match="tensors must be a dict of names to arrays, not list"):
        mmtensor.save(path, [ok])
    with pytest.raises(TypeError, match=r"tensor `o`: the array holds Python objects \(dtype object\)"):
        mmtensor.save(path, {"o": np.array([1, None])})
    with pytest.raises(mmtensor.UnsupportedDtypeError, match="tensor `s` has dtype str"):
        mmtensor.save(path, {"s": np.array(["a", "b"])})
    with pytest.raises(mmtensor.UnsupportedDtypeError, match="tensor `d` has dtype datetime64"):
        mmtensor.save(path, {"d": np.array(["2024-01-01"], dtype="datetime64[D]")})
    with pytest.raises(mmtensor.UnsupportedDtypeError, match="tensor `r` has dtype void"):
        mmtensor.save(path, {"r": np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])})
    # A list is a ragged tensor's rows (one array each), not an array.
    with pytest.raises(TypeError, match=r"tensor `l`: a list is a ragged tensor's rows, one array each, but item 0 is a number \(int\): for a tensor of these numbers give np.array\(\[...\]\)"):
        mmtensor.save(path, {"l": [1, 2, 3]})
    with pytest.raises(TypeError, match=r"tensor `l`: row 0: a NumPy array, a torch tensor or an object with __array__ or __dlpack__ is needed, not str"):
        mmtensor.save(path, {"l": ["a"]})
    with pytest.raises(ValueError, match='shared must be "refuse" or "copy"'):
        mmtensor.save(path, {"a": ok}, shared="tie")
    with pytest.raises(mmtensor.ConvertError, match="tensor name .* is invalid: it is empty"):
        mmtensor.save(path, {"": ok})
    assert listing(tmp_path) == []


def test_metadata_must_be_str_to_str_without_reserved_keys(tmp_path):
    path = tmp_path / "x.mmt"
    ok = {"a": np.zeros(3)}
    with pytest.raises(TypeError, match=r"metadata keys must be str, not int \(1\)"):
        mmtensor.save(path, ok, {1: "x"})
    with pytest.raises(TypeError, match=r'metadata\["epoch"\] must be a str, not int'):
        mmtensor.save(path, ok, {"epoch": 3})
    with pytest.raises(TypeError, match="metadata must be a dict of str to str, not list"):
        mmtensor.save(path, ok, ["a"])
    with pytest.raises(mmtensor.ConvertError, match="metadata key `mmt.shard` starts with `mmt.`"):
        mmtensor.save(path, ok, {"mmt.shard": "0"})
    assert listing(tmp_path) == []
    mmtensor.save(path, ok, None)
    assert mmtensor.open(path).metadata == {}


def test_a_path_in_a_missing_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        mmtensor.save(tmp_path / "missing" / "x.mmt", {"a": np.zeros(3)})
    assert isinstance(e.value, mmtensor.StoreNotFoundError)
    assert "missing" in str(e.value)


def test_a_bool_byte_other_than_0_and_1_is_refused_naming_the_element(tmp_path):
    bad = np.array([1, 0, 7, 1], dtype=np.uint8).view(bool)
    with pytest.raises(mmtensor.ConvertError, match=r"tensor `m`: element 2 \(C order\) is the byte 7") as e:
        mmtensor.save(tmp_path / "x.mmt", {"m": bad})
    assert e.value.tensor == "m"
    assert listing(tmp_path) == []


def test_load_refuses_an_unknown_output_and_reads_other_formats(tmp_path):
    with pytest.raises(ValueError, match='output must be "numpy" or "torch", not "jax"'):
        mmtensor.load(tmp_path / "x.mmt", output="jax")
    with pytest.raises(mmtensor.StoreNotFoundError):
        mmtensor.load(tmp_path / "x.mmt")
    np.save(tmp_path / "y.npy", np.arange(3))
    assert np.array_equal(mmtensor.load(tmp_path / "y.npy", copy=True)["y"], np.arange(3))


# ---------------------------------------------------------------------------------------------
# Atomicity, zero copy, copy-on-write torch views
# ---------------------------------------------------------------------------------------------


class Exploding:
    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("boom")


def test_an_exception_in_the_middle_leaves_the_existing_file_untouched(tmp_path):
    path = tmp_path / "model.mmt"
    mmtensor.save(path, {"w": np.arange(4.0)})
    before = path.read_bytes()
    view = mmtensor.load(path)["w"]
    with pytest.raises(RuntimeError, match="boom") as e:
        mmtensor.save(path, {"w": np.zeros(1000), "b": Exploding(), "c": np.ones(2)})
    # Python 3.11+ names the tensor in a note on the caller's own exception.
    if hasattr(e.value, "__notes__"):
        assert "tensor `b`" in " ".join(e.value.__notes__)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["model.mmt"]  # no temporary file
    assert np.array_equal(view, np.arange(4.0))
    # An error found while writing (a bad bool after a good tensor) leaves it too.
    bad = np.array([0, 2], dtype=np.uint8).view(bool)
    with pytest.raises(mmtensor.ConvertError):
        mmtensor.save(path, {"w": np.zeros(1000), "m": bad})
    assert path.read_bytes() == before and listing(tmp_path) == ["model.mmt"]


def test_an_open_store_keeps_its_bytes_when_its_file_is_replaced(tmp_path):
    path = tmp_path / "model.mmt"
    mmtensor.save(path, {"w": np.arange(4.0)})
    with mmtensor.open(path) as old:
        w = old["w"]
        mmtensor.save(path, {"w": np.arange(8.0)})
        assert np.array_equal(w, np.arange(4.0))
        old.verify()
    assert np.array_equal(mmtensor.load(path)["w"], np.arange(8.0))


def peak_traced_bytes(f) -> int:
    """Peak memory NumPy (and Python) allocated while `f` ran, as tracemalloc traces it."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        f()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_c_contiguous_little_endian_arrays_are_written_without_a_copy(tmp_path):
    n = 8 << 20  # 64 MiB of float64
    a = np.ones(n, dtype=np.float64)
    fortran = np.asfortranarray(np.ones((n // 1024, 1024), dtype=np.float64))
    path = tmp_path / "big.mmt"
    assert peak_traced_bytes(lambda: mmtensor.save(path, {"a": a})) < (4 << 20)
    # The measure sees copies: a Fortran array is copied to C order first. (Torch's allocations
    # are not traced; a contiguous tensor is read through `Tensor.numpy()`, a view of its memory.)
    assert peak_traced_bytes(lambda: mmtensor.save(path, {"f": fortran})) >= fortran.nbytes
    assert np.array_equal(mmtensor.load(path)["f"], fortran)


def test_loaded_torch_tensors_are_copy_on_write(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "w.mmt"
    mmtensor.save(path, {"w": torch.arange(4096.0)})
    before = path.read_bytes()
    w = mmtensor.load(path, output="torch")["w"]
    w.add_(1)  # would be SIGSEGV on a read-only mapping
    assert w[0].item() == 1.0
    assert path.read_bytes() == before
    assert mmtensor.load(path, output="torch")["w"][0].item() == 0.0


# ---------------------------------------------------------------------------------------------
# Parity with safetensors
# ---------------------------------------------------------------------------------------------


def test_parity_with_safetensors_numpy(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {
        name: sample(name, (5, 3))
        for name, _ in NUMPY_DTYPES
        if name not in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "complex128")
    }
    arrays["scalar"] = np.array(1.5, dtype=np.float32)
    arrays["empty"] = np.zeros((0, 2), dtype=np.int64)
    metadata = {"format": "np"}
    st.save_file(arrays, tmp_path / "a.safetensors", metadata=metadata)
    mmtensor.save(tmp_path / "a.mmt", arrays, metadata=metadata)
    theirs = st.load_file(tmp_path / "a.safetensors")
    ours = mmtensor.load(tmp_path / "a.mmt")
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert same(ours[name], theirs[name]), name
    # Either library's file reads back the same through mmtensor.
    via_open = mmtensor.load(tmp_path / "a.safetensors")
    for name in theirs:
        assert same(via_open[name], theirs[name]), name
    assert mmtensor.open(tmp_path / "a.mmt").metadata == metadata
