"""Threads: no lock of the binding is held across a call into Python, and close() cannot deadlock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import mmtensor


@pytest.fixture
def store_path(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(1000, dtype=np.float32))
    out = tmp_path / "s.mmt"
    mmtensor.convert([tmp_path / "x.npy"], out)
    return out


def run_script(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=20,
    )


def test_close_while_another_thread_raises_store_closed_does_not_deadlock(store_path):
    # Defect 7 of issue 10: a lookup held the store's read lock while it built StoreClosedError
    # (Python code, which may let another thread run), and close() waited for the write lock
    # while holding the GIL: the two waited for each other forever. Here the exception's
    # __init__ sleeps (releasing the GIL) while the main thread calls close().
    code = """
        import sys, threading, time
        import mmtensor, mmtensor.errors as errors

        store = mmtensor.open(sys.argv[1])
        store.close()

        class SlowClosed(errors.StoreClosedError):
            def __init__(self, *args):
                time.sleep(0.3)
                super().__init__(*args)

        errors.StoreClosedError = SlowClosed

        def lookup():
            try:
                store["x"]
            except mmtensor.MmtError:
                pass

        t = threading.Thread(target=lookup)
        t.start()
        time.sleep(0.1)   # the lookup is now inside SlowClosed.__init__
        store.close()
        t.join()
        print("done")
    """
    try:
        result = run_script(code, str(store_path))
    except subprocess.TimeoutExpired:
        pytest.fail("close() deadlocked with a lookup that was raising StoreClosedError")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


def test_concurrent_close_and_lookups(store_path):
    store = mmtensor.open(store_path)
    expected = np.arange(1000, dtype=np.float32)
    errors: list[BaseException] = []
    seen = {"closed": 0, "ok": 0}
    start = threading.Barrier(9)

    def lookups():
        start.wait()
        for _ in range(300):
            try:
                a = store["x"]
                assert np.array_equal(a, expected)
                assert "x" in store and len(store) == 1 and store.keys() == ["x"]
                repr(store)
                seen["ok"] += 1
            except mmtensor.StoreClosedError:
                seen["closed"] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                return

    def closer():
        start.wait()
        for _ in range(50):
            store.close()

    threads = [threading.Thread(target=lookups) for _ in range(8)] + [threading.Thread(target=closer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a thread is stuck: deadlock between close() and lookups"
    assert not errors, errors
    assert store.closed and seen["closed"] + seen["ok"] == 8 * 300


def test_regression_two_threads_in_one_loader_iterator_get_a_clear_error(tmp_path):
    """Regression (new-user trial): a second thread calling `next` on a loader iterator while the
    first waited in it got PyO3's bare "Already borrowed". It now says what is wrong and what to do;
    every batch is still handed out once, right."""
    rows = 4096
    np.save(tmp_path / "id.npy", np.arange(rows, dtype=np.int64))
    np.save(tmp_path / "x.npy", np.zeros((rows, 1024), dtype=np.float32))
    mmtensor.convert([f"id={tmp_path / 'id.npy'}", f"x={tmp_path / 'x.npy'}"], tmp_path / "s.mmt")
    it = iter(mmtensor.Loader(str(tmp_path / "s.mmt"), 64, shuffle=True, prefetch=2))
    got, errors, lock = [], set(), threading.Lock()

    def work():
        while True:
            try:
                b = next(it)
            except StopIteration:
                return
            except RuntimeError as e:
                with lock:
                    errors.add(str(e))
                continue
            with lock:
                got.append(np.asarray(b["id"]).copy())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(np.concatenate(got).tolist()) == list(range(rows))
    for e in errors:  # none when the threads happened never to overlap
        assert "in use: another thread is in its next()" in e, e
