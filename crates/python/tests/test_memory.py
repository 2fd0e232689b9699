"""Zero copy, lifetime and read-only: the promises that make the binding safe and cheap."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import mmtensor
from conftest import data_pointer, inside, linux_only, mappings_of, rss_anon_bytes, sparse_npy

GiB = 1 << 30
MiB = 1 << 20


@pytest.fixture
def store_path(tmp_path):
    x = np.arange(1000 * 16, dtype=np.float32).reshape(1000, 16)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(1000, dtype=np.int64))
    out = tmp_path / "s.mmt"
    mmtensor.convert([tmp_path / "x.npy", tmp_path / "y.npy"], out)
    return out, x


@linux_only
def test_arrays_point_into_the_mapping(store_path):
    path, x = store_path
    store = mmtensor.open(path)
    ranges = mappings_of(path)
    assert ranges, "the store's file is not mapped"
    for array in (store["x"], store.rows("x", 100, 200), store.tensor("x").numpy(), np.asarray(store.tensor("x"))):
        assert inside(data_pointer(array), array.nbytes, ranges)
    assert data_pointer(store.rows("x", 100, 200)) == data_pointer(store["x"]) + 100 * 16 * 4
    assert np.array_equal(store.rows("x", 100, 200), x[100:200])


@linux_only
def test_a_1_gib_tensor_costs_no_anonymous_memory(tmp_path):
    path = sparse_npy(tmp_path / "big.npy", "uint8", (GiB,))
    with mmtensor.open(path) as store:
        before = rss_anon_bytes()
        big = store["big"]
        # Touch every page: one byte per 4 KiB page, summed (every byte of the hole is zero).
        assert int(big[::4096].sum()) == 0
        grown = rss_anon_bytes() - before
        assert big.nbytes == GiB
        assert inside(data_pointer(big), big.nbytes, mappings_of(path))
    assert grown < 8 * MiB, f"RssAnon grew by {grown / MiB:.1f} MiB for a mapped 1 GiB tensor"


@linux_only
def test_the_rss_measurement_sees_a_copy(tmp_path):
    # The control for the test above: the same measurement on copy=True must see the copy.
    path = sparse_npy(tmp_path / "mid.npy", "uint8", (64 * MiB,))
    before = rss_anon_bytes()
    with mmtensor.open(path, copy=True) as store:
        mid = store["mid"]
        assert not store.mapped and int(mid[::4096].sum()) == 0
        grown = rss_anon_bytes() - before
    assert grown >= 60 * MiB


@linux_only
def test_arrays_outlive_a_collected_store(store_path):
    path, x = store_path
    store = mmtensor.open(path)
    a = store["x"]
    rows = store.rows("x", 10, 20)
    tensor = store.tensor("y")
    del store
    gc.collect()
    assert mappings_of(path), "the mapping went away while arrays still view it"
    assert np.array_equal(a, x) and np.array_equal(rows, x[10:20])
    assert np.array_equal(tensor.numpy(), np.arange(1000))
    del a, rows, tensor
    gc.collect()
    assert not mappings_of(path), "the mapping outlived every array (a leak)"


@linux_only
def test_close_keeps_existing_arrays_and_refuses_new_lookups(store_path):
    path, x = store_path
    store = mmtensor.open(path)
    a = store["x"]
    store.close()
    store.close()
    assert store.closed
    assert np.array_equal(a, x)
    with pytest.raises(mmtensor.StoreClosedError, match="the store is closed"):
        store["x"]
    with pytest.raises(ValueError):
        store.keys()
    del a
    gc.collect()
    assert not mappings_of(path)


def test_with_block_closes_and_arrays_survive(store_path):
    path, x = store_path
    with mmtensor.open(path) as store:
        a = store["x"]
        assert not store.closed
    assert store.closed and "closed" in repr(store)
    assert np.array_equal(a, x)


def test_arrays_are_read_only(store_path):
    path, _ = store_path
    with mmtensor.open(path) as store:
        for array in (store["x"], store.rows("x", 0, 5), store.raw("y")):
            assert not array.flags.writeable
            with pytest.raises(ValueError):
                array[0] = 1
            with pytest.raises(ValueError):
                array.flags.writeable = True


def test_base_chain_ends_in_a_mapped_buffer(store_path):
    path, _ = store_path
    with mmtensor.open(path) as store:
        a = store["x"][5:9, ::2]
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, mmtensor.MappedBuffer)
    assert base.mapped and "tensor `x`" in repr(base)


@linux_only
def test_dlpack_capsules_keep_the_mapping_alive(store_path):
    path, x = store_path
    store = mmtensor.open(path)
    t = store.tensor("x")
    via_dlpack = np.from_dlpack(t)
    # No copy: a private copy-on-write mapping of the file (what DLPack consumers get).
    assert inside(data_pointer(via_dlpack), via_dlpack.nbytes, mappings_of(path))
    assert not via_dlpack.flags.writeable
    del store, t
    gc.collect()
    assert np.array_equal(via_dlpack, x)
    del via_dlpack
    gc.collect()
    assert not mappings_of(path)


def test_copy_true_reads_into_memory(store_path):
    path, x = store_path
    with mmtensor.open(path, copy=True) as store:
        assert not store.mapped
        assert np.array_equal(store["x"], x)
        assert not store["x"].flags.writeable


@linux_only
def test_an_unconsumed_capsule_frees_its_reference(store_path):
    path, _ = store_path
    store = mmtensor.open(path)
    capsule = store.tensor("x").__dlpack__(max_version=(1, 0))
    assert "dltensor_versioned" in repr(capsule)
    store.close()
    gc.collect()
    assert mappings_of(path), "the capsule does not hold the mapping"
    del capsule
    gc.collect()
    assert not mappings_of(path), "an unconsumed capsule leaked its store reference"
