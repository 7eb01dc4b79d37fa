//! The snapshot upload queue (migration 0005, table `uploads`): what the camera chose to
//! send to the cloud, queued in the same transaction as the event or track record the
//! picture shows, and worked off oldest first by the uploader ([`crate::uploader`]).
//!
//! A row is `pending` until JetStream acknowledged its upload (`uploaded`), or `dropped`
//! with a reason. Every drop is counted by the caller: rotation deleting a day with pending
//! uploads, a file gone or too large, the event dropped by the full-disk policy. A newer
//! best frame of the same track supersedes the track's pending one (its file holds the new
//! picture by then): `dropped` with reason `superseded`, which loses nothing.

use duckdb::{OptionalExt, params};
use sightline_shared::snapshot::Owner;
use uuid::Uuid;

use super::{Buffer, BufferError, db_err};
use crate::metrics::UploadDrop;

/// A snapshot to send: what it shows, where its file is, when it was captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    pub snapshot_id: Uuid,
    pub owner: Owner,
    pub camera_id: String,
    /// The file, relative to the data directory.
    pub path: String,
    pub captured_ms: i64,
    /// The day folder the file is in (rotation deletes the queue's rows with it).
    pub day: i32,
}

impl UploadRequest {
    /// The upload of `event`'s picture, `path` (relative to the data directory), filed
    /// under the event's capture time.
    pub fn of_event(
        snapshot_id: Uuid,
        event: &sightline_shared::DetectionEvent,
        path: String,
    ) -> Self {
        let captured_ms = event.captured_at.as_millis();
        Self {
            snapshot_id,
            owner: Owner::Event(event.event_id),
            camera_id: event.camera_id.clone(),
            path,
            captured_ms,
            day: crate::daylog::day_of(captured_ms),
        }
    }
}

/// A queued upload the uploader reads: the request and when it was queued.
pub type PendingUpload = UploadRequest;

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// JetStream acknowledged it.
    Uploaded { bytes: u64 },
    /// It will never be sent: why (for its metric), and the detail kept with the row.
    Dropped { why: UploadDrop, reason: String },
}

/// An upload in the queue as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedUpload {
    pub snapshot_id: Uuid,
    /// `event:<id>` or `track:<id>`.
    pub owner: String,
    /// `pending`, `uploaded` or `dropped`.
    pub state: String,
    /// Why it was dropped.
    pub reason: Option<String>,
}

/// Why uploads were dropped without an upload.
pub const SUPERSEDED: &str = "superseded";

/// Queues `uploads` (each with the seq of the row it belongs to) in `tx`. A track's new
/// upload supersedes the track's pending one. Returns how many were superseded.
pub(super) fn queue(
    tx: &duckdb::Connection,
    uploads: &[(u64, &UploadRequest)],
    now_ms: i64,
) -> duckdb::Result<u64> {
    let mut superseded = 0;
    for (seq, upload) in uploads {
        let owner = upload.owner.to_string();
        if matches!(upload.owner, Owner::Track(_)) {
            superseded += tx.prepare_cached(
                "UPDATE uploads SET state = 'dropped', reason = ?, done_ms = ? WHERE owner = ? AND state = 'pending'",
            )?
            .execute(params![SUPERSEDED, now_ms, owner])? as u64;
        }
        tx.prepare_cached(
            "INSERT INTO uploads (snapshot_id, seq, owner, camera_id, path, captured_ms, day, created_ms, state) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
        )?
        .execute(params![
                upload.snapshot_id.to_string(),
                *seq as i64,
                owner,
                upload.camera_id,
                upload.path,
                upload.captured_ms,
                upload.day,
                now_ms,
            ])?;
    }
    Ok(superseded)
}

/// The queue's state for status and heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UploadCounts {
    /// Waiting to be sent.
    pub pending: u64,
    /// Capture time of the oldest pending one, ms since the epoch.
    pub oldest_pending_ms: Option<i64>,
}

/// An upload from the columns (id, owner, camera, path, capture time, day); `None` (logged)
/// for a row whose id or owner does not read, which only a hand-edited file has.
fn request(r: &duckdb::Row<'_>) -> duckdb::Result<Option<UploadRequest>> {
    let (id, owner): (String, String) = (r.get(0)?, r.get(1)?);
    let (Ok(snapshot_id), Ok(parsed)) = (id.parse(), owner.parse()) else {
        tracing::error!(id, owner, "an upload row that does not read; skipping it");
        return Ok(None);
    };
    Ok(Some(UploadRequest {
        snapshot_id,
        owner: parsed,
        camera_id: r.get(2)?,
        path: r.get(3)?,
        captured_ms: r.get(4)?,
        day: r.get(5)?,
    }))
}

/// The pending uploads in `conn`'s queue (of `day` only, if given), in the order queued (a
/// row that does not read is skipped and logged).
pub(super) fn pending_in(
    conn: &duckdb::Connection,
    day: Option<i32>,
) -> duckdb::Result<Vec<UploadRequest>> {
    let mut stmt = conn.prepare_cached(
        "SELECT CAST(snapshot_id AS VARCHAR), owner, camera_id, path, captured_ms, day FROM uploads \
         WHERE state = 'pending' AND (?::INTEGER IS NULL OR day = ?::INTEGER) ORDER BY created_ms, seq",
    )?;
    let rows = stmt.query_map(params![day, day], request)?;
    rows.filter_map(Result::transpose).collect()
}

impl Buffer {
    /// The oldest `limit` pending uploads, in the order they were queued, up to the first
    /// whose event or track record JetStream has not acknowledged yet (the queue drains
    /// strictly oldest first, each after its record), and how many rows are unsent; none
    /// while more than `max_unsent` rows are (events go first). A row whose id or owner does
    /// not read (only a hand-edited file has one) is skipped and logged.
    pub fn pending_uploads(
        &self,
        limit: usize,
        max_unsent: u64,
    ) -> Result<(Vec<PendingUpload>, u64), BufferError> {
        let db = db_err(&self.path);
        let unsent: i64 = self
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .map_err(db)?;
        let unsent = unsent as u64;
        if unsent > max_unsent {
            return Ok((Vec::new(), unsent));
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT CAST(snapshot_id AS VARCHAR), owner, camera_id, path, captured_ms, day, \
                 seq IN (SELECT seq FROM outbox) FROM uploads \
                 WHERE state = 'pending' ORDER BY created_ms, seq LIMIT ?",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok((request(r)?, r.get::<_, bool>(6)?))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (upload, record_unsent) = row.map_err(db)?;
            if record_unsent {
                break;
            }
            out.extend(upload);
        }
        Ok((out, unsent))
    }

    /// Records how uploads ended and returns the ones that did end here: only pending rows
    /// change (an upload dropped meanwhile, say superseded or rotated away, stays as it
    /// was), so each upload is counted once, by whoever ended it.
    pub fn finish_uploads(
        &mut self,
        outcomes: &[(Uuid, UploadOutcome)],
        now_ms: i64,
    ) -> Result<Vec<bool>, BufferError> {
        let db = db_err(&self.path);
        let tx = self.conn.transaction().map_err(db)?;
        let mut ended = Vec::with_capacity(outcomes.len());
        for (id, outcome) in outcomes {
            let (state, bytes, reason) = match outcome {
                UploadOutcome::Uploaded { bytes } => ("uploaded", Some(*bytes as i64), None),
                UploadOutcome::Dropped { reason, .. } => ("dropped", None, Some(reason.as_str())),
            };
            let changed = tx
                .execute(
                    "UPDATE uploads SET state = ?, bytes = ?, reason = ?, done_ms = ? WHERE snapshot_id = ? AND state = 'pending'",
                    params![state, bytes, reason, now_ms, id.to_string()],
                )
                .map_err(db)?;
            ended.push(changed > 0);
        }
        tx.commit().map_err(db)?;
        Ok(ended)
    }

    /// Pending uploads and the oldest one's capture time.
    pub fn upload_counts(&self) -> Result<UploadCounts, BufferError> {
        self.conn
            .query_row(
                "SELECT count(*), min(captured_ms) FROM uploads WHERE state = 'pending'",
                [],
                |r| {
                    Ok(UploadCounts {
                        pending: r.get::<_, i64>(0)? as u64,
                        oldest_pending_ms: r.get(1)?,
                    })
                },
            )
            .map_err(db_err(&self.path))
    }

    /// Deletes the day's queue rows (rotation deleted its folder, pictures and all) and
    /// returns the ones still pending: never sent, now dropped.
    pub fn delete_uploads_of_day(&mut self, day: i32) -> Result<Vec<PendingUpload>, BufferError> {
        let db = db_err(&self.path);
        let pending = pending_in(&self.conn, Some(day)).map_err(db)?;
        self.conn
            .execute("DELETE FROM uploads WHERE day = ?", params![day])
            .map_err(db)?;
        Ok(pending)
    }

    /// Drops the pending uploads of the rows `seqs` (events the full-disk policy deleted
    /// unsent: their pictures would show nothing the cloud knows); returns how many.
    pub fn drop_uploads_of(&mut self, seqs: &[u64], now_ms: i64) -> Result<u64, BufferError> {
        let mut dropped = 0;
        for seq in seqs {
            dropped += self
                .conn
                .execute(
                    "UPDATE uploads SET state = 'dropped', reason = 'event dropped', done_ms = ? WHERE seq = ? AND state = 'pending'",
                    params![now_ms, *seq as i64],
                )
                .map_err(db_err(&self.path))? as u64;
        }
        Ok(dropped)
    }

    /// Every upload in the queue (pending or done), in the order they were queued. For
    /// tests and inspection.
    pub fn uploads(&self) -> Result<Vec<QueuedUpload>, BufferError> {
        let db = db_err(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT CAST(snapshot_id AS VARCHAR), owner, state, reason FROM uploads ORDER BY created_ms, seq",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, owner, state, reason) = row.map_err(db)?;
            out.push(QueuedUpload {
                snapshot_id: id.parse().unwrap_or_default(),
                owner,
                state,
                reason,
            });
        }
        Ok(out)
    }

    /// Queues `uploads` recovered from a damaged buffer, naming no row (seq 0: their
    /// events came back as new rows, unsent or sent).
    pub(super) fn requeue_uploads(
        &mut self,
        uploads: &[UploadRequest],
        now_ms: i64,
    ) -> Result<(), BufferError> {
        let db = db_err(&self.path);
        let tx = self.conn.transaction().map_err(db)?;
        let rows: Vec<(u64, &UploadRequest)> = uploads.iter().map(|u| (0, u)).collect();
        queue(&tx, &rows, now_ms).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    /// Pending uploads whose events were quarantined since the last call.
    pub fn take_uploads_dropped_with_events(&mut self) -> u64 {
        std::mem::take(&mut self.uploads_dropped_with_events)
    }

    /// Uploads superseded since the last call.
    pub fn take_superseded(&mut self) -> u64 {
        std::mem::take(&mut self.uploads_superseded)
    }

    /// The state of the upload of snapshot `id`, for tests and the status page.
    pub fn upload_state(&self, id: Uuid) -> Result<Option<(String, Option<String>)>, BufferError> {
        self.conn
            .query_row(
                "SELECT state, reason FROM uploads WHERE snapshot_id = ?",
                params![id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err(&self.path))
    }
}
