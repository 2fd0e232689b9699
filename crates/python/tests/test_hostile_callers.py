"""Python code that tries to steer where the binding writes (a review's reproductions, issue 17's
defect 3 carried on): each case runs in a child process, so that a regression fails its test with
the child's signal instead of killing pytest. Before the fixes each one crashed (SIGSEGV, SIGABRT)
or silently wrote into memory it must not."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest


def run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


TORCH_MODE = """
    import mmap, sys, warnings
    import numpy as np, torch, mmtensor
    from torch.overrides import TorchFunctionMode
    path, mode = sys.argv[1], sys.argv[2]
    kept = []
    class Steer(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if mode == "readonly" and func is torch.empty:
                mm = mmap.mmap(-1, args[0][0], prot=mmap.PROT_READ)   # read-only pages
                kept.append(mm)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return torch.frombuffer(mm, dtype=torch.uint8)
            if mode == "bytes" and func is torch.empty:
                b = bytes(args[0][0])                                  # an immutable bytes
                kept.append(b)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return torch.frombuffer(b, dtype=torch.uint8)
            if (mode == "free" and getattr(func, "__name__", "") == "view" and args
                    and args[0].dtype == torch.uint8 and args[0].dim() == 1):
                r = func(*args, **kwargs)
                args[0].untyped_storage().resize_(0)                    # frees the bytes
                return r
            return func(*args, **kwargs)
    x = np.load(path)
    loader = mmtensor.Loader(path, 512, output="torch", _torch_buffers=True, prefetch=0)
    with Steer():
        batches = [b["x"].clone() for b in loader]
    assert not kept, "the mode was asked to make the loader's buffers"
    assert all(bytes(k) == bytes(len(k)) for k in kept if isinstance(k, bytes))
    np.testing.assert_array_equal(torch.cat(batches).numpy(), x)
    print("ok")
"""


@pytest.mark.parametrize("mode", ["readonly", "bytes", "free"])
def test_a_torch_mode_cannot_choose_or_free_the_loaders_buffers(tmp_path, mode):
    pytest.importorskip("torch")
    path = tmp_path / "x.npy"
    np.save(path, np.arange(2048 * 16, dtype=np.float32).reshape(2048, 16))
    r = run(TORCH_MODE, path, mode)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr[-2000:])


def test_a_replaced_numpy_ndarray_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((4000, 16), dtype=np.float32))
    r = run("""
        import sys
        import numpy as np, mmtensor
        real = np.ndarray
        class Fake(real):
            nbytes = property(lambda self: 4000 * 16 * 4)
            shape = property(lambda self: (4000, 16))
        Fake.view = staticmethod(lambda out, type=None: out)   # the view the gather would trust
        np.ndarray = Fake
        out = real.view(real.__new__(real, (2,), np.float32), Fake)   # 8 real bytes
        try:
            mmtensor.open(sys.argv[1]).tensor("x").take(np.arange(4000), out=out)
        except TypeError as e:
            print("refused:", e)
    """, path)
    assert r.returncode == 0 and "refused: numpy.ndarray is not NumPy's own" in r.stdout, (
        r.returncode, r.stdout, r.stderr[-2000:])


def test_an_object_array_as_out_is_refused_even_with_numpy_dtype_replaced(tmp_path):
    path = tmp_path / "y.npy"
    np.save(path, np.full((4, 2), 1e-300))
    r = run("""
        import sys
        import numpy as np
        class Yes:
            def __eq__(self, other): return True
            __hash__ = object.__hash__
        real = np.dtype
        np.dtype = lambda *a, **k: Yes()       # before mmtensor caches it
        import mmtensor
        t = mmtensor.open(sys.argv[1]).tensor("y")
        out = np.empty((4, 2), dtype=object)
        try:
            t.take([0, 1, 2, 3], out=out)
        except TypeError as e:
            print("refused:", e)
        np.dtype = real
        print(out.tolist())                    # still Nones, never float bits as pointers
    """, path)
    assert r.returncode == 0 and "refused: tensor `y`: out holds Python objects" in r.stdout, (
        r.returncode, r.stdout, r.stderr[-2000:])
    assert "[[None, None]" in r.stdout
