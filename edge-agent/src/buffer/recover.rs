//! Opening a damaged buffer without losing what it held.
//!
//! A power cut can leave DuckDB's write-ahead log with a torn or garbled entry, or (rarer)
//! damage a block of the main file; DuckDB then refuses the database ("Corrupt WAL file",
//! "computed checksum ... does not match"). What the agent does, in order:
//!
//! 1. It sets the WAL alone aside (`buffer.duckdb.corrupt-<unix seconds>.wal`) and opens the
//!    main file without it: the main file holds everything up to the last checkpoint, so a
//!    bad WAL entry costs no more than what the WAL held. Those events (committed since the
//!    last checkpoint) are recovered from the day logs, whose `events.json` has every
//!    committed event whole: each one newer than the main file's newest capture (less
//!    [`SLACK_MS`]) that the main file does not hold is stored again, unsent.
//! 2. If the main file cannot be opened either, it is set aside too
//!    (`buffer.duckdb.corrupt-<unix seconds>`) and a fresh buffer started. The copy is opened
//!    read-only and read range by range of seqs ([`CHUNK`] rows), so a damaged block costs
//!    only the rows in it: its unsent rows are stored again (a range whose outbox cannot be
//!    read gives its history rows instead, sent or not), and the ids of its sent rows are
//!    noted. Then every event of the day logs the copy does not account for is stored again.
//! 3. What neither the copy nor the day logs gave back is counted (as far as it can be) and
//!    logged at ERROR. A `.recovered` marker beside the copy records the outcome.
//!
//! An event offered again that had been sent already is absorbed downstream by its id
//! (ingest's insert keeps one row per event id). A copy an earlier agent version set aside
//! without recovering it is salvaged at the next open ([`salvage_earlier_copies`]), so
//! rotation, which deletes copies with their day, never deletes unsent events uncounted.

use std::collections::HashSet;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use duckdb::{AccessMode, Config, Connection, params};
use sightline_shared::{DetectionEvent, EventId};

use super::{
    Buffer, BufferError, RECOVERED_TRACK_ID_MARGIN, V1_STORED, corrupt_path, is_corruption,
    moved_aside, wal_path, with_suffix,
};
use crate::daylog::{self, day_of};
use crate::outbox::Outgoing;

/// Day-log events captured up to this long before the main file's newest event are
/// candidates for what a damaged WAL held (cameras commit slightly out of capture order).
pub(super) const SLACK_MS: i64 = 10 * 60 * 1000;
/// Seqs read from a damaged copy per query: a damaged block costs at most its own rows.
pub(super) const CHUNK: i64 = 2048;
/// Stored again in transactions of this many rows.
const BATCH: usize = 4096;
/// Beside a set-aside copy once what it held has been recovered.
pub(super) const MARKER_SUFFIX: &str = ".recovered";

/// What recovery did when the buffer could not be opened as it was.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Recovery {
    /// The files set aside: the WAL alone, or the main file and its WAL.
    pub set_aside: Vec<PathBuf>,
    /// The main file itself could not be opened (not only its WAL).
    pub main_damaged: bool,
    /// Rows read back from the set-aside main file and stored again, unsent.
    pub salvaged: u64,
    /// Events found only in the day logs, stored again, unsent.
    pub from_logs: u64,
    /// Unsent events of the set-aside main file that it could not give back, less what the
    /// day logs gave back: an estimate of the events lost (the day logs also hold what the
    /// WAL held, so the estimate errs low).
    pub unrecoverable: u64,
    /// Ranges of the copy that could not even be counted (0 when everything was counted);
    /// with the whole file unreadable, 1 and nothing else known.
    pub uncounted_ranges: u64,
    /// Rows the copy held in quarantine, moved to the new buffer's quarantine (already
    /// counted as quarantined when they were set aside, so not again): rotation deletes a
    /// copy with its day, and quarantined rows are never deleted.
    pub quarantine_kept: u64,
}

impl Recovery {
    /// Logs the outcome at ERROR: an operator should know about every damaged buffer.
    fn report(&self) {
        tracing::error!(
            set_aside = ?self.set_aside,
            main_damaged = self.main_damaged,
            salvaged = self.salvaged,
            from_day_logs = self.from_logs,
            unrecoverable = self.unrecoverable,
            quarantine_kept = self.quarantine_kept,
            uncounted_ranges = self.uncounted_ranges,
            "recovered a damaged buffer: {} events read back from the damaged file, {} from the day logs, {} lost{}",
            self.salvaged,
            self.from_logs,
            self.unrecoverable,
            if self.uncounted_ranges > 0 {
                " (and parts of the file could not be counted)"
            } else {
                ""
            }
        );
    }
}

/// Opens the buffer at `path`, which failed to open with the corruption `error`.
pub(super) fn open_damaged(
    path: &Path,
    error: &duckdb::Error,
) -> Result<(Buffer, Recovery), BufferError> {
    let aside = corrupt_path(path);
    let mut recovery = Recovery::default();
    let wal = wal_path(path);
    if wal.exists() {
        let wal_aside = wal_path(&aside);
        rename(path, &wal, &wal_aside)?;
        recovery.set_aside.push(wal_aside.clone());
        match Buffer::open_existing(path) {
            Ok(mut buffer) => {
                tracing::error!(path = %path.display(), wal = %wal_aside.display(), %error, "the buffer's write-ahead log could not be replayed (damaged by a power cut?): set it aside and opened the buffer without it; recovering the events it held from the day logs");
                // The lost WAL may have reserved track ids since the last checkpoint.
                let counter = track_counter(&buffer.conn);
                carry_track_ids(&mut buffer, counter)?;
                recovery.from_logs = offer_recent_from_logs(&mut buffer)?;
                finish(&aside, &recovery);
                return Ok((buffer, recovery));
            }
            Err(BufferError::Db { source, .. }) if is_corruption(&source) => {
                tracing::error!(path = %path.display(), error = %source, "the buffer database cannot be opened without its WAL either: setting it aside too");
            }
            Err(other) => {
                // Not damage (a lock, the disk): put the WAL back for the next attempt.
                let _ = std::fs::rename(&wal_aside, &wal);
                return Err(other);
            }
        }
    }
    recover_main(path, &aside, error, recovery, 1)
}

/// Sets the main file at `path` (and any WAL) aside to `aside`, starts a fresh buffer and
/// recovers into it what the copy and the day logs hold.
pub(super) fn recover_main(
    path: &Path,
    aside: &Path,
    error: &dyn std::fmt::Display,
    mut recovery: Recovery,
    seq_floor: u64,
) -> Result<(Buffer, Recovery), BufferError> {
    rename(path, path, aside)?;
    recovery.set_aside.push(aside.to_owned());
    let wal = wal_path(path);
    if wal.exists() {
        let wal_aside = wal_path(aside);
        rename(path, &wal, &wal_aside)?;
        recovery.set_aside.push(wal_aside);
    }
    recovery.main_damaged = true;
    tracing::error!(path = %path.display(), moved_to = %aside.display(), %error, "the buffer database is damaged: set it aside and started a fresh one; recovering its unsent events");
    let mut buffer = Buffer::open_existing(path)?;
    buffer.continue_seqs_from(seq_floor)?;
    let mut salvage = salvage(aside, &mut buffer)?;
    recovery.salvaged = salvage.stored;
    recovery.from_logs = offer_from_logs(&mut buffer, &mut salvage.known, None)?;
    recovery.unrecoverable = salvage.unread.saturating_sub(recovery.from_logs);
    recovery.uncounted_ranges = salvage.uncounted;
    recovery.quarantine_kept = salvage.quarantine_kept;
    finish(aside, &recovery);
    Ok((buffer, recovery))
}

/// After a WAL was replayed: DuckDB takes a WAL entry it cannot read in full for the torn
/// tail of an interrupted write and stops there without an error, so a garbled entry in the
/// middle would cost every commit after it silently. The recent day logs are compared with
/// the buffer and what it lacks is stored again (usually nothing: a plain crash loses no
/// commit). `Some` if anything came back.
pub(super) fn after_replay(buffer: &mut Buffer) -> Result<Option<Recovery>, BufferError> {
    let from_logs = offer_recent_from_logs(buffer)?;
    if from_logs == 0 {
        return Ok(None);
    }
    tracing::error!(path = %buffer.path().display(), events = from_logs, "the buffer's write-ahead log was replayed only in part (damaged by a power cut?): stored the missing events again from the day logs");
    let recovery = Recovery {
        from_logs,
        ..Recovery::default()
    };
    recovery.report();
    Ok(Some(recovery))
}

/// Stores again the day-log events captured since the buffer's newest less [`SLACK_MS`] that
/// it lacks (what a lost or partly replayed WAL held); returns how many.
fn offer_recent_from_logs(buffer: &mut Buffer) -> Result<u64, BufferError> {
    let since = buffer.newest_capture_ms()?.map(|ms| ms - SLACK_MS);
    let mut known = buffer.event_ids(since)?;
    offer_from_logs(buffer, &mut known, since)
}

/// Salvages copies set aside by an agent that did not recover them (no `.recovered`
/// marker), so rotation never deletes their unsent events uncounted. Failures are logged:
/// they never keep the agent from starting.
pub(super) fn salvage_earlier_copies(buffer: &mut Buffer) {
    let copies = moved_aside(buffer.path());
    for (_, copy) in copies {
        let is_main_copy = copy
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit_once('-'))
            .is_some_and(|(_, secs)| secs.bytes().all(|b| b.is_ascii_digit()));
        if !is_main_copy || with_suffix(&copy, MARKER_SUFFIX).exists() {
            continue;
        }
        tracing::error!(copy = %copy.display(), "a buffer file set aside earlier was never recovered: reading its unsent events back");
        match salvage(&copy, buffer) {
            Ok(salvage) => finish(
                &copy,
                &Recovery {
                    set_aside: vec![copy.clone()],
                    main_damaged: true,
                    salvaged: salvage.stored,
                    unrecoverable: salvage.unread,
                    uncounted_ranges: salvage.uncounted,
                    quarantine_kept: salvage.quarantine_kept,
                    ..Recovery::default()
                },
            ),
            Err(error) => {
                tracing::error!(copy = %copy.display(), %error, "salvaging a set-aside buffer file failed; trying again at the next start");
            }
        }
    }
}

/// Logs the outcome and leaves the marker beside the copy.
fn finish(aside: &Path, recovery: &Recovery) {
    recovery.report();
    let marker = with_suffix(aside, MARKER_SUFFIX);
    let text = serde_json::to_vec_pretty(recovery).unwrap_or_default();
    if let Err(error) = std::fs::write(&marker, text) {
        tracing::error!(marker = %marker.display(), %error, "could not write the recovery marker (the copy is salvaged again at the next start; its events are absorbed downstream by id)");
    }
}

fn rename(path: &Path, from: &Path, to: &Path) -> Result<(), BufferError> {
    std::fs::rename(from, to).map_err(|e| BufferError::Other {
        path: path.to_owned(),
        message: format!(
            "cannot set {} aside to {}: {e}",
            from.display(),
            to.display()
        ),
    })
}

/// What reading a set-aside copy gave.
#[derive(Debug, Default)]
struct Salvage {
    /// Rows stored again.
    stored: u64,
    /// Unsent rows counted but not read.
    unread: u64,
    /// Ranges that could not even be counted.
    uncounted: u64,
    /// Every event id the copy accounts for (stored again, or sent).
    known: HashSet<EventId>,
    /// The ids stored again.
    restored: HashSet<EventId>,
    /// Rows of the copy's quarantine moved to the new buffer's.
    quarantine_kept: u64,
}

/// Reads what can be read of the copy at `copy` (read-only, without its WAL, range by
/// range) into `buffer`.
fn salvage(copy: &Path, buffer: &mut Buffer) -> Result<Salvage, BufferError> {
    // DuckDB would replay (and, read-only, refuse) a WAL beside the copy: hide it meanwhile.
    let wal = wal_path(copy);
    let hidden = with_suffix(copy, ".wal-hidden");
    let wal_hidden = wal.exists() && std::fs::rename(&wal, &hidden).is_ok();
    let salvage = read_copy(copy, buffer);
    if wal_hidden && let Err(error) = std::fs::rename(&hidden, &wal) {
        tracing::warn!(wal = %hidden.display(), %error, "could not restore the set-aside WAL's name");
    }
    salvage
}

fn read_copy(copy: &Path, buffer: &mut Buffer) -> Result<Salvage, BufferError> {
    let mut salvage = Salvage::default();
    let opened = Config::default()
        .access_mode(AccessMode::ReadOnly)
        .and_then(|config| Connection::open_with_flags(copy, config));
    let conn = match opened {
        Ok(conn) => conn,
        Err(error) => {
            tracing::error!(copy = %copy.display(), %error, "the set-aside buffer file cannot be opened at all: its events can only come back from the day logs");
            carry_track_ids(buffer, None)?;
            salvage.uncounted = 1;
            return Ok(salvage);
        }
    };
    carry_track_ids(buffer, track_counter(&conn))?;
    // Files from before migration 0002 have no content type: they hold v1 bincode only.
    let content_type = if conn
        .prepare("SELECT content_type FROM outbox LIMIT 0")
        .is_ok()
    {
        format!("coalesce(content_type, '{V1_STORED}')")
    } else {
        format!("'{V1_STORED}'")
    };
    let Some(end) = seq_end(&conn) else {
        tracing::error!(copy = %copy.display(), "the set-aside buffer file has no readable sequence bounds: its events can only come back from the day logs");
        salvage.uncounted = 1;
        return Ok(salvage);
    };
    // New rows take seqs past the copy's (see `Buffer::recover_damaged`).
    buffer.continue_seqs_from(end as u64)?;
    // Events drop_oldest deleted stay dropped (files before migration 0003 have no list).
    let dropped: Result<Vec<String>, duckdb::Error> = conn
        .prepare("SELECT CAST(event_id AS VARCHAR) FROM dropped")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect());
    salvage.known.extend(
        dropped
            .unwrap_or_default()
            .iter()
            .filter_map(|id| id.parse::<EventId>().ok()),
    );
    let mut staged = Vec::new();
    // From the oldest row either table still has (rotation removed what came before).
    let mut start = seq_start(&conn);
    while start < end {
        let range = start..(start + CHUNK).min(end);
        start = range.end;
        let sql = |table: &str| {
            format!(
                "SELECT seq, {content_type}, payload, captured_ms FROM {table} WHERE seq >= ? AND seq < ? ORDER BY seq"
            )
        };
        let rows = read_rows(&conn, &sql("outbox"), &range).or_else(|error| {
            // The outbox's block is damaged: whatever of the history is readable, sent or not
            // (a repeat is absorbed downstream).
            tracing::warn!(copy = %copy.display(), seqs = ?range, %error, "an outbox range of the set-aside file cannot be read; taking its history rows instead");
            read_rows(&conn, &sql("events"), &range)
        });
        match rows {
            Ok(rows) => staged.extend(rows),
            Err(error) => {
                let counted: Result<i64, _> = conn.query_row(
                    "SELECT count(*) FROM outbox WHERE seq >= ? AND seq < ?",
                    params![range.start, range.end],
                    |r| r.get(0),
                );
                match counted {
                    Ok(n) => salvage.unread += n as u64,
                    Err(_) => salvage.uncounted += 1,
                }
                tracing::error!(copy = %copy.display(), seqs = ?range, %error, "a range of the set-aside buffer file cannot be read");
            }
        }
        // The ids of its sent events, so the day logs do not offer them again.
        let ids: Result<Vec<String>, duckdb::Error> = conn
            .prepare("SELECT CAST(event_id AS VARCHAR) FROM events WHERE seq >= ? AND seq < ?")
            .and_then(|mut stmt| {
                stmt.query_map(params![range.start, range.end], |r| r.get(0))?
                    .collect()
            });
        salvage.known.extend(
            ids.unwrap_or_default()
                .iter()
                .filter_map(|id| id.parse::<EventId>().ok()),
        );
        if staged.len() >= BATCH {
            store(buffer, &mut staged, &mut salvage)?;
        }
    }
    store(buffer, &mut staged, &mut salvage)?;
    salvage.quarantine_kept = keep_quarantine(&conn, copy, buffer)?;
    keep_uploads(&conn, copy, buffer)?;
    Ok(salvage)
}

/// Queues the copy's pending snapshot uploads again in `buffer` (their events came back as
/// new rows, so they no longer name a row: the uploader sends them at once, and the cloud
/// waits for their events if it must). A copy from before migration 0005 has none; an
/// unreadable queue is logged (its pictures stay on the box).
fn keep_uploads(conn: &Connection, copy: &Path, buffer: &mut Buffer) -> Result<(), BufferError> {
    if conn.prepare("SELECT state FROM uploads LIMIT 0").is_err() {
        return Ok(());
    }
    let uploads = match super::uploads::pending_in(conn, None) {
        Ok(uploads) => uploads,
        Err(error) => {
            tracing::error!(copy = %copy.display(), %error, "the set-aside buffer's snapshot upload queue cannot be read: those pictures stay on the box");
            return Ok(());
        }
    };
    if !uploads.is_empty() {
        tracing::warn!(copy = %copy.display(), uploads = uploads.len(), "queued the set-aside buffer's pending snapshot uploads again");
        buffer.requeue_uploads(&uploads, super::now_ms())?;
    }
    Ok(())
}

/// Moves the copy's quarantined rows to `buffer`'s quarantine, as they are; returns how
/// many. A copy from before migration 0002 has no quarantine.
fn keep_quarantine(
    conn: &Connection,
    copy: &Path,
    buffer: &mut Buffer,
) -> Result<u64, BufferError> {
    if conn.prepare("SELECT seq FROM quarantine LIMIT 0").is_err() {
        return Ok(0);
    }
    let rows: Result<Vec<QuarantinedRow>, duckdb::Error> = conn
        .prepare(
            "SELECT seq, captured_ms, content_type, payload, reason, quarantined_ms FROM quarantine ORDER BY seq",
        )
        .and_then(|mut stmt| {
            stmt.query_map([], |r| {
                Ok(QuarantinedRow {
                    seq: r.get(0)?,
                    captured_ms: r.get(1)?,
                    content_type: r.get(2)?,
                    payload: r.get(3)?,
                    reason: r.get(4)?,
                    quarantined_ms: r.get(5)?,
                })
            })?
            .collect()
        });
    match rows {
        Ok(rows) => buffer.keep_quarantined(&rows),
        Err(error) => {
            tracing::error!(copy = %copy.display(), %error, "the quarantined rows of the set-aside buffer file cannot be read: they stay only in the copy, which rotation deletes with its day");
            Ok(0)
        }
    }
}

/// A row of a buffer's `quarantine` table.
#[derive(Debug, Clone)]
pub(super) struct QuarantinedRow {
    pub seq: i64,
    pub captured_ms: i64,
    pub content_type: Option<String>,
    pub payload: Vec<u8>,
    pub reason: String,
    pub quarantined_ms: i64,
}

/// New track ids start past the damaged buffer's: [`RECOVERED_TRACK_ID_MARGIN`] past its
/// counter where that is readable (reservations in a lost WAL are covered), otherwise in
/// microseconds since the epoch (far above any counter, and the clock is all that is left).
fn carry_track_ids(buffer: &mut Buffer, counter: Option<i64>) -> Result<(), BufferError> {
    // (A file from before migration 0004 has no counter: its tracks had clock-based ids,
    // and the clock floor is past them.)
    let floor = match counter {
        Some(next) => (next.max(1) as u64).saturating_add(RECOVERED_TRACK_ID_MARGIN),
        None => (sightline_runtime::now().as_millis().max(0) as u64).saturating_mul(1000),
    };
    buffer.continue_track_ids_from(floor)
}

/// A buffer's track id counter, if it can be read.
fn track_counter(conn: &Connection) -> Option<i64> {
    conn.query_row("SELECT next_track_id FROM buffer_state", [], |r| r.get(0))
        .ok()
}

/// The lowest seq the copy holds, from whichever table can say; 1 if neither can.
fn seq_start(conn: &Connection) -> i64 {
    ["SELECT min(seq) FROM outbox", "SELECT min(seq) FROM events"]
        .iter()
        .filter_map(|sql| {
            conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
                .ok()
                .flatten()
        })
        .min()
        .unwrap_or(1)
}

/// One past the highest seq the copy used, from whichever record of it is readable.
fn seq_end(conn: &Connection) -> Option<i64> {
    [
        "SELECT next_seq FROM buffer_state",
        "SELECT max(seq) + 1 FROM outbox",
        "SELECT max(seq) + 1 FROM events",
    ]
    .iter()
    .filter_map(|sql| {
        conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .ok()
            .flatten()
    })
    .max()
}

/// A stored row read back: seq, content type, payload, capture time.
type RawRow = (i64, String, Vec<u8>, i64);

fn read_rows(
    conn: &Connection,
    sql: &str,
    range: &std::ops::Range<i64>,
) -> Result<Vec<RawRow>, duckdb::Error> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params![range.start, range.end], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    rows.collect()
}

/// Stores staged rows again; a row whose head cannot be read is counted as unread.
fn store(
    buffer: &mut Buffer,
    staged: &mut Vec<RawRow>,
    salvage: &mut Salvage,
) -> Result<(), BufferError> {
    let mut rows = Vec::with_capacity(staged.len());
    for (seq, content_type, payload, captured) in staged.drain(..) {
        match Outgoing::from_stored(0, &content_type, payload) {
            Ok(row) => {
                salvage.known.insert(row.head.event_id);
                // Once, though a range may give it from two tables.
                if salvage.restored.insert(row.head.event_id) {
                    rows.push((row, captured));
                }
            }
            Err(error) => {
                tracing::error!(seq, %error, "a row of the set-aside buffer file cannot be decoded");
                salvage.unread += 1;
            }
        }
    }
    salvage.stored += buffer.insert_recovered(rows, super::now_ms())?;
    Ok(())
}

/// Stores again every event of the day logs not in `known` (captured at or after `since_ms`
/// when given); returns how many.
fn offer_from_logs(
    buffer: &mut Buffer,
    known: &mut HashSet<EventId>,
    since_ms: Option<i64>,
) -> Result<u64, BufferError> {
    let dir = buffer
        .path()
        .parent()
        .unwrap_or(Path::new("."))
        .join(daylog::EVENTS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut days: Vec<(i32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((daylog::parse_day(e.file_name().to_str()?)?, e.path())))
        .filter(|(day, _)| since_ms.is_none_or(|since| *day >= day_of(since)))
        .collect();
    days.sort_unstable();
    let mut offered = 0;
    let mut batch = Vec::new();
    for (_, folder) in days {
        let file = folder.join(daylog::JSON_FILE);
        let Ok(reader) = std::fs::File::open(&file).map(std::io::BufReader::new) else {
            continue;
        };
        let mut unreadable = 0u64;
        for line in reader.lines() {
            let Ok(line) = line else {
                unreadable += 1;
                break;
            };
            let event: DetectionEvent = match serde_json::from_str(&line) {
                Ok(event) => event,
                Err(_) => {
                    unreadable += 1;
                    continue;
                }
            };
            let captured = event.captured_at.as_millis();
            if since_ms.is_some_and(|since| captured < since) || !known.insert(event.event_id) {
                continue;
            }
            match Outgoing::encode(0, &event) {
                Ok(row) => batch.push((row, captured)),
                Err(error) => {
                    tracing::error!(event_id = %event.event_id, %error, "a day-log event cannot be stored again");
                }
            }
            if batch.len() >= BATCH {
                offered += buffer.insert_recovered(std::mem::take(&mut batch), super::now_ms())?;
            }
        }
        if unreadable > 0 {
            tracing::warn!(file = %file.display(), lines = unreadable, "day-log lines that are not whole events (torn by a crash?) were skipped");
        }
    }
    offered += buffer.insert_recovered(batch, super::now_ms())?;
    Ok(offered)
}
