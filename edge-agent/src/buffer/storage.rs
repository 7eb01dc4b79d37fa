//! One storage budget for the agent's data directory (the DuckDB buffer, the daily logs and
//! snapshots), enforced the way seed stories 3.6 and 3.7 ask:
//!
//! - at 80 % of `max_storage_gb`, a WARNING (once per crossing);
//! - at 90 %, rotation deletes whole days, oldest first, until usage is under 80 %: the day's
//!   folder (logs, snapshots) and the day's *published* buffer rows, then compacts the buffer
//!   so the space really goes back to the disk. Never today, never a day inside
//!   `min_retention_days`, never an unpublished event. A damaged buffer file set aside
//!   (`buffer.duckdb.corrupt-<unix seconds>`, its WAL and its `.recovered` marker) belongs
//!   to the day it was set aside on and goes with that day: what could be read of it was
//!   recovered into the buffer when it was set aside (see `buffer::recover`), and kept
//!   forever it would hold the budget down for good;
//! - the filesystem's real free space is checked too (statvfs): when something else fills
//!   the disk and less than `min_free_bytes` is left, the same happens as at 90 % and 100 %
//!   of the budget (rotation until twice the reserve is free, then the full-disk policy), so
//!   the agent refuses events cleanly instead of failing every commit on a full disk;
//! - at 100 % with nothing left to rotate, the full-disk policy decides: `reject_new`
//!   (default: new events are refused, counted and logged, nothing already kept is lost),
//!   `drop_oldest` (the oldest unpublished events are deleted to make room, each counted and
//!   logged), or `stop` (the agent shuts down with an error, like seed story 3.6).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{Buffer, BufferError, moved_aside};
use crate::daylog::{self, DayLogs, day_of};

/// Warn at this share of the budget.
pub const WARN_PERCENT: f64 = 80.0;
/// Rotate at this share of the budget...
pub const ROTATE_PERCENT: f64 = 90.0;
/// ...down to this share.
pub const TARGET_PERCENT: f64 = 80.0;
/// `drop_oldest` frees down to this share, so it does not run on every event.
pub const DROP_TARGET_PERCENT: f64 = 95.0;

/// What happens when the budget is used up by events that are not published yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse new events (each counted as dropped and logged at ERROR); keep what is stored.
    #[default]
    RejectNew,
    /// Delete the oldest unpublished events to make room (each counted and logged).
    DropOldest,
    /// Shut the agent down with an error.
    Stop,
}

/// Usage of the data directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    /// Free bytes on the filesystem holding the data directory (for unprivileged users, as
    /// `df` shows them), if it could be measured.
    pub fs_free_bytes: Option<u64>,
    /// The reserve the filesystem keeps free (`min_free_bytes`; 0: none).
    pub min_free_bytes: u64,
}

impl Usage {
    /// The filesystem has less than the reserve free.
    pub fn disk_low(&self) -> bool {
        self.fs_free_bytes
            .is_some_and(|free| free < self.min_free_bytes)
    }

    /// Bytes to free for the filesystem to have twice the reserve free (rotation and
    /// `drop_oldest` aim there, so one check does not follow another); 0 if it has.
    pub fn disk_shortfall(&self) -> u64 {
        self.fs_free_bytes.map_or(0, |free| {
            self.min_free_bytes.saturating_mul(2).saturating_sub(free)
        })
    }

    /// Rotation is due: 90 % of the budget, or the disk below its reserve.
    pub fn needs_rotation(&self) -> bool {
        self.percent() >= ROTATE_PERCENT || self.disk_low()
    }

    /// No room for new events: the budget used up, or the disk below its reserve.
    pub fn is_full(&self) -> bool {
        self.percent() >= 100.0 || self.disk_low()
    }

    pub fn percent(&self) -> f64 {
        if self.limit_bytes == 0 {
            return 100.0;
        }
        self.used_bytes as f64 * 100.0 / self.limit_bytes as f64
    }

    /// "1.2GB / 4GB (30%)", as seed story 3.6 prints it, and the disk when it is low.
    pub fn display(&self) -> String {
        let mut text = format!(
            "{} / {} ({:.0}%)",
            human_bytes(self.used_bytes),
            human_bytes(self.limit_bytes),
            self.percent()
        );
        if let Some(free) = self.fs_free_bytes.filter(|_| self.disk_low()) {
            text.push_str(&format!(
                ", filesystem {} free, below min_free_bytes {}",
                human_bytes(free),
                human_bytes(self.min_free_bytes)
            ));
        }
        text
    }
}

/// Bytes in a short human form (decimal units, like the seed's "3.2GB").
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000_000 => format!("{:.1}KB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}MB", b / 1e6),
        _ => format!("{:.1}GB", b / 1e9),
    }
}

/// Total bytes of the regular files under `dir` (what the files hold, as `ls -l` shows).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Free bytes on the filesystem holding `dir`, available to unprivileged users (statvfs's
/// `f_bavail` blocks of `f_frsize` bytes); `None` if it cannot be read.
pub fn fs_free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// What one rotation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rotation {
    /// Days removed, as `YYYY-MM-DD`.
    pub days: Vec<String>,
    /// Published buffer rows deleted.
    pub rows_deleted: u64,
    pub before: Usage,
    pub after: Usage,
    /// Snapshot uploads still pending when their day went: never to be sent.
    #[serde(skip)]
    pub uploads_dropped: Vec<super::PendingUpload>,
}

/// The budget and the rules.
#[derive(Debug, Clone)]
pub struct Budget {
    pub limit_bytes: u64,
    pub min_retention_days: u32,
    pub policy: FullPolicy,
    /// The filesystem keeps at least this much free (0: not checked).
    pub min_free_bytes: u64,
    pub free_space: FreeSpace,
}

/// Where the filesystem's free space is read from.
#[derive(Debug, Clone, Default)]
pub enum FreeSpace {
    /// statvfs of the data directory.
    #[default]
    Filesystem,
    /// A figure set from outside (tests: a disk that something else filled).
    Injected(Arc<AtomicU64>),
}

impl FreeSpace {
    /// A source that reports `bytes` until [`FreeSpace::set`] changes it.
    pub fn injected(bytes: u64) -> Self {
        Self::Injected(Arc::new(AtomicU64::new(bytes)))
    }

    /// Changes what an injected source reports (no effect on the real one).
    pub fn set(&self, bytes: u64) {
        if let Self::Injected(free) = self {
            free.store(bytes, Ordering::Relaxed);
        }
    }

    pub fn read(&self, dir: &Path) -> Option<u64> {
        match self {
            Self::Filesystem => fs_free_bytes(dir),
            Self::Injected(free) => Some(free.load(Ordering::Relaxed)),
        }
    }
}

impl Budget {
    /// Measures the data directory and its filesystem.
    pub fn usage(&self, data_dir: &Path) -> Usage {
        Usage {
            used_bytes: dir_bytes(data_dir),
            limit_bytes: self.limit_bytes,
            fs_free_bytes: self.free_space.read(data_dir),
            min_free_bytes: self.min_free_bytes,
        }
    }

    /// Whether a day may be rotated away today.
    pub fn may_rotate(&self, day: i32, today: i32) -> bool {
        day < today && day <= today - self.min_retention_days as i32
    }

    /// Rotates if usage is at or above 90 % or the disk is below its reserve (or `force`):
    /// deletes the oldest eligible days until usage is under 80 % and the disk has twice its
    /// reserve free; with `force` at least one day goes (if one is eligible). Then compacts
    /// the buffer so the space returns to the disk.
    pub fn rotate(
        &self,
        data_dir: &Path,
        buffer: &mut Buffer,
        logs: &mut DayLogs,
        now_ms: i64,
        force: bool,
    ) -> Result<Rotation, BufferError> {
        let before = self.usage(data_dir);
        let mut rotation = Rotation {
            before,
            after: before,
            ..Rotation::default()
        };
        if !force && !before.needs_rotation() {
            return Ok(rotation);
        }
        let today = day_of(now_ms);
        let corrupt = moved_aside(buffer.path());
        let mut days = buffer.days()?;
        days.extend(folder_days(data_dir));
        days.extend(corrupt.iter().map(|(day, _)| *day));
        days.sort_unstable();
        days.dedup();
        let target = (self.limit_bytes as f64 * TARGET_PERCENT / 100.0) as u64;
        let mut eligible: std::collections::VecDeque<i32> = days
            .into_iter()
            .filter(|d| self.may_rotate(*d, today))
            .collect();
        loop {
            // One walk of the directory per pass; within it, usage goes down by each deleted
            // folder and by the buffer rows deleted (at the file's average bytes per row:
            // that space returns only when the buffer is compacted after the pass), and the
            // next pass measures for real.
            let rows_now = buffer.stats()?.rows.max(1);
            let bytes_per_row = buffer.file_bytes() / rows_now;
            let usage = self.usage(data_dir);
            let mut used = usage.used_bytes;
            let mut shortfall = usage.disk_shortfall();
            let mut deleted_days = 0;
            let mut deleted_rows = 0;
            while let Some(&day) = eligible.front() {
                if used < target && shortfall == 0 && !(force && rotation.days.is_empty()) {
                    break;
                }
                eligible.pop_front();
                logs.close();
                let dir = daylog::day_dir(data_dir, day);
                let folder_bytes = dir_bytes(&dir);
                if dir.exists()
                    && let Err(error) = std::fs::remove_dir_all(&dir)
                {
                    tracing::error!(dir = %dir.display(), %error, "rotation could not delete a day folder");
                }
                let rows = buffer.delete_sent_day(day)?;
                rotation
                    .uploads_dropped
                    .extend(buffer.delete_uploads_of_day(day)?);
                let copies_bytes = remove_moved_aside(&corrupt, day);
                let freed = folder_bytes + copies_bytes + rows * bytes_per_row;
                used = used.saturating_sub(freed);
                shortfall = shortfall.saturating_sub(freed);
                deleted_rows += rows;
                deleted_days += 1;
                rotation.days.push(daylog::day_name(day));
                tracing::warn!(
                    day = %daylog::day_name(day),
                    folder_freed = %human_bytes(folder_bytes),
                    buffer_rows = rows,
                    "Storage limit approaching, deleting old logs: {} (freed {})",
                    daylog::day_name(day),
                    human_bytes(folder_bytes)
                );
            }
            if deleted_rows > 0 {
                compact(buffer);
            }
            rotation.rows_deleted += deleted_rows;
            if deleted_days == 0 {
                break;
            }
        }
        rotation.after = self.usage(data_dir);
        Ok(rotation)
    }
}

/// Compacts the buffer after rows were deleted, and logs what it gave back. A failure is
/// logged and leaves the old file in use: the space is reused by new rows, just not given
/// back to the disk yet.
pub fn compact(buffer: &mut Buffer) {
    match buffer.compact() {
        Ok((before, after)) => tracing::info!(
            before = %human_bytes(before),
            after = %human_bytes(after),
            "compacted the buffer database"
        ),
        Err(error) => tracing::error!(%error, "compacting the buffer failed"),
    }
}

/// Deletes the damaged buffer copies of `day`, their WALs and recovery markers, and returns
/// the bytes freed. Their unsent events were recovered (or counted as lost) when they were
/// set aside, or at the next start for copies an older agent set aside.
fn remove_moved_aside(copies: &[(i32, PathBuf)], day: i32) -> u64 {
    let mut freed = 0;
    for (_, copy) in copies.iter().filter(|(d, _)| *d == day) {
        let bytes = std::fs::metadata(copy).map_or(0, |m| m.len());
        match std::fs::remove_file(copy) {
            Ok(()) => {
                freed += bytes;
                tracing::warn!(file = %copy.display(), freed = %human_bytes(bytes), "rotation deleted a damaged buffer file set aside earlier (what could be read of it was recovered when it was set aside: see the recovery log and marker)");
            }
            Err(error) => {
                tracing::error!(file = %copy.display(), %error, "rotation could not delete an unreadable buffer file")
            }
        }
    }
    freed
}

/// Day folders present under `data_dir/events`.
fn folder_days(data_dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(daylog::EVENTS_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| daylog::parse_day(e.file_name().to_str()?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_protects_today_and_recent_days() {
        let budget = |min_retention_days| Budget {
            limit_bytes: 1,
            min_retention_days,
            policy: FullPolicy::RejectNew,
            min_free_bytes: 0,
            free_space: FreeSpace::Filesystem,
        };
        let today = 20_000;
        assert!(!budget(0).may_rotate(today, today));
        assert!(budget(0).may_rotate(today - 1, today));
        assert!(!budget(7).may_rotate(today - 6, today));
        assert!(budget(7).may_rotate(today - 7, today));
        assert!(!budget(0).may_rotate(today + 1, today));
    }

    #[test]
    fn the_filesystems_free_space_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let free = fs_free_bytes(dir.path()).expect("statvfs");
        assert!(free > 0);
        assert_eq!(fs_free_bytes(&dir.path().join("missing")), None);
    }

    #[test]
    fn usage_reads_like_the_seed() {
        let usage = Usage {
            used_bytes: 1_200_000_000,
            limit_bytes: 4_000_000_000,
            fs_free_bytes: Some(100_000_000),
            min_free_bytes: 50_000_000,
        };
        assert_eq!(usage.display(), "1.2GB / 4.0GB (30%)");
        let low = Usage {
            fs_free_bytes: Some(20_000_000),
            ..usage
        };
        assert!(low.disk_low() && low.is_full() && low.needs_rotation());
        assert_eq!(low.disk_shortfall(), 80_000_000);
        assert_eq!(
            low.display(),
            "1.2GB / 4.0GB (30%), filesystem 20.0MB free, below min_free_bytes 50.0MB"
        );
        assert!(!usage.disk_low() && !usage.is_full());
    }
}
