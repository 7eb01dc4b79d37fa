-- Each row's content type, so an agent publishes every row as it was stored whatever schema
-- version the agent that stored it wrote (an upgrade never strands the backlog of the old
-- version). Rows from before this migration were all schema v1 in bincode.
ALTER TABLE events ADD COLUMN content_type VARCHAR DEFAULT 'application/vnd.sightline.event.v1+bincode';
ALTER TABLE outbox ADD COLUMN content_type VARCHAR DEFAULT 'application/vnd.sightline.event.v1+bincode';

-- Unsent rows whose stored payload could not be read (damaged on disk): taken out of the
-- outbox so the rows after them are published, and kept here, never deleted by rotation,
-- until an operator looks at them (docs/edge.md). Counted in status and metrics.
--
-- reason          why the row could not be read
-- quarantined_ms  when it was moved here
CREATE TABLE quarantine (
    seq BIGINT NOT NULL,
    captured_ms BIGINT NOT NULL,
    content_type VARCHAR,
    payload BLOB NOT NULL,
    reason VARCHAR NOT NULL,
    quarantined_ms BIGINT NOT NULL
);
