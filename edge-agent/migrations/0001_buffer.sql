-- The edge buffer: every event the agent created, in the order it was created, until
-- rotation removes its day; and the outbox, the events not yet acknowledged by JetStream.
--
-- `events` is append-only apart from rotation, which suits DuckDB's columnar storage; the
-- publisher only ever touches `outbox`, which is small while the link is up (an acknowledged
-- event is deleted from it), so reading the next page and marking events sent never scan the
-- history.
--
-- seq         the durable order: assigned at append, strictly increasing, never reused
-- day         UTC day of the capture (days since 1970-01-01): the unit of rotation
-- payload     the event in the wire contract's bincode encoding
CREATE TABLE events (
    seq BIGINT NOT NULL,
    event_id UUID NOT NULL,
    camera_id VARCHAR NOT NULL,
    captured_ms BIGINT NOT NULL,
    day INTEGER NOT NULL,
    created_ms BIGINT NOT NULL,
    payload BLOB NOT NULL
);

-- Unsent events (a copy of the payload, so a page is read from here alone). Rotation never
-- deletes an event that is still here.
CREATE TABLE outbox (
    seq BIGINT NOT NULL,
    captured_ms BIGINT NOT NULL,
    day INTEGER NOT NULL,
    payload BLOB NOT NULL
);

-- The next seq to assign. Kept here rather than derived from max(seq) so a seq is never
-- reused, even after rotation has deleted every row.
CREATE TABLE buffer_state (next_seq BIGINT NOT NULL);
INSERT INTO buffer_state VALUES (1);

-- For people with the duckdb CLI: the events with readable times and whether they were sent.
CREATE VIEW events_readable AS
SELECT seq, event_id, camera_id, epoch_ms(captured_ms) AS captured_at,
       epoch_ms(created_ms) AS created_at,
       seq NOT IN (SELECT seq FROM outbox) AS sent,
       octet_length(payload) AS bytes
FROM events;
