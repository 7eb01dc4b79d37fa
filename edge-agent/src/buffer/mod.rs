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

#[cfg(test)]
mod tests;
pub mod worker;

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};

use duckdb::{Connection, OptionalExt, params};
use sightline_shared::DetectionEvent;

use crate::outbox::Outgoing;

/// The migrations, in order. Each runs once, in its own transaction.
const MIGRATIONS: &[(u32, &str, &str)] = &[(
    1,
    "buffer",
    include_str!("../../migrations/0001_buffer.sql"),
)];

const MS_PER_DAY: i64 = 86_400_000;

/// UTC day number (days since 1970-01-01) of a millisecond timestamp.
pub fn day_of(ms: i64) -> i32 {
    ms.div_euclid(MS_PER_DAY) as i32
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
    path: PathBuf,
    next_seq: u64,
    /// Next seq the live cursor reads.
    live_next: u64,
    /// Unsent ranges older than the live cursor, oldest first, each read front to back.
    backlog: VecDeque<Range<u64>>,
    /// Whose turn it is when both live and backlog rows are waiting.
    live_turn: bool,
    /// Undecodable rows skipped since [`Buffer::take_undecodable`].
    undecodable: u64,
    /// The latest appends, kept in memory so that live pages need no query (every DuckDB
    /// statement costs milliseconds of planning; at a steady rate this halves the CPU per
    /// event). Contiguous seqs; cleared whenever unsent rows are deleted.
    fresh: VecDeque<Outgoing>,
}

/// Most recent appends kept in memory for live pages.
const FRESH_CACHE: usize = 4096;

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
    /// The file could not be read as a database and was moved to this path; a fresh buffer
    /// was started.
    MovedAside(PathBuf),
}

impl Buffer {
    /// Opens (or creates) the buffer at `path` and applies pending migrations.
    ///
    /// A file DuckDB cannot open as a database is moved aside (with its WAL) to
    /// `<path>.corrupt-<unix seconds>` and a fresh buffer is started, so a damaged file never
    /// becomes a crash loop; the caller logs that at ERROR. Errors that moving aside cannot
    /// fix (a directory that cannot be written, a file from a newer agent, a failing
    /// migration) are returned.
    pub fn open(path: &Path) -> Result<(Self, Opened), BufferError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| BufferError::Other {
                path: path.to_owned(),
                message: format!("cannot create the directory {}: {e}", dir.display()),
            })?;
        }
        match Self::open_existing(path) {
            Ok(buffer) => Ok((buffer, Opened::Clean)),
            Err(BufferError::Db { source, .. }) if path.exists() && is_corruption(&source) => {
                let aside = corrupt_path(path);
                move_aside(path, &aside)?;
                let buffer = Self::open_existing(path)?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %source,
                    "the buffer database could not be opened; moved it aside and started a fresh one (its unsent events are in the moved file)"
                );
                Ok((buffer, Opened::MovedAside(aside)))
            }
            Err(error) => Err(error),
        }
    }

    fn open_existing(path: &Path) -> Result<Self, BufferError> {
        let db = db_err(path);
        remove_leftover(&compact_path(path));
        let mut conn = Connection::open(path).map_err(db)?;
        // Every statement here is small; one thread saves waking a pool for each.
        conn.execute_batch("SET threads = 1").map_err(db)?;
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
            undecodable: 0,
            fresh: VecDeque::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits `events` in one transaction and returns their seqs. Either all are stored or
    /// none is.
    pub fn append(
        &mut self,
        events: &[DetectionEvent],
        now_ms: i64,
    ) -> Result<Vec<u64>, BufferError> {
        let first = self.next_seq;
        let out = events
            .iter()
            .zip(first..)
            .map(|(event, seq)| {
                Outgoing::encode(seq, event).map_err(|e| BufferError::Encode {
                    event_id: event.event_id.to_string(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let db = db_err(&self.path);
        let tx = self.conn.transaction().map_err(db)?;
        {
            let mut history = tx.appender("events").map_err(db)?;
            let mut outbox = tx.appender("outbox").map_err(db)?;
            for (event, row) in events.iter().zip(&out) {
                let (seq, payload) = (row.seq as i64, row.payload.as_ref());
                let captured = event.captured_at.as_millis();
                let day = day_of(captured);
                history
                    .append_row(params![
                        seq,
                        event.event_id.to_string(),
                        event.camera_id,
                        captured,
                        day,
                        now_ms,
                        payload,
                    ])
                    .map_err(db)?;
                outbox
                    .append_row(params![seq, captured, day, payload])
                    .map_err(db)?;
            }
            history.flush().map_err(db)?;
            outbox.flush().map_err(db)?;
        }
        let next = first + events.len() as u64;
        tx.commit().map_err(db)?;
        self.next_seq = next;
        self.fresh.extend(out);
        while self.fresh.len() > FRESH_CACHE {
            self.fresh.pop_front();
        }
        Ok((first..next).collect())
    }

    /// The next page to publish: up to `limit` events, live and backlog pages in turn.
    /// Each unsent event is returned once per open; an empty page means nothing is waiting.
    pub fn next_page(&mut self, limit: usize) -> Result<Vec<Outgoing>, BufferError> {
        let limit = limit.max(1);
        // A live lag longer than a page is an outage's backlog: hand it to the backlog
        // cursor so the newest events are not stuck behind it.
        let lag = self.next_seq - self.live_next;
        if lag > 2 * limit as u64 {
            let split = self.next_seq - limit as u64;
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
            let rows = self.read(range.start, range.end, limit)?;
            let rows_were_read = !rows.is_empty();
            match rows.last() {
                Some(last) if rows.len() == limit && last.seq + 1 < range.end => {
                    if let Some(front) = self.backlog.front_mut() {
                        front.start = last.seq + 1;
                    }
                }
                _ => {
                    self.backlog.pop_front();
                }
            }
            if rows_were_read {
                return Ok(rows);
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
        let rows = match self.fresh_page(limit) {
            Some(rows) => rows,
            None => self.read(self.live_next, self.next_seq, limit)?,
        };
        self.live_next = rows.last().map_or(self.next_seq, |s| s.seq + 1);
        Ok(rows)
    }

    /// A live page from memory, if the cache holds the live cursor's next row.
    fn fresh_page(&mut self, limit: usize) -> Option<Vec<Outgoing>> {
        while self.fresh.front().is_some_and(|s| s.seq < self.live_next) {
            self.fresh.pop_front();
        }
        if self.fresh.front()?.seq != self.live_next {
            return None;
        }
        let n = limit.min(self.fresh.len());
        Some(self.fresh.drain(..n).collect())
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

    fn read(&mut self, from: u64, to: u64, limit: usize) -> Result<Vec<Outgoing>, BufferError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, payload FROM outbox WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?",
            )
            .map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map(params![from as i64, to as i64, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(db_err(&self.path))?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for row in rows {
            let (seq, payload) = row.map_err(db_err(&self.path))?;
            match Outgoing::from_payload(seq as u64, payload) {
                Ok(outgoing) => out.push(outgoing),
                Err(error) => {
                    tracing::error!(seq, %error, path = %self.path.display(), "dropping a buffer row that cannot be decoded (damaged on disk?)");
                    bad.push(seq as u64);
                }
            }
        }
        drop(stmt);
        if !bad.is_empty() {
            // Out of the outbox, so it is never offered again and rotation may remove it.
            self.mark_sent(&bad)?;
            self.undecodable += bad.len() as u64;
        }
        Ok(out)
    }

    /// Rows dropped because they could not be decoded, since the last call.
    pub fn take_undecodable(&mut self) -> u64 {
        std::mem::take(&mut self.undecodable)
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
                "SELECT (SELECT count(*) FROM events), count(*), min(captured_ms) FROM outbox",
                [],
                |r| {
                    Ok(BufferStats {
                        rows: r.get::<_, i64>(0)? as u64,
                        unsent: r.get::<_, i64>(1)? as u64,
                        oldest_unsent_ms: r.get(2)?,
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
                "SELECT seq, payload, seq NOT IN (SELECT seq FROM outbox) FROM events ORDER BY seq DESC LIMIT ?",
            )
            .map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, bool>(2)?,
                ))
            })
            .map_err(db_err(&self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, payload, sent) = row.map_err(db_err(&self.path))?;
            match crate::outbox::decode_stored(&payload) {
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
        Ok(n as u64)
    }

    /// Deletes the `count` oldest unsent rows (the `drop_oldest` full-disk policy) and
    /// returns them for the ERROR log.
    pub fn drop_oldest_unsent(&mut self, count: u64) -> Result<Vec<DroppedRow>, BufferError> {
        self.persist_next_seq()?;
        // Dropped events must not be published from memory either.
        self.fresh.clear();
        let db = db_err(&self.path);
        let tx = self.conn.transaction().map_err(db)?;
        let dropped = {
            let mut stmt = tx
                .prepare(
                    "SELECT o.seq, CAST(e.event_id AS VARCHAR), e.camera_id FROM outbox o JOIN events e USING (seq) ORDER BY o.seq LIMIT ?",
                )
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
            tx.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM outbox WHERE seq <= ?)",
                params![last.seq as i64],
            )
            .map_err(db)?;
            tx.execute(
                "DELETE FROM outbox WHERE seq <= ?",
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
        let placeholder = Connection::open_in_memory().map_err(db_err(&self.path))?;
        drop(std::mem::replace(&mut self.conn, placeholder));
        let wal_left = wal_path(&self.path).exists() || wal_path(&tmp).exists();
        let renamed = if wal_left {
            remove_leftover(&tmp);
            Err("a WAL file was left after closing".to_owned())
        } else {
            std::fs::rename(&tmp, &self.path).map_err(|e| e.to_string())
        };
        self.conn = Connection::open(&self.path).map_err(db_err(&self.path))?;
        renamed.map_err(|message| BufferError::Other {
            path: self.path.clone(),
            message: format!("compaction kept the old file: {message}"),
        })?;
        Ok((before, self.file_bytes()))
    }
}

/// Removes a compaction copy (and its WAL) that an earlier attempt or a crash left behind.
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

fn corrupt_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    with_suffix(path, &format!("{CORRUPT_SUFFIX}{secs}"))
}

/// The files moved aside beside the buffer at `path` as unreadable ([`corrupt_path`]), and
/// their WALs, each with the day ([`day_of`]) it was moved aside on.
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
            let secs: i64 = rest.strip_suffix(WAL_SUFFIX).unwrap_or(rest).parse().ok()?;
            Some((day_of(secs.saturating_mul(1000)), e.path()))
        })
        .collect()
}

fn move_aside(path: &Path, aside: &Path) -> Result<(), BufferError> {
    let other = |e: std::io::Error| BufferError::Other {
        path: path.to_owned(),
        message: format!(
            "cannot move the unreadable file aside to {}: {e}",
            aside.display()
        ),
    };
    std::fs::rename(path, aside).map_err(other)?;
    let wal = wal_path(path);
    if wal.exists() {
        std::fs::rename(&wal, wal_path(aside)).map_err(other)?;
    }
    Ok(())
}
