#!/usr/bin/env bash
# Sets up and runs every test of mmtensor: formatting, lints, Rust tests (and, once the binding exists,
# the Python tests in a fresh virtual environment). Safe to run on a fresh machine and in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
