-- Tracks (shared/src/track.rs): one row per track record an edge sent, for "how long did
-- they stay, how many people crossed the gate". Every record of a track has the same
-- sorting key (camera, start, edge, track id: none of them changes over a track) and the
-- same partition (its start day), so ReplacingMergeTree(revision) keeps only the latest
-- record when parts merge; until then readers take the highest revision per
-- (edge_id, track_id) themselves. ended_by is '' while the track lasts, 'lost' or
-- 'shutdown' on its final record. Times are milliseconds since the epoch, UTC.
CREATE TABLE IF NOT EXISTS {db}.tracks (
    schema_version UInt16,
    record_id UUID,
    edge_id String,
    camera_id String,
    track_id UInt64,
    revision UInt32,
    label String,
    class_id UInt32,
    started_at DateTime('UTC'),
    started_at_ms Int64,
    last_seen_at_ms Int64,
    ended_by String,
    frames UInt64,
    max_confidence Float32,
    mean_confidence Float32,
    best_at_ms Int64,
    best_x_min Float32,
    best_y_min Float32,
    best_x_max Float32,
    best_y_max Float32,
    best_confidence Float32,
    path Nested(at_ms Int64, x Float32, y Float32),
    zones Nested(zone String, entered_at_ms Int64, exited_at_ms Nullable(Int64)),
    arrival_event_id Nullable(UUID),
    snapshot Nullable(String),
    attributes Nested(key String, value String),
    ingested_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMMDD(started_at)
ORDER BY (camera_id, started_at_ms, edge_id, track_id);
