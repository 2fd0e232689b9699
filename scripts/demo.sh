#!/usr/bin/env bash
# The main job on the built-in sample: build `mmt`, repack the committed NumPy fixtures (an .npz,
# a Fortran-order big-endian .npy, a folder of .npy shards) into one aligned .mmt store with a
# bf16 cast, inspect it, verify its checksums, export it back, write and grow a sharded dataset,
# and compare mmap with copy (and the training loader) on shuffled batches.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p mmtensor-cli
mmt="${CARGO_TARGET_DIR:-target}/release/mmt"
out=${1:-demo-out}
mkdir -p "$out"

set -x
"$mmt" convert fixtures/numpy/npz/compressed.npz \
    weights64=fixtures/numpy/npy/float64-be-f.npy \
    emb=fixtures/numpy/shards/emb \
    -o "$out/demo.mmt" --dtype weights64=bf16
"$mmt" info "$out/demo.mmt"
"$mmt" verify "$out/demo.mmt"
"$mmt" export "$out/demo.mmt" --to npy "$out/npy"
# The same shards as a sharded dataset folder (a manifest and .mmt shards), then one more day appended.
rm -rf "$out/emb-ds"
"$mmt" convert emb=fixtures/numpy/shards/emb -o "$out/emb-ds" --shard-size 4KiB
"$mmt" append "$out/emb-ds" emb=fixtures/numpy/shards/emb
"$mmt" info "$out/emb-ds"
"$mmt" verify "$out/emb-ds"
"$mmt" bench --size 256MiB --repeats 3 --dir "$out"
