"""BOOL bytes other than 0 and 1 (a hostile file) never reach NumPy, PyTorch or DLPack as bool.

Every typed export of a BOOL tensor reads it once through the loader's check; `raw()` (uint8)
shows the bits unchecked.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import mmtensor

BAD = bytes([0, 1, 2, 1])


def bad_bool_npy(path):
    """A .npy file whose bool array holds byte 2, written by hand (NumPy itself never would)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|b1", "fortran_order": False, "shape": (4,)}
        )
        f.write(BAD)
    return path


def bad_bool_safetensors(path):
    """A .safetensors file whose BOOL tensor `m` holds byte 2."""
    header = json.dumps({"m": {"dtype": "BOOL", "shape": [4], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + BAD)
    return path


@pytest.fixture(params=["npy", "safetensors"])
def bad_store(request, tmp_path):
    if request.param == "npy":
        return mmtensor.open(bad_bool_npy(tmp_path / "m.npy")), "m"
    return mmtensor.open(bad_bool_safetensors(tmp_path / "m.safetensors")), "m"


def test_bool_bytes_other_than_0_or_1_are_refused_by_every_typed_export(bad_store):
    store, name = bad_store
    t = store.tensor(name)
    exports = [
        lambda: store[name],
        lambda: t.numpy(),
        lambda: np.asarray(t),
        lambda: t[1:3].numpy(),
        lambda: t[0],
    ]
    if hasattr(t, "__dlpack__") and hasattr(np, "from_dlpack"):
        exports.append(lambda: np.from_dlpack(t))
        exports.append(lambda: np.from_dlpack(t, copy=True))
    for export in exports:
        with pytest.raises(mmtensor.CorruptedFileError, match=r"`m`") as info:
            export()
        assert info.value.tensor == name
    with pytest.raises(mmtensor.CorruptedFileError):
        t.__dlpack__(max_version=(1, 0))


def test_bool_raw_view_shows_the_bits_unchecked(bad_store):
    store, name = bad_store
    raw = store.tensor(name).raw()
    assert raw.dtype == np.uint8
    assert bytes(raw) == BAD


def test_bool_bytes_other_than_0_or_1_never_reach_torch(bad_store):
    torch = pytest.importorskip("torch")
    store, name = bad_store
    with pytest.raises(mmtensor.CorruptedFileError):
        store.tensor(name).torch()
    del torch


def test_valid_bool_tensors_still_export(tmp_path):
    np.save(tmp_path / "ok.npy", np.array([True, False, True]))
    with mmtensor.open(tmp_path / "ok.npy") as store:
        assert store["ok"].tolist() == [True, False, True]
        assert np.asarray(store.tensor("ok")).dtype == np.bool_
