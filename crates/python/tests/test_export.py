"""mmtensor.export: a store back out as .npy files or one .safetensors file, as `mmt export` does."""

from __future__ import annotations

import numpy as np
import pytest

import mmtensor


@pytest.fixture
def store_path(tmp_path):
    arrays = {
        "x": np.arange(24, dtype=np.float32).reshape(6, 4),
        "enc/layer.0": np.arange(5, dtype=np.int64),
        "flags": np.array([True, False, True]),
    }
    np.savez(tmp_path / "a.npz", **arrays)
    out = tmp_path / "s.mmt"
    mmtensor.convert([tmp_path / "a.npz"], out, metadata={"split": "train"})
    return out, arrays


@pytest.mark.parametrize("source_kind", ["store", "path", "copy"])
def test_export_npy_round_trips(store_path, tmp_path, source_kind):
    path, arrays = store_path
    out = tmp_path / "npy"
    if source_kind == "store":
        with mmtensor.open(path) as store:
            summary = mmtensor.export(store, out, to="npy")
    else:
        summary = mmtensor.export(path, out, copy=source_kind == "copy")
    assert summary["path"] == str(out) and summary["tensors"] == 3
    assert summary["bytes"] == sum(a.nbytes for a in arrays.values())
    assert sorted(p.name for p in out.iterdir()) == ["enc%2Flayer.0.npy", "flags.npy", "x.npy"]
    for name, expected in arrays.items():
        got = np.load(out / (name.replace("/", "%2F") + ".npy"))
        assert got.dtype == expected.dtype and np.array_equal(got, expected), name


def test_export_safetensors_round_trips(store_path, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    path, arrays = store_path
    out = tmp_path / "m.safetensors"
    summary = mmtensor.export(path, out, to="safetensors")
    assert summary["tensors"] == 3
    loaded = st.load_file(str(out))
    for name, expected in arrays.items():
        assert np.array_equal(loaded[name], expected), name
    with mmtensor.open(out) as back:
        assert back.format == "safetensors" and back.metadata.get("split") == "train"


def test_export_errors(store_path, tmp_path):
    path, _ = store_path
    with pytest.raises(ValueError, match="to=\"npy\", \"safetensors\" or \"megatron\""):
        mmtensor.export(path, tmp_path / "o", to="csv")
    with pytest.raises(TypeError):
        mmtensor.export(3, tmp_path / "o")
    with pytest.raises(mmtensor.StoreNotFoundError):
        mmtensor.export(tmp_path / "absent.mmt", tmp_path / "o")
    store = mmtensor.open(path)
    store.close()
    with pytest.raises(mmtensor.StoreClosedError):
        mmtensor.export(store, tmp_path / "o")
    # safetensors has no C128: refused, naming the tensor, and nothing is left under the name.
    np.save(tmp_path / "z.npy", np.ones(3, dtype=np.complex128))
    mmtensor.convert([tmp_path / "z.npy"], tmp_path / "z.mmt")
    with pytest.raises(mmtensor.UnsupportedDtypeError, match="safetensors cannot hold") as info:
        mmtensor.export(tmp_path / "z.mmt", tmp_path / "z.safetensors", to="safetensors")
    assert info.value.tensor == "z"
    assert not (tmp_path / "z.safetensors").exists()


def test_convert_refuses_bools_other_than_0_and_1_unless_normalized(tmp_path):
    # Defect 3 of issue 10, through Python: the converter's refusal reaches Python as
    # InvalidFileError naming the tensor, and normalize_bools=True stores every nonzero byte as 1.
    raw = np.array([0, 1, 2, 0, 255], dtype=np.uint8)
    np.save(tmp_path / "b.npy", raw.view(np.bool_))
    with pytest.raises(mmtensor.InvalidFileError, match="normalize_bools=True") as info:
        mmtensor.convert([tmp_path / "b.npy"], tmp_path / "b.mmt")
    assert info.value.tensor == "b"
    assert not (tmp_path / "b.mmt").exists()
    mmtensor.convert([tmp_path / "b.npy"], tmp_path / "b.mmt", normalize_bools=True)
    with mmtensor.open(tmp_path / "b.mmt") as store:
        assert store.raw("b").tolist() == [0, 1, 1, 0, 1]
        store.verify()


def test_export_of_a_tensor_name_too_long_for_a_file_name_names_the_tensor(tmp_path):
    name = "w" * 252  # 252 + ".npy" is 256 bytes: one more than NAME_MAX
    np.savez(tmp_path / "long.npz", **{name: np.zeros(3, dtype=np.float32)})
    store = tmp_path / "long.mmt"
    mmtensor.convert([tmp_path / "long.npz"], store)
    with pytest.raises(mmtensor.ConvertError) as e:
        mmtensor.export(store, tmp_path / "out", to="npy")
    assert e.value.tensor == name
    assert not (tmp_path / "out").exists()
