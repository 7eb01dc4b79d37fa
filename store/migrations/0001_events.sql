-- One row per event. ReplacingMergeTree keyed (through the sorting key) by event_id: a
-- redelivered event has the same camera, capture time and id, so its copies collapse when
-- parts merge; readers use LIMIT 1 BY event_id so they never see two before that.
-- schema_version is the first column on purpose: every RowBinary row then starts with 0x01,
-- which keeps old servers' chunked-HTTP parser away from chunks that start with '\r'.
CREATE TABLE IF NOT EXISTS {db}.events (
    schema_version UInt16,
    event_id UUID,
    edge_id String,
    camera_id String,
    captured_at DateTime('UTC'),
    captured_at_ms Int64,
    frame_seq UInt64,
    motion_score Float32,
    detections Nested(
        label String,
        class_id UInt32,
        confidence Float32,
        x_min Float32,
        y_min Float32,
        x_max Float32,
        y_max Float32,
        track_id Nullable(UInt64)
    ),
    model_name String,
    model_version String,
    inference_ms Float32,
    snapshot Nullable(String),
    description Nullable(String),
    attributes Nested(key String, value String),
    ingested_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(captured_at)
ORDER BY (camera_id, captured_at_ms, event_id);
