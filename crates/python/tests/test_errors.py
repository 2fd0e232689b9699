"""Errors: the right exception class, the CLI's message, the file and tensor named."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import mmtensor


@pytest.fixture
def store_path(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(4096 * 4, dtype=np.float32).reshape(4096, 4))
    np.save(tmp_path / "y.npy", np.arange(10, dtype=np.int64))
    out = tmp_path / "s.mmt"
    mmtensor.convert([tmp_path / "x.npy", tmp_path / "y.npy"], out)
    return out


def test_missing_file_is_a_file_not_found_error(tmp_path):
    path = tmp_path / "absent.mmt"
    with pytest.raises(FileNotFoundError) as info:
        mmtensor.open(path)
    e = info.value
    assert isinstance(e, mmtensor.StoreNotFoundError) and isinstance(e, mmtensor.MmtError)
    # The loader's message, as `mmt` prints it after "error: ".
    assert str(e) == f"cannot open {path}: No such file or directory (os error 2)"
    assert e.errno == 2 and e.path == str(path)


def test_not_an_mmt_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, world: not a tensor file")
    with pytest.raises(mmtensor.InvalidFileError, match=r"not an \.mmt, \.safetensors or \.npy file") as info:
        mmtensor.open(path)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(str(path))


def test_truncated_store_is_refused_at_open(store_path, tmp_path):
    data = store_path.read_bytes()
    cut = tmp_path / "cut.mmt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(mmtensor.InvalidFileError) as info:
        mmtensor.open(cut)
    assert str(cut) in str(info.value)


def test_verify_names_the_corrupted_tensor(store_path):
    with mmtensor.open(store_path) as store:
        store.verify()
        start, _ = store.tensor("x").byte_range
    # No array of the file is alive here, so changing its bytes breaks no mapping's promise.
    data = bytearray(store_path.read_bytes())
    data[start + 100] ^= 0xFF
    store_path.write_bytes(bytes(data))
    with mmtensor.open(store_path) as store:
        store.verify("y")
        with pytest.raises(mmtensor.ChecksumMismatchError) as info:
            store.verify()
        with pytest.raises(mmtensor.ChecksumMismatchError):
            store.tensor("x").rows(0, 10).verify()
    e = info.value
    assert e.tensor == "x" and e.path == str(store_path)
    assert f"{store_path}: tensor `x`, block 0 (bytes {start}.." in str(e)
    assert "is corrupted: checksum" in str(e)
    assert isinstance(e, mmtensor.CorruptedFileError) and isinstance(e, ValueError)


def test_verify_without_checksums(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with mmtensor.open(tmp_path / "a.npy") as store:
        with pytest.raises(mmtensor.NoChecksumsError, match="carry no checksums"):
            store.verify()


def test_unknown_tensor_is_a_key_error(store_path):
    with mmtensor.open(store_path) as store:
        with pytest.raises(KeyError) as info:
            store["nope"]
        assert str(info.value).startswith(f"{store_path}: no tensor named `nope`; it has `")
        assert info.value.tensor == "nope"
        assert store.get("nope") is None and store.get("nope", 5) == 5
        assert "nope" not in store and 3 not in store


def test_wrong_dtype(store_path):
    with mmtensor.open(store_path) as store:
        assert store.numpy("x", dtype=np.float32).dtype == np.float32
        with pytest.raises(mmtensor.DtypeMismatchError) as info:
            store.numpy("x", dtype="float64")
        assert isinstance(info.value, TypeError)
        assert str(info.value) == (
            f"{store_path}: tensor `x` holds F32, which cannot be viewed as `float64` (view it as `float32`)"
        )


def test_row_ranges_are_index_errors(store_path):
    with mmtensor.open(store_path) as store:
        with pytest.raises(IndexError, match=r"tensor `y`: row index 20 is out of range for 10 rows") as info:
            store.rows("y", 5, 20)
        assert info.value.tensor == "y" and info.value.path == str(store_path)
        # A reversed range: the loader's message, as `mmt` prints it.
        with pytest.raises(mmtensor.RowRangeError, match=r"tensor `y`: rows 7\.\.3 are out of range for 10 rows"):
            store.rows("y", 7, 3)


def test_bf16_without_ml_dtypes_needs_raw(tmp_path, monkeypatch):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    np.save(tmp_path / "w.npy", np.ones((2, 2), dtype=ml_dtypes.bfloat16))
    mmtensor.convert([tmp_path / "w.npy"], tmp_path / "w.mmt", input_dtype="bf16")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now fails
    with mmtensor.open(tmp_path / "w.mmt") as store:
        with pytest.raises(mmtensor.UnsupportedDtypeError, match="pip install ml_dtypes"):
            store["w"]
        raw = store.raw("w")
        assert raw.dtype == np.uint16 and (raw == 0x3F80).all()


def test_convert_errors_carry_the_cli_messages(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3, dtype=np.float32))
    with pytest.raises(mmtensor.ConvertError, match=r"dtype: dtype rule `nonsense`: unknown dtype `nonsense`"):
        mmtensor.convert([tmp_path / "a.npy"], tmp_path / "o.mmt", dtype="nonsense")
    with pytest.raises(FileNotFoundError):
        mmtensor.convert([tmp_path / "missing.npy"], tmp_path / "o.mmt")
    np.save(tmp_path / "b.npy", np.zeros(3))
    with pytest.raises(mmtensor.ConvertError, match="two tensors are named `a`"):
        mmtensor.convert([tmp_path / "a.npy", f"a={tmp_path / 'b.npy'}"], tmp_path / "o.mmt")
    with pytest.raises(mmtensor.MmtError):
        mmtensor.convert([tmp_path / "a.npy"], tmp_path / "o.mmt", alignment=100)
    assert not (tmp_path / "o.mmt").exists()
    with pytest.raises(TypeError):
        mmtensor.convert([3.5], tmp_path / "o.mmt")


def test_open_directory_says_it_is_a_directory(tmp_path):
    # Defect 10 of issue 10: open(directory) said "No such device" (mmap's ENODEV).
    with pytest.raises(IsADirectoryError) as info:
        mmtensor.open(tmp_path)
    e = info.value
    assert isinstance(e, mmtensor.StoreIsADirectoryError) and isinstance(e, mmtensor.MmtOSError)
    assert str(e) == f"{tmp_path}: is a directory, not a tensor file"
    assert "No such device" not in str(e)
    assert e.errno == 21 and e.path == str(tmp_path)
    with pytest.raises(mmtensor.StoreIsADirectoryError):
        mmtensor.open(tmp_path, copy=True)


def test_verify_and_prefetch_of_a_shrunk_file_raise(store_path, tmp_path):
    # Defect 10 of issue 10: a file truncated under an open store made verify() die of SIGBUS
    # and prefetch fail with "Bad address". Run in a child, so a regression kills only it.
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import os, sys, mmtensor
        path = sys.argv[1]
        store = mmtensor.open(path)
        os.truncate(path, os.path.getsize(path) // 2)
        for call in (store.verify, lambda: store.prefetch(wait=True)):
            try:
                call()
            except mmtensor.MmtOSError as e:
                assert "shrank" in str(e), str(e)
                print("raised")
    """)
    result = subprocess.run([sys.executable, "-c", code, str(store_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.split() == ["raised", "raised"]


def test_open_docstring_warns_about_writing_an_open_file():
    doc = mmtensor.open.__doc__
    assert "np.save(path, a)" in doc and "os.replace" in doc and "mmtensor.convert" in doc
