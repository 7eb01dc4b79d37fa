#!/usr/bin/env bash
# Backs up and restores Sightline's ClickHouse database on servers without BACKUP/RESTORE
# (the Debian 18.16 server; any server whose database engine is Ordinary). Run it on the
# ClickHouse host as a user that can read and write the server's data directory (root or
# clickhouse). Modern servers: use `BACKUP DATABASE ... TO Disk(...)` instead (see
# docs/operations.md).
#
# usage: deploy/clickhouse/backup.sh backup DIR  [--database NAME]
#        deploy/clickhouse/backup.sh restore DIR [--database NAME] [--replace]
#
# backup   freezes every MergeTree table (ALTER TABLE ... FREEZE: hard links, no locks held,
#          inserts go on), copies the frozen parts and every table's CREATE statement into
#          DIR (which must not exist), then removes the server's shadow copy so no disk space
#          stays pinned.
# restore  creates the database and any table or view DIR has and the server lacks (tables
#          first, views after), copies the parts into each table's detached/ directory and
#          attaches them partition by partition. A partition that already holds rows is left
#          alone (reported), because attaching over it would count the rollups twice; with
#          --replace it is dropped first and the backup's copy attached instead. Attaching
#          does not fire materialized views: the rollups come back from their own parts.
#
# Tables are frozen one after another. With ingest running, an insert landing between two
# freezes is in one table's copy and not the next (the hourly rollup may then miss events the
# events copy holds). For a consistent backup, stop ingest meanwhile (scale it to 0: events
# wait in JetStream, nothing is lost) and start it again after.
#
# The client connects with CLICKHOUSE_HOST (127.0.0.1), CLICKHOUSE_PORT (9000),
# CLICKHOUSE_USER (default) and CLICKHOUSE_PASSWORD (empty); CLICKHOUSE_CLIENT overrides the
# client command (default: clickhouse-client).
set -euo pipefail

log() { printf '[clickhouse-backup] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/!p}' "${BASH_SOURCE[0]}"; }

[ $# -ge 1 ] || { usage; exit 2; }
case "$1" in -h|--help) usage; exit 0 ;; esac
command=$1; shift
[ $# -ge 1 ] || die "$command needs a directory (see --help)"
dir=$1; shift
database=sightline
replace=0
while [ $# -gt 0 ]; do
  case "$1" in
    --database) database=${2:?--database needs a name}; shift 2 ;;
    --replace) replace=1; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$database" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--database $database: only letters, digits and _"

client=(${CLICKHOUSE_CLIENT:-clickhouse-client} --host "${CLICKHOUSE_HOST:-127.0.0.1}"
  --port "${CLICKHOUSE_PORT:-9000}" --user "${CLICKHOUSE_USER:-default}")
[ -z "${CLICKHOUSE_PASSWORD:-}" ] || client+=(--password "$CLICKHOUSE_PASSWORD")
q() { "${client[@]}" --query "$1"; }
q "SELECT 1" >/dev/null || die "cannot reach ClickHouse at ${CLICKHOUSE_HOST:-127.0.0.1}:${CLICKHOUSE_PORT:-9000}"

# The directory a table's parts live in, and the server's data root above it
# (<root>/data/<db>/<table>/ on an Ordinary database).
data_path() {
  q "SELECT data_path FROM system.tables WHERE database = '$database' AND name = '$1' FORMAT TSVRaw"
}
root_of() { dirname "$(dirname "$(dirname "$1")")"; }
ordinary() {
  local engine
  engine=$(q "SELECT engine FROM system.databases WHERE name = '$database' FORMAT TSVRaw")
  [ -n "$engine" ] || die "no database $database on the server"
  [ "$engine" = Ordinary ] \
    || die "database $database has engine $engine: this script handles Ordinary databases; use BACKUP DATABASE $database TO Disk(...) on this server"
}

backup() {
  [ ! -e "$dir" ] || die "$dir exists: back up into a new directory"
  ordinary
  mkdir -p "$dir/schema" "$dir/parts"
  # Tables first, views (which read from them) after: the order restore creates them in.
  local i=0 name engine
  while IFS=$'\t' read -r name engine; do
    i=$((i + 1))
    q "SELECT create_table_query FROM system.tables WHERE database = '$database' AND name = '$name' FORMAT TSVRaw" \
      > "$dir/schema/$(printf '%03d' "$i")_$name.sql"
  done < <(q "SELECT name, engine FROM system.tables WHERE database = '$database' ORDER BY engine LIKE '%View', name FORMAT TSVRaw")
  local tables=0 parts=0 path root increment shadow
  while read -r name; do
    path=$(data_path "$name")
    root=$(root_of "$path")
    q "ALTER TABLE \`$database\`.\`$name\` FREEZE"
    # Each FREEZE makes shadow/<increment>/ under the data root.
    increment=$(cat "$root/shadow/increment.txt")
    shadow=$root/shadow/$increment
    mkdir -p "$dir/parts/$name"
    if [ -d "$shadow/${path#"$root"/}" ]; then
      cp -a "$shadow/${path#"$root"/}." "$dir/parts/$name/"
    fi
    rm -rf "$shadow"
    parts=$((parts + $(find "$dir/parts/$name" -mindepth 1 -maxdepth 1 -type d | wc -l)))
    tables=$((tables + 1))
  done < <(q "SELECT name FROM system.tables WHERE database = '$database' AND engine LIKE '%MergeTree' ORDER BY name FORMAT TSVRaw")
  q "SELECT version()" > "$dir/server-version"
  printf '%s\n' "$database" > "$dir/database"
  sync
  log "backed up $database: $tables tables, $parts parts, $(du -sh "$dir" | cut -f1) in $dir"
}

restore() {
  [ -d "$dir/schema" ] && [ -d "$dir/parts" ] || die "$dir is not a backup made by this script (no schema/ and parts/)"
  local from
  from=$(cat "$dir/database")
  [ "$from" = "$database" ] || die "$dir holds database $from, not $database (pass --database $from)"
  q "CREATE DATABASE IF NOT EXISTS \`$database\`"
  ordinary
  local file name created=0
  for file in "$dir"/schema/*.sql; do
    name=$(basename "$file" .sql); name=${name#*_}
    if [ "$(q "SELECT count() FROM system.tables WHERE database = '$database' AND name = '$name'")" = 0 ]; then
      "${client[@]}" --multiquery < "$file" || die "could not create $database.$name from $file"
      created=$((created + 1))
    fi
  done
  local attached=0 kept=0 path part partition rows
  for table_dir in "$dir"/parts/*/; do
    name=$(basename "$table_dir")
    path=$(data_path "$name")
    [ -n "$path" ] || die "$database.$name does not exist and the backup has no schema for it"
    # Part names are <partition id>_<min block>_<max block>_<level>[_<mutation>].
    for partition in $(find "$table_dir" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | cut -d_ -f1 | sort -u); do
      rows=$(q "SELECT sum(rows) FROM system.parts WHERE database = '$database' AND table = '$name' AND partition_id = '$partition' AND active")
      if [ "${rows:-0}" != 0 ]; then
        if [ "$replace" = 0 ]; then
          log "kept $database.$name partition $partition: it holds $rows rows (--replace drops it and attaches the backup's)"
          kept=$((kept + 1))
          continue
        fi
        q "ALTER TABLE \`$database\`.\`$name\` DROP PARTITION ID '$partition'"
      fi
      for part in "$table_dir$partition"_*; do
        cp -a "$part" "$path/detached/"
        chown -R --reference="$path" "$path/detached/$(basename "$part")"
      done
      q "ALTER TABLE \`$database\`.\`$name\` ATTACH PARTITION ID '$partition'"
      attached=$((attached + 1))
    done
  done
  log "restored $database from $dir: $created tables or views created, $attached partitions attached, $kept kept as they were"
}

case "$command" in
  backup) backup ;;
  restore) restore ;;
  *) die "unknown command $command: backup or restore (see --help)" ;;
esac
