"""No Python API makes any byte of a store writable, mapped or copied: a write fails loudly."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mmtensor


@pytest.fixture
def store_path(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(4096, dtype=np.float32).reshape(64, 64))
    out = tmp_path / "s.mmt"
    mmtensor.convert([tmp_path / "x.npy"], out)
    return out


WRITE_THROUGH_POINTER = """
    import ctypes, sys
    import mmtensor
    store = mmtensor.open(sys.argv[1], copy=sys.argv[2] == "copy")
    a = store["x"]
    pointer = a.__array_interface__["data"][0]
    ctypes.memset(pointer + 4 * int(sys.argv[3]), 0x7F, 1)
    # Reaching this line means the write went through.
    print("written", float(store["x"].ravel()[int(sys.argv[3])]))
"""


@pytest.mark.parametrize("mode", ["mapped", "copy"])
def test_writing_a_stores_bytes_through_a_pointer_faults(store_path, mode):
    # Defect 1 of issue 10: a store opened with copy=True kept its bytes in a writable heap
    # buffer, so a torch in-place write (or any write through the data pointer) succeeded
    # silently and changed every "read-only" array. The bytes of every store are now read-only
    # memory: the write kills the writer with SIGSEGV (or SIGBUS), never succeeds.
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITE_THROUGH_POINTER), str(store_path), mode, "100"],
        capture_output=True, text=True, timeout=60,
    )
    assert "written" not in result.stdout, f"a write into a {mode} store succeeded"
    assert result.returncode in (-signal.SIGSEGV, -signal.SIGBUS), (result.returncode, result.stderr)


@pytest.mark.parametrize("copy", [False, True], ids=["mapped", "copy"])
def test_every_array_is_read_only(store_path, copy):
    with mmtensor.open(store_path, copy=copy) as store:
        t = store.tensor("x")
        arrays = [store["x"], store.numpy("x"), store.raw("x"), store.rows("x", 2, 5), t.numpy(),
                  np.asarray(t), t[1:3].numpy(), t[4], t[::2], np.from_dlpack(t), store.items()[0][1]]
        for a in arrays:
            assert not a.flags.writeable
            with pytest.raises(ValueError):
                a.setflags(write=True)
            with pytest.raises(ValueError):
                a[...] = 0
        base = arrays[0]
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, mmtensor.MappedBuffer) and base.mapped == (not copy)
        assert base.__array_interface__["data"][1] is True  # read-only flag of the interface


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _ManagedTensorVersionedHead(ctypes.Structure):
    # dlpack.h: DLManagedTensorVersioned starts with version, manager_ctx, deleter, flags.
    _fields_ = [("version", _Version), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p), ("flags", ctypes.c_uint64)]


@pytest.mark.parametrize("copy", [False, True], ids=["mapped", "copy"])
def test_versioned_capsules_carry_the_read_only_flag(store_path, copy):
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    with mmtensor.open(store_path, copy=copy) as store:
        for minor in (0, 1):
            capsule = store.tensor("x").__dlpack__(max_version=(1, minor))
            head = _ManagedTensorVersionedHead.from_address(get_pointer(capsule, b"dltensor_versioned"))
            assert (head.version.major, head.version.minor) == (1, minor)
            assert head.flags & 1, "DLPACK_FLAG_BITMASK_READ_ONLY is not set"
        # The unversioned protocol cannot say read-only: its capsule lends a private
        # copy-on-write view, which a consumer may write without touching the store.
        legacy = store.tensor("x").__dlpack__()
        assert get_pointer(legacy, b"dltensor")
