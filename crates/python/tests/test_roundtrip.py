"""Round trips against real NumPy: np.save -> mmtensor.convert -> mmtensor.open, for every dtype."""

from __future__ import annotations

import numpy as np
import pytest

import mmtensor

ml_dtypes = pytest.importorskip("ml_dtypes")

RNG = np.random.default_rng(7)


def sample(dtype: np.dtype, shape=(5, 7)) -> np.ndarray:
    n = int(np.prod(shape))
    if dtype == np.bool_:
        values = RNG.integers(0, 2, n).astype(bool)
    elif dtype.kind in "ui":
        info = np.iinfo(dtype)
        values = RNG.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    elif dtype.kind == "c":
        values = (RNG.standard_normal(n) + 1j * RNG.standard_normal(n)).astype(dtype)
    else:
        # Finite values of every float type, ml_dtypes included (fp8 saturates to its range).
        values = (RNG.standard_normal(n) * 4).astype(np.float32).astype(dtype)
    return values.reshape(shape)


NUMPY_DTYPES = [
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "float32", "float64", "complex64", "complex128",
]
ML_DTYPES = {"bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality, for types where == is not the question (ml_dtypes, NaN-free floats)."""
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", NUMPY_DTYPES)
def test_every_numpy_dtype_round_trips(tmp_path, name):
    expected = sample(np.dtype(name))
    np.save(tmp_path / "t.npy", expected)
    mmtensor.convert([str(tmp_path / "t.npy")], tmp_path / "t.mmt")
    with mmtensor.open(tmp_path / "t.mmt") as store:
        got = store["t"]
        assert got.dtype == expected.dtype
        assert got.shape == expected.shape
        assert np.array_equal(got, expected)
        assert store.tensor("t").numpy_dtype == name
        assert got.base is not None and not got.flags.writeable


@pytest.mark.parametrize("name,mmt_name", sorted(ML_DTYPES.items()))
def test_ml_dtypes_round_trip_through_input_dtype(tmp_path, name, mmt_name):
    dt = np.dtype(getattr(ml_dtypes, name))
    expected = sample(dt, (3, 4, 5))
    np.save(tmp_path / "w.npy", expected)  # saved by NumPy as <V2, <V1, or <f1 (float8_e5m2)
    mmtensor.convert([tmp_path / "w.npy"], tmp_path / "w.mmt", input_dtype={"w": dt})
    with mmtensor.open(tmp_path / "w.mmt") as store:
        assert store.dtype("w") == mmt_name
        got = store["w"]
        assert got.dtype == dt
        assert same_bits(got, expected)
        raw = store.raw("w")
        assert raw.dtype == np.dtype("uint16" if dt.itemsize == 2 else "uint8")
        assert same_bits(raw, expected.view(raw.dtype))


def test_cast_to_bf16_matches_ml_dtypes_rounding(tmp_path):
    # Ties (round to even), just above and just below a tie, extremes, and ordinary values.
    bits = np.array(
        [0x3F808000, 0x3F818000, 0xBF1C8007, 0x3FC48001, 0x3F807FFF, 0x7F7FFFFF, 0x00000001],
        dtype=np.uint32,
    )
    x = np.concatenate([bits.view(np.float32), RNG.standard_normal(185).astype(np.float32)])
    x = x.reshape(64, 3)
    np.save(tmp_path / "x.npy", x)
    mmtensor.convert([tmp_path / "x.npy"], tmp_path / "x.mmt", dtype="bf16")
    with mmtensor.open(tmp_path / "x.mmt") as store:
        got = store["x"]
        assert got.dtype == np.dtype(ml_dtypes.bfloat16)
        assert same_bits(got, x.astype(ml_dtypes.bfloat16))


def test_npz_fortran_big_endian_and_odd_shapes(tmp_path):
    arrays = {
        "fortran": np.asfortranarray(sample(np.dtype("float64"), (6, 5))),
        "big": sample(np.dtype("int32"), (4, 3)).astype(">i4"),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.int16),
        "cube": sample(np.dtype("uint16"), (2, 3, 4)),
    }
    np.savez(tmp_path / "b.npz", **arrays)
    np.save(tmp_path / "a.npy", sample(np.dtype("int8")))
    summary = mmtensor.convert(
        [tmp_path / "a.npy", str(tmp_path / "b.npz")], tmp_path / "out.mmt",
        metadata={"dataset": "unit"}, alignment=64,
    )
    assert summary["tensors"] == 6 and summary["path"].endswith("out.mmt")
    with mmtensor.open(tmp_path / "out.mmt") as store:
        assert set(store.keys()) == {"a", *arrays}
        for name, expected in arrays.items():
            got = store[name]
            assert got.dtype == expected.dtype.newbyteorder("<")
            assert got.shape == expected.shape
            assert np.array_equal(got, expected), name
            assert got.flags.c_contiguous
            assert store.tensor(name).byte_range[0] % 64 == 0
        assert store.metadata["dataset"] == "unit"


def test_named_inputs_dict_and_rows(tmp_path):
    x = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    np.save(tmp_path / "features.npy", x)
    mmtensor.convert({"x": tmp_path / "features.npy"}, tmp_path / "d.mmt")
    with mmtensor.open(tmp_path / "d.mmt") as store:
        assert np.array_equal(store.rows("x", 10, 20), x[10:20])
        assert np.array_equal(store.rows("x", -5), x[-5:])
        t = store.tensor("x").rows(10, 60).rows(5, 10)
        assert t.shape == (5, 3)
        assert np.array_equal(t.numpy(), x[15:20])


def test_opens_safetensors_and_npy_directly(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = {"w": sample(np.dtype("float32"), (8, 4)), "b": sample(np.dtype("int64"), (4,))}
    st.save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"k": "v"})
    with mmtensor.open(tmp_path / "m.safetensors") as store:
        assert store.format == "safetensors"
        assert store.metadata == {"k": "v"}
        for name, expected in tensors.items():
            assert np.array_equal(store[name], expected)
    np.save(tmp_path / "solo.npy", tensors["w"])
    with mmtensor.open(tmp_path / "solo.npy") as store:
        assert store.format == "npy" and store.keys() == ["solo"]
        assert np.array_equal(store["solo"], tensors["w"])
