#!/usr/bin/env bash
# Backs up and restores Sightline's ClickHouse database, on ClickHouse 18.16 (Debian's
# server) and on modern servers (tested on 26.9). Run it on the ClickHouse host as a user
# that can read and write the server's data directory (root or clickhouse): the backup is
# copied between the server's directories and DIR.
#
# usage: deploy/clickhouse/backup.sh backup DIR  [--database NAME]
#        deploy/clickhouse/backup.sh restore DIR [--database NAME] [--replace]
#
# backup   copies every MergeTree table's data and every table's and view's CREATE
#          statement into DIR (which must not exist), without stopping inserts:
#          - a database with the Atomic engine (the modern default) with BACKUP DATABASE to
#            the server's `backups` disk (CLICKHOUSE_BACKUP_DISK; the server config needs the
#            disk and `<backups><allowed_disk>backups</allowed_disk></backups>`, as
#            deploy/local/clickhouse-config.xml has), moved into DIR/backup after;
#          - an Ordinary database (18.16, where there is no BACKUP) with ALTER TABLE ... FREEZE
#            (hard links, no locks held) into DIR/parts, removing the server's shadow copy
#            after.
#          Either way no disk space stays pinned on the server.
# restore  creates the database and any table or view DIR has and the server lacks (tables
#          first, views after), then brings the data back partition by partition: copied
#          into each table's detached/ directory and attached (FREEZE backups), or restored
#          into a temporary database and attached from there (BACKUP backups; the temporary
#          database is dropped after). A partition that already holds rows is left alone
#          (reported), because attaching over it would count the rollups twice; with
#          --replace it is dropped first and the backup's copy attached instead. Attaching
#          does not fire materialized views: the rollups come back from their own parts.
#          A backup restores on a server of the kind it was made on (FREEZE or BACKUP).
#
# Tables are copied one after another (FREEZE) or as of slightly different moments
# (BACKUP). With ingest running, an insert landing between two is in one table's copy and
# not the next (the hourly rollup may then miss events the events copy holds). For a
# consistent backup, stop ingest meanwhile (scale it to 0: events wait in JetStream, nothing
# is lost) and start it again after.
#
# It talks to ClickHouse over HTTP with curl (no clickhouse-client needed): CLICKHOUSE_URL
# (http://127.0.0.1:8123), CLICKHOUSE_USER (default) and CLICKHOUSE_PASSWORD (empty).
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

url=${CLICKHOUSE_URL:-http://127.0.0.1:8123}
auth=(-H "X-ClickHouse-User: ${CLICKHOUSE_USER:-default}")
[ -z "${CLICKHOUSE_PASSWORD:-}" ] || auth+=(-H "X-ClickHouse-Key: $CLICKHOUSE_PASSWORD")
# One statement over HTTP; the server's error text on failure.
q() {
  local out
  out=$(curl -sS --fail-with-body "${auth[@]}" --data-binary @- "$url/" <<<"$1" 2>&1) \
    || { printf '%s\n' "$out" >&2; return 1; }
  [ -z "$out" ] || printf '%s\n' "$out"
}
q "SELECT 1" >/dev/null || die "cannot reach ClickHouse at $url"
disk=${CLICKHOUSE_BACKUP_DISK:-backups}

# The directory a table's parts live in, and the server's data root above it
# (<root>/data/<db>/<table>/ on an Ordinary database).
data_path() {
  q "SELECT data_path FROM system.tables WHERE database = '$database' AND name = '$1' FORMAT TSVRaw"
}
root_of() { dirname "$(dirname "$(dirname "$1")")"; }
# `freeze` for an Ordinary database, `backup` for any other engine (Atomic).
method_of() {
  local engine
  engine=$(q "SELECT engine FROM system.databases WHERE name = '$database' FORMAT TSVRaw")
  [ -n "$engine" ] || die "no database $database on the server"
  if [ "$engine" = Ordinary ]; then echo freeze; else echo backup; fi
}
# Where the backups disk keeps its files; BACKUP and RESTORE need it.
disk_path() {
  local path
  path=$(q "SELECT path FROM system.disks WHERE name = '$disk' FORMAT TSVRaw" 2>/dev/null) || true
  [ -n "$path" ] || die "the server has no disk named $disk for BACKUP (add it under <storage_configuration> and <backups><allowed_disk>$disk</allowed_disk></backups> in its config, as deploy/local/clickhouse-config.xml does, or set CLICKHOUSE_BACKUP_DISK)"
  echo "${path%/}"
}
mergetree_tables() {
  q "SELECT name FROM system.tables WHERE database = '$1' AND engine LIKE '%MergeTree' ORDER BY name FORMAT TSVRaw"
}

backup() {
  [ ! -e "$dir" ] || die "$dir exists: back up into a new directory"
  local method
  method=$(method_of)
  mkdir -p "$dir/schema"
  # Tables first, views (which read from them) after: the order restore creates them in.
  local i=0 name engine
  while IFS=$'\t' read -r name engine; do
    i=$((i + 1))
    q "SELECT create_table_query FROM system.tables WHERE database = '$database' AND name = '$name' FORMAT TSVRaw" \
      > "$dir/schema/$(printf '%03d' "$i")_$name.sql"
  done < <(q "SELECT name, engine FROM system.tables WHERE database = '$database' ORDER BY engine LIKE '%View', name FORMAT TSVRaw")
  local tables=0 parts=0
  if [ "$method" = backup ]; then
    local root id
    root=$(disk_path)
    id=sightline-backup-$(date -u +%Y%m%dT%H%M%SZ)-$$
    q "BACKUP DATABASE \`$database\` TO Disk('$disk', '$id')" >/dev/null
    mv "$root/$id" "$dir/backup" 2>/dev/null || { cp -a "$root/$id" "$dir/backup" && rm -rf "${root:?}/$id"; }
    tables=$(mergetree_tables "$database" | wc -l)
    parts=$(find "$dir/backup/data" -mindepth 3 -maxdepth 3 -type d | wc -l)
  else
    mkdir -p "$dir/parts"
    local path root increment shadow
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
    done < <(mergetree_tables "$database")
  fi
  q "SELECT version()" > "$dir/server-version"
  printf '%s\n' "$database" > "$dir/database"
  printf '%s\n' "$method" > "$dir/method"
  sync
  log "backed up $database ($method): $tables tables, $parts parts, $(du -sh "$dir" | cut -f1) in $dir"
}

# attach TABLE PARTITION ATTACH_SQL: attaches one partition unless the live table holds rows
# in it (then it is kept, or dropped first with --replace). Counts into attached/kept.
attach() {
  local name=$1 partition=$2 statement=$3 rows
  rows=$(q "SELECT sum(rows) FROM system.parts WHERE database = '$database' AND table = '$name' AND partition_id = '$partition' AND active")
  if [ "${rows:-0}" != 0 ]; then
    if [ "$replace" = 0 ]; then
      log "kept $database.$name partition $partition: it holds $rows rows (--replace drops it and attaches the backup's)"
      kept=$((kept + 1))
      return 0
    fi
    q "ALTER TABLE \`$database\`.\`$name\` DROP PARTITION ID '$partition'"
  fi
  q "$statement"
  attached=$((attached + 1))
}

restore() {
  [ -d "$dir/schema" ] && [ -f "$dir/database" ] || die "$dir is not a backup made by this script (no schema/ and database)"
  local from method
  from=$(cat "$dir/database")
  [ "$from" = "$database" ] || die "$dir holds database $from, not $database (pass --database $from)"
  # Backups from before the BACKUP path have parts/ and no method file.
  method=$(cat "$dir/method" 2>/dev/null || echo freeze)
  local here existed
  existed=$(q "SELECT count() FROM system.databases WHERE name = '$database'")
  q "CREATE DATABASE IF NOT EXISTS \`$database\`"
  here=$(method_of)
  if [ "$here" != "$method" ] && [ "$existed" = 0 ]; then q "DROP DATABASE \`$database\`"; fi
  [ "$here" = "$method" ] \
    || die "$dir was made with $method, but database $database on this server needs $here: restore it on a server like the one it came from ($(cat "$dir/server-version" 2>/dev/null))"
  local file name created=0
  for file in "$dir"/schema/*.sql; do
    name=$(basename "$file" .sql); name=${name#*_}
    if [ "$(q "SELECT count() FROM system.tables WHERE database = '$database' AND name = '$name'")" = 0 ]; then
      q "$(cat "$file")" || die "could not create $database.$name from $file"
      created=$((created + 1))
    fi
  done
  attached=0 kept=0
  local path part partition
  if [ "$method" = backup ]; then
    local tables=()
    # Globals: the EXIT trap reads them after this function has returned.
    staging=_sightline_restore_$$
    root=$(disk_path)
    id=sightline-restore-$(date -u +%Y%m%dT%H%M%SZ)-$$
    cp -a "$dir/backup" "$root/$id"
    # Removed again whatever happens below.
    trap 'q "DROP DATABASE IF EXISTS $staging SYNC" >/dev/null 2>&1 || true; rm -rf "${root:?}/$id"' EXIT
    while read -r name; do
      [ -d "$dir/backup/data/$database/$name" ] && tables+=("TABLE \`$database\`.\`$name\` AS $staging.\`$name\`")
    done < <(mergetree_tables "$database")
    if [ ${#tables[@]} -gt 0 ]; then
      q "CREATE DATABASE $staging"
      q "RESTORE $(IFS=,; echo "${tables[*]}") FROM Disk('$disk', '$id')" >/dev/null
      while read -r name; do
        for partition in $(q "SELECT DISTINCT partition_id FROM system.parts WHERE database = '$staging' AND table = '$name' AND active ORDER BY partition_id FORMAT TSVRaw"); do
          attach "$name" "$partition" "ALTER TABLE \`$database\`.\`$name\` ATTACH PARTITION ID '$partition' FROM $staging.\`$name\`"
        done
      done < <(mergetree_tables "$staging")
    fi
  else
    [ -d "$dir/parts" ] || die "$dir has no parts/: not a complete backup"
    for table_dir in "$dir"/parts/*/; do
      name=$(basename "$table_dir")
      path=$(data_path "$name")
      [ -n "$path" ] || die "$database.$name does not exist and the backup has no schema for it"
      # Part names are <partition id>_<min block>_<max block>_<level>[_<mutation>].
      for partition in $(find "$table_dir" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | cut -d_ -f1 | sort -u); do
        rows=$(q "SELECT sum(rows) FROM system.parts WHERE database = '$database' AND table = '$name' AND partition_id = '$partition' AND active")
        if [ "${rows:-0}" = 0 ] || [ "$replace" = 1 ]; then
          for part in "$table_dir$partition"_*; do
            cp -a "$part" "$path/detached/"
            chown -R --reference="$path" "$path/detached/$(basename "$part")"
          done
        fi
        attach "$name" "$partition" "ALTER TABLE \`$database\`.\`$name\` ATTACH PARTITION ID '$partition'"
      done
    done
  fi
  log "restored $database from $dir: $created tables or views created, $attached partitions attached, $kept kept as they were"
}

case "$command" in
  backup) backup ;;
  restore) restore ;;
  *) die "unknown command $command: backup or restore (see --help)" ;;
esac
