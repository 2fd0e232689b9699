#!/usr/bin/env bash
# Sets up and runs every test of mmtensor: formatting, lints, the Rust tests, then the Python tests
# in a virtual environment (.venv) that this script creates and fills itself. Safe on a fresh
# machine with a Rust toolchain and Python 3; CI runs exactly this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
# The loader's optional `ndarray` feature (not enabled by the workspace run above).
cargo clippy -p mmtensor --all-targets --all-features --locked -- -D warnings
cargo test -p mmtensor --all-features --locked

echo "== Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

echo "== Python binding: build and install into .venv"
.venv/bin/maturin develop --quiet -m crates/python/Cargo.toml

echo "== pytest"
# MMT_BIN: the CLI binary `cargo test` just built, driven by the export interop tests.
# torch (from requirements-test.txt) runs the torch, DLPack and DataLoader tests; without it they
# skip themselves.
# fixtures/spec_reader: an independent reader written from docs/FORMAT.md reads the golden files.
MMT_BIN="$PWD/target/debug/mmt" .venv/bin/python -m pytest -q crates/python/tests crates/cli/tests/python \
    fixtures/spec_reader
