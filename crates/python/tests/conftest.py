"""Shared helpers for the binding's tests: /proc readers and small file makers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest


def rss_anon_bytes() -> int:
    """Anonymous resident memory of this process (RssAnon in /proc/self/status), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon line in /proc/self/status")


def mappings_of(path: os.PathLike | str) -> list[tuple[int, int]]:
    """The address ranges at which this process maps `path` (from /proc/self/maps)."""
    target = os.path.realpath(path)
    ranges = []
    with open("/proc/self/maps") as f:
        lines = f.readlines()
    # A live process always maps something: an empty file means /proc gives nothing, which must
    # fail the zero-copy tests rather than let "not mapped" assertions pass vacuously.
    if not lines:
        raise RuntimeError("/proc/self/maps is empty")
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].strip() == target:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((start, end))
    return ranges


def data_pointer(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def inside(pointer: int, nbytes: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start <= pointer and pointer + nbytes <= end for start, end in ranges)


def sparse_npy(path: Path, dtype: str, shape: tuple[int, ...]) -> Path:
    """A .npy file whose data is a hole: the header is written, then the file is extended with
    truncate(), so a 1 GiB array costs no disk I/O."""
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        data_start = f.tell()
        f.truncate(data_start + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return path


# Skips on other systems only: on Linux, a missing or empty /proc fails these tests (the readers
# above raise) instead of skipping them, so the zero-copy proofs cannot pass by not running.
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="measures through Linux's /proc"
)

__all__ = [
    "rss_anon_bytes",
    "mappings_of",
    "data_pointer",
    "inside",
    "sparse_npy",
    "linux_only",
    "re",
]


# Python source defining `evict(path)`, for the scripts that tests run in fresh interpreters: drops
# a file's pages from the page cache (after `sync`, so they are clean), as a cold start finds it.
# A tmpfs keeps them whatever is asked.
EVICT = """
import os
def evict(path):
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
"""


def run_in_forked_child(setup: str, child: str, *args: str) -> str:
    """Runs `setup` in a fresh Python process (its `sys.argv[1:]` are `args`), then evaluates the
    expression `child` in a child forked from it, and returns what the child gave, as text.

    For the fork-safety tests: `fork` copies only the calling thread, so work that a parent ran on a
    thread pool can leave the child waiting forever for threads it does not have. The child gets 20
    seconds; a hang fails the test instead of hanging it (the child is a daemon of the process).
    """
    code = textwrap.dedent(setup) + textwrap.dedent(f"""
        import multiprocessing
        def _child(queue):
            queue.put({child})
        _ctx = multiprocessing.get_context("fork")
        _queue = _ctx.Queue()
        _p = _ctx.Process(target=_child, args=(_queue,), daemon=True)
        _p.start()
        print(_queue.get(timeout=20))
        _p.join()
    """)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()
