#!/usr/bin/env bash
# Sets up and runs every test of mmtensor: formatting, lints, the Rust tests (with a moto S3 server
# on 127.0.0.1 for the object storage tests), then the Python tests in a virtual environment (.venv)
# that this script creates and fills itself. Safe on a fresh
# machine with a Rust toolchain and Python 3; CI runs exactly this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

echo "== moto: an S3-compatible server on 127.0.0.1 for the object-storage tests (Rust and Python)"
# A free port, from the kernel; moto keeps objects in memory and is stopped on exit.
MOTO_PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOTO_LOG=$(mktemp "${TMPDIR:-/tmp}/mmt-moto.XXXXXX")
.venv/bin/moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
MOTO_PID=$!
stop_moto() {
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
    rm -f "$MOTO_LOG"
}
trap stop_moto EXIT
for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null; then
        break
    fi
    if ! kill -0 "$MOTO_PID" 2>/dev/null; then
        echo "moto_server exited:" >&2; cat "$MOTO_LOG" >&2; exit 1
    fi
    sleep 0.1
done
if ! (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null; then
    echo "moto_server did not answer on port $MOTO_PORT within 30 s:" >&2; cat "$MOTO_LOG" >&2; exit 1
fi
# The endpoint, and the standard variables a user sets for a real bucket (moto takes any key).
# MMT_TEST_MOTO_SERVER: the fault tests start, kill and restart servers of their own.
export MMT_TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export MMT_TEST_MOTO_SERVER="$PWD/.venv/bin/moto_server"
export AWS_ENDPOINT_URL="$MMT_TEST_S3_ENDPOINT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing

echo "== cargo test"
cargo test --workspace --locked
# The loader's optional `ndarray` feature (not enabled by the workspace run above).
cargo clippy -p mmtensor --all-targets --all-features --locked -- -D warnings
cargo test -p mmtensor --all-features --locked

echo "== Python binding: build and install into .venv"
.venv/bin/maturin develop --quiet -m crates/python/Cargo.toml

echo "== pytest"
# MMT_BIN: the CLI binary `cargo test` just built, driven by the export interop tests.
# torch (from requirements-test.txt) runs the torch, DLPack and DataLoader tests; without it they
# skip themselves.
# fixtures/spec_reader: an independent reader written from docs/FORMAT.md reads the golden files.
MMT_BIN="$PWD/target/debug/mmt" .venv/bin/python -m pytest -q crates/python/tests crates/cli/tests/python \
    fixtures/spec_reader
