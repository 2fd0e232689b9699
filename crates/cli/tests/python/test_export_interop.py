"""`mmt export` read back by the real NumPy and safetensors packages.

Every NumPy fixture (every dtype, both byte orders, both memory orders, npz members) is converted
with `mmt convert`, exported with `mmt export --to npy` and `--to safetensors`, and loaded by
`np.load` and `safetensors.numpy.load_file`: values, shapes and dtypes must equal the originals.

The `mmt` binary is taken from $MMT_BIN, else target/debug/mmt (built by `cargo test`).
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[4]
FIXTURES = ROOT / "fixtures" / "numpy"
MMT = os.environ.get("MMT_BIN", str(ROOT / "target" / "debug" / "mmt"))
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

# Input dtypes that NumPy cannot name (ml_dtypes arrays are saved as raw void data).
INPUT_DTYPE = {"npy/bf16.npy": "bf16", "npy/f8e4m3.npy": "f8_e4m3", "npy/f8e5m2.npy": "f8_e5m2"}
ML = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
# .mmt dtypes that safetensors has no name for.
NOT_IN_SAFETENSORS = {"C128"}


def mmt(*args, cwd):
    r = subprocess.run([MMT, *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"mmt {' '.join(args)}: {r.stderr}"
    return r


def originals(rel):
    """The arrays a fixture holds, by output tensor name, as NumPy loads them."""
    path = FIXTURES / rel
    if rel.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if rel.endswith(".npy"):
        return {path.stem: np.load(path)}
    return None


def as_expected(arr, dtype_name):
    if dtype_name in ML:
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return arr.view(getattr(ml_dtypes, ML[dtype_name]))
    return arr


def cases():
    return [rel for rel in MANIFEST if rel.endswith((".npy", ".npz"))]


@pytest.mark.skipif(not Path(MMT).exists(), reason=f"{MMT} is not built (run cargo test first)")
@pytest.mark.parametrize("rel", cases())
def test_export_reads_back_equal(rel, tmp_path):
    want = originals(rel)
    args = ["convert", str(FIXTURES / rel), "-o", "s.mmt", "--quiet"]
    if rel in INPUT_DTYPE:
        args += ["--input-dtype", INPUT_DTYPE[rel]]
    mmt(*args, cwd=tmp_path)
    mmt("export", "s.mmt", "--to", "npy", "npy", "--quiet", cwd=tmp_path)
    expected = MANIFEST[rel]
    for name, info in expected.items():
        got = np.load(tmp_path / "npy" / f"{name}.npy")
        got = as_expected(got, info["dtype"])
        orig = as_expected(want[name], info["dtype"])
        assert got.shape == orig.shape, name
        assert got.dtype == orig.dtype.newbyteorder("="), name
        assert got.flags.c_contiguous
        assert np.array_equal(got, orig, equal_nan=orig.dtype.kind in "fc"), name
        assert got.tobytes() == bytes.fromhex(info["hex"]), name

    if any(info["dtype"] in NOT_IN_SAFETENSORS for info in expected.values()):
        r = subprocess.run([MMT, "export", "s.mmt", "--to", "safetensors", "s.safetensors"],
                           cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 1 and "--to npy" in r.stderr
        assert not (tmp_path / "s.safetensors").exists()
        return
    mmt("export", "s.mmt", "--to", "safetensors", "s.safetensors", "--quiet", cwd=tmp_path)
    if any(info["dtype"].startswith("F8") for info in expected.values()):
        # safetensors.numpy has no fp8 dtype: check the file's own header and bytes instead.
        raw = (tmp_path / "s.safetensors").read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        for name, info in expected.items():
            entry = header[name]
            assert entry["dtype"] == info["dtype"] and entry["shape"] == info["shape"]
            a, b = entry["data_offsets"]
            assert raw[8 + n + a:8 + n + b] == bytes.fromhex(info["hex"]), name
        return
    from safetensors.numpy import load_file

    loaded = load_file(tmp_path / "s.safetensors")
    assert set(loaded) == set(expected)
    for name, info in expected.items():
        got = loaded[name]
        assert got.shape == tuple(info["shape"]), name
        assert got.tobytes() == bytes.fromhex(info["hex"]), name
        if info["dtype"] not in ML:
            assert np.array_equal(got, want[name], equal_nan=got.dtype.kind in "fc"), name
