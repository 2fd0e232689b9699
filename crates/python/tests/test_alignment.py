"""What each consumer needs of a tensor's address: NumPy nothing, DLPack and PyTorch the element size."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import mmtensor


def npy_at(path, array, extra):
    """A version 1.0 .npy file whose data starts `extra` bytes past a multiple of 64."""
    text = repr({"descr": array.dtype.str, "fortran_order": False, "shape": array.shape}).encode()
    pad = -(10 + len(text) + 1) % 64 + extra
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + pad + 1) + text + b" " * pad
                     + b"\n" + array.tobytes())
    return path


def safetensors_file(path, tensors):
    """A .safetensors file written by hand, byte by byte, so that a tensor can sit at any offset
    (the safetensors library sorts tensors to keep them aligned). `tensors`: (name, dtype name,
    array) in file order, packed back to back; the data section starts 8-byte aligned."""
    header, offset, data = {}, 0, b""
    for name, dtype, array in tensors:
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.fixture(params=[False, True], ids=["mapped", "copy"])
def complex_at_4_mod_8(request, tmp_path):
    z = (np.arange(6) + 1j * np.arange(6)).astype(np.complex64)
    w = (np.arange(3) - 2j).astype(np.complex128)
    path = safetensors_file(tmp_path / "c.safetensors", [
        ("pad", "F32", np.zeros(1, dtype=np.float32)),   # 4 bytes: z starts at 4 mod 8
        ("z", "C64", z),                                  # 48 bytes: ends at 52
    ])
    with mmtensor.open(path, copy=request.param) as store:
        yield store, z


@pytest.fixture(params=[False, True], ids=["mapped", "copy"])
def complex_at_8_mod_16(request, tmp_path):
    # safetensors has no C128: a .npy file whose header is 8 bytes longer than NumPy writes it.
    w = (np.arange(3) - 2j).astype(np.complex128)
    path = npy_at(tmp_path / "w.npy", w, 8)
    with mmtensor.open(path, copy=request.param) as store:
        yield store, w


def test_unaligned_complex_is_refused_by_dlpack_as_torch_needs(complex_at_4_mod_8, complex_at_8_mod_16):
    # Defect 8 of issue 10: C64 was checked at 4 bytes (C's alignment), but PyTorch's
    # c10::complex<float> is aligned to 8 and complex<double> to 16; `torch.from_dlpack` goes
    # through `__dlpack__`, so DLPack export must refuse what PyTorch cannot take.
    for store, name, align in ((complex_at_4_mod_8[0], "z", 8), (complex_at_8_mod_16[0], "w", 16)):
        t = store.tensor(name)
        assert t.byte_range[0] % align == align // 2
        with pytest.raises(mmtensor.UnalignedError) as info:
            t.__dlpack__(max_version=(1, 0))
        message = str(info.value)
        assert f"tensor `{name}`" in message and f"not aligned to {align} bytes as DLPack" in message
        assert info.value.tensor == name and isinstance(info.value, ValueError)


def test_unaligned_error_gives_python_advice(complex_at_4_mod_8):
    # Defect 10 of issue 10: the message told Python users to call `to_vec`, a Rust API.
    store, _ = complex_at_4_mod_8
    with pytest.raises(mmtensor.UnalignedError) as info:
        store.tensor("z").__dlpack__(max_version=(1, 0))
    message = str(info.value)
    assert "to_vec" not in message
    assert "not aligned to 8 bytes" in message
    assert "copy=True" in message and "mmtensor.convert" in message


def test_numpy_takes_unaligned_complex_without_a_copy(complex_at_4_mod_8, complex_at_8_mod_16):
    store, z = complex_at_4_mod_8
    assert np.array_equal(store["z"], z)
    assert np.array_equal(complex_at_8_mod_16[0]["w"], complex_at_8_mod_16[1])
    assert np.array_equal(np.asarray(store.tensor("z")), z)
    # The advice of the error works: a copy is aligned and exports through DLPack.
    copied = np.from_dlpack(store.tensor("z"), copy=True)
    assert np.array_equal(copied, z)


def test_unaligned_complex_is_refused_by_torch(complex_at_4_mod_8):
    torch = pytest.importorskip("torch")
    store, z = complex_at_4_mod_8
    with pytest.raises(mmtensor.UnalignedError, match="torch.Tensor"):
        store.torch("z")
    assert torch.equal(torch.from_numpy(store.tensor("z").numpy().copy()), torch.from_numpy(z))


def test_aligned_complex_still_exports(tmp_path):
    z = (np.arange(4) + 1j).astype(np.complex64)
    path = safetensors_file(tmp_path / "ok.safetensors", [("z", "C64", z)])
    with mmtensor.open(path) as store:
        assert np.array_equal(np.from_dlpack(store.tensor("z")), z)
