-- The ids of events the `drop_oldest` full-disk policy deleted unsent (counted as dropped),
-- so a recovery that re-reads the day logs does not bring them back. Deleted with their day
-- by rotation, which deletes the day's logs too.
CREATE TABLE dropped (
    event_id UUID NOT NULL,
    day INTEGER NOT NULL,
    dropped_ms BIGINT NOT NULL
);
