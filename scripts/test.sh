#!/usr/bin/env bash
# Runs every check on a fresh machine: installs what the tests need (the Debian packages of
# nats-server and clickhouse-server, rustfmt and clippy), then format check, clippy with
# -D warnings, and all unit, property, integration and end-to-end tests. The tests start
# their own servers on free loopback ports.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { printf '[test] %s\n' "$*" >&2; }

command -v cargo >/dev/null || { log "error: cargo not found: install Rust 1.89 or newer with rustup"; exit 1; }
deploy/local/stack.sh install
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# chdb (ClickHouse 26.x in-process) proves the modern-server schema path; pytest runs it.
python3 -c 'import chdb, pytest' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check chdb-core pytest
# onnx builds the tiny YOLO-shaped models the decoder tests run through ONNX Runtime.
python3 -c 'import onnx' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check onnx
# Helm's engine (render, lint) and the Kubernetes schemas, for the chart's tests.
python3 -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check helm-python-sdk kubernetes-validate pyyaml
# The edge agent's detector loads ONNX Runtime from pip's wheel (stack.sh install put it there).
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(deploy/local/stack.sh ort-library)}
export ORT_DYLIB_PATH

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test"
# The fault tests run the real ingest-service binary and kill -9 it.
cargo build --workspace --bins --locked
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo test --workspace --locked 2>&1 | tee "$results"
log "pytest (modern ClickHouse schema on chdb; the Helm chart)"
python3 -m pytest -q -p no:cacheprovider tests/chdb tests/helm 2>&1 | tee -a "$results"
# One closing line over every test binary (cargo prints one summary per binary, the last of
# which is usually an empty doc-test run).
# pytest's summary looks like "3 passed, 1 skipped in 2.01s".
awk '/^test result:/ || / passed.* in [0-9.]+s/ {
       for (i = 1; i < NF; i++) { w = $(i+1); gsub(/[;,]/, "", w)
         if (w == "passed") p += $i; if (w == "failed") f += $i; if (w == "ignored" || w == "skipped") s += $i } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$results"
