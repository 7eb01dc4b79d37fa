-- Heartbeats report the edge's snapshot upload queue (issue 17): pending, sent, dropped
-- (never to be sent: rotated away, file gone or too large, event dropped; not those a newer
-- best frame of their track replaced), failed attempts (retried) and bytes sent since the
-- agent started. Heartbeats from agents before it read 0.
ALTER TABLE {db}.edge_heartbeats
    ADD COLUMN IF NOT EXISTS uploads_pending UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS uploads_sent UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS uploads_dropped UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS upload_errors UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS upload_bytes UInt64 DEFAULT 0;
