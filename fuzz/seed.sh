#!/usr/bin/env bash
# Fills fuzz/corpus/TARGET/ with seeds from the committed fixtures (the folder is not committed:
# libFuzzer adds the inputs it finds to it). Run from anywhere.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
c="$root/fuzz/corpus"
mkdir -p "$c/mmt_header" "$c/npy_header" "$c/npz_reader" "$c/safetensors_import" "$c/manifest"
cp "$root"/fixtures/golden/*.mmt "$root"/fixtures/attacks/*.mmt "$c/mmt_header/"
cp "$root"/fixtures/numpy/npy/*.npy "$root"/fixtures/numpy/hostile/*.npy "$root"/fixtures/attacks/npy-*.npy "$c/npy_header/"
cp "$root"/fixtures/numpy/npz/*.npz "$root"/fixtures/attacks/npz-*.npz "$c/npz_reader/"
# The 16 MiB-inflating bomb slows every mutation of it down; it stays a regression file only.
rm -f "$c/npz_reader/npz-bomb-header-lies.npz" "$c/npz_reader/npz-bomb-size-lies.npz"
cp "$root"/fixtures/numpy/safetensors/*.safetensors "$root"/fixtures/attacks/st-*.safetensors "$c/safetensors_import/"
cp "$root"/fixtures/golden/dataset/manifest.mmtm "$c/manifest/"
echo "seeded $(find "$c" -type f | wc -l) files under $c"
