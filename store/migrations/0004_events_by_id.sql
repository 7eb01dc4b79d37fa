-- Where each event is, by id: a point lookup here gives the camera and capture time, which
-- locate the event in `events` (ordered by camera and time) without scanning every
-- event_id. Kept by a materialized view; retained like `events`. The backfill copies what
-- `events` held before this migration; running it twice (two replicas starting together)
-- only makes copies, which collapse on merge and which readers skip with LIMIT 1.
CREATE TABLE IF NOT EXISTS {db}.events_by_id (
    event_id UUID,
    captured_at DateTime('UTC'),
    captured_at_ms Int64,
    camera_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(captured_at)
ORDER BY event_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_by_id_mv TO {db}.events_by_id AS
SELECT event_id, captured_at, captured_at_ms, camera_id
FROM {db}.events;

INSERT INTO {db}.events_by_id
SELECT event_id, captured_at, captured_at_ms, camera_id
FROM {db}.events
WHERE event_id NOT IN (SELECT event_id FROM {db}.events_by_id);
