"""mmtensor.Mix as a Loader source: batches are the mixture order's rows (checked against the plain
Python reference of docs/LOADER.md), ranks cover each sample once, state_dict resumes exactly in a
new Loader, and bad weights, columns and states are errors naming what is wrong."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import mmtensor

# The second implementation of docs/LOADER.md's mixture order, written for the Rust tests.
_spec = importlib.util.spec_from_file_location(
    "mix_reference", Path(__file__).parents[2] / "load" / "tests" / "mix_reference.py"
)
mix_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mix_reference)

SCALE = 1_000_000
ROWS = {"web": 37, "code": 23, "math": 11}


def columns(source, rows):
    v = source * SCALE + np.arange(rows, dtype=np.int64)
    x = np.stack([v, -v], axis=1).astype(np.float32)
    return x, v


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """web: a Store (37 rows); code: a dataset folder of several shards (23 rows); math: a file's
    path (11 rows). Rows hold y = source * 10^6 + row and x = (y, -y)."""
    d = tmp_path_factory.mktemp("mix")
    paths = {}
    for s, (name, rows) in enumerate(ROWS.items()):
        x, y = columns(s, rows)
        np.save(d / f"x{s}.npy", x)
        np.save(d / f"y{s}.npy", y)
        inputs = [f"x={d / f'x{s}.npy'}", f"y={d / f'y{s}.npy'}"]
        if name == "code":
            paths[name] = d / "code"
            mmtensor.convert(inputs, paths[name], shard_size="96B")
        else:
            paths[name] = d / f"{name}.mmt"
            mmtensor.convert(inputs, paths[name])
    code = mmtensor.open_dataset(paths["code"])
    assert code.num_rows == 23 and code.num_shards > 1
    return {"paths": paths, "web": mmtensor.open(paths["web"]), "code": code}


def sources(data):
    return {"web": data["web"], "code": data["code"], "math": str(data["paths"]["math"])}


def pairs(batch):
    y, x = batch["y"], batch["x"]
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], y.astype(np.float32))
    np.testing.assert_array_equal(x[:, 1], -y.astype(np.float32))
    return [(int(v) // SCALE, int(v) % SCALE) for v in y]


REF_SHUFFLE = {False: "none", True: "full", "block": (4, 64)}


def reference(weights, shuffle, seed, batch_size, rank, world_size, epoch, samples=None):
    srcs = [(ROWS[n], weights[n], REF_SHUFFLE[shuffle]) for n in ROWS]
    return mix_reference.batches(srcs, seed, batch_size, rank, world_size, epoch, samples)


@pytest.mark.parametrize("shuffle", [False, True, "block"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_batches_are_the_mixture_order(data, shuffle, world_size):
    weights = {"web": 0.5, "code": 0.3, "math": 0.2}
    mix = mmtensor.Mix(sources(data), weights=weights, seed=3)
    assert mix.names == ["web", "code", "math"] and mix.weights == weights and len(mix) == 3
    for rank in range(world_size):
        block = {"block_rows": 4} if shuffle == "block" else {}
        loader = mmtensor.Loader(mix, batch_size=4, columns=["x", "y"], shuffle=shuffle,
                                 rank=rank, world_size=world_size, prefetch=rank, **block)
        assert loader.path == "mix[web, code, math]"
        assert loader.num_rows == 71
        for epoch in range(3):
            want = reference(weights, shuffle, 3, 4, rank, world_size, epoch)
            assert len(loader) == len(want)
            got = [pairs(b) for b in loader]
            assert got == [[tuple(p) for p in b] for b in want], (shuffle, rank, epoch)
            assert loader.epoch == epoch + 1


def test_counts_keep_each_source_within_one_sample_of_its_share(data):
    weights = {"web": 0.7, "code": 0.3, "math": 0.05}
    mix = mmtensor.Mix(sources(data), weights=weights, seed=1, samples_per_epoch=150)
    loader = mmtensor.Loader(mix, batch_size=5, shuffle=True, dtype={"y": "int64"})
    assert loader.columns == ["x", "y"]
    total = sum(weights.values())
    counts = [0, 0, 0]
    k = 0
    for _ in range(2):
        for batch in loader:
            for s, row in pairs(batch):
                assert row < ROWS[list(ROWS)[s]]
                counts[s] += 1
                k += 1
                for n, w in zip(counts, weights.values()):
                    assert abs(n - k * w / total) < 1 + 1e-6
            assert loader.state_dict()["mix"]["counts"] == counts
    assert k == 300


def test_ranks_cover_each_sample_once(data):
    mix = mmtensor.Mix(sources(data), weights={"web": 2, "code": 1, "math": 1})
    whole = mmtensor.Loader(mix, batch_size=9, shuffle=True)
    ranks = [mmtensor.Loader(mix, batch_size=3, shuffle=True, rank=r, world_size=3)
             for r in range(3)]
    for _ in range(2):
        every = [[pairs(b) for b in r] for r in ranks]
        for g, batch in enumerate(whole):
            assert sum((e[g] for e in every), []) == pairs(batch)
        states = [r.state_dict() for r in ranks]
        assert all(s["mix"] == whole.state_dict()["mix"] for s in states)


@pytest.mark.parametrize("world_size", [1, 2])
def test_state_dict_resumes_exactly_in_a_new_loader(data, world_size):
    weights = {"web": 0.7, "code": 0.3, "math": 0.1}

    def make(rank=world_size - 1):
        mix = mmtensor.Mix(sources(data), weights=weights, seed=5)
        return mmtensor.Loader(mix, batch_size=4, shuffle=True, rank=rank,
                               world_size=world_size)

    loader = make()
    n = len(loader)
    run, states = [], []
    for _ in range(3):
        it = iter(loader)
        while True:
            states.append(json.loads(json.dumps(loader.state_dict())))
            try:
                run.append(pairs(next(it)))
            except StopIteration:
                states.pop()
                break
    assert len(run) == 3 * n
    for i in [0, 1, n // 2, n - 1, n, n + 3, 2 * n - 1]:
        state = states[i]
        assert state["mix"]["sources"] == ["web", "code", "math"]
        assert sum(state["mix"]["counts"]) == i * 4 * world_size
        # Saved by another rank: accepted (the state is the same on every rank).
        again = make(rank=0)
        again.load_state_dict(state)
        assert (again.epoch, again.next_batch) == (i // n, i % n)
        assert again.state_dict() == dict(state, rank=0)
        again = make()
        again.load_state_dict(state)
        got = []
        for epoch in range(again.epoch, 3):
            again.set_epoch(epoch)
            got.extend(pairs(b) for b in again)
        assert got == run[i:], i


def test_a_state_of_another_loader_is_refused_naming_the_key(data):
    def make(weights=None, seed=0, srcs=None, **kw):
        mix = mmtensor.Mix(srcs or sources(data),
                           weights=weights or {"web": 1, "code": 1, "math": 1}, seed=seed)
        return mmtensor.Loader(mix, batch_size=4, **kw)

    loader = make()
    next(iter(loader))
    state = loader.state_dict()
    for other, key in [
        (make(weights={"web": 1, "code": 2, "math": 1}), "mix.weights"),
        (make(srcs={"web": data["web"], "math": data["code"], "code": data["paths"]["math"]}),
         "mix.sources"),
        (make(seed=4), "seed"),
    ]:
        with pytest.raises(mmtensor.LoaderError, match=key.replace(".", r"\.")):
            other.load_state_dict(state)
    bad = json.loads(json.dumps(state))
    bad["mix"]["counts"] = [4, 0, 0]
    with pytest.raises(mmtensor.LoaderError, match=r"mix\.counts"):
        make().load_state_dict(bad)
    bad["mix"]["counts"] = [1, 2]
    with pytest.raises(mmtensor.LoaderError, match=r"mix\.counts"):
        make().load_state_dict(bad)
    no_mix = {k: v for k, v in state.items() if k != "mix"}
    with pytest.raises(mmtensor.LoaderError, match="mix"):
        make().load_state_dict(no_mix)
    # A state of a mixture given to a loader over one store, and the other way round.
    plain = mmtensor.Loader(data["web"], batch_size=4)
    with pytest.raises(mmtensor.LoaderError):
        plain.load_state_dict(state)
    with pytest.raises(mmtensor.LoaderError):
        make().load_state_dict(plain.state_dict())
    # After close, the state dict still says where the loader stood.
    loader.close()
    assert loader.state_dict() == state


@pytest.mark.parametrize("weights,match", [
    ({"web": 1, "code": -1, "math": 1}, r'source 1 \("code"\) has weight -1'),
    ({"web": 1, "code": 1, "math": math.nan}, r'source 2 \("math"\) has weight NaN'),
    ({"web": 0, "code": 0, "math": 0}, "every source of the mixture has weight 0"),
    ({"web": 1, "code": 1, "math": 1, "wiki": 1}, '"wiki", which is not a source'),
    ({"web": 1, "math": 1}, 'source "code" has no weight'),
])
def test_bad_weights_are_value_errors_naming_the_source(data, weights, match):
    with pytest.raises(ValueError, match=match):
        mmtensor.Mix(sources(data), weights=weights)


def test_bad_sources_and_options_are_errors(data, tmp_path):
    with pytest.raises(ValueError, match="at least one source"):
        mmtensor.Mix({}, weights={})
    with pytest.raises(TypeError, match='source "web"'):
        mmtensor.Mix({"web": 3}, weights={"web": 1})
    with pytest.raises(TypeError):
        mmtensor.Mix([data["web"]], weights={"web": 1})
    # A column missing from one source, or of another dtype there.
    np.save(tmp_path / "x.npy", np.zeros((5, 2), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.zeros(5, dtype=np.int32))
    mmtensor.convert([f"x={tmp_path / 'x.npy'}"], tmp_path / "xonly.mmt")
    mmtensor.convert([f"x={tmp_path / 'x.npy'}", f"y={tmp_path / 'y.npy'}"], tmp_path / "y32.mmt")
    mix = mmtensor.Mix({"web": data["web"], "odd": tmp_path / "xonly.mmt"},
                       weights={"web": 1, "odd": 1})
    with pytest.raises(mmtensor.LoaderError, match=r'source "odd" .* has no column `y`') as e:
        mmtensor.Loader(mix, batch_size=2, columns=["x", "y"])
    assert e.value.tensor == "y"
    assert len(mmtensor.Loader(mix, batch_size=2, columns=["x"])) == 21
    mix = mmtensor.Mix({"web": data["web"], "odd": tmp_path / "y32.mmt"},
                       weights={"web": 1, "odd": 1})
    with pytest.raises(mmtensor.LoaderError, match=r'column `y` of source "odd"'):
        mmtensor.Loader(mix, batch_size=2)
    mix = mmtensor.Mix(sources(data), weights={"web": 1, "code": 1, "math": 1}, seed=2)
    with pytest.raises(mmtensor.LoaderError, match="shards"):
        mmtensor.Loader(mix, batch_size=2, split="shards")
    with pytest.raises(mmtensor.LoaderError, match="seed"):
        mmtensor.Loader(mix, batch_size=2, seed=3)
    assert len(mmtensor.Loader(mix, batch_size=2, seed=2)) == 35
    with pytest.raises(mmtensor.LoaderError, match="global batch"):
        mmtensor.Loader(mix, batch_size=40, world_size=2)


def test_batches_larger_than_the_sources_wrap_around(data):
    torch = pytest.importorskip("torch")
    mix = mmtensor.Mix(sources(data), weights={"web": 1, "code": 1, "math": 1},
                       samples_per_epoch=300)
    for extra in ({}, {"output": "torch", "_torch_buffers": True}):
        loader = mmtensor.Loader(mix, batch_size=100, shuffle=True, **extra)
        assert len(loader) == 3
        got = []
        for batch in loader:
            y = batch["y"]
            if extra:
                assert isinstance(y, torch.Tensor)
                y = y.numpy()
            assert y.shape == (100,)
            got.extend(int(v) // SCALE for v in y)
        assert [got.count(s) for s in range(3)] == [100, 100, 100]
