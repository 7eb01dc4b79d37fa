#!/usr/bin/env bash
# Installs the Sightline edge agent on a camera host:
#   /usr/bin/edge-agent                              the binary
#   /usr/lib/sightline/libonnxruntime.so             ONNX Runtime (from pip's onnxruntime wheel)
#   /usr/share/sightline/models/                     the NanoDet model and its labels
#   /etc/sightline/edge-agent.toml                   the config (kept if it exists: upgrades never overwrite it)
#   /etc/systemd/system/sightline-edge-agent.service the unit; data in /var/lib/sightline
# then creates the `sightline` system user, and enables and (re)starts the service.
#
# usage: deploy/edge/install.sh [--root DIR] [--binary PATH] [--onnxruntime PATH] [--no-start]
#   --root DIR        install under DIR (a staging tree or an image); skips users and systemd
#   --binary PATH     the edge-agent binary (default: the release build of this checkout)
#   --onnxruntime PATH libonnxruntime.so (default: the one in python3's onnxruntime package)
#   --no-start        install and enable, but do not (re)start the service
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
log() { printf '[install] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root=/
binary=${CARGO_TARGET_DIR:-$repo/target}/release/edge-agent
ort=""
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --onnxruntime) ort=${2:?--onnxruntime needs a path}; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ -x "$binary" ] || die "no edge-agent binary at $binary: build it (cargo build --release -p sightline-edge-agent) or pass --binary"
if [ -z "$ort" ]; then
  ort=$(python3 -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.' + onnxruntime.__version__))" 2>/dev/null) \
    || die "ONNX Runtime not found: pip install onnxruntime==1.31.1, or pass --onnxruntime /path/to/libonnxruntime.so"
fi
[ -f "$ort" ] || die "no ONNX Runtime library at $ort"
[ "$root" = / ] || [ "$(id -u)" -eq 0 ] || [ -w "$root" ] || die "cannot write to $root"
[ "$root" != / ] || [ "$(id -u)" -eq 0 ] || die "installing to / needs root (or use --root DIR)"

r=${root%/}
install -D -m 0755 "$binary" "$r/usr/bin/edge-agent"
install -D -m 0644 "$ort" "$r/usr/lib/sightline/libonnxruntime.so"
install -D -m 0644 "$repo/models/nanodet_coco_416.onnx" "$r/usr/share/sightline/models/nanodet_coco_416.onnx"
install -D -m 0644 "$repo/models/coco.names" "$r/usr/share/sightline/models/coco.names"
install -D -m 0644 "$repo/models/README.md" "$r/usr/share/sightline/models/README.md"
install -D -m 0644 "$here/sightline-edge-agent.service" "$r/etc/systemd/system/sightline-edge-agent.service"
config=$r/etc/sightline/edge-agent.toml
if [ -e "$config" ]; then
  log "keeping the existing $config (the example is $r/usr/share/sightline/edge-agent.toml.example)"
else
  install -D -m 0640 "$here/edge-agent.toml" "$config"
  log "installed an example config at $config: set edge_id, nats.url and the camera"
fi
install -D -m 0644 "$here/edge-agent.toml" "$r/usr/share/sightline/edge-agent.toml.example"
"$r/usr/bin/edge-agent" --config "$config" check-config >/dev/null \
  || die "$config does not pass check-config (see above)"
install -d -m 0750 "$r/var/lib/sightline"

if [ "$root" != / ]; then
  log "installed under $root (no user, no systemd)"
  exit 0
fi
if ! id sightline >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/sightline --shell /usr/sbin/nologin --user-group sightline
fi
getent group video >/dev/null && usermod -a -G video sightline
chown -R sightline:sightline /var/lib/sightline
chgrp sightline "$config"
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable sightline-edge-agent.service
  [ "$start" = 1 ] && systemctl restart sightline-edge-agent.service
  log "installed; status: systemctl status sightline-edge-agent ; curl -s http://127.0.0.1:9470/v1/status"
else
  log "installed; systemd is not running here, start it with: /usr/bin/edge-agent --config $config run"
fi
