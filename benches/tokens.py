#!/usr/bin/env python3
"""Token streams: random training windows of a flat uint16 token stream, mmtensor against its peers.

Data: a flat stream of T uint16 tokens (T = 2^30, 2 GiB; `--quick` 2^24), generated once and
deterministically in chunks (NumPy `default_rng(0)`, `integers(0, 50257)`), with the EOT id 50256
also written at random positions (geometric gaps, mean 1000 tokens), so the stream is a
concatenation of documents, each ending with its EOT (EOTs drawn by chance end a document too).
It is saved as `tokens.bin` (raw, nanoGPT's format) and, outside any timing, once:

- `tokens-mmt/`: `mmt convert tokens.bin --raw-dtype u16 --eot 50256 -o tokens-mmt/` (CONVERT_TOKENS
  below; binary --mmt). If the command fails, the mmtensor cases are skipped and its error printed;
- `megatron/tokens.bin` (a hard link to tokens.bin) + `megatron/tokens.idx`, written here following
  Megatron's `.idx` layout: magic `MMIDIDX\\x00\\x00`, u64 version 1, u8 dtype code 8 (uint16),
  u64 sequence count, u64 document count (= len(document_indices)), int32 sizes, int64 byte
  pointers, int64 document_indices 0..=n; one sequence per document;
- `litdata/`: `litdata.optimize` over pieces of 2^20 tokens of the stream (each yielded as one uint16
  array), `item_loader=TokensLoader()`, `chunk_size=(seq_len + 1) * 8012` tokens, as LitData's
  pretraining docs do with (2048 + 1) * 8012. A chunk holds whole pieces (7 here, 14 MiB).

Cases (seq_len 1024, batch 32; every case delivers int64 windows of 1025 tokens: 32 * 1025 tokens
per batch are counted for every case, also for nanoGPT, which builds x and y as two separate
windows of 1024, i.e. copies 2 * 32 * 1024 tokens):

- `nanogpt`: exactly nanoGPT's `get_batch` (train.py): per batch, `data = np.memmap(tokens.bin,
  dtype=np.uint16, mode='r')` (re-created every batch, as nanoGPT does), `ix = torch.randint(len(data)
  - block_size, (batch_size,))`, `x = torch.stack([torch.from_numpy((data[i:i+block_size]).astype(
  np.int64)) for i in ix])` and y likewise from i + 1 (`torch.manual_seed(0)` once; no device copy);
- `mmt-loader`: `mmtensor.Loader("tokens-mmt", columns=["tokens"], seq_len=1024, batch_size=32,
  shuffle=True, seed=0, dtype={"tokens": "int64"}, output="torch")`, iterated; each batch is
  `{"tokens": int64 [32, 1025]}` and the loop takes `x = t[:, :-1]`, `y = t[:, 1:]` (views). If the
  Loader refuses `seq_len`, the case is reported "not available";
- `megatron` (megatron-core, run by --megatron-python, a separate venv): `GPTDataset` built by
  `BlendedMegatronDatasetBuilder` from `GPTDatasetConfig(random_seed=0, sequence_length=1024,
  blend=([prefix], None), split="100,0,0", tokenizer=NullTokenizer(50256) (eod 50256),
  reset_position_ids/reset_attention_mask/eod_mask_loss=False, create_attention_mask=False)` (no
  [1, 1024, 1024] mask per sample: what runs with flash/TE attention set), one epoch of samples;
  its document/sample/shuffle indices are built once at setup (cached under `megatron/cache`, what
  Megatron does before training). Timed per batch: `ds[i]` for 32 consecutive indices (the shuffle
  index makes them random windows of 1025 tokens across document boundaries; consecutive is what
  Megatron's own sampler asks for) and `torch.utils.data.default_collate` of the 32 dicts (tokens,
  labels, loss_mask, position_ids: what Megatron's DataLoader with num_workers=0 does);
- `litdata/w0`, `litdata/w2`: `StreamingDataset(litdata/, item_loader=TokensLoader(block_size=1025),
  shuffle=True, seed=0)` + `StreamingDataLoader(batch_size=32, num_workers=0 or 2)`; its uint16 batch
  is made int64 with `.long()` in the loop (as litgpt does) and sliced into x and y views. LitData's
  windows are disjoint 1025-token blocks from each chunk's start (no one-token overlap, a chunk's
  tail < 1025 tokens is never read); shuffle = chunk order permuted, then items inside a chunk in
  blocks of 256 consecutive windows, block order and order within blocks shuffled.

Modes: `warm` (every file the case reads was read once just before) and `cold` (`sync`, then
`posix_fadvise(POSIX_FADV_DONTNEED)` on every file the case reads, before each case). Every case runs
in its own fresh process (imports and opening outside the timing), cases rotated over --repeats
rounds, medians reported, ratios mmt-loader / peer as the ratio of medians and per round. Each case
runs a fixed number of batches (--batches warm, --cold-batches cold). Reported: batches/s, tokens/s,
first-batch ms (from the start of the loop), RssAnon growth (a thread samples /proc/self/status every
5 ms; for litdata/w2 the workers' growth is shown too) and CPU ms per batch (the case process, plus
DataLoader workers once joined). Results go to --out/results-<UTC time>.json.

`--convert`: conversion of a 4 GiB Megatron indexed dataset (T = 2^31; `megatron4/tokens.bin` +
`.idx`; `--quick` 2^25) with CONVERT_MEGATRON below, against `cp tokens.bin dst` + fsync of the copy
(`mmt convert` fsyncs its output); before each run `sync` and the source's pages evicted; the two
alternated over --repeats rounds, outputs deleted after each run; ratio = mmt speed / cp speed.

    python benches/tokens.py --repeats 5                 # 2 GiB, warm + cold
    python benches/tokens.py --quick                     # 32 MiB smoke run
    python benches/tokens.py --only nanogpt litdata/w0 --modes warm
    python benches/tokens.py --convert --repeats 3       # 4 GiB Megatron dataset, mmt against cp

Data stay under --out (default benches/out/tokens, `-quick` appended with --quick); --clean deletes
them at the end. Cases whose package (or built dataset) is missing are skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from loader import RssSampler, cpu_seconds, read_once  # noqa: E402
from peers import GIB, MIB, evict, have  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOCAB = 50257
EOT = 50256
MEAN_DOC = 1000
SEED = 0
SEQ_LEN = 1024
BATCH = 32
TOKENS_PER_BATCH = BATCH * (SEQ_LEN + 1)
GEN_CHUNK = 1 << 24  # tokens generated per step (32 MiB)
LIT_PIECE = 1 << 20  # tokens per item given to litdata.optimize
LIT_CHUNK_TOKENS = (SEQ_LEN + 1) * 8012  # LitData's pretraining docs: (block_size + 1) * 8012

# The command lines, as templates (the CLI's flags are still being built).
CONVERT_TOKENS = ["{mmt}", "convert", "{bin}", "--raw-dtype", "u16", "--eot", str(EOT), "-o", "{out}"]
CONVERT_MEGATRON = ["{mmt}", "convert", "{prefix}.idx", "-o", "{out}"]

MEGATRON_DTYPE_UINT16 = 8
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"


# ---------------------------------------------------------------------------------------------
# Data: the token stream, the Megatron index, the LitData chunks, the mmtensor dataset.


def generate_stream(path: Path, total: int) -> "object":
    """Writes `total` uint16 tokens to `path` in chunks; returns the int64 end positions (exclusive)
    of the documents: one after each EOT, and `total` if the stream does not end with one."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    nxt = int(rng.geometric(1 / MEAN_DOC)) - 1  # position of the next planted EOT
    ends = []
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for start in range(0, total, GEN_CHUNK):
            stop = min(total, start + GEN_CHUNK)
            chunk = rng.integers(0, VOCAB, size=stop - start, dtype=np.uint16)
            while nxt < stop:
                pos = nxt + np.concatenate(([0], np.cumsum(rng.geometric(1 / MEAN_DOC, size=4096))))
                keep = pos[:-1][pos[:-1] < stop]
                chunk[keep - start] = EOT
                nxt = int(pos[len(keep)])
            ends.append(np.flatnonzero(chunk == EOT).astype(np.int64) + start + 1)
            chunk.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    ends = np.concatenate(ends)
    if not len(ends) or ends[-1] != total:
        ends = np.concatenate([ends, [total]])
    return ends


def write_megatron_idx(path: Path, ends) -> None:
    """Megatron's `.idx` (indexed_dataset._IndexWriter): one sequence per document."""
    import numpy as np

    sizes = np.diff(np.concatenate(([0], ends))).astype(np.int32)
    pointers = np.concatenate(([0], np.cumsum(sizes[:-1].astype(np.int64) * 2))).astype(np.int64)
    doc_idx = np.arange(len(sizes) + 1, dtype=np.int64)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(MEGATRON_MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_DTYPE_UINT16))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(doc_idx.tobytes(order="C"))
    os.replace(tmp, path)


def make_stream_and_idx(out: Path, sub: str | None, total: int) -> None:
    """tokens.bin under out, once per size, with megatron/tokens.{bin (a hard link),idx} (sub None),
    or with tokens.idx beside it (sub given: the --convert dataset)."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / f"stamp-{total}"
    bin_path = out / "tokens.bin"
    if stamp.exists() and bin_path.exists():
        return
    for f in out.glob("stamp-*"):
        f.unlink()
    for d in ("tokens-mmt", "litdata", "megatron", "litdata-cache"):
        shutil.rmtree(out / d, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"generating {total:,} tokens ({total * 2 / GIB:.2f} GiB) in {out}", file=sys.stderr)
    ends = generate_stream(bin_path, total)
    if sub is None:  # the 2 GiB case: megatron/tokens.bin is a hard link of tokens.bin
        meg = out / "megatron"
        meg.mkdir(exist_ok=True)
        link = meg / "tokens.bin"
        link.unlink(missing_ok=True)
        try:
            os.link(bin_path, link)
        except OSError:
            shutil.copyfile(bin_path, link)
        write_megatron_idx(meg / "tokens.idx", ends)
    else:
        write_megatron_idx(out / "tokens.idx", ends)
    print(f"  {len(ends):,} documents, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    stamp.touch()


def format_cmd(template: list[str], **kw) -> list[str]:
    return [part.format(**kw) for part in template]


def build_mmt(out: Path, mmt: str) -> str | None:
    """The mmtensor dataset; returns an error text when it cannot be built."""
    dst = out / "tokens-mmt"
    if dst.exists() and any(dst.iterdir()):
        return None
    if not Path(mmt).exists():
        return f"no mmt binary at {mmt}"
    shutil.rmtree(dst, ignore_errors=True)
    cmd = format_cmd(CONVERT_TOKENS, mmt=mmt, bin=str(out / "tokens.bin"), out=str(dst) + "/")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(dst, ignore_errors=True)
        msg = (res.stderr.strip() or res.stdout.strip() or f"exit {res.returncode}").splitlines()
        return f"`{' '.join(cmd)}` failed: {msg[0] if msg else ''}"
    print(f"  mmt convert: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return None


def litdata_env(out: Path) -> None:
    """Keeps LitData's caches under --out (nothing in ~/.lightning or /cache)."""
    cache = out / "litdata-cache"
    os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(cache / "chunks"))
    os.environ.setdefault("DATA_OPTIMIZER_DATA_CACHE_FOLDER", str(cache / "data"))
    os.environ.setdefault("LITDATA_CACHE_DIR", str(cache / "read"))


def litdata_piece(rng_pair, path: str):
    """One optimize input: the tokens [start, stop) of the stream, as one uint16 array."""
    import numpy as np

    start, stop = rng_pair
    data = np.memmap(path, dtype=np.uint16, mode="r")
    yield np.array(data[start:stop])


def build_litdata(spec: dict, files: dict) -> dict:
    from functools import partial

    from litdata import TokensLoader, optimize

    out = Path(spec["out"])
    litdata_env(out)
    total = os.path.getsize(files["bin"]) // 2
    inputs = [(a, min(total, a + LIT_PIECE)) for a in range(0, total, LIT_PIECE)]
    t0 = time.perf_counter()
    optimize(fn=partial(litdata_piece, path=files["bin"]), inputs=inputs, output_dir=str(out / "litdata"),
             chunk_size=LIT_CHUNK_TOKENS, item_loader=TokensLoader(), num_workers=min(2, os.cpu_count() or 1),
             mode="overwrite", verbose=False)
    shutil.rmtree(out / "litdata-cache", ignore_errors=True)
    return {"seconds": time.perf_counter() - t0}


def megatron_config(prefix: str, cache: str):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    return GPTDatasetConfig(random_seed=SEED, sequence_length=SEQ_LEN, blend=([prefix], None), split="100,0,0",
                            path_to_cache=cache, tokenizer=NullTokenizer(EOT), reset_position_ids=False,
                            reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)


def megatron_dataset(files: dict):
    import logging

    logging.disable(logging.WARNING)
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    cfg = megatron_config(files["megatron_prefix"], files["megatron_cache"])
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [None, None, None], lambda: True, cfg).build()
    return train


def build_megatron(spec: dict, files: dict) -> dict:
    Path(files["megatron_cache"]).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = megatron_dataset(files)
    return {"seconds": time.perf_counter() - t0, "samples": len(ds)}


def files_under(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    return sorted(str(p) for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Sources: each returns a function starting the loop (an iterator of batches, the per-batch work
# that a training loop would do included) and what must stay alive.


def source_nanogpt(spec: dict, files: dict):
    import numpy as np
    import torch

    torch.manual_seed(SEED)
    path, block_size, batch_size = files["bin"], SEQ_LEN, BATCH

    def get_batch():  # nanoGPT's train.py, CPU branch
        data = np.memmap(path, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64)) for i in ix])
        return x, y

    def loop():
        while True:
            yield get_batch()

    return loop, None


class NotAvailable(Exception):
    pass


def source_mmt(spec: dict, files: dict):
    import mmtensor

    if not hasattr(mmtensor, "Loader"):
        raise NotAvailable("mmtensor.Loader does not exist")
    try:
        loader = mmtensor.Loader(files["mmt"], columns=["tokens"], seq_len=SEQ_LEN, batch_size=BATCH, shuffle=True,
                                 seed=SEED, dtype={"tokens": "int64"}, output="torch")
    except TypeError as e:
        raise NotAvailable(f"mmtensor.Loader(..., seq_len=...) refused: {e}") from e

    def loop():
        for batch in loader:
            t = batch["tokens"]
            yield t[:, :-1], t[:, 1:]

    return loop, loader


def source_megatron(spec: dict, files: dict):
    from torch.utils.data import default_collate

    ds = megatron_dataset(files)
    n = len(ds)

    def loop():
        k = 0
        while True:
            if k + BATCH > n:
                k = 0
            b = default_collate([ds[i] for i in range(k, k + BATCH)])
            k += BATCH
            yield b["tokens"], b["labels"]

    return loop, ds


def source_litdata(spec: dict, files: dict):
    litdata_env(Path(files["out"]))
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    ds = StreamingDataset(files["litdata"], item_loader=TokensLoader(block_size=SEQ_LEN + 1), shuffle=True,
                          seed=SEED)
    dl = StreamingDataLoader(ds, batch_size=BATCH, num_workers=spec["workers"])

    def loop():
        for batch in dl:
            t = batch.long()
            yield t[:, :-1], t[:, 1:]

    return loop, dl


SOURCES = {"nanogpt": source_nanogpt, "mmt-loader": source_mmt, "megatron": source_megatron,
           "litdata": source_litdata}


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run_loop(spec: dict, files: dict) -> dict:
    loop, held = SOURCES[spec["kind"]](spec, files)
    n_target = spec["batches"]
    with_children = spec.get("workers", 0) > 0
    sampler = RssSampler(with_children=with_children)
    sampler.start()
    n = 0
    t_first = None
    cc0 = children_cpu()
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    it = loop()
    for x, y in it:
        if t_first is None:
            t_first = time.perf_counter()
        if x.shape[0] != BATCH or x.shape[1] != SEQ_LEN or y.shape != x.shape:
            raise RuntimeError(f"unexpected batch shape {tuple(x.shape)} / {tuple(y.shape)}")
        n += 1
        if n >= n_target:
            break
    t1 = time.perf_counter()
    c1 = cpu_seconds()
    res = sampler.stop()
    # DataLoader workers: stop them, so that their CPU time is counted (they are waited for).
    it.close()
    del it, loop
    if hasattr(held, "close"):
        held.close()
    del held
    gc.collect()
    time.sleep(0.05)
    res.update({"batches": n, "seconds": t1 - t0, "first_s": (t_first or t1) - t0, "cpu_s": c1 - c0,
                "workers_cpu_s": children_cpu() - cc0})
    if n < n_target:
        res["short"] = True
    return res


def worker(spec: dict, files: dict) -> dict:
    import numpy  # noqa: F401  (imports are not what is measured)

    kind = spec["kind"]
    if kind == "build-litdata":
        return build_litdata(spec, files)
    if kind == "build-megatron":
        return build_megatron(spec, files)
    import torch  # noqa: F401

    try:
        if kind == "probe":
            SOURCES[spec["source"]](spec, files)
            return {"ok": True}
        return run_loop(spec, files)
    except NotAvailable as e:
        return {"error": f"not available: {e}"}


# ---------------------------------------------------------------------------------------------
# The parent.


def label(spec: dict) -> str:
    return spec["kind"] if "workers" not in spec else f"{spec['kind']}/w{spec['workers']}"


def case_files(spec: dict, files: dict) -> list[str]:
    k = spec["kind"]
    if k == "nanogpt":
        return [files["bin"]]
    if k == "mmt-loader":
        return files_under(Path(files["mmt"]))
    if k == "megatron":
        p = files["megatron_prefix"]
        return [p + ".bin", p + ".idx"] + files_under(Path(files["megatron_cache"]))
    if k == "litdata":
        return files_under(Path(files["litdata"]))
    return []


def run_case(python: str, spec: dict, files: dict, mode: str | None, timeout: float) -> dict:
    if mode == "cold":
        os.sync()
        for f in case_files(spec, files):
            evict(Path(f))
    elif mode == "warm":
        for f in case_files(spec, files):
            read_once(f)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [python, __file__, "--worker", json.dumps(spec), "--files", json.dumps(files)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit {res.returncode}"}
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"no result: {res.stdout[-200:]!r}"}


def megatron_check(python: str) -> str | None:
    if not Path(python).exists():
        return f"no interpreter at {python} (make it: python -m venv /tmp/megatron-venv; pip install megatron-core)"
    res = subprocess.run([python, "-c", "import megatron.core.datasets.gpt_dataset"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return f"megatron-core does not import in {python}: {lines[-1] if lines else res.returncode}"
    return None


def median_row(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": next((r["error"] for r in runs if "error" in r), "not run")}
    rates = [r["batches"] / r["seconds"] for r in ok]
    m = {"batches": statistics.median(r["batches"] for r in ok),
         "seconds": statistics.median(r["seconds"] for r in ok),
         "batches_per_s": statistics.median(rates),
         "first_ms": statistics.median(r["first_s"] for r in ok) * 1e3,
         "cpu_ms_per_batch": statistics.median(r["cpu_s"] / r["batches"] for r in ok) * 1e3,
         "workers_cpu_ms_per_batch": statistics.median(r["workers_cpu_s"] / r["batches"] for r in ok) * 1e3,
         "heap_mib_max": max(r["heap_bytes"] for r in ok) / MIB,
         "heap_mib_median": statistics.median(r["heap_bytes"] for r in ok) / MIB,
         "runs": len(ok), "errors": len(runs) - len(ok)}
    m["tokens_per_s"] = m["batches_per_s"] * TOKENS_PER_BATCH
    if "workers_heap_bytes" in ok[0]:
        m["workers_heap_mib_max"] = max(r["workers_heap_bytes"] for r in ok) / MIB
    return m


def ratios(raw: dict, rows: dict) -> list[dict]:
    out = []
    for mode in ("warm", "cold"):
        r, res = rows.get(mode, {}), raw.get(mode, {})
        ours = r.get("mmt-loader")
        for peer, goal in (("nanogpt", 3.0 if mode == "warm" else None), ("megatron", 1.0), ("litdata/w0", 1.0),
                           ("litdata/w2", 1.0)):
            p = r.get(peer)
            if not ours or not p or "error" in ours or "error" in p:
                continue
            v = ours["batches_per_s"] / p["batches_per_s"]
            pairs = [a["batches"] / a["seconds"] / (b["batches"] / b["seconds"])
                     for a, b in zip(res["mmt-loader"], res[peer]) if "error" not in a and "error" not in b]
            out.append({"mode": mode, "peer": peer, "value": v, "goal": goal,
                        "met": None if goal is None else (v >= goal if goal > 1 else v > goal),
                        "per_round": pairs})
    return out


def print_summary(summary: dict) -> None:
    print(f"{summary['tokens']:,} uint16 tokens ({summary['tokens'] * 2 / GIB:.2f} GiB), seq_len {SEQ_LEN}, "
          f"batch {BATCH}: {TOKENS_PER_BATCH:,} tokens (int64) per batch counted for every case; "
          f"{summary['repeats']} rounds, medians; cpu = ms of CPU per batch, the case process (+ DataLoader "
          f"workers); heap = RssAnon growth, max over rounds; load average {summary['machine']['loadavg'][0]:.1f} "
          f"at start, {summary['machine']['loadavg_end'][0]:.1f} at end, {summary['machine']['cpus']} CPUs")
    for mode, rows in summary["modes"].items():
        print(f"\n[{mode}]")
        print(f"{'case':<12} {'batches':>7} {'batch/s':>9} {'Mtok/s':>8} {'first ms':>9} {'cpu ms/b':>9} "
              f"{'+wk ms/b':>9} {'heap MiB':>9}")
        for c, m in rows.items():
            if "error" in m:
                print(f"{c:<12} {'skipped (below)' if c in summary['skipped'] else 'error: ' + m['error']}")
                continue
            extra = f"  (+ workers {m['workers_heap_mib_max']:.1f} MiB)" if "workers_heap_mib_max" in m else ""
            print(f"{c:<12} {m['batches']:>7.0f} {m['batches_per_s']:>9.1f} {m['tokens_per_s'] / 1e6:>8.2f} "
                  f"{m['first_ms']:>9.1f} {m['cpu_ms_per_batch']:>9.2f} {m['workers_cpu_ms_per_batch']:>9.2f} "
                  f"{m['heap_mib_max']:>9.1f}{extra}")
    if summary["skipped"]:
        print("\nskipped:")
        for c, why in summary["skipped"].items():
            print(f"  {c}: {why}")
    print("\nmmt-loader / peer (batches/s; goals: >= 3x nanogpt warm, > 1x megatron and litdata warm and cold):")
    if not summary["ratios"]:
        print("  none (mmt-loader did not run)")
    for t in summary["ratios"]:
        pr = t["per_round"]
        extra = f"; per round median {statistics.median(pr):.2f}, {min(pr):.2f} to {max(pr):.2f}" if pr else ""
        goal = "" if t["goal"] is None else (f" (goal {'>=' if t['goal'] > 1 else '>'} {t['goal']:.0f}: "
                                            f"{'MET' if t['met'] else 'MISS'})")
        print(f"  {t['mode']:<4} vs {t['peer']:<11} {t['value']:.2f}{goal}{extra}")


def main_loaders(args) -> None:
    out = args.out
    total = args.tokens
    make_stream_and_idx(out, None, total)
    files = {"bin": str(out / "tokens.bin"), "mmt": str(out / "tokens-mmt"), "litdata": str(out / "litdata"),
             "megatron_prefix": str(out / "megatron" / "tokens"), "megatron_cache": str(out / "megatron" / "cache"),
             "out": str(out)}
    errors = {}

    def wanted(kind: str) -> bool:
        return not args.only or any(o.split("/")[0] == kind for o in args.only)

    mmt_err = build_mmt(out, args.mmt) if wanted("mmt-loader") else None
    if mmt_err:
        errors["mmt-loader"] = f"dataset not built: {mmt_err}"
    elif not have("mmtensor"):
        errors["mmt-loader"] = "mmtensor does not import"
    elif wanted("mmt-loader"):
        p = run_case(sys.executable, {"kind": "probe", "source": "mmt-loader"}, files, None, args.timeout)
        if "error" in p:
            errors["mmt-loader"] = p["error"]
    if not (have("litdata") and have("torch")):
        errors["litdata"] = "litdata or torch does not import"
    elif wanted("litdata") and not (out / "litdata" / "index.json").exists():
        print("  litdata.optimize ...", file=sys.stderr)
        r = run_case(sys.executable, {"kind": "build-litdata", "out": str(out)}, files, None, 7200)
        if "error" in r:
            errors["litdata"] = f"optimize failed: {r['error']}"
        else:
            print(f"  litdata.optimize: {r['seconds']:.1f} s", file=sys.stderr)
    meg_err = megatron_check(args.megatron_python) if wanted("megatron") else None
    if meg_err is None and wanted("megatron"):
        r = run_case(args.megatron_python, {"kind": "build-megatron"}, files, None, 3600)
        if "error" in r:
            meg_err = f"GPTDataset build failed: {r['error']}"
    if meg_err:
        errors["megatron"] = meg_err
    if not have("torch"):
        errors["nanogpt"] = "torch does not import"
    # Freshly written pages read slower than pages read back (docs/BENCHMARKS.md): evict all once.
    os.sync()
    for f in files_under(out):
        evict(Path(f))

    summary = {"tokens": total, "repeats": args.repeats, "batches": args.batches, "cold_batches": args.cold_batches,
               "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}, "modes": {}, "skipped": {},
               "convert_command": format_cmd(CONVERT_TOKENS, mmt=args.mmt, bin="tokens.bin", out="tokens-mmt/"),
               "megatron_python": args.megatron_python}
    raw = {}
    for mode in [m for m in args.modes.split(",") if m]:
        n = args.batches if mode == "warm" else args.cold_batches
        specs = [{"kind": "nanogpt", "batches": n}, {"kind": "mmt-loader", "batches": n},
                 {"kind": "megatron", "batches": n}, {"kind": "litdata", "workers": 0, "batches": n},
                 {"kind": "litdata", "workers": 2, "batches": n}]
        specs = [s for s in specs if not args.only or label(s) in args.only]
        run_specs = []
        for s in specs:
            if s["kind"] in errors:
                summary["skipped"][label(s)] = errors[s["kind"]]
            else:
                run_specs.append(s)
        results = {label(s): [] for s in run_specs}
        for r in range(args.repeats):
            order = run_specs[r % len(run_specs):] + run_specs[:r % len(run_specs)] if run_specs else []
            for s in order:
                py = args.megatron_python if s["kind"] == "megatron" else sys.executable
                res = run_case(py, s, files, mode, args.timeout)
                results[label(s)].append(res)
                state = res.get("error") or f"{res['batches'] / res['seconds']:.1f} batches/s"
                print(f"  [{mode} {r + 1}/{args.repeats}] {label(s)}: {state}", file=sys.stderr)
        raw[mode] = results
        summary["modes"][mode] = {c: median_row(runs) for c, runs in results.items()}
        for s in specs:
            if s["kind"] in errors:
                summary["modes"][mode][label(s)] = {"error": errors[s["kind"]]}
    summary["machine"]["loadavg_end"] = os.getloadavg()
    summary["ratios"] = ratios(raw, summary["modes"])
    summary["raw"] = raw
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"results-{stamp}.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"\nresults: {out / f'results-{stamp}.json'}")


# ---------------------------------------------------------------------------------------------
# --convert: mmt convert of a Megatron dataset against cp + fsync.


def peak_rss_run(cmd: list[str]) -> tuple[float, int, str | None]:
    """Runs cmd; returns (seconds, peak RssAnon of the child, error or None)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.wait(0.02):
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            peak = max(peak, int(line.split()[1]) * 1024)
            except OSError:
                pass

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = p.communicate()
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    if p.returncode != 0:
        lines = (err or "").strip().splitlines()
        return secs, peak, f"`{' '.join(cmd)}` exit {p.returncode}: {lines[0] if lines else ''}"
    return secs, peak, None


def main_convert(args) -> None:
    total = args.tokens * 2  # 2^31 (4 GiB) by default, 2^25 with --quick
    d = args.out / "megatron4"
    make_stream_and_idx(d, "megatron4", total)
    prefix = d / "tokens"
    src_bin, src_idx = d / "tokens.bin", d / "tokens.idx"
    size = src_bin.stat().st_size
    dst_cp = d / "copy.bin"
    dst_mmt = d / "tokens-mmt"

    def clean():
        dst_cp.unlink(missing_ok=True)
        shutil.rmtree(dst_mmt, ignore_errors=True)
        if dst_mmt.exists():
            dst_mmt.unlink()

    times = {"cp+fsync": [], "mmt": []}
    peaks, error = [], None
    if not Path(args.mmt).exists():
        error = f"no mmt binary at {args.mmt}"
    kinds = ["cp+fsync", "mmt"]
    for r in range(args.repeats):
        for kind in kinds[r % 2:] + kinds[:r % 2]:
            if kind == "mmt" and error:
                continue
            clean()
            os.sync()
            evict(src_bin)
            evict(src_idx)
            if kind == "cp+fsync":
                t0 = time.perf_counter()
                subprocess.run(["cp", str(src_bin), str(dst_cp)], check=True)
                fd = os.open(dst_cp, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                secs = time.perf_counter() - t0
            else:
                cmd = format_cmd(CONVERT_MEGATRON, mmt=args.mmt, prefix=str(prefix), out=str(dst_mmt))
                secs, peak, err = peak_rss_run(cmd)
                if err:
                    error = err
                    continue
                peaks.append(peak)
            times[kind].append(secs)
            print(f"  [convert {r + 1}/{args.repeats}] {kind}: {secs:.2f} s ({size / secs / 1e9:.2f} GB/s)",
                  file=sys.stderr)
    clean()
    summary = {"tokens": total, "bytes": size, "repeats": args.repeats, "error": error,
               "command": format_cmd(CONVERT_MEGATRON, mmt=args.mmt, prefix=str(prefix), out="OUT"),
               "seconds": times, "peak_rss_bytes": peaks, "machine": {"loadavg": os.getloadavg()}}
    print(f"{size / GIB:.2f} GiB Megatron dataset ({total:,} uint16 tokens), source evicted before each run, "
          f"{args.repeats} rounds, medians; GB/s = .bin bytes / wall s")
    for kind, ts in times.items():
        if ts:
            m = statistics.median(ts)
            print(f"  {kind:<9} {m:>7.2f} s {size / m / 1e9:>6.2f} GB/s  ({', '.join(f'{t:.2f}' for t in ts)})")
    if error:
        print(f"  mmt: {error}")
    if times["mmt"] and times["cp+fsync"]:
        v = statistics.median(times["cp+fsync"]) / statistics.median(times["mmt"])
        pairs = [c / m for c, m in zip(times["cp+fsync"], times["mmt"])]
        summary["ratio"] = v
        summary["ratio_per_round"] = pairs
        print(f"  mmt speed / (cp + fsync) speed: {v:.2f} (goal >= 0.9: {'MET' if v >= 0.9 else 'MISS'}); per round "
              f"median {statistics.median(pairs):.2f}, {min(pairs):.2f} to {max(pairs):.2f}; "
              f"mmt peak RssAnon {max(peaks) / MIB:.1f} MiB")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (args.out / f"results-convert-{stamp}.json").write_text(json.dumps(summary, indent=2))


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore")  # imports probed in the parent (have()) print deprecations
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1 << 30, help="tokens in the stream (default 2^30, 2 GiB)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2^24 tokens, 2 rounds, 100/20 batches")
    ap.add_argument("--batches", type=int, default=2000, help="batches per warm case")
    ap.add_argument("--cold-batches", type=int, default=200, help="batches per cold case")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--modes", default="warm,cold", help="comma-separated: warm, cold")
    ap.add_argument("--only", nargs="*", help="run only these cases (nanogpt, mmt-loader, megatron, litdata/w0, "
                                              "litdata/w2)")
    ap.add_argument("--convert", action="store_true", help="measure mmt convert of a 4 GiB Megatron dataset "
                                                           "against cp + fsync instead")
    ap.add_argument("--out", type=Path, default=Path("benches/out/tokens"))
    ap.add_argument("--mmt", default=str(REPO / "target" / "release" / "mmt"), help="mmt binary")
    ap.add_argument("--megatron-python", default="/tmp/megatron-venv/bin/python",
                    help="interpreter with megatron-core (and numpy, torch) for the megatron case")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per case process")
    ap.add_argument("--clean", action="store_true", help="delete the generated data at the end")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), json.loads(args.files))))
        return
    if args.quick:
        args.tokens = 1 << 24
        args.repeats = min(args.repeats, 2)
        args.batches = min(args.batches, 100)
        args.cold_batches = min(args.cold_batches, 20)
        args.out = args.out.with_name(args.out.name + "-quick")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.convert:
        main_convert(args)
    else:
        main_loaders(args)
    if args.clean:
        shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
