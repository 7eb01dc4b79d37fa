"""The modern-server path of the schema, proven on a real modern engine.

ClickHouse 18.16 (the only server Debian ships) has no TTL, so the integration tests there
exercise the partition sweep. This test takes the exact statements the ingest service would
run against a modern server (`ingest-service --print-schema modern`: migrations, then
retention TTL), applies them to chdb (ClickHouse 26.x in-process), inserts events with old
and new timestamps, forces TTL with OPTIMIZE ... FINAL and checks that exactly the expired
rows are gone and the rollups are right.
"""

import os
import pathlib
import subprocess
import tempfile
import time

import pytest
from chdb import session

ROOT = pathlib.Path(__file__).resolve().parents[2]

EVENTS = [
    # (id suffix, days ago, labels with confidences)
    ("000000000001", 0, [("car", 0.5), ("person", 0.9), ("car", 0.7)]),
    ("000000000002", 10, [("car", 0.6)]),
    ("000000000003", 40, [("car", 0.8), ("dog", 0.4)]),
    ("000000000004", 500, [("car", 0.3)]),
]


def schema(config_text=None):
    """The statements `ingest-service --print-schema modern` prints."""
    args = ["cargo", "run", "-q", "-p", "sightline-ingest", "--", "--print-schema", "modern"]
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config:
        if config_text is not None:
            config.write(config_text)
            config.flush()
            args += ["--config", config.name]
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [s.strip() for s in out.split(";\n") if s.strip()]


@pytest.fixture()
def db(tmp_path):
    s = session.Session(str(tmp_path / "chdb"))
    yield s
    s.close()


def apply(s, statements):
    for statement in statements:
        s.query(statement)


def insert_events(s):
    for suffix, days, detections in EVENTS:
        labels = "[" + ",".join(f"'{label}'" for label, _ in detections) + "]"
        confidences = "[" + ",".join(str(c) for _, c in detections) + "]"
        zeros = "[" + ",".join("0" for _ in detections) + "]"
        ones = "[" + ",".join("1" for _ in detections) + "]"
        tracks = "[" + ",".join("NULL" for _ in detections) + "]"
        s.query(
            "INSERT INTO sightline.events (schema_version, event_id, edge_id, camera_id, captured_at,"
            " captured_at_ms, frame_seq, motion_score, detections.label, detections.class_id,"
            " detections.confidence, detections.x_min, detections.y_min, detections.x_max,"
            " detections.y_max, detections.track_id, model_name, model_version, inference_ms,"
            " snapshot, description, attributes.key, attributes.value)"
            f" SELECT 1, toUUID('0190b1d2-0000-7000-8000-{suffix}'), 'edge', 'gate', t,"
            f" toUnixTimestamp(t) * 1000, 1, 0.5, {labels}, {zeros}, {confidences}, {zeros}, {zeros},"
            f" {ones}, {ones}, {tracks}, 'm', '1', 10, NULL, NULL, [], []"
            f" FROM (SELECT now() - INTERVAL {days} DAY AS t)"
        )


def arrived_when_captured(s):
    """Retention counts from the later of capture and arrival: make every row look as if it
    arrived when it was captured (sent), so the ages the tests give are what TTL sees."""
    for table, column, time in (
        ("events", "ingested_at", "captured_at"),
        ("edge_heartbeats", "received_at", "sent_at"),
        ("tracks", "ingested_at", "started_at"),
    ):
        s.query(
            f"ALTER TABLE sightline.{table} UPDATE {column} = {time} WHERE 1"
            " SETTINGS mutations_sync = 1"
        )
    # The tables kept by views compute their arrival (MATERIALIZED, never updated): compute
    # it from the capture time once, then put the expression back.
    for table, time in (("events_by_id", "captured_at"), ("detections", "captured_at"), ("tracks_by_id", "started_at")):
        s.query(f"ALTER TABLE sightline.{table} MODIFY COLUMN ingested_at DateTime('UTC') MATERIALIZED {time}")
        s.query(f"ALTER TABLE sightline.{table} MATERIALIZE COLUMN ingested_at SETTINGS mutations_sync = 1")
        s.query(f"ALTER TABLE sightline.{table} MODIFY COLUMN ingested_at DateTime('UTC') MATERIALIZED now()")
        s.query(f"ALTER TABLE sightline.{table} MATERIALIZE TTL SETTINGS mutations_sync = 1")


def optimize(s):
    # A background merge (the TTL's, once retention is applied) holds the parts it merges, and
    # an OPTIMIZE that finds its parts held does nothing, silently by default: asked to say so,
    # it is tried again until it has merged every partition.
    for table in ("events", "events_by_id", "detections", "detections_hourly", "edge_heartbeats", "tracks", "tracks_by_id"):
        for attempt in range(100):
            try:
                s.query(f"OPTIMIZE TABLE sightline.{table} FINAL SETTINGS optimize_throw_if_noop = 1")
                break
            except Exception as error:  # chdb raises its own type; the message names the cause
                if attempt == 99 or "merg" not in str(error).lower():
                    raise
                time.sleep(0.1)


def rows(s, sql):
    out = s.query(sql, "TabSeparated").bytes().decode().strip()
    return [line.split("\t") for line in out.splitlines()] if out else []


def test_ttl_removes_exactly_the_expired_rows_and_keeps_rollups(db):
    # Tables first, rows next, retention last: modern servers apply TTL while inserting too,
    # so this order is what shows TTL removing rows that are already stored.
    statements = schema()
    tables = [s for s in statements if not s.startswith("ALTER TABLE")]
    retention = [s for s in statements if s.startswith("ALTER TABLE")]
    # TTL and ttl_only_drop_parts on seven tables, the arrival column of the three tables
    # kept by views, the dedup window of events and the three tables its views write, and
    # the compressed block sizes of events.
    assert len(retention) == 22
    assert sum("non_replicated_deduplication_window" in s for s in retention) == 4
    assert sum("max_compress_block_size = 65536" in s for s in retention) == 1
    apply(db, tables)
    # Migration 0012 printed as its plain copy and renames: events in 1,024-row granules.
    engine = rows(db, "SELECT engine_full FROM system.tables WHERE database = 'sightline' AND name = 'events'")
    assert "index_granularity = 1024" in engine[0][0]
    assert rows(db, "SELECT count() FROM system.tables WHERE database = 'sightline' AND name LIKE 'events_%' AND name NOT IN ('events_by_id', 'events_by_id_mv')") == [["0"]]
    insert_events(db)
    for days in (0, 40):
        # One moment for the heartbeat and both of the track's records: `now()` in each INSERT
        # could fall in the next second, and a track's revisions collapse only when they share
        # their sorting key, which includes `started_at_ms`.
        then = f"toDateTime({int(time.time()) - days * 86_400}, 'UTC')"
        db.query(
            "INSERT INTO sightline.edge_heartbeats (edge_id, sent_at, sent_at_ms, agent_version, uptime_secs,"
            " cameras, fps, events_created, events_sent, events_dropped, backlog, oldest_unsent_at_ms,"
            " storage_used_bytes, storage_limit_bytes, cpu_percent, rss_bytes)"
            f" SELECT 'edge', t, toUnixTimestamp(t) * 1000, '0.1.0', 1, 2, 0, 3, 3, 0, 0, NULL, 1, 2, 0.5, 1"
            f" FROM (SELECT {then} AS t)"
        )
        # A track that started then, with two records (revisions).
        for revision in (0, 1):
            db.query(
                "INSERT INTO sightline.tracks (schema_version, record_id, edge_id, camera_id, track_id,"
                " revision, label, class_id, started_at, started_at_ms, last_seen_at_ms, ended_by, frames,"
                " max_confidence, mean_confidence, best_at_ms, best_x_min, best_y_min, best_x_max,"
                " best_y_max, best_confidence, path.at_ms, path.x, path.y, zones.zone,"
                " zones.entered_at_ms, zones.exited_at_ms, arrival_event_id, snapshot,"
                " attributes.key, attributes.value)"
                f" SELECT 1, generateUUIDv4(), 'edge', 'gate', {days + 1}, {revision}, 'person', 0, t,"
                f" toUnixTimestamp(t) * 1000, toUnixTimestamp(t) * 1000 + 5000, '', 3, 0.9, 0.8,"
                " toUnixTimestamp(t) * 1000, 0.1, 0.1, 0.2, 0.2, 0.9, [], [], [], ['gate'],"
                " [toUnixTimestamp(t) * 1000], [NULL], NULL, NULL, [], []"
                f" FROM (SELECT {then} AS t)"
            )
    assert rows(db, "SELECT count() FROM sightline.events") == [["4"]]
    assert rows(db, "SELECT count() FROM sightline.detections") == [["7"]]
    apply(db, retention)
    # Just stored, every row is kept however old its capture: retention counts from arrival.
    optimize(db)
    assert rows(db, "SELECT count() FROM sightline.events") == [["4"]]
    arrived_when_captured(db)
    optimize(db)
    # Events, detections, heartbeats and tracks keep 30 days; rollups keep 400. A track's
    # revisions collapse to the latest.
    assert rows(db, "SELECT count() FROM sightline.edge_heartbeats") == [["1"]]
    assert rows(db, "SELECT track_id, revision FROM sightline.tracks") == [["1", "1"]]
    assert rows(db, "SELECT edge_id, track_id, camera_id FROM sightline.tracks_by_id") == [["edge", "1", "gate"]]
    assert rows(db, "SELECT toString(event_id) FROM sightline.events ORDER BY event_id") == [
        ["0190b1d2-0000-7000-8000-000000000001"],
        ["0190b1d2-0000-7000-8000-000000000002"],
    ]
    assert rows(db, "SELECT toString(event_id) FROM sightline.events_by_id ORDER BY event_id") == [
        ["0190b1d2-0000-7000-8000-000000000001"],
        ["0190b1d2-0000-7000-8000-000000000002"],
    ]
    assert rows(db, "SELECT label, count() FROM sightline.detections GROUP BY label ORDER BY label") == [
        ["car", "3"],
        ["person", "1"],
    ]
    rollup = rows(
        db,
        "SELECT dateDiff('day', hour, now()) AS age, label, countMerge(detections), maxMerge(max_confidence)"
        " FROM sightline.detections_hourly GROUP BY hour, label ORDER BY age, label",
    )
    assert [(int(a) // 10 * 10, l, n, c) for a, l, n, c in rollup] == [
        (0, "car", "2", "0.7"),
        (0, "person", "1", "0.9"),
        (10, "car", "1", "0.6"),
        (40, "car", "1", "0.8"),
        (40, "dog", "1", "0.4"),
    ]


def test_a_retention_change_alters_the_ttl(db):
    apply(db, schema())
    insert_events(db)
    # Shorter retention in the config: the same statements now set 7 days.
    apply(db, schema("[retention]\nevents_days = 7\ndetections_days = 7\nrollups_days = 30\n"))
    engine = rows(db, "SELECT engine_full FROM system.tables WHERE database = 'sightline' AND name = 'events'")
    assert "TTL greatest(captured_at, ingested_at) + toIntervalDay(7)" in engine[0][0]
    assert "ttl_only_drop_parts = 1" in engine[0][0]
    arrived_when_captured(db)
    optimize(db)
    assert rows(db, "SELECT count() FROM sightline.events") == [["1"]]
    assert rows(db, "SELECT count() FROM sightline.detections") == [["3"]]
    assert rows(db, "SELECT count() FROM (SELECT hour FROM sightline.detections_hourly GROUP BY hour)") == [["2"]]


def test_migrations_are_idempotent(db):
    statements = schema()
    apply(db, statements)
    apply(db, statements)
    tables = rows(db, "SELECT name FROM system.tables WHERE database = 'sightline' ORDER BY name")
    assert [t[0] for t in tables] == [
        "detections",
        "detections_hourly",
        "detections_hourly_mv",
        "detections_mv",
        "edge_heartbeats",
        "events",
        "events_by_id",
        "events_by_id_mv",
        "schema_migrations",
        "snapshots",
        "tracks",
        "tracks_by_id",
        "tracks_by_id_mv",
    ]
