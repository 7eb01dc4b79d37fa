-- Hourly rollup per camera and label: detections counted and the best confidence, kept by a
-- materialized view. Read with countMerge(detections) and maxMerge(max_confidence),
-- grouped by hour, camera_id, label. Redelivered events (rare: a crash between insert and
-- ack) are counted again here; exact counts come from the events table.
CREATE TABLE IF NOT EXISTS {db}.detections_hourly (
    hour DateTime('UTC'),
    camera_id String,
    label String,
    detections AggregateFunction(count),
    max_confidence AggregateFunction(max, Float32)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (camera_id, label, hour);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.detections_hourly_mv TO {db}.detections_hourly AS
SELECT
    toStartOfHour(captured_at) AS hour,
    camera_id,
    label,
    countState() AS detections,
    maxState(confidence) AS max_confidence
FROM {db}.events
ARRAY JOIN detections.label AS label, detections.confidence AS confidence
GROUP BY hour, camera_id, label;
