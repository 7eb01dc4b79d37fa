-- One row per detected object, kept by a materialized view over events, ordered so that
-- "all cars last week" reads one label's range instead of every event.
CREATE TABLE IF NOT EXISTS {db}.detections (
    captured_at DateTime('UTC'),
    captured_at_ms Int64,
    label String,
    camera_id String,
    edge_id String,
    event_id UUID,
    idx UInt32,
    class_id UInt32,
    confidence Float32,
    x_min Float32,
    y_min Float32,
    x_max Float32,
    y_max Float32,
    track_id Nullable(UInt64)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(captured_at)
ORDER BY (label, camera_id, captured_at_ms, event_id, idx);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.detections_mv TO {db}.detections AS
SELECT
    captured_at,
    captured_at_ms,
    d.label AS label,
    camera_id,
    edge_id,
    event_id,
    idx,
    d.class_id AS class_id,
    d.confidence AS confidence,
    d.x_min AS x_min,
    d.y_min AS y_min,
    d.x_max AS x_max,
    d.y_max AS y_max,
    d.track_id AS track_id
FROM {db}.events
ARRAY JOIN detections AS d, arrayEnumerate(detections.label) AS idx;
