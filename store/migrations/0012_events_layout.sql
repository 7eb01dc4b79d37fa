-- `events` again, with 1,024-row granules instead of 8,192. Reading a few events spread over
-- many cameras (a label over an hour: 100 events on 50 cameras) reads one granule per camera
-- from every column; smaller granules read 8x fewer rows (docs/benchmarks.md, issue 21).
-- ClickHouse fixes a table's granularity when the table is made, so this migration is a
-- rebuild (store/src/rebuild.rs): this statement makes the new table beside `events`, the
-- rebuild copies every partition into it while ingest may keep writing, swaps the names,
-- makes the views over `events` follow, and drops the old table. The columns are those of
-- `events` as it is (AS), whatever later migrations add to it.
CREATE TABLE IF NOT EXISTS {db}.events_rebuild AS {db}.events
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(captured_at)
ORDER BY (camera_id, captured_at_ms, event_id)
SETTINGS index_granularity = 1024;
