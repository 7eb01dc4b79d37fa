//! Daily event logs: `events/YYYY-MM-DD/events.json` (JSON lines) and `events.log` (a
//! human format) under the data directory, one folder per UTC day of the event's capture
//! time, so a file never mixes days and rotation can delete a whole day.
//!
//! Safe against concurrent writers and crashes: files are opened in append mode and every
//! record is one `write` of a complete record, so writers never interleave inside a record;
//! a record torn by a crash is closed with a newline before the next one is written, so it
//! spoils only itself.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sightline_shared::DetectionEvent;
use time::OffsetDateTime;

/// The folder under the data directory that holds the day folders.
const MS_PER_DAY: i64 = 86_400_000;

/// UTC day number (days since 1970-01-01) of a millisecond timestamp: the day an event's
/// logs, snapshots and buffer rows belong to.
pub fn day_of(ms: i64) -> i32 {
    ms.div_euclid(MS_PER_DAY) as i32
}

pub const EVENTS_DIR: &str = "events";
pub const JSON_FILE: &str = "events.json";
pub const TEXT_FILE: &str = "events.log";

/// Formats a UTC day number as `YYYY-MM-DD`.
pub fn day_name(day: i32) -> String {
    let date = time::Date::from_julian_day(2_440_588 + day).unwrap_or(time::Date::MIN);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Parses a day folder name back into a UTC day number.
pub fn parse_day(name: &str) -> Option<i32> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(name, &format).ok()?;
    Some(date.to_julian_day() - 2_440_588)
}

/// The day folder for `day` under `data_dir`.
pub fn day_dir(data_dir: &Path, day: i32) -> PathBuf {
    data_dir.join(EVENTS_DIR).join(day_name(day))
}

/// Appends events to their day's two log files.
#[derive(Debug)]
pub struct DayLogs {
    data_dir: PathBuf,
    open: Option<(i32, File, File)>,
}

impl DayLogs {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            open: None,
        }
    }

    /// Writes one record per event to both files of the event's day.
    pub fn write(&mut self, event: &DetectionEvent) -> io::Result<()> {
        let day = day_of(event.captured_at.as_millis());
        let (json, text) = self.files(day)?;
        let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
        line.push(b'\n');
        json.write_all(&line)?;
        text.write_all(text_record(event).as_bytes())?;
        Ok(())
    }

    /// Closes the open files (rotation is about to delete a folder, or shutdown).
    pub fn close(&mut self) {
        self.open = None;
    }

    fn files(&mut self, day: i32) -> io::Result<(&mut File, &mut File)> {
        if self.open.as_ref().is_none_or(|(d, _, _)| *d != day) {
            self.open = None;
            let dir = day_dir(&self.data_dir, day);
            std::fs::create_dir_all(&dir)?;
            let json = open_append(&dir.join(JSON_FILE))?;
            let text = open_append(&dir.join(TEXT_FILE))?;
            self.open = Some((day, json, text));
        }
        let (_, json, text) = self.open.as_mut().expect("opened above");
        Ok((json, text))
    }
}

/// Opens a log file for appending with mode 0644, ending a record a crash tore off.
fn open_append(path: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o644)
        .open(path)?;
    // The umask may have narrowed the mode; logs are meant to be readable by others.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            tracing::warn!(path = %path.display(), "log file ends in a torn record (a crash?); closing it with a newline");
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

/// The human format (seed story 3.5), in UTC:
///
/// ```text
/// [2025-11-08 14:32:15] EVENT: Person detected at front-door (confidence: 92%)
///   - Objects: person (92%), package (87%)
///   - Image: events/2025-11-08/snapshots/0193....jpg
///   - Event: 0193... frame 1234, motion 0.42, model nanodet 1.0 (12.5 ms)
/// ```
pub fn text_record(event: &DetectionEvent) -> String {
    use std::fmt::Write as _;
    let at = event
        .captured_at
        .to_datetime()
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut out = format!(
        "[{:04}-{:02}-{:02} {:02}:{:02}:{:02}] EVENT: ",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    let top = event
        .detections
        .iter()
        .max_by(|a, b| a.confidence.total_cmp(&b.confidence));
    match top {
        Some(d) => {
            let mut label = d.label.clone();
            if let Some(first) = label.get(0..1) {
                label.replace_range(0..1, &first.to_uppercase());
            }
            let _ = writeln!(
                out,
                "{label} detected at {} (confidence: {:.0}%)",
                event.camera_id,
                d.confidence * 100.0
            );
            let objects = event
                .detections
                .iter()
                .map(|d| format!("{} ({:.0}%)", d.label, d.confidence * 100.0))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "  - Objects: {objects}");
        }
        None => {
            let _ = writeln!(out, "Motion at {}", event.camera_id);
        }
    }
    if let Some(description) = &event.description {
        let _ = writeln!(out, "  - Description: {}", one_line(description));
    }
    if let Some(snapshot) = &event.snapshot {
        let _ = writeln!(out, "  - Image: {}", one_line(snapshot));
    }
    let _ = writeln!(
        out,
        "  - Event: {} frame {}, motion {:.2}, model {} {} ({:.1} ms)",
        event.event_id,
        event.frame_seq,
        event.motion_score,
        event.model.name,
        event.model.version,
        event.inference_ms
    );
    out.push('\n');
    out
}

/// Keeps a free-text field on its line so a record cannot forge another.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyntheticConfig;
    use sightline_shared::Timestamp;

    fn event(at_ms: i64) -> DetectionEvent {
        let mut e = crate::synthetic::make_event(
            "edge-1",
            "front-door",
            &SyntheticConfig::default(),
            7,
            &mut 1,
            &mut rand::rng(),
        );
        e.captured_at = Timestamp::from_millis(at_ms);
        e
    }

    #[test]
    fn events_go_to_their_own_day_with_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = DayLogs::new(dir.path());
        // 2025-11-08 23:59:59.999 and the next millisecond: two days.
        let before_midnight = 1_762_646_399_999;
        for at in [before_midnight, before_midnight, before_midnight + 1] {
            logs.write(&event(at)).unwrap();
        }
        let first = dir.path().join("events/2025-11-08");
        let second = dir.path().join("events/2025-11-09");
        let json = std::fs::read_to_string(first.join(JSON_FILE)).unwrap();
        assert_eq!(json.lines().count(), 2);
        for line in json.lines() {
            let back: DetectionEvent = serde_json::from_str(line).unwrap();
            assert_eq!(back.captured_at.as_millis(), before_midnight);
        }
        let text = std::fs::read_to_string(second.join(TEXT_FILE)).unwrap();
        assert!(text.starts_with("[2025-11-09 00:00:00] EVENT: "), "{text}");
        assert!(
            text.contains("detected at front-door (confidence: "),
            "{text}"
        );
        assert!(text.contains("  - Objects: "), "{text}");
        assert!(text.ends_with("\n\n"), "records end with a blank line");
        for file in [first.join(JSON_FILE), second.join(TEXT_FILE)] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{}", file.display());
        }
    }

    #[test]
    fn a_torn_record_spoils_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let at = 1_762_646_399_999;
        let day = dir.path().join("events/2025-11-08");
        std::fs::create_dir_all(&day).unwrap();
        // A crash mid-write left half a line.
        std::fs::write(day.join(JSON_FILE), b"{\"event_id\":\"01").unwrap();
        DayLogs::new(dir.path()).write(&event(at)).unwrap();
        let json = std::fs::read_to_string(day.join(JSON_FILE)).unwrap();
        let lines: Vec<&str> = json.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(serde_json::from_str::<DetectionEvent>(lines[1]).is_ok());
    }

    #[test]
    fn free_text_cannot_forge_a_record() {
        let mut e = event(0);
        e.description = Some("fine\n[1970-01-01 00:00:00] EVENT: forged".into());
        let text = text_record(&e);
        assert_eq!(
            text.lines().filter(|l| l.starts_with('[')).count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn day_names_round_trip() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(20_400), "2025-11-08");
        for day in [-1, 0, 1, 19_000, 20_400, 40_000] {
            assert_eq!(parse_day(&day_name(day)), Some(day));
        }
        assert_eq!(parse_day("2025-13-01"), None);
        assert_eq!(parse_day("notes"), None);
    }
}
