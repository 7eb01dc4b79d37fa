-- Event schema v2 (shared/src/event.rs): each detection names the zones its object stood
-- in, a parallel array of the detections Nested like the others. Rows stored before read
-- it as one empty list per detection (ClickHouse sizes a missing Nested column by its
-- siblings), as do v1 events, which carry no zones.
ALTER TABLE {db}.events
    ADD COLUMN IF NOT EXISTS detections.zones Array(Array(String)) AFTER detections.track_id;
