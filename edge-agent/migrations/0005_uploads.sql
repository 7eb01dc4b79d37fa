-- The snapshot upload queue (issue 17): one row per snapshot the camera chose to send to
-- the cloud, written in the same transaction as the event or track record it shows (`seq`
-- is that row's), so a crash can never leave an event whose upload was forgotten.
-- `state` is 'pending' until JetStream acknowledged the upload ('uploaded', with its
-- `bytes`), or 'dropped' with the `reason` (its day was rotated away, its file is gone or
-- too large, its event was dropped by the full-disk policy, or a newer best frame of the
-- same track replaced it: 'superseded'). Deleted with its day by rotation.
CREATE TABLE uploads (
    snapshot_id UUID NOT NULL,
    seq BIGINT NOT NULL,
    owner VARCHAR NOT NULL,
    camera_id VARCHAR NOT NULL,
    path VARCHAR NOT NULL,
    captured_ms BIGINT NOT NULL,
    day INTEGER NOT NULL,
    created_ms BIGINT NOT NULL,
    state VARCHAR NOT NULL,
    bytes BIGINT,
    done_ms BIGINT,
    reason VARCHAR
);
