"""The Python surface: mapping protocol, repr, metadata, lookups without data, DLPack, torch."""

from __future__ import annotations

import numpy as np
import pytest

import mmtensor
from conftest import data_pointer, inside, mappings_of


@pytest.fixture
def store(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(64 * 8, dtype=np.float32).reshape(64, 8))
    np.save(tmp_path / "labels.npy", np.arange(64, dtype=np.int64))
    out = tmp_path / "d.mmt"
    mmtensor.convert([tmp_path / "x.npy", tmp_path / "labels.npy"], out, metadata={"split": "train"})
    with mmtensor.open(out) as s:
        yield s


def test_mapping_protocol(store):
    assert store.keys() == ["x", "labels"]
    assert list(store) == ["x", "labels"] and len(store) == 2
    assert "x" in store and "z" not in store
    assert [k for k, _ in store.items()] == ["x", "labels"]
    assert store.metadata["split"] == "train"
    assert store.format == "mmt" and store.mapped and store.path.endswith("d.mmt")


def test_header_lookups(store):
    assert store.dtype("x") == "F32" and store.shape("x") == (64, 8)
    t = store.tensor("x")
    assert (t.name, t.dtype, t.numpy_dtype, t.shape, t.ndim, t.size, t.nbytes, len(t)) == (
        "x", "F32", "float32", (64, 8), 2, 512, 2048, 64
    )
    assert t.byte_range[1] - t.byte_range[0] == 2048


def test_reprs(store):
    r = repr(store)
    assert r.startswith("<mmtensor.Store ") and "mmt, mapped, 2 tensors: x F32[64, 8], labels I64[64]" in r
    assert repr(store.tensor("x").rows(2, 4)) .startswith("<mmtensor.Tensor `x` rows 2..4: F32 [2, 8] in ")


def test_hints_and_prefetch(store):
    store.advise("sequential")
    store.advise("willneed", "x")
    store.prefetch(wait=True)
    store.tensor("x").rows(0, 8).prefetch(wait=True)
    with pytest.raises(ValueError, match="unknown advice"):
        store.advise("fast")


def test_dlpack_with_numpy(store):
    t = store.tensor("x")
    assert t.__dlpack_device__() == (1, 0)
    a = np.from_dlpack(t)
    # No copy: a private copy-on-write mapping of the file (read-only to NumPy, by the flag).
    assert inside(data_pointer(a), a.nbytes, mappings_of(store.path)) and not a.flags.writeable
    assert np.array_equal(a, store["x"])
    rows = np.from_dlpack(t.rows(8, 16))
    assert np.array_equal(rows, store["x"][8:16])
    # The unversioned protocol cannot carry the read-only flag; its capsule is writable, private.
    assert type(t.__dlpack__()).__name__ == "PyCapsule"
    copied = np.from_dlpack(t, copy=True)
    assert data_pointer(copied) != data_pointer(a) and np.array_equal(copied, a)
    # NumPy's own export of our arrays works too (versioned, read-only).
    assert data_pointer(np.from_dlpack(store["labels"])) == data_pointer(store["labels"])


def test_array_protocol(store):
    t = store.tensor("x")
    assert data_pointer(np.asarray(t)) == data_pointer(store["x"])
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    assert np.array(t).flags.writeable  # np.array copies


def test_torch_shares_memory(store, tmp_path):
    torch = pytest.importorskip("torch")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable" warning spam
        t = store.torch("x")
    assert t.dtype == torch.float32 and tuple(t.shape) == (64, 8)
    # No copy: a private copy-on-write mapping of the file, not the store's own (read-only) one.
    assert inside(t.data_ptr(), t.nbytes, mappings_of(store.path))
    assert t.data_ptr() != data_pointer(store["x"])
    assert torch.equal(t, torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8))
    ml_dtypes = pytest.importorskip("ml_dtypes")
    np.save(tmp_path / "w.npy", np.ones((3, 2), dtype=ml_dtypes.bfloat16))
    np.save(tmp_path / "q.npy", np.ones(4, dtype=ml_dtypes.float8_e4m3fn))
    mmtensor.convert([tmp_path / "w.npy", tmp_path / "q.npy"], tmp_path / "h.mmt",
                     input_dtype={"w": "bf16", "q": "f8_e4m3"})
    with mmtensor.open(tmp_path / "h.mmt") as h:
        w, q = h.torch("w"), h.torch("q")
    assert w.dtype == torch.bfloat16 and bool((w == 1).all())
    assert q.dtype == torch.float8_e4m3fn and bool((q.float() == 1).all())
