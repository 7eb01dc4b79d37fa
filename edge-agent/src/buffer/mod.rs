//! The durable buffer: every event is committed to a local DuckDB file before it counts as
//! created, and stays there until JetStream acknowledged it and rotation removed its day.
//!
//! [`Buffer`] is the synchronous core (one connection, used by one thread); [`worker`] runs it
//! on a dedicated OS thread so DuckDB never blocks the async runtime, and hands the publisher
//! an [`Outbox`](crate::outbox::Outbox) over it.
//!
//! Publishing order: rows carry a durable `seq`. The publisher reads two kinds of pages in
//! turn: *live* pages (the newest rows, in `seq` order) and *backlog* pages (older unsent rows,
//! oldest first). Everything unsent at start-up is backlog, and so is a live lag that grows
//! past two pages (an outage while running), so after an outage the backlog drains at full
//! speed while new events still go out within a page or two. Within each kind the order is
//! `seq` order; across kinds it is not (consumers order by capture time, which every event
//! carries).

mod fresh;
mod recover;
pub mod storage;
#[cfg(test)]
mod tests;
pub mod uploads;
pub mod worker;

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};

use duckdb::{Connection, OptionalExt, params};
use sightline_shared::{DetectionEvent, EventId};

use crate::daylog::day_of;
use crate::outbox::{Outgoing, Stored};

pub use uploads::{PendingUpload, UploadOutcome, UploadRequest};

pub use recover::Recovery;

/// The migrations, in order. Each runs once, in its own transaction.
const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "buffer",
        include_str!("../../migrations/0001_buffer.sql"),
    ),
    (
        2,
        "content_type_quarantine",
        include_str!("../../migrations/0002_content_type_quarantine.sql"),
    ),
    (
        3,
        "dropped",
        include_str!("../../migrations/0003_dropped.sql"),
    ),
    (
        4,
        "track_ids",
        include_str!("../../migrations/0004_track_ids.sql"),
    ),
    (
        5,
        "uploads",
        include_str!("../../migrations/0005_uploads.sql"),
    ),
];

/// Groups of at most this many rows are written through prepared statements, bigger ones
/// through appenders (see [`Buffer::insert`]).
const SMALL_GROUP: usize = 32;

/// The most rows one prepared `INSERT` of [`Buffer::insert_prepared`] takes.
const MAX_ROWS_PER_INSERT: usize = 16;

/// Acks in at most this many runs of consecutive seqs are deleted run by run with a prepared
/// statement; more in one statement made for them.
const FEW_RUNS: usize = 4;

/// Prepared statements a connection keeps (duckdb's default of 16 is fewer than the
/// buffer's hot statements).
const STATEMENT_CACHE: usize = 64;

/// How far past the last track id it can read a recovered buffer starts: a damaged WAL may
/// have held reservations made since the last checkpoint (cameras reserve small blocks, so
/// this covers thousands of them).
const RECOVERED_TRACK_ID_MARGIN: u64 = 1 << 20;

/// What every row stored before migration 0002 (which records each row's content type) is.
const V1_STORED: &str = "application/vnd.sightline.event.v1+bincode";

fn now_ms() -> i64 {
    sightline_runtime::now().as_millis()
}

/// What went wrong in the buffer.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: duckdb::Error,
    },
    #[error("buffer database {path}: {message}")]
    Other { path: PathBuf, message: String },
    #[error(
        "buffer database {path} has schema version {found}, newer than this agent's {known}; upgrade the agent or move the file aside"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("event {event_id} cannot be stored: {reason}")]
    Encode { event_id: String, reason: String },
}

/// Counts for status and heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BufferStats {
    /// Rows in the buffer, sent or not.
    pub rows: u64,
    /// Rows JetStream has not acknowledged yet.
    pub unsent: u64,
    /// Capture time of the oldest unsent event, in ms since the epoch.
    pub oldest_unsent_ms: Option<i64>,
    /// Unsent rows that could not be read and were set aside in the `quarantine` table.
    pub quarantined: u64,
}

/// An event in the buffer, for the local status endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecentEvent {
    pub seq: u64,
    /// JetStream acknowledged it.
    pub sent: bool,
    pub event: DetectionEvent,
}

/// An event removed unsent by the `drop_oldest` full-disk policy (for the ERROR log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedRow {
    pub seq: u64,
    pub event_id: String,
    pub camera_id: String,
}

/// The DuckDB buffer. Not `Sync`: one thread owns it.
pub struct Buffer {
    conn: Connection,
    /// A second connection to the same database for the steady appends, without the query
    /// optimizer (an `INSERT ... VALUES` gains nothing from it and its set-up costs on every
    /// execution). Made when first needed; dropped with `conn` whenever the file is closed.
    appends: Option<Connection>,
    path: PathBuf,
    next_seq: u64,
    /// Next seq the live cursor reads.
    live_next: u64,
    /// Unsent ranges older than the live cursor, oldest first, each read front to back.
    backlog: VecDeque<Range<u64>>,
    /// Whose turn it is when both live and backlog rows are waiting.
    live_turn: bool,
    /// Rows quarantined since [`Buffer::take_quarantined`].
    quarantined: u64,
    /// Set when the buffer lost its database (see [`Buffer::unusable`]).
    unusable: Option<String>,
    /// The latest appends, kept in memory so that live pages need no query (see
    /// [`fresh`]). Cleared whenever unsent rows are deleted.
    fresh: fresh::Fresh,
    /// Rows the publisher's pages read from the file rather than memory, since
    /// [`Buffer::take_rows_read_from_file`].
    rows_read_from_file: u64,
    /// Pending uploads a newer best frame of their track replaced since
    /// [`Buffer::take_superseded`].
    uploads_superseded: u64,
    /// Pending uploads whose events were quarantined since
    /// [`Buffer::take_uploads_dropped_with_events`].
    uploads_dropped_with_events: u64,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("path", &self.path)
            .field("next_seq", &self.next_seq)
            .field("live_next", &self.live_next)
            .field("backlog", &self.backlog)
            .finish_non_exhaustive()
    }
}

/// How an open went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The file was there (or not) and is usable.
    Clean,
    /// The file or its WAL could not be read and was set aside; what it held was recovered
    /// as far as it could be (see [`Recovery`]).
    Recovered(Recovery),
}

impl Buffer {
    /// Opens (or creates) the buffer at `path` and applies pending migrations.
    ///
    /// A damaged buffer never becomes a crash loop, and never costs its unsent events
    /// quietly: a damaged WAL is set aside alone and the main file opens without it; a main
    /// file that cannot be read is set aside with its WAL and a fresh buffer started. Either
    /// way what they held is recovered into the buffer (see [`recover`]). Errors that setting
    /// aside cannot fix (a directory that cannot be written, a file from a newer agent, a
    /// failing migration) are returned.
    pub fn open(path: &Path) -> Result<(Self, Opened), BufferError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| BufferError::Other {
                path: path.to_owned(),
                message: format!("cannot create the directory {}: {e}", dir.display()),
            })?;
        }
        // A WAL left behind means the agent did not close cleanly (a crash, a power cut).
        let replayed_wal = wal_path(path).exists();
        match Self::open_existing(path) {
            Ok(mut buffer) => {
                recover::salvage_earlier_copies(&mut buffer);
                if replayed_wal && let Some(recovery) = recover::after_replay(&mut buffer)? {
                    return Ok((buffer, Opened::Recovered(recovery)));
                }
                Ok((buffer, Opened::Clean))
            }
            Err(BufferError::Db { source, .. }) if path.exists() && is_corruption(&source) => {
                let (buffer, recovery) = recover::open_damaged(path, &source)?;
                Ok((buffer, Opened::Recovered(recovery)))
            }
            Err(error) => Err(error),
        }
    }

    /// Whether `error` says the database is damaged (a read hit a bad block), which
    /// [`Buffer::recover_damaged`] deals with, rather than unavailable.
    pub fn is_damage(error: &BufferError) -> bool {
        matches!(error, BufferError::Db { source, .. } if is_corruption(source))
    }

    /// A buffer that turned out damaged while running (a bad block that the open did not
    /// read): it is closed, set aside and recovered exactly like one that cannot be opened,
    /// and this buffer becomes the recovered one. Seqs continue past the damaged buffer's,
    /// so an acknowledgement still on its way for an old seq never marks a new row sent.
    /// If that fails the buffer is [`Buffer::unusable`].
    pub fn recover_damaged(&mut self, error: &BufferError) -> Result<Recovery, BufferError> {
        self.close_for_replacement();
        let recovered = recover::recover_main(
            &self.path,
            &corrupt_path(&self.path),
            error,
            Recovery::default(),
            self.next_seq,
        );
        match recovered {
            Ok((buffer, recovery)) => {
                *self = buffer;
                Ok(recovery)
            }
            Err(error) => {
                self.unusable = Some(format!("recovering the damaged buffer failed: {error}"));
                Err(error)
            }
        }
    }

    /// Closes the database file (so it can be renamed or replaced); until the connection is
    /// replaced the buffer is [`Buffer::unusable`].
    fn close_for_replacement(&mut self) {
        self.unusable = Some("the database is being replaced".to_owned());
        self.appends = None;
        match Connection::open_in_memory() {
            Ok(placeholder) => drop(std::mem::replace(&mut self.conn, placeholder)),
            // Cannot happen short of memory exhaustion; the file then stays open.
            Err(error) => tracing::error!(%error, "cannot close the buffer database"),
        }
    }

    /// Why the buffer cannot go on (its database is gone: a reopen failed), if so. The
    /// worker then stops the agent with this as the error; the next start opens (and if
    /// need be recovers) the file.
    pub fn unusable(&self) -> Option<&str> {
        self.unusable.as_deref()
    }

    fn open_existing(path: &Path) -> Result<Self, BufferError> {
        let db = db_err(path);
        remove_leftover(&compact_path(path));
        let mut conn = connect(path).map_err(db)?;
        migrate(&mut conn, path)?;
        // buffer_state is written before anything is deleted; between those, the newest row
        // says where the sequence is.
        let next_seq: i64 = conn
            .query_row(
                "SELECT greatest((SELECT next_seq FROM buffer_state), (SELECT coalesce(max(seq), 0) + 1 FROM events))",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        let oldest_unsent: Option<i64> = conn
            .query_row("SELECT min(seq) FROM outbox", [], |r| r.get(0))
            .map_err(db)?;
        let next_seq = next_seq as u64;
        let backlog = oldest_unsent
            .map(|start| start as u64..next_seq)
            .into_iter()
            .collect();
        Ok(Self {
            conn,
            path: path.to_owned(),
            next_seq,
            live_next: next_seq,
            backlog,
            live_turn: true,
            quarantined: 0,
            unusable: None,
            fresh: fresh::Fresh::new(fresh::CAPACITY_BYTES),
            rows_read_from_file: 0,
            appends: None,
            uploads_superseded: 0,
            uploads_dropped_with_events: 0,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits `events` in one transaction and returns their seqs. Either all are stored or
    /// none is.
    pub fn append<M: Stored>(
        &mut self,
        events: &[M],
        now_ms: i64,
    ) -> Result<Vec<u64>, BufferError> {
        self.append_with_uploads(events, &[], now_ms)
    }

    /// [`Self::append`], with the snapshot uploads some of them ask for (`uploads[i]` for
    /// `events[i]`; missing ones ask for none) in the same transaction.
    pub fn append_with_uploads<M: Stored>(
        &mut self,
        events: &[M],
        uploads: &[Option<UploadRequest>],
        now_ms: i64,
    ) -> Result<Vec<u64>, BufferError> {
        let first = self.next_seq;
        let out = events
            .iter()
            .zip(first..)
            .map(|(event, seq)| {
                event.encode(seq).map_err(|e| BufferError::Encode {
                    event_id: event.id(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let captured = events.iter().map(|e| e.filed_at().as_millis());
        let uploads: Vec<(u64, &UploadRequest)> = uploads
            .iter()
            .zip(first..)
            .filter_map(|(upload, seq)| upload.as_ref().map(|u| (seq, u)))
            .collect();
        self.insert(out.iter().zip(captured), &uploads, now_ms)?;
        let next = self.next_seq;
        self.fresh.extend(out);
        Ok((first..next).collect())
    }

    /// Commits rows in one transaction, into the history and the outbox. Their seqs must
    /// continue the sequence from `next_seq`, which moves past them.
    ///
    /// Every DuckDB statement is parsed, bound and planned afresh unless it is prepared, and
    /// an appender's flush is such a statement: a group of [`SMALL_GROUP`] rows or fewer (the
    /// steady case, a few events per commit) goes through cached prepared statements, bigger
    /// ones (catching up, recovery) through appenders.
    fn insert<'a>(
        &mut self,
        rows: impl Iterator<Item = (&'a Outgoing, i64)>,
        uploads: &[(u64, &UploadRequest)],
        now_ms: i64,
    ) -> Result<(), BufferError> {
        let rows: Vec<(&Outgoing, i64)> = rows.collect();
        let Some(last) = rows.last().map(|(row, _)| row.seq) else {
            return Ok(());
        };
        let superseded = if rows.len() <= SMALL_GROUP {
            self.insert_prepared(&rows, uploads, now_ms)
        } else {
            self.insert_appended(&rows, uploads, now_ms)
        }
        .map_err(db_err(&self.path))?;
        self.uploads_superseded += superseded;
        self.next_seq = self.next_seq.max(last + 1);
        Ok(())
    }

    /// [`Self::insert`] through appenders, in a transaction.
    fn insert_appended(
        &mut self,
        rows: &[(&Outgoing, i64)],
        uploads: &[(u64, &UploadRequest)],
        now_ms: i64,
    ) -> duckdb::Result<u64> {
        let tx = self.conn.transaction()?;
        {
            let mut history = tx.appender("events")?;
            let mut outbox = tx.appender("outbox")?;
            for &(row, captured) in rows {
                let (seq, payload) = (row.seq as i64, row.payload.as_ref());
                let content_type = row.content_type.to_string();
                let day = day_of(captured);
                history.append_row(params![
                    seq,
                    row.head.event_id.to_string(),
                    row.head.camera_id,
                    captured,
                    day,
                    now_ms,
                    payload,
                    content_type,
                ])?;
                outbox.append_row(params![seq, captured, day, payload, content_type])?;
            }
            history.flush()?;
            outbox.flush()?;
        }
        let superseded = uploads::queue(&tx, uploads, now_ms)?;
        tx.commit()?;
        Ok(superseded)
    }

    /// [`Self::insert`] through cached prepared statements: rows go in multi-row `INSERT`s
    /// of 16, 8, 4, 2 or 1 rows (a statement costs about the same whatever its row count),
    /// so a group takes a handful of statements at most and the cache holds ten of them.
    fn insert_prepared(
        &mut self,
        rows: &[(&Outgoing, i64)],
        uploads: &[(u64, &UploadRequest)],
        now_ms: i64,
    ) -> duckdb::Result<u64> {
        use duckdb::ToSql;
        if self.appends.is_none() {
            let conn = self.conn.try_clone()?;
            conn.execute_batch("SET enable_optimizer = false")?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            self.appends = Some(conn);
        }
        let conn = self.appends.as_ref().expect("made above");
        // BEGIN and COMMIT cost less as plain statements than prepared ones (a prepared
        // statement's execution is planned as an EXECUTE).
        conn.execute_batch("BEGIN TRANSACTION")?;
        let written = (|| {
            let mut rest = rows;
            while !rest.is_empty() {
                let n = 1 << rest.len().min(MAX_ROWS_PER_INSERT).ilog2();
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let owned: Vec<(i64, String, i32, String, &[u8])> = chunk
                    .iter()
                    .map(|(row, captured)| {
                        (
                            row.seq as i64,
                            row.head.event_id.to_string(),
                            day_of(*captured),
                            row.content_type.to_string(),
                            row.payload.as_ref(),
                        )
                    })
                    .collect();
                let mut history: Vec<&dyn ToSql> = Vec::with_capacity(8 * n);
                let mut outbox: Vec<&dyn ToSql> = Vec::with_capacity(5 * n);
                for ((row, captured), (seq, id, day, content_type, payload)) in
                    chunk.iter().zip(&owned)
                {
                    history.extend([
                        seq as &dyn ToSql,
                        id,
                        &row.head.camera_id,
                        captured,
                        day,
                        &now_ms,
                        payload,
                        content_type,
                    ]);
                    outbox.extend([seq as &dyn ToSql, captured, day, payload, content_type]);
                }
                // A parameter's value must have the type it was prepared with, or DuckDB
                // prepares the statement again on every execution: the id is bound as text.
                conn.prepare_cached(&values_sql(
                    "INSERT INTO events (seq, event_id, camera_id, captured_ms, day, created_ms, payload, content_type) VALUES ",
                    "(?, CAST(CAST(? AS VARCHAR) AS UUID), ?, ?, ?, ?, ?, ?)",
                    n,
                ))?
                .execute(duckdb::params_from_iter(history))?;
                conn.prepare_cached(&values_sql(
                    "INSERT INTO outbox (seq, captured_ms, day, payload, content_type) VALUES ",
                    "(?, ?, ?, ?, ?)",
                    n,
                ))?
                .execute(duckdb::params_from_iter(outbox))?;
            }
            let superseded = uploads::queue(conn, uploads, now_ms)?;
            conn.execute_batch("COMMIT")?;
            Ok(superseded)
        })();
        if written.is_err() {
            // Nothing of the group stays (a failed COMMIT has rolled back already, and then
            // this fails harmlessly).
            let _ = conn.execute_batch("ROLLBACK");
        }
        written
    }

    /// Stores payloads recovered from a damaged buffer or the day logs as new unsent rows
    /// (new seqs: backlog, since nothing reads them before the buffer is handed out).
    /// Returns how many were stored.
    fn insert_recovered(
        &mut self,
        rows: Vec<(Outgoing, i64)>,
        now_ms: i64,
    ) -> Result<u64, BufferError> {
        let first = self.next_seq;
        let rows: Vec<(Outgoing, i64)> = rows
            .into_iter()
            .zip(first..)
            .map(|((row, captured), seq)| (Outgoing { seq, ..row }, captured))
            .collect();
        self.insert(
            rows.iter().map(|(row, captured)| (row, *captured)),
            &[],
            now_ms,
        )?;
        let stored = rows.len() as u64;
        self.push_backlog(first..first + stored);
        self.live_next = self.next_seq;
        Ok(stored)
    }

    /// Makes new seqs start at `floor` or later (recorded, so it survives a restart).
    fn continue_seqs_from(&mut self, floor: u64) -> Result<(), BufferError> {
        if floor > self.next_seq {
            self.next_seq = floor;
            self.live_next = floor;
            self.persist_next_seq()?;
        }
        Ok(())
    }

    /// The ids of the events in the history captured at or after `since_ms` (all with `None`),
    /// and of the events `drop_oldest` deleted: what a recovery must not offer again.
    fn event_ids(&self, since_ms: Option<i64>) -> Result<HashSet<EventId>, BufferError> {
        let db = db_err(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT CAST(event_id AS VARCHAR) FROM events WHERE captured_ms >= ? UNION ALL SELECT CAST(event_id AS VARCHAR) FROM dropped",
            )
            .map_err(db)?;
        let ids = stmt
            .query_map(params![since_ms.unwrap_or(i64::MIN)], |r| {
                r.get::<_, String>(0)
            })
            .map_err(db)?;
        let mut out = HashSet::new();
        for id in ids {
            // DuckDB's UUID text always parses; a failure would only cost a duplicate.
            if let Ok(id) = id.map_err(db)?.parse() {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// The newest capture time in the history.
    fn newest_capture_ms(&self) -> Result<Option<i64>, BufferError> {
        self.conn
            .query_row("SELECT max(captured_ms) FROM events", [], |r| r.get(0))
            .map_err(db_err(&self.path))
    }

    /// The next page to publish: up to `limit` events, live and backlog pages in turn.
    /// Each unsent event is returned once per open; an empty page means nothing is waiting.
    pub fn next_page(&mut self, limit: usize) -> Result<Vec<Outgoing>, BufferError> {
        let limit = limit.max(1);
        // A live lag longer than two pages that memory no longer holds is an outage's
        // backlog: hand what only the file holds to the backlog cursor, so the newest events
        // are not stuck behind it. A lag memory holds (a burst) goes out from memory, in
        // order, rather than being read back from the file (a query and a decompression for
        // rows memory has).
        let lag = self.next_seq - self.live_next;
        if lag > 2 * limit as u64 && !self.fresh.holds_from(self.live_next) {
            let newest_page = self.next_seq - limit as u64;
            let split = self
                .fresh
                .first_seq()
                .map_or(newest_page, |first| first.min(newest_page));
            self.push_backlog(self.live_next..split);
            self.live_next = split;
        }
        let live_waiting = self.live_next < self.next_seq;
        let take_live = live_waiting && (self.live_turn || self.backlog.is_empty());
        self.live_turn = !take_live;
        if take_live {
            let rows = self.read_live(limit)?;
            if !rows.is_empty() {
                return Ok(rows);
            }
        }
        while let Some(range) = self.backlog.front().cloned() {
            let page = self.read(range.start, range.end, limit)?;
            match page.resume_at {
                Some(next) if next < range.end => {
                    if let Some(front) = self.backlog.front_mut() {
                        front.start = next;
                    }
                }
                _ => {
                    self.backlog.pop_front();
                }
            }
            if !page.rows.is_empty() {
                return Ok(page.rows);
            }
        }
        // The backlog had nothing left (rows dropped meanwhile): serve live rows now rather
        // than an empty page.
        if !take_live && self.live_next < self.next_seq {
            return self.read_live(limit);
        }
        Ok(Vec::new())
    }

    /// The next live page (from memory when it can) and the live cursor moved past it.
    fn read_live(&mut self, limit: usize) -> Result<Vec<Outgoing>, BufferError> {
        if let Some(rows) = self.fresh_page(limit) {
            self.live_next = rows.last().map_or(self.next_seq, |s| s.seq + 1);
            return Ok(rows);
        }
        let page = self.read(self.live_next, self.next_seq, limit)?;
        self.live_next = page.resume_at.unwrap_or(self.next_seq);
        Ok(page.rows)
    }

    /// A live page from memory, if the cache holds the live cursor's next row.
    fn fresh_page(&mut self, limit: usize) -> Option<Vec<Outgoing>> {
        self.fresh.forget_before(self.live_next);
        if self.fresh.first_seq()? != self.live_next {
            return None;
        }
        Some(self.fresh.take(limit))
    }

    /// Rows the publisher's pages read from the file (the backlog, or live rows memory no
    /// longer held) since the last call.
    pub fn take_rows_read_from_file(&mut self) -> u64 {
        std::mem::take(&mut self.rows_read_from_file)
    }

    /// Reserves `n` track ids: the range is committed and checkpointed into the main file
    /// before it is returned (a WAL that replays only in part cannot take it back), so no id
    /// of it is handed out again, whatever happens to the agent or the clock.
    pub fn reserve_track_ids(&mut self, n: u64) -> Result<Range<u64>, BufferError> {
        let db = db_err(&self.path);
        let start: i64 = self
            .conn
            .query_row("SELECT next_track_id FROM buffer_state", [], |r| r.get(0))
            .map_err(db)?;
        let start = start.max(1) as u64;
        let end = start.saturating_add(n.max(1));
        self.conn
            .execute(
                "UPDATE buffer_state SET next_track_id = ?",
                params![end as i64],
            )
            .map_err(db)?;
        if let Err(error) = self.conn.execute_batch("CHECKPOINT") {
            // The reservation is committed; a recovery skips past what a lost WAL held.
            tracing::warn!(%error, "checkpointing a track id reservation failed");
        }
        Ok(start..end)
    }

    /// Makes new track ids start at `floor` or later (a recovered buffer continues past the
    /// damaged one's).
    fn continue_track_ids_from(&mut self, floor: u64) -> Result<(), BufferError> {
        self.conn
            .execute(
                "UPDATE buffer_state SET next_track_id = greatest(next_track_id, ?)",
                params![floor as i64],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    /// Records where the sequence is, before rows are deleted (which could remove the newest).
    fn persist_next_seq(&self) -> Result<(), BufferError> {
        self.conn
            .execute(
                "UPDATE buffer_state SET next_seq = ?",
                params![self.next_seq as i64],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    fn push_backlog(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        match self.backlog.back_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.backlog.push_back(range),
        }
    }

    /// Up to `limit` unsent rows with seqs in `from..to`, in seq order. A row whose payload
    /// cannot be read is quarantined, not returned, and paging goes on after it.
    fn read(&mut self, from: u64, to: u64, limit: usize) -> Result<Page, BufferError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                &format!("SELECT seq, coalesce(content_type, '{V1_STORED}'), payload FROM outbox WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?"),
            )
            .map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map(params![from as i64, to as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(db_err(&self.path))?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let mut read = 0;
        let mut last = None;
        for row in rows {
            let (seq, content_type, payload) = row.map_err(db_err(&self.path))?;
            read += 1;
            last = Some(seq as u64);
            match Outgoing::from_stored(seq as u64, &content_type, payload) {
                Ok(outgoing) => out.push(outgoing),
                Err(error) => bad.push((seq as u64, error.to_string())),
            }
        }
        drop(stmt);
        self.rows_read_from_file += read as u64;
        if !bad.is_empty() {
            self.quarantine(&bad)?;
        }
        // A full page may have more after it; a short one ended the range.
        let resume_at = last.filter(|_| read == limit).map(|last| last + 1);
        Ok(Page {
            rows: out,
            resume_at,
        })
    }

    /// Moves unreadable rows out of the outbox into `quarantine` (one transaction), so the
    /// rows after them are published and they are kept for an operator.
    fn quarantine(&mut self, bad: &[(u64, String)]) -> Result<(), BufferError> {
        let db = db_err(&self.path);
        let tx = self.conn.transaction().map_err(db)?;
        for (seq, reason) in bad {
            tracing::error!(seq, reason, path = %self.path.display(), "quarantining an unsent buffer row that cannot be read (damaged on disk?); it is kept in the buffer's quarantine table, see docs/edge.md");
            tx.execute(
                "INSERT INTO quarantine SELECT seq, captured_ms, content_type, payload, ?, epoch_ms(now()) FROM outbox WHERE seq = ?",
                params![reason, *seq as i64],
            )
            .map_err(db)?;
            tx.execute("DELETE FROM outbox WHERE seq = ?", params![*seq as i64])
                .map_err(db)?;
            // Its picture would show an event the cloud never gets.
            self.uploads_dropped_with_events += tx
                .execute(
                    "UPDATE uploads SET state = 'dropped', reason = 'event quarantined', done_ms = epoch_ms(now()) WHERE seq = ? AND state = 'pending'",
                    params![*seq as i64],
                )
                .map_err(db)? as u64;
        }
        tx.commit().map_err(db)?;
        self.quarantined += bad.len() as u64;
        Ok(())
    }

    /// Stores rows another buffer file quarantined (a recovered copy's) in this one's
    /// quarantine, as they were; they were counted when they were quarantined, so they are
    /// not counted again. Returns how many.
    fn keep_quarantined(&mut self, rows: &[recover::QuarantinedRow]) -> Result<u64, BufferError> {
        let db = db_err(&self.path);
        let tx = self.conn.transaction().map_err(db)?;
        {
            let mut insert = tx
                .prepare("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?)")
                .map_err(db)?;
            for row in rows {
                insert
                    .execute(params![
                        row.seq,
                        row.captured_ms,
                        row.content_type,
                        row.payload,
                        row.reason,
                        row.quarantined_ms
                    ])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        Ok(rows.len() as u64)
    }

    /// Rows quarantined since the last call.
    pub fn take_quarantined(&mut self) -> u64 {
        std::mem::take(&mut self.quarantined)
    }

    /// Marks events as acknowledged by JetStream: they leave the outbox. Unknown seqs (rows
    /// already dropped) are ignored.
    pub fn mark_sent(&mut self, seqs: &[u64]) -> Result<(), BufferError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut seqs = seqs.to_vec();
        seqs.sort_unstable();
        seqs.dedup();
        // Acks arrive mostly in order: one BETWEEN per run keeps the statement short.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for seq in seqs {
            match runs.last_mut() {
                Some((_, end)) if *end + 1 == seq => *end = seq,
                _ => runs.push((seq, seq)),
            }
        }
        let db = db_err(&self.path);
        if runs.len() <= FEW_RUNS {
            // The steady case: acks in order, a prepared statement per run.
            let mut delete = self
                .conn
                .prepare_cached("DELETE FROM outbox WHERE seq BETWEEN ? AND ?")
                .map_err(db)?;
            for (a, b) in runs {
                delete.execute(params![a as i64, b as i64]).map_err(db)?;
            }
            return Ok(());
        }
        let predicate = runs
            .iter()
            .map(|(a, b)| format!("seq BETWEEN {a} AND {b}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        self.conn
            .execute(&format!("DELETE FROM outbox WHERE {predicate}"), [])
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    /// Row counts and the age of the backlog.
    pub fn stats(&self) -> Result<BufferStats, BufferError> {
        self.conn
            .query_row(
                "SELECT (SELECT count(*) FROM events), count(*), min(captured_ms), (SELECT count(*) FROM quarantine) FROM outbox",
                [],
                |r| {
                    Ok(BufferStats {
                        rows: r.get::<_, i64>(0)? as u64,
                        unsent: r.get::<_, i64>(1)? as u64,
                        oldest_unsent_ms: r.get(2)?,
                        quarantined: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
            .map_err(db_err(&self.path))
    }

    /// The newest `limit` events, newest first, with whether each was sent.
    pub fn recent(&self, limit: usize) -> Result<Vec<RecentEvent>, BufferError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                &format!("SELECT seq, coalesce(content_type, '{V1_STORED}'), payload, seq NOT IN (SELECT seq FROM outbox) FROM events WHERE coalesce(content_type, '') NOT LIKE 'application/vnd.sightline.track.%' ORDER BY seq DESC LIMIT ?"),
            )
            .map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .map_err(db_err(&self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, content_type, payload, sent) = row.map_err(db_err(&self.path))?;
            match crate::outbox::decode_stored(&content_type, &payload) {
                Ok(event) => out.push(RecentEvent {
                    seq: seq as u64,
                    sent,
                    event,
                }),
                Err(error) => tracing::warn!(seq, %error, "skipping an undecodable buffer row"),
            }
        }
        Ok(out)
    }

    /// The UTC days that have rows, oldest first.
    pub fn days(&self) -> Result<Vec<i32>, BufferError> {
        let db = db_err(&self.path);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT day FROM events ORDER BY day")
            .map_err(db)?;
        let days = stmt.query_map([], |r| r.get(0)).map_err(db)?;
        days.collect::<Result<_, _>>().map_err(db)
    }

    /// Deletes the day's sent rows (never unsent ones); returns how many went.
    pub fn delete_sent_day(&mut self, day: i32) -> Result<u64, BufferError> {
        self.persist_next_seq()?;
        let n = self
            .conn
            .execute(
                "DELETE FROM events WHERE day = ? AND seq NOT IN (SELECT seq FROM outbox WHERE day = ?)",
                params![day, day],
            )
            .map_err(db_err(&self.path))?;
        // The day's logs go with it: nothing is left that could bring its dropped events back.
        self.conn
            .execute("DELETE FROM dropped WHERE day = ?", params![day])
            .map_err(db_err(&self.path))?;
        Ok(n as u64)
    }

    /// Deletes the `count` oldest unsent rows not yet handed to the publisher (the
    /// `drop_oldest` full-disk policy) and returns them for the ERROR log. Rows the publisher
    /// holds (in flight, or waiting to be retried) are left alone: one of them may yet be
    /// acknowledged, and an event must never count as both dropped and sent.
    pub fn drop_oldest_unsent(&mut self, count: u64) -> Result<Vec<DroppedRow>, BufferError> {
        self.persist_next_seq()?;
        // Dropped events must not be published from memory either.
        self.fresh.clear();
        // Not handed out yet: the backlog's ranges and everything from the live cursor on.
        let waiting = self
            .backlog
            .iter()
            .map(|r| format!("seq BETWEEN {} AND {}", r.start, r.end.saturating_sub(1)))
            .chain([format!("seq >= {}", self.live_next)])
            .collect::<Vec<_>>()
            .join(" OR ");
        let db = db_err(&self.path);
        let tx = self.conn.transaction().map_err(db)?;
        let dropped = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT o.seq, CAST(e.event_id AS VARCHAR), e.camera_id FROM outbox o JOIN events e USING (seq) WHERE {waiting} ORDER BY o.seq LIMIT ?"
                ))
                .map_err(db)?;
            let rows = stmt
                .query_map(params![count as i64], |r| {
                    Ok(DroppedRow {
                        seq: r.get::<_, i64>(0)? as u64,
                        event_id: r.get(1)?,
                        camera_id: r.get(2)?,
                    })
                })
                .map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)?
        };
        if let Some(last) = dropped.last() {
            // Their ids stay, so a recovery from the day logs does not bring them back.
            tx.execute(
                &format!("INSERT INTO dropped SELECT event_id, day, epoch_ms(now()) FROM events WHERE seq IN (SELECT seq FROM outbox WHERE seq <= ? AND ({waiting}))"),
                params![last.seq as i64],
            )
            .map_err(db)?;
            tx.execute(
                &format!("DELETE FROM events WHERE seq IN (SELECT seq FROM outbox WHERE seq <= ? AND ({waiting}))"),
                params![last.seq as i64],
            )
            .map_err(db)?;
            tx.execute(
                &format!("DELETE FROM outbox WHERE seq <= ? AND ({waiting})"),
                params![last.seq as i64],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(dropped)
    }

    /// Bytes of the database file and its WAL.
    pub fn file_bytes(&self) -> u64 {
        [self.path.clone(), wal_path(&self.path)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Writes the WAL into the database file.
    pub fn checkpoint(&mut self) -> Result<(), BufferError> {
        self.conn
            .execute_batch("CHECKPOINT")
            .map_err(db_err(&self.path))
    }

    /// Gives deleted rows' space back to the disk. DuckDB reuses freed blocks but never
    /// shrinks its file (and frees nothing while a row group is only partly deleted), so
    /// the buffer is copied into a new file which then replaces the old one (an atomic
    /// rename; a crash leaves either the old file or the new one). Costs a copy of what is
    /// left: rotation calls it once per rotation. Returns the file size before and after.
    pub fn compact(&mut self) -> Result<(u64, u64), BufferError> {
        self.checkpoint()?;
        let before = self.file_bytes();
        let tmp = compact_path(&self.path);
        remove_leftover(&tmp);
        let current: String = self
            .conn
            .query_row("SELECT current_database()", [], |r| r.get(0))
            .map_err(db_err(&self.path))?;
        let tmp_sql = tmp.to_string_lossy().replace('\'', "''");
        let copied = self.conn.execute_batch(&format!(
            "DETACH DATABASE IF EXISTS sightline_compact; ATTACH '{tmp_sql}' AS sightline_compact; COPY FROM DATABASE \"{current}\" TO sightline_compact; CHECKPOINT sightline_compact; DETACH sightline_compact;"
        ));
        if let Err(source) = copied {
            let _ = self
                .conn
                .execute_batch("DETACH DATABASE IF EXISTS sightline_compact");
            remove_leftover(&tmp);
            return Err(db_err(&self.path)(source));
        }
        // Close the old file before replacing it; both files must be complete without
        // their WALs, or the rename could lose or replay writes.
        self.close_for_replacement();
        let wal_left = wal_path(&self.path).exists() || wal_path(&tmp).exists();
        let renamed = if wal_left {
            remove_leftover(&tmp);
            Err("a WAL file was left after closing".to_owned())
        } else {
            std::fs::rename(&tmp, &self.path).map_err(|e| e.to_string())
        };
        // The buffer never runs on the placeholder: the file at the path (the copy, or the
        // old file if the rename failed) opens, or the buffer is unusable and the agent
        // stops (to be restarted by its supervisor).
        let reopened = connect(&self.path).map_err(db_err(&self.path));
        match reopened {
            Ok(conn) => {
                self.conn = conn;
                self.unusable = None;
            }
            Err(error) => {
                self.unusable = Some(format!("reopening after compaction failed: {error}"));
                return Err(error);
            }
        }
        renamed.map_err(|message| BufferError::Other {
            path: self.path.clone(),
            message: format!("compaction kept the old file: {message}"),
        })?;
        Ok((before, self.file_bytes()))
    }
}

/// A page read from the outbox.
struct Page {
    rows: Vec<Outgoing>,
    /// Where the next read of the range starts, if the page was full (rows may follow).
    resume_at: Option<u64>,
}

/// Removes a compaction copy (and its WAL) that an earlier attempt or a crash left behind.
/// Opens the database at `path` as the buffer uses it.
fn connect(path: &Path) -> duckdb::Result<Connection> {
    let conn = Connection::open(path)?;
    // Every statement here is small; one thread saves waking a pool for each.
    conn.execute_batch("SET threads = 1")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// `INSERT ... VALUES` with `n` rows of `row`.
fn values_sql(insert: &str, row: &str, n: usize) -> String {
    let mut sql = String::with_capacity(insert.len() + n * (row.len() + 2));
    sql.push_str(insert);
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql
}

fn remove_leftover(tmp: &Path) {
    let _ = std::fs::remove_file(tmp);
    let _ = std::fs::remove_file(wal_path(tmp));
}

/// Wraps a DuckDB error with the file it happened on.
fn db_err(path: &Path) -> impl Fn(duckdb::Error) -> BufferError + Copy + '_ {
    move |source| BufferError::Db {
        path: path.to_owned(),
        source,
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), BufferError> {
    let db = db_err(path);
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_ms BIGINT NOT NULL)",
    )
    .map_err(db)?;
    let current: Option<i32> = conn
        .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db)?
        .flatten();
    let current = current.unwrap_or(0) as u32;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(BufferError::TooNew {
            path: path.to_owned(),
            found: current,
            known,
        });
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction().map_err(db)?;
        let applied = tx.execute_batch(sql).and_then(|()| {
            tx.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, epoch_ms(now()))",
                params![version, name],
            )
        });
        if let Err(source) = applied {
            return Err(BufferError::Other {
                path: path.to_owned(),
                message: format!("migration {version:04}_{name} failed: {source}"),
            });
        }
        tx.commit().map_err(db)?;
        tracing::info!(path = %path.display(), version, name, "applied buffer migration");
    }
    Ok(())
}

/// Whether an open error means the file is not a usable database, which moving it aside
/// fixes. Anything else (no space, no permission, a lock held by another agent, a file from
/// a newer DuckDB) is an error for the operator, and the file stays where it is.
fn is_corruption(error: &duckdb::Error) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    [
        "not a valid duckdb database",
        "corrupt",
        "checksum",
        "failed to read database header",
        "invalid database",
        "could not read enough bytes",
        // Whatever DuckDB says went wrong while replaying the WAL (a garbled length gives an
        // "INTERNAL Error ... Requested allocation size"), the WAL is what is damaged.
        "failure while replaying wal",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// `path` with `suffix` appended to its file name (`buffer.duckdb` -> `buffer.duckdb.wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// DuckDB's write-ahead log is the database file's name with this after it.
const WAL_SUFFIX: &str = ".wal";

fn wal_path(path: &Path) -> PathBuf {
    with_suffix(path, WAL_SUFFIX)
}

fn compact_path(path: &Path) -> PathBuf {
    with_suffix(path, ".compact")
}

/// What an unreadable buffer file moved aside gets after its name, before the unix seconds.
const CORRUPT_SUFFIX: &str = ".corrupt-";

/// A name no earlier copy has: the current second, or the next free one within ten (two
/// recoveries in one second must not overwrite each other's copy).
fn corrupt_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let named = |secs: u64| with_suffix(path, &format!("{CORRUPT_SUFFIX}{secs}"));
    (secs..secs + 10)
        .map(named)
        .find(|p| {
            [
                p.clone(),
                wal_path(p),
                with_suffix(p, recover::MARKER_SUFFIX),
            ]
            .iter()
            .all(|f| !f.exists())
        })
        .unwrap_or_else(|| named(secs))
}

/// The files set aside beside the buffer at `path` as unreadable ([`corrupt_path`]), their
/// WALs and their recovery markers, each with the day ([`day_of`]) it was set aside on.
pub fn moved_aside(path: &Path) -> Vec<(i32, PathBuf)> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(prefix) = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| format!("{n}{CORRUPT_SUFFIX}"))
    else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let rest = name.to_str()?.strip_prefix(&prefix)?;
            let secs = [WAL_SUFFIX, recover::MARKER_SUFFIX]
                .iter()
                .find_map(|suffix| rest.strip_suffix(suffix))
                .unwrap_or(rest);
            let secs: i64 = secs.parse().ok()?;
            Some((day_of(secs.saturating_mul(1000)), e.path()))
        })
        .collect()
}
