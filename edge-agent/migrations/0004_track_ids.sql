-- Track ids: unique per edge across its cameras and restarts, from a counter kept here
-- rather than from the clock (a clock stepped back would reuse ids). Cameras reserve ids in
-- blocks; a block is committed here before any id of it is used, so a restart starts past
-- every block handed out.
ALTER TABLE buffer_state ADD COLUMN next_track_id BIGINT DEFAULT 1;
UPDATE buffer_state SET next_track_id = 1 WHERE next_track_id IS NULL;
