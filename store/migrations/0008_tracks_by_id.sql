-- Where each track is, by its id (edge and track id): a point lookup here gives the camera
-- and start time, which locate the track's records in `tracks` (ordered by camera and start)
-- without scanning every track. Kept by a materialized view from every record a track
-- sends; all of them name the same camera and start, so the copies collapse on merge and
-- readers take any one with LIMIT 1. Retained like `tracks`. The backfill copies what
-- `tracks` held before this migration; running it twice only makes copies.
CREATE TABLE IF NOT EXISTS {db}.tracks_by_id (
    edge_id String,
    track_id UInt64,
    camera_id String,
    started_at DateTime('UTC'),
    started_at_ms Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(started_at)
ORDER BY (edge_id, track_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.tracks_by_id_mv TO {db}.tracks_by_id AS
SELECT edge_id, track_id, camera_id, started_at, started_at_ms
FROM {db}.tracks;

INSERT INTO {db}.tracks_by_id
SELECT edge_id, track_id, camera_id, started_at, started_at_ms
FROM {db}.tracks
WHERE (edge_id, track_id) NOT IN (SELECT edge_id, track_id FROM {db}.tracks_by_id);
