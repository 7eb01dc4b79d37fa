-- The edge buffer: every event the agent created, in the order it was created, until it has
-- been published and then rotated away.
--
-- seq         the durable order: assigned at append, strictly increasing, never reused
--             while the row exists
-- day         UTC day of the capture (days since 1970-01-01): the unit of rotation
-- payload     the event in the wire contract's bincode encoding
-- sent_ms     when JetStream acknowledged it; NULL while unsent (rotation never deletes those)
CREATE TABLE events (
    seq BIGINT NOT NULL,
    event_id UUID NOT NULL,
    camera_id VARCHAR NOT NULL,
    captured_ms BIGINT NOT NULL,
    day INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_ms BIGINT NOT NULL,
    sent_ms BIGINT
);

-- For people with the duckdb CLI: the same rows with readable times.
CREATE VIEW events_readable AS
SELECT seq, event_id, camera_id, epoch_ms(captured_ms) AS captured_at,
       epoch_ms(created_ms) AS created_at, epoch_ms(sent_ms) AS sent_at, octet_length(payload) AS bytes
FROM events;

-- The next seq to assign. Kept here rather than derived from max(seq) so a seq is never
-- reused, even after rotation has deleted every row.
CREATE TABLE buffer_state (next_seq BIGINT NOT NULL);
INSERT INTO buffer_state VALUES (1);
