"""Ragged rows as loader samples from Python: `pad=` (padded to the batch's longest row, or `to`,
a multiple of `multiple_of`, with a NAME.lengths column), `group_by_length=` (less padding, still
shuffled, resumed exactly), and `Store.row` / `Dataset.row`."""

from __future__ import annotations

import numpy as np
import pytest

import mmtensor

LENGTHS = [3, 0, 5, 1, 2]


@pytest.fixture
def ds(tmp_path):
    tokens = np.arange(sum(LENGTHS), dtype=np.uint16)
    labels = np.arange(len(LENGTHS), dtype=np.int64)
    with mmtensor.DatasetWriter(tmp_path / "ds", shard_size=16) as w:
        w.write({"label": labels, "tokens": (tokens, np.array(LENGTHS))})
    return mmtensor.open_dataset(tmp_path / "ds")


def rows_of(lengths):
    out, at = [], 0
    for n in lengths:
        out.append(list(range(at, at + n)))
        at += n
    return out


def test_padded_batches_hold_each_row_then_the_pad_and_the_lengths(ds):
    loader = mmtensor.Loader(ds, batch_size=2, pad={"tokens": 65535})
    assert loader.columns == ["label", "tokens", "tokens.lengths"]
    batches = list(loader)
    assert [b["tokens"].shape for b in batches] == [(2, 3), (2, 5), (1, 2)]
    m = 65535
    np.testing.assert_array_equal(batches[0]["tokens"], [[0, 1, 2], [m, m, m]])
    np.testing.assert_array_equal(batches[1]["tokens"], [[3, 4, 5, 6, 7], [8, m, m, m, m]])
    np.testing.assert_array_equal(batches[1]["tokens.lengths"], [5, 1])
    assert batches[0]["tokens.lengths"].dtype == np.int64


def test_pad_to_a_multiple_with_truncation_and_a_cast(ds):
    loader = mmtensor.Loader(ds, batch_size=5, dtype={"tokens": "int64"}, output="torch",
                             pad={"tokens": {"value": -1, "to": 4, "multiple_of": 8, "truncate": True}})
    (b,) = list(loader)
    t = b["tokens"]
    assert tuple(t.shape) == (5, 8) and str(t.dtype) == "torch.int64"
    assert t[2].tolist() == [3, 4, 5, 6, -1, -1, -1, -1]
    assert b["tokens.lengths"].tolist() == [3, 0, 4, 1, 2]


def test_pad_errors_name_the_column(ds):
    with pytest.raises(mmtensor.RaggedError, match="`label` is not a ragged tensor"):
        mmtensor.Loader(ds, batch_size=2, pad={"label": 0})
    with pytest.raises(ValueError, match="pad_value -1 is not a uint16 value"):
        mmtensor.Loader(ds, batch_size=2, pad={"tokens": -1})
    with pytest.raises(mmtensor.LoaderError, match='unknown key "size"'):
        mmtensor.Loader(ds, batch_size=2, pad={"tokens": {"size": 3}})
    with pytest.raises(TypeError, match="pad must be a dict"):
        mmtensor.Loader(ds, batch_size=2, pad=[0])
    with pytest.raises(mmtensor.RaggedError, match="row 2 has 5 items, more than pad_to = 4"):
        list(mmtensor.Loader(ds, batch_size=5, pad={"tokens": {"value": 0, "to": 4}}))


def test_length_grouped_batches_pad_less_and_resume_exactly(tmp_path):
    lengths = [(i * 7919) % 23 for i in range(60)]
    tokens = np.arange(sum(lengths), dtype=np.uint32)
    with mmtensor.DatasetWriter(tmp_path / "g", columns={"tokens": ("uint32", (None,))}) as w:
        w.write({"tokens": (tokens, np.array(lengths))})

    def run(group, state=None):
        loader = mmtensor.Loader(tmp_path / "g", batch_size=4, shuffle=True, seed=5, pad={"tokens": 0},
                                 group_by_length=group)
        if state is not None:
            loader.load_state_dict(state)
        return loader, [(b["tokens.lengths"].tolist(), b["tokens"].shape[1]) for b in loader]

    _, plain = run(None)
    loader, grouped = run(3)
    assert sorted(l for b, _ in grouped for l in b) == sorted(lengths)
    assert sum(w * len(b) for b, w in grouped) < sum(w * len(b) for b, w in plain)
    assert all(b == sorted(b, reverse=True) for b, _ in grouped)
    assert loader.state_dict()["group_by_length"] == 3
    # Resume mid-epoch from a state saved after 4 batches.
    first = mmtensor.Loader(tmp_path / "g", batch_size=4, shuffle=True, seed=5, pad={"tokens": 0},
                            group_by_length=3)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    _, rest = run(3, state)
    assert rest == grouped[4:]
    with pytest.raises(mmtensor.LoaderError, match="group_by_length"):
        run(None, state)


def test_row_of_a_store_and_of_a_dataset_is_a_zero_copy_view(tmp_path, ds):
    path = tmp_path / "s.mmt"
    mmtensor.save(path, {"tokens": [np.array(r, np.uint16) for r in rows_of(LENGTHS)]})
    store = mmtensor.open(path)
    np.testing.assert_array_equal(store.row("tokens", 2), [3, 4, 5, 6, 7])
    assert np.shares_memory(store.row("tokens", 2), store["tokens"])
    np.testing.assert_array_equal(ds.row("tokens", -1), [9, 10])
    with pytest.raises(mmtensor.RaggedError):
        ds.row("label", 0)


def test_a_token_stream_streams_to_a_bucket_and_trains_from_it(tmp_path):
    """A ragged column written straight to object storage (moto), opened from the bucket, read
    as rows and as sequence windows."""
    from test_writer import _s3

    s3, bucket = _s3()
    url = f"s3://{bucket}/corpus/"
    lengths = [(i * 37) % 101 + 1 for i in range(300)]
    tokens = np.arange(sum(lengths), dtype=np.uint32)
    with mmtensor.DatasetWriter(url, columns={"tokens": ("uint32", (None,))}, shard_size="16KiB") as w:
        at = 0
        for chunk in range(0, 300, 50):
            n = sum(lengths[chunk:chunk + 50])
            w.write({"tokens": (tokens[at:at + n], np.array(lengths[chunk:chunk + 50]))})
            at += n
    ds = mmtensor.open_dataset(url, cache=tmp_path / "cache")
    assert ds.num_shards > 3
    t = ds.ragged("tokens")
    np.testing.assert_array_equal(t.lengths(), lengths)
    start = sum(lengths[:123])
    np.testing.assert_array_equal(t[123], tokens[start:start + lengths[123]])
    loader = mmtensor.Loader(ds, seq_len=64, batch_size=16, dtype={"tokens": "int64"})
    windows = np.concatenate([b["tokens"] for b in loader])
    assert windows.shape == ((len(tokens) - 1) // 64, 65)
    np.testing.assert_array_equal(windows[:, 0], np.arange(len(windows)) * 64)


def test_rows_of_a_ragged_tensor_are_not_taken_as_tokens(tmp_path):
    path = tmp_path / "s.mmt"
    mmtensor.save(path, {"tokens": [np.array(r, np.uint16) for r in rows_of(LENGTHS)]})
    store = mmtensor.open(path)
    for call in (lambda: store.take("tokens", [0]), lambda: store.rows("tokens", 0, 2)):
        with pytest.raises(mmtensor.RaggedError, match="ragged"):
            call()
    _, lengths = store.ragged("tokens").take_padded([0, 2], output="torch")
    assert str(lengths.dtype) == "torch.int64" and lengths.max().item() == 5


def test_loader_errors_say_what_to_do(ds, tmp_path):
    only = tmp_path / "only"
    with mmtensor.DatasetWriter(only, columns={"tokens": ("uint16", (None,))}) as w:
        w.write({"tokens": [np.arange(5, dtype=np.uint16)]})
    with pytest.raises(mmtensor.RaggedError, match="seq_len.*pad"):
        mmtensor.Loader(only, batch_size=2)
    with pytest.raises(mmtensor.LoaderError, match="give one of them"):
        mmtensor.Loader(ds, batch_size=2, seq_len=2, pad={"tokens": 0})
    a = mmtensor.Loader(only, batch_size=1, seq_len=2)
    b = mmtensor.Loader(only, batch_size=1, seq_len=1)
    with pytest.raises(mmtensor.LoaderError, match="its seq_len is 2, this loader's is 1"):
        b.load_state_dict(a.state_dict())


def test_a_mix_of_token_corpora_yields_windows_by_weight(tmp_path):
    def corpus(name, first, lengths):
        tokens = np.arange(first, first + sum(lengths), dtype=np.uint16)
        with mmtensor.DatasetWriter(tmp_path / name, columns={"tokens": ("uint16", (None,))}) as w:
            w.write({"tokens": (tokens, np.array(lengths))})
        return mmtensor.open_dataset(tmp_path / name)

    web, code = corpus("web", 0, [400, 401]), corpus("code", 20000, [201])
    mix = mmtensor.Mix({"web": web, "code": code}, weights={"web": 0.8, "code": 0.2}, seed=1)
    loader = mmtensor.Loader(mix, batch_size=10, seq_len=16, dtype={"tokens": "int64"}, shuffle=True, seed=1)
    batches = [b["tokens"] for b in loader]
    windows = np.concatenate(batches)
    assert windows.shape[1] == 17
    assert np.all(np.diff(windows, axis=1) == 1)  # each window is consecutive tokens of one source
    share = np.mean(windows[:, 0] >= 20000)
    assert abs(share - 0.2) < 0.05
    state = loader.state_dict()
    assert state["seq_len"] == 16 and set(state["mix"]["sources"]) == {"web", "code"}


def test_convert_tokens_and_export_to_megatron_from_python(tmp_path):
    tokens = np.array([1, 2, 50256, 3, 4, 5, 50256, 7], np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    s = mmtensor.convert_tokens(tmp_path / "train.bin", tmp_path / "ds", raw_dtype="uint16", eot=50256)
    assert s["rows"] == 3
    more = np.array([8, 50256], np.uint16)
    more.tofile(tmp_path / "more.bin")
    s = mmtensor.convert_tokens(tmp_path / "more.bin", tmp_path / "ds", raw_dtype="uint16", eot=50256,
                                mode="append")
    assert s["rows"] == 4
    t = mmtensor.open_dataset(tmp_path / "ds").ragged("tokens")
    np.testing.assert_array_equal(t.lengths(), [3, 4, 1, 2])
    e = mmtensor.export(tmp_path / "ds", tmp_path / "out" / "text", to="megatron")
    assert (e["sequences"], e["tokens"]) == (4, 10)
    back = mmtensor.convert_tokens(tmp_path / "out" / "text.idx", tmp_path / "ds2")
    assert back["rows"] == 4
    with pytest.raises(ValueError, match="raw_dtype"):
        mmtensor.convert_tokens(tmp_path / "train.bin", tmp_path / "ds3")
    with pytest.raises(mmtensor.MmtError, match="does not fit in a U16"):
        mmtensor.convert_tokens(tmp_path / "train.bin", tmp_path / "ds3", raw_dtype="uint16", eot=70000)
