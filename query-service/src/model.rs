//! The query model: what a request asks of the store, whatever the protocol it came in by.
//! `params` builds these from query strings; `store` turns them into SQL.

use sightline_shared::{Encoding, Timestamp};
use uuid::Uuid;

/// Which events: every field narrows the set; empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub cameras: Vec<String>,
    pub edges: Vec<String>,
    pub labels: Vec<String>,
    /// Captured at or after (inclusive).
    pub since: Option<Timestamp>,
    /// Captured before (exclusive).
    pub until: Option<Timestamp>,
    pub min_confidence: Option<f32>,
    pub max_confidence: Option<f32>,
    pub has_snapshot: Option<bool>,
}

/// The order of event lists: by capture time, then event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Newest,
    Oldest,
}

impl Sort {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Newest => "newest",
            Self::Oldest => "oldest",
        }
    }

    /// The SQL direction.
    pub const fn direction(self) -> &'static str {
        match self {
            Self::Newest => "DESC",
            Self::Oldest => "ASC",
        }
    }
}

/// Where a page ends: the sort key of its last event. The next page starts strictly after
/// it, so pages are stable while new events arrive (keyset pagination, no OFFSET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub sort: Sort,
    pub captured_at_ms: i64,
    pub event_id: Uuid,
}

const CURSOR_VERSION: u8 = 1;

impl Cursor {
    /// Hex of: version, sort, capture time (big endian), event id. Opaque to clients.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(26);
        bytes.push(CURSOR_VERSION);
        bytes.push(u8::from(self.sort == Sort::Oldest));
        bytes.extend_from_slice(&self.captured_at_ms.to_be_bytes());
        bytes.extend_from_slice(self.event_id.as_bytes());
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn decode(text: &str) -> Option<Self> {
        if text.len() != 52 || !text.is_ascii() {
            return None;
        }
        let bytes: Vec<u8> = (0..26)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<_>>()?;
        if bytes[0] != CURSOR_VERSION || bytes[1] > 1 {
            return None;
        }
        Some(Self {
            sort: if bytes[1] == 1 {
                Sort::Oldest
            } else {
                Sort::Newest
            },
            captured_at_ms: i64::from_be_bytes(bytes[2..10].try_into().ok()?),
            event_id: Uuid::from_slice(&bytes[10..26]).ok()?,
        })
    }
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub filter: EventFilter,
    pub sort: Sort,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

/// `GET /v1/events/export`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportQuery {
    pub filter: EventFilter,
    pub sort: Sort,
    pub format: Format,
    pub limit: Option<u64>,
}

/// Stats bucket sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Minute,
    FiveMinutes,
    FifteenMinutes,
    Hour,
    Day,
}

impl Interval {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "1m",
            Self::FiveMinutes => "5m",
            Self::FifteenMinutes => "15m",
            Self::Hour => "1h",
            Self::Day => "1d",
        }
    }

    /// Length in milliseconds (a day is nominal: DST days are 23 or 25 hours).
    pub const fn millis(self) -> i64 {
        match self {
            Self::Minute => 60_000,
            Self::FiveMinutes => 300_000,
            Self::FifteenMinutes => 900_000,
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsQuery {
    pub filter: EventFilter,
    pub since: Timestamp,
    pub until: Timestamp,
    pub interval: Interval,
    pub by_camera: bool,
    pub by_label: bool,
    pub tz: String,
}

/// `POST /v1/replay`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayQuery {
    pub filter: EventFilter,
    pub since: Timestamp,
    pub until: Timestamp,
    pub subject: String,
    pub rate: u32,
    pub encoding: Encoding,
}
