#!/usr/bin/env bash
# Brings the whole pipeline up on this machine, in the foreground: installs what is missing,
# builds, starts NATS and ClickHouse (deploy/local/stack.sh), then the ingest service, the
# query service and an edge agent with a picture camera (real detection) and a synthetic
# one. Ctrl-C or SIGTERM stops everything it started. Logs go to .local/logs/.
#
# usage: deploy/local/up.sh [--servers modern|debian]
#   modern (default): ClickHouse 26.9 and nats-server 2.15.1 from PyPI, in .local/venv
#   debian:           Debian's clickhouse-server 18.16 and nats-server 2.9.10
set -euo pipefail

servers=modern
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) servers=${2:-}; shift; [ $# -eq 0 ] || shift ;;
    --servers=*) servers=${1#--servers=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$servers" in modern|debian) ;; *) echo "--servers $servers: use modern or debian" >&2; exit 2 ;; esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# Relative paths in the demo configs (the edge agent's data_dir) are under the repository.
cd "$root"
logs=$root/.local/logs
profile=${SIGHTLINE_PROFILE:-release}
api=${SIGHTLINE_QUERY_LISTEN:-127.0.0.1:8080}

# Logging never fails the script: if our output goes into a pipe that Ctrl-C already closed
# (`up.sh | tee log`), stopping the services still has to happen.
log() { printf '[up] %s\n' "$*" >&2 2>/dev/null || true; }

"$here/stack.sh" install --servers "$servers"
command -v cargo >/dev/null || { log "error: cargo is missing; install Rust (rustup) first"; exit 1; }
log "building the three services ($profile profile; the first build compiles DuckDB and takes over half an hour on 2 cores, later ones seconds)"
(cd "$root" && cargo build --profile "$profile" -p sightline-edge-agent -p sightline-ingest -p sightline-query)
bin=${CARGO_TARGET_DIR:-$root/target}/$profile
[ "$profile" = dev ] && bin=${CARGO_TARGET_DIR:-$root/target}/debug

pids=()
stopping=0
stop_all() {
  [ "$stopping" = 1 ] && return
  stopping=1
  trap '' PIPE
  log "stopping"
  # Edge first (it drains its queue), then ingest (flushes and acks), then the API.
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  "$here/stack.sh" stop
  log "stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

"$here/stack.sh" start --servers "$servers"
ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$("$here/stack.sh" ort-library)}
export ORT_DYLIB_PATH
mkdir -p "$logs"
setsid "$bin/query-service" --config "$here/query.toml" --listen "$api" >>"$logs/query-service.log" 2>&1 &
pids=($!)
setsid "$bin/ingest-service" --config "$here/ingest.toml" >>"$logs/ingest-service.log" 2>&1 &
pids=($! "${pids[@]}")
# The agent starts after ingest has declared the stream, so its first events have a home.
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:8081/readyz -o /dev/null && break
  sleep 0.2
done
setsid "$bin/edge-agent" --config "$here/edge-agent.toml" run >>"$logs/edge-agent.log" 2>&1 &
pids=($! "${pids[@]}")

for _ in $(seq 1 100); do
  curl -sf "http://$api/v1/events?limit=5" 2>/dev/null | grep -q '"count":[1-9]' && break
  sleep 0.2
done
# A picture the edge took and uploaded: the newest event whose snapshot is in the cloud.
snapshot_url=
for _ in $(seq 1 150); do
  snapshot_url=$(curl -sf "http://$api/v1/events?camera=yard&in_cloud=true&limit=1" 2>/dev/null \
    | grep -o '"snapshot_url":"[^"]*"' | head -n 1 | cut -d'"' -f4) || true
  [ -n "$snapshot_url" ] && break
  sleep 0.2
done
if [ -n "$snapshot_url" ]; then
  snapshot="curl -s -o snapshot.jpg 'http://$api$snapshot_url'   (the edge's JPEG, byte for byte; ?max_width=320 for a thumbnail)"
else
  snapshot="curl -s 'http://$api/v1/events?in_cloud=true&limit=1'   (no picture had reached the cloud yet: take snapshot_url from an event)"
fi

cat <<MSG

Sightline is running: an edge agent with a camera panning over pictures (real NanoDet detection
in ONNX Runtime) and a synthetic camera -> NATS JetStream -> ingest -> ClickHouse -> query API,
on the $servers servers.

  The console:      http://$api/   (open it in a browser: the cameras' events with their pictures,
                    the edges, activity; an SSH tunnel reaches it from another machine:
                    ssh -L 8080:$api <this host>)
  The API:          curl -s 'http://$api/v1/events?limit=5'
                    curl -s 'http://$api/v1/events?camera=yard&limit=3'
  A snapshot:       $snapshot
  ClickHouse SQL:   curl -s http://127.0.0.1:8123/ --data-binary 'SELECT camera_id, count() FROM sightline.events GROUP BY camera_id'
  Metrics:          curl -s http://$api/metrics ; curl -s http://127.0.0.1:8081/metrics
  The edge agent:   curl -s http://127.0.0.1:9470/v1/status ; curl -s 'http://127.0.0.1:9470/v1/events/recent?limit=3'
                    ls .local/edge-data/events/*/   (logs per day; snapshots/ holds annotated JPEGs)
  Servers:          deploy/local/stack.sh status
  Logs:             $logs/

Ctrl-C stops everything.
MSG

# Stay in the foreground; if a service dies, say so and stop the rest.
while true; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "error: a service (pid $pid) exited; see $logs/"
      exit 1
    fi
  done
  sleep 1
done
