-- Heartbeat v2 (shared/src/heartbeat.rs): the interval (an edge is offline once a few
-- intervals passed without a heartbeat), the filesystem's free space, the edge clock's offset
-- from the cloud's, quarantined buffer rows, and each camera's state as parallel arrays (one
-- element per camera, in the same order). Rows from v1 heartbeats have schema_version 1 and
-- the defaults.
ALTER TABLE {db}.edge_heartbeats
    ADD COLUMN IF NOT EXISTS schema_version UInt16 DEFAULT 1,
    ADD COLUMN IF NOT EXISTS interval_secs UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS storage_free_bytes Nullable(UInt64),
    ADD COLUMN IF NOT EXISTS clock_offset_ms Nullable(Int64),
    ADD COLUMN IF NOT EXISTS events_quarantined UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS events_refused UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS camera_ids Array(String),
    ADD COLUMN IF NOT EXISTS camera_states Array(String),
    ADD COLUMN IF NOT EXISTS camera_fps Array(Float64),
    ADD COLUMN IF NOT EXISTS camera_events_created Array(UInt64),
    ADD COLUMN IF NOT EXISTS camera_errors Array(UInt64);
