-- Snapshots in the cloud (issue 17): one row per picture the snapshot writer checked and put
-- in the object store bucket SIGHTLINE_SNAPSHOTS under `snapshot_id`. A row is written only
-- after its object, so every row names a stored object; a redelivered upload writes the
-- same object and the same row again, and the copies collapse on merge (readers take one
-- with LIMIT 1 BY snapshot_id). What it shows is an event (`event_id`, `track_id` = 0) or a
-- track of its edge (`track_id` > 0, `event_id` the nil UUID): the sorting key serves both
-- lookups. Kept by capture day; the retention sweep deletes a day's objects before its rows
-- (never by TTL, which would forget which objects to delete). Times in milliseconds, UTC.
CREATE TABLE IF NOT EXISTS {db}.snapshots (
    schema_version UInt16,
    snapshot_id UUID,
    event_id UUID,
    track_id UInt64,
    edge_id String,
    camera_id String,
    captured_at DateTime('UTC'),
    captured_at_ms Int64,
    width UInt16,
    height UInt16,
    size UInt32,
    sha256 String,
    stored_at_ms Int64
)
ENGINE = ReplacingMergeTree(stored_at_ms)
PARTITION BY toYYYYMMDD(captured_at)
ORDER BY (event_id, edge_id, track_id, snapshot_id);
