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
    /// Events with a detection standing in one of these zones (schema v2 events name them).
    pub zones: Vec<String>,
    /// Captured at or after (inclusive).
    pub since: Option<Timestamp>,
    /// Captured before (exclusive).
    pub until: Option<Timestamp>,
    pub min_confidence: Option<f32>,
    pub max_confidence: Option<f32>,
    pub has_snapshot: Option<bool>,
    /// Events whose snapshot is (or is not) stored in the cloud.
    pub in_cloud: Option<bool>,
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

    /// The SQL comparisons that keep what comes after a point in this order: strict on the
    /// whole sort key, and inclusive on a coarse column (whole seconds) that prunes parts.
    pub const fn after(self) -> (&'static str, &'static str) {
        match self {
            Self::Newest => ("<", "<="),
            Self::Oldest => (">", ">="),
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
        hex(&bytes)
    }

    pub(crate) fn decode(text: &str) -> Option<Self> {
        let bytes = unhex(text)?;
        if bytes.len() != 26 || bytes[0] != CURSOR_VERSION || bytes[1] > 1 {
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
    /// The whole range as one bucket, starting at `since`.
    All,
}

impl Interval {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "1m",
            Self::FiveMinutes => "5m",
            Self::FifteenMinutes => "15m",
            Self::Hour => "1h",
            Self::Day => "1d",
            Self::All => "all",
        }
    }

    /// Length in milliseconds (a day is nominal: DST days are 23 or 25 hours); the whole
    /// range is one bucket of any length.
    pub const fn millis(self) -> i64 {
        match self {
            Self::All => i64::MAX,
            Self::Minute => 60_000,
            Self::FiveMinutes => 300_000,
            Self::FifteenMinutes => 900_000,
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }
}

/// What `GET /v1/stats` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Measure {
    /// Detected objects in events, one per frame they were seen in (`detections`).
    #[default]
    Detections,
    /// Distinct objects (tracks), each counted once, in the bucket its track started in,
    /// from final track records only; with their dwell time.
    Objects,
}

impl Measure {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Detections => "detections",
            Self::Objects => "objects",
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
    pub measure: Measure,
    /// Objects only: tracks that stood in one of these zones; their dwell is the time they
    /// spent in them.
    pub zones: Vec<String>,
    /// Objects only: one group per zone (a track that visited two zones counts in both).
    pub by_zone: bool,
    pub tz: String,
}

impl StatsQuery {
    /// Whether dwell is time spent in zones rather than in view.
    pub fn in_zones(&self) -> bool {
        self.by_zone || !self.zones.is_empty()
    }
}

/// Which tracks: every field narrows the set; empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackFilter {
    pub cameras: Vec<String>,
    pub edges: Vec<String>,
    pub labels: Vec<String>,
    /// Tracks that stood in one of these zones.
    pub zones: Vec<String>,
    /// Still in view at or after this time: last seen at or after it (the lifetime
    /// overlaps `[since, until)`).
    pub since: Option<Timestamp>,
    /// Started before this time (exclusive).
    pub until: Option<Timestamp>,
    /// In view at least this long (last seen minus started), in milliseconds.
    pub min_duration_ms: Option<i64>,
    /// In view at most this long, in milliseconds.
    pub max_duration_ms: Option<i64>,
    /// Best score at least this.
    pub min_confidence: Option<f32>,
    /// Ended (`true`) or still lasting as far as the cloud knows (`false`).
    pub ended: Option<bool>,
}

/// Where a page of tracks ends: the sort key (start, edge, track id) of its last track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackCursor {
    pub sort: Sort,
    pub started_at_ms: i64,
    pub edge_id: String,
    pub track_id: u64,
}

const TRACK_CURSOR_VERSION: u8 = 2;

impl TrackCursor {
    /// Hex of: version, sort, start (big endian), track id (big endian), edge id bytes.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(18 + self.edge_id.len());
        bytes.push(TRACK_CURSOR_VERSION);
        bytes.push(u8::from(self.sort == Sort::Oldest));
        bytes.extend_from_slice(&self.started_at_ms.to_be_bytes());
        bytes.extend_from_slice(&self.track_id.to_be_bytes());
        bytes.extend_from_slice(self.edge_id.as_bytes());
        hex(&bytes)
    }

    pub(crate) fn decode(text: &str) -> Option<Self> {
        let bytes = unhex(text)?;
        if bytes.len() < 19 || bytes[0] != TRACK_CURSOR_VERSION || bytes[1] > 1 {
            return None;
        }
        let edge_id = String::from_utf8(bytes[18..].to_vec()).ok()?;
        if !sightline_shared::validate::is_identifier(&edge_id) {
            return None;
        }
        Some(Self {
            sort: if bytes[1] == 1 {
                Sort::Oldest
            } else {
                Sort::Newest
            },
            started_at_ms: i64::from_be_bytes(bytes[2..10].try_into().ok()?),
            track_id: u64::from_be_bytes(bytes[10..18].try_into().ok()?),
            edge_id,
        })
    }
}

/// `GET /v1/tracks`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackListQuery {
    pub filter: TrackFilter,
    pub sort: Sort,
    pub limit: u32,
    pub cursor: Option<TrackCursor>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
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
