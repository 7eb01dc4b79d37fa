#!/usr/bin/env bash
# Backs up and restores an edge agent's data directory: the DuckDB buffer (every event the
# agent committed, sent or not), the daily logs and the snapshots.
#
# usage: deploy/edge/backup.sh backup ARCHIVE  [--data-dir DIR] [--service NAME | --no-service]
#        deploy/edge/backup.sh restore ARCHIVE [--data-dir DIR] [--service NAME | --no-service]
#   --data-dir DIR   the agent's storage.data_dir (default /var/lib/sightline)
#   --service NAME   the systemd unit to stop for the copy and start again after
#                    (default sightline-edge-agent, if systemd knows it)
#   --no-service     do not touch systemd: the agent must already be stopped
#
# The agent is stopped while the files are copied (SIGTERM closes the buffer cleanly; a
# copy of a buffer in use could miss what DuckDB still holds in its write-ahead log), and
# the script refuses to run while any process has the buffer open. The cameras record
# nothing for those seconds. The archive is a gzipped tar, written beside ARCHIVE and
# renamed into place when complete.
#
# restore moves the current data directory aside to DIR.before-restore-<time> (delete it
# once satisfied), unpacks the archive in its place with the old owner, and starts the
# agent: events the backup holds unsent are published again, and those that had been sent
# already are dropped downstream as duplicates (JetStream's window, then ClickHouse).
set -euo pipefail

log() { printf '[edge-backup] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/!p}' "${BASH_SOURCE[0]}"; }

[ $# -ge 1 ] || { usage; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
command=$1; shift
[ $# -ge 1 ] || die "$command needs an archive path (see --help)"
archive=$1; shift
data_dir=/var/lib/sightline
service=sightline-edge-agent
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data_dir=${2:?--data-dir needs a directory}; shift 2 ;;
    --service) service=${2:?--service needs a unit name}; shift 2 ;;
    --no-service) service=""; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
data_dir=${data_dir%/}
buffer=$data_dir/buffer.duckdb

# Stops the unit if it runs, and starts it again when the script exits (even on error).
was_active=0
stop_agent() {
  if [ -n "$service" ] && command -v systemctl >/dev/null && systemctl cat "$service" >/dev/null 2>&1; then
    if systemctl is-active --quiet "$service"; then
      log "stopping $service"
      systemctl stop "$service"
      was_active=1
      trap start_agent EXIT
    fi
  fi
}
start_agent() {
  if [ "$was_active" = 1 ]; then
    log "starting $service again"
    systemctl start "$service"
    was_active=0
  fi
}
# Any process holding the buffer (or its WAL) open: the agent is still running.
holders() {
  local fd
  for fd in /proc/[0-9]*/fd/*; do
    case "$(readlink "$fd" 2>/dev/null)" in
      "$buffer"|"$buffer.wal") fd=${fd#/proc/}; printf '%s ' "${fd%%/*}" ;;
    esac
  done
}
ensure_stopped() {
  local pids
  pids=$(holders | tr ' ' '\n' | sort -u | tr '\n' ' ')
  [ -z "$pids" ] || die "the buffer $buffer is open by pid $pids(the agent is running): stop it first, or pass --service"
}

backup() {
  [ -f "$buffer" ] || die "no buffer at $buffer (is --data-dir the agent's storage.data_dir?)"
  stop_agent
  ensure_stopped
  local tmp=$archive.partial
  tar -C "$data_dir" -czf "$tmp" .
  sync "$tmp" 2>/dev/null || sync
  mv "$tmp" "$archive"
  start_agent
  log "backed up $data_dir to $archive ($(du -h "$archive" | cut -f1))"
}

restore() {
  [ -f "$archive" ] || die "no archive at $archive"
  # (No `grep -q`: it would stop reading early, and tar's SIGPIPE fails the pipeline.)
  tar -tzf "$archive" | grep -x './buffer.duckdb' >/dev/null || die "$archive holds no buffer.duckdb: not an edge backup"
  stop_agent
  ensure_stopped
  # Unpack beside the data directory first: a failed unpack leaves the current one alone.
  local staging=$data_dir.restoring aside="" owner=""
  rm -rf "$staging"
  mkdir -p "$staging"
  tar -C "$staging" -xzf "$archive" || { rm -rf "$staging"; die "could not unpack $archive"; }
  if [ -e "$data_dir" ]; then
    aside=$data_dir.before-restore-$(date -u +%Y%m%dT%H%M%SZ)
    owner=$(stat -c %u:%g "$data_dir")
    mv "$data_dir" "$aside"
  fi
  mv "$staging" "$data_dir"
  [ -z "$owner" ] || chown -R "$owner" "$data_dir"
  sync
  start_agent
  log "restored $data_dir from $archive${aside:+; the previous data is in $aside}"
}

case "$command" in
  backup) backup ;;
  restore) restore ;;
  *) die "unknown command $command: backup or restore (see --help)" ;;
esac
