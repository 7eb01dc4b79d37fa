//! Query-string parsing, driven by one table of parameter specs.
//!
//! Every endpoint names its parameters as [`Param`]s. The same specs parse requests (strictly:
//! unknown parameters, repeats of single-valued ones, empty and out-of-range values are all a
//! [`ParamError`] naming the parameter) and write the OpenAPI document, so the two cannot
//! drift apart.

use std::collections::HashMap;

use sightline_shared::Encoding;
use sightline_shared::Timestamp;
use sightline_shared::subjects::{MAX_SUBJECT_LEN, is_literal_subject};
use sightline_shared::validate::{MAX_ID_LEN, MAX_LABEL_LEN, is_identifier, is_label};
use thiserror::Error;

use crate::model::{
    Cursor, EventFilter, ExportQuery, Format, Interval, ListQuery, Measure, ReplayQuery, Sort,
    StatsQuery, TrackCursor, TrackFilter, TrackListQuery,
};

/// A parameter the caller got wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{parameter}: {message}")]
pub struct ParamError {
    pub parameter: String,
    pub message: String,
}

impl ParamError {
    pub fn new(parameter: &str, message: impl Into<String>) -> Self {
        let parameter: String = parameter.chars().take(64).collect();
        Self {
            parameter,
            message: message.into(),
        }
    }
}

/// The shape of a parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Comma-separated ids (`A-Z a-z 0-9 _ -`), or the parameter repeated.
    Ids,
    /// Comma-separated detection labels, or the parameter repeated.
    Labels,
    /// RFC 3339 or epoch milliseconds.
    Time,
    /// A number from 0 to 1.
    Confidence,
    /// `true` or `false`.
    Bool,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
    /// A positive integer up to a bound the caller checks (and the document states).
    Count(CountMax),
    /// An opaque page cursor from a previous page of events.
    Cursor,
    /// An opaque page cursor from a previous page of tracks.
    TrackCursor,
    /// A length of time in seconds (fractions allowed), from 0 to [`MAX_DURATION_SECS`].
    Duration,
    /// A NATS subject (tokens of `A-Z a-z 0-9 _ -` separated by dots).
    Subject,
    /// An IANA time zone name such as `Europe/Berlin`.
    TimeZone,
}

/// Where a count's upper bound comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountMax {
    /// `max_limit` of the config: events per page.
    PageLimit,
    /// [`MAX_EXPORT`]: events per export.
    ExportLimit,
    /// `replay.max_rate` of the config: events per second.
    ReplayRate,
    /// [`MAX_THUMBNAIL_WIDTH`]: a snapshot's thumbnail width.
    ThumbnailWidth,
}

/// The widest thumbnail `max_width` asks for.
pub const MAX_THUMBNAIL_WIDTH: u32 = 1920;

/// The configured bounds a count is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_limit: u32,
    pub max_rate: u32,
}

impl Limits {
    pub fn max(&self, bound: CountMax) -> u64 {
        match bound {
            CountMax::PageLimit => self.max_limit.into(),
            CountMax::ExportLimit => MAX_EXPORT,
            CountMax::ReplayRate => self.max_rate.into(),
            CountMax::ThumbnailWidth => MAX_THUMBNAIL_WIDTH.into(),
        }
    }
}

/// One query parameter of one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub doc: &'static str,
}

const fn optional(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        required: false,
        doc,
    }
}

const fn required(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param {
        name,
        kind,
        required: true,
        doc,
    }
}

/// Most values a list parameter takes.
pub const MAX_LIST: usize = 100;

/// Sort orders of event lists.
pub const SORTS: &[&str] = &["newest", "oldest"];
/// Export formats.
pub const FORMATS: &[&str] = &["ndjson", "csv"];
/// Stats bucket sizes.
pub const INTERVALS: &[&str] = &["1m", "5m", "15m", "1h", "1d", "all"];
/// Stats groupings (those with a zone count objects only).
pub const GROUPINGS: &[&str] = &[
    "none",
    "camera",
    "label",
    "camera,label",
    "zone",
    "camera,zone",
    "label,zone",
    "camera,label,zone",
];
/// What stats count.
pub const MEASURES: &[&str] = &[Measure::Detections.as_str(), Measure::Objects.as_str()];
/// The longest duration a filter takes: ten years.
pub const MAX_DURATION_SECS: f64 = 315_360_000.0;
/// Replay payload encodings.
pub const ENCODINGS: &[&str] = &[Encoding::Bincode.as_str(), Encoding::Json.as_str()];

const CAMERA: Param = optional(
    "camera",
    Kind::Ids,
    "Only these cameras (comma-separated, or repeat the parameter).",
);
const EDGE: Param = optional(
    "edge",
    Kind::Ids,
    "Only these edge agents (comma-separated, or repeat the parameter).",
);
const LABEL: Param = optional(
    "label",
    Kind::Labels,
    "Only events with a detection of one of these labels (comma-separated, or repeat the parameter).",
);
const SINCE: Param = optional(
    "since",
    Kind::Time,
    "Captured at or after this time (inclusive).",
);
const UNTIL: Param = optional(
    "until",
    Kind::Time,
    "Captured before this time (exclusive); must be later than since.",
);
const MIN_CONFIDENCE: Param = optional(
    "min_confidence",
    Kind::Confidence,
    "Only events with a detection (of the chosen labels) at least this confident.",
);
const MAX_CONFIDENCE: Param = optional(
    "max_confidence",
    Kind::Confidence,
    "Only events with a detection (of the chosen labels) at most this confident.",
);
const HAS_SNAPSHOT: Param = optional(
    "has_snapshot",
    Kind::Bool,
    "Only events with (true) or without (false) a snapshot.",
);
const IN_CLOUD: Param = optional(
    "in_cloud",
    Kind::Bool,
    "Only events whose snapshot is (true) or is not (false) stored in the cloud, where GET /v1/events/{id}/snapshot serves it.",
);
const EVENT_ZONE: Param = optional(
    "zone",
    Kind::Ids,
    "Only events with a detection standing in one of these zones (with label and the confidence bounds, the same detection); events of schema version 1 name no zones.",
);
const SORT: Param = optional(
    "sort",
    Kind::Choice(SORTS),
    "newest (default) or oldest first, by capture time then event id.",
);

const ZONE: Param = optional(
    "zone",
    Kind::Ids,
    "Only tracks that stood in one of these zones (comma-separated, or repeat the parameter).",
);

/// `GET /v1/tracks`.
pub const TRACKS: &[Param] = &[
    CAMERA,
    EDGE,
    optional(
        "label",
        Kind::Labels,
        "Only tracks of these labels (comma-separated, or repeat the parameter).",
    ),
    ZONE,
    optional(
        "since",
        Kind::Time,
        "Only tracks still in view at or after this time (last seen at or after it): with until, the tracks whose lifetime overlaps [since, until).",
    ),
    optional(
        "until",
        Kind::Time,
        "Only tracks that started before this time (exclusive); must be later than since.",
    ),
    optional(
        "min_duration",
        Kind::Duration,
        "Only tracks in view at least this many seconds (last seen minus started).",
    ),
    optional(
        "max_duration",
        Kind::Duration,
        "Only tracks in view at most this many seconds.",
    ),
    optional(
        "min_confidence",
        Kind::Confidence,
        "Only tracks whose best score is at least this.",
    ),
    optional(
        "ended",
        Kind::Bool,
        "Only tracks that ended (true) or that still last as far as the cloud knows (false).",
    ),
    optional(
        "sort",
        Kind::Choice(SORTS),
        "newest (default) or oldest first, by start time, then edge and track id.",
    ),
    optional(
        "limit",
        Kind::Count(CountMax::PageLimit),
        "Most tracks per page (default and maximum from the service config).",
    ),
    optional(
        "cursor",
        Kind::TrackCursor,
        "next_cursor of the previous page; keep the other parameters the same.",
    ),
];

/// The filter every event-returning endpoint shares.
pub const FILTER: &[Param] = &[
    CAMERA,
    EDGE,
    LABEL,
    EVENT_ZONE,
    SINCE,
    UNTIL,
    MIN_CONFIDENCE,
    MAX_CONFIDENCE,
    HAS_SNAPSHOT,
    IN_CLOUD,
];

/// Edge states of `GET /v1/edges`.
pub const EDGE_STATUSES: &[&str] = &["online", "offline"];
/// Orders of `GET /v1/edges`.
pub const EDGE_SORTS: &[&str] = &["status", "edge", "backlog"];

/// `GET /v1/edges`.
pub const EDGES: &[Param] = &[
    optional(
        "status",
        Kind::Choice(EDGE_STATUSES),
        "Only edges online (a heartbeat within three of their intervals) or offline.",
    ),
    optional(
        "sort",
        Kind::Choice(EDGE_SORTS),
        "status (default: offline first, then by edge id), edge (by id) or backlog (largest first).",
    ),
];

/// `GET /v1/events/{id}/snapshot` and `GET /v1/tracks/{id}/snapshot`.
pub const SNAPSHOT: &[Param] = &[optional(
    "max_width",
    Kind::Count(CountMax::ThumbnailWidth),
    "Scale the picture down to at most this many pixels wide (its aspect kept), for thumbnails; a picture that is narrower already is served as stored.",
)];

/// `GET /v1/events` beyond the filter.
pub const LIST: &[Param] = &[
    SORT,
    optional(
        "limit",
        Kind::Count(CountMax::PageLimit),
        "Most events per page (default and maximum from the service config).",
    ),
    optional(
        "cursor",
        Kind::Cursor,
        "next_cursor of the previous page; keep the other parameters the same.",
    ),
];

/// `GET /v1/events/export` beyond the filter.
pub const EXPORT: &[Param] = &[
    SORT,
    optional("format", Kind::Choice(FORMATS), "ndjson (default) or csv."),
    optional(
        "limit",
        Kind::Count(CountMax::ExportLimit),
        "Stop after this many events (default: all of them).",
    ),
];

/// `GET /v1/cameras`.
pub const CAMERAS: &[Param] = &[
    optional(
        "since",
        Kind::Time,
        "Count only events captured at or after this time.",
    ),
    optional(
        "until",
        Kind::Time,
        "Count only events captured before this time; must be later than since.",
    ),
];

/// `GET /v1/stats`.
pub const STATS: &[Param] = &[
    CAMERA,
    EDGE,
    LABEL,
    optional(
        "since",
        Kind::Time,
        "Start of the range (inclusive); default: 24 hours before until.",
    ),
    optional(
        "until",
        Kind::Time,
        "End of the range (exclusive), later than since; default: now.",
    ),
    optional(
        "min_confidence",
        Kind::Confidence,
        "Only detections at least this confident (measure=objects: tracks whose best score is).",
    ),
    optional(
        "max_confidence",
        Kind::Confidence,
        "Only detections at most this confident (measure=objects: tracks whose best score is).",
    ),
    optional(
        "interval",
        Kind::Choice(INTERVALS),
        "Bucket size: 1m, 5m, 15m, 1h (default), 1d, or all (the whole range as one bucket); the range may span at most 10000 buckets.",
    ),
    optional(
        "group_by",
        Kind::Choice(GROUPINGS),
        "none, camera (default), label, camera,label; with measure=objects also by zone (zone, camera,zone, label,zone, camera,label,zone).",
    ),
    optional(
        "measure",
        Kind::Choice(MEASURES),
        "detections (default): detected objects per frame, from events. objects: distinct objects (tracks), each counted once in the bucket its track started in, from ended tracks only, with their dwell time (p50, p95).",
    ),
    optional(
        "zone",
        Kind::Ids,
        "measure=objects only: tracks that stood in one of these zones; dwell is then the time spent in them.",
    ),
    optional(
        "tz",
        Kind::TimeZone,
        "Time zone that buckets start in (matters for 1d and for zones off whole hours); default UTC.",
    ),
];

/// `POST /v1/replay` beyond the filter (where `since` and `until` are required).
pub const REPLAY: &[Param] = &[
    required(
        "subject",
        Kind::Subject,
        "NATS subject to publish to; must start with the configured replay prefix.",
    ),
    optional(
        "rate",
        Kind::Count(CountMax::ReplayRate),
        "Events per second (default and maximum from the service config).",
    ),
    optional(
        "encoding",
        Kind::Choice(ENCODINGS),
        "Payload encoding: bincode (default) or json, named by the Content-Type header.",
    ),
];

/// Each endpoint's parameters, as its parser and the OpenAPI document both read them.
pub const LIST_QUERY: &[&[Param]] = &[FILTER, LIST];
pub const EXPORT_QUERY: &[&[Param]] = &[FILTER, EXPORT];
pub const CAMERAS_QUERY: &[&[Param]] = &[CAMERAS];
pub const STATS_QUERY: &[&[Param]] = &[STATS];
pub const REPLAY_QUERY: &[&[Param]] = &[FILTER, REPLAY];
pub const TRACKS_QUERY: &[&[Param]] = &[TRACKS];
pub const SNAPSHOT_QUERY: &[&[Param]] = &[SNAPSHOT];
pub const EDGES_QUERY: &[&[Param]] = &[EDGES];

/// One parsed value.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    List(Vec<String>),
    Time(Timestamp),
    Number(f32),
    Bool(bool),
    Word(String),
    Count(u64),
    Cursor(Cursor),
    TrackCursor(TrackCursor),
    Millis(i64),
}

/// The parsed parameters of one request.
#[derive(Debug, Default)]
pub struct Values(HashMap<&'static str, Value>);

/// Parses `raw` against `groups` of specs: unknown parameters, repeats of single-valued
/// ones, and bad values are errors naming the parameter.
pub fn parse(raw: Option<&str>, groups: &[&[Param]]) -> Result<Values, ParamError> {
    let specs = || groups.iter().flat_map(|g| g.iter());
    let mut values = Values::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let Some(spec) = specs().find(|p| p.name == key) else {
            let expected: Vec<&str> = specs().map(|p| p.name).collect();
            let expected = if expected.is_empty() {
                "none".to_owned()
            } else {
                expected.join(", ")
            };
            return Err(ParamError::new(
                &key,
                format!("unknown parameter (expected: {expected})"),
            ));
        };
        let parsed = parse_value(spec, &value)?;
        match (values.0.get_mut(spec.name), parsed) {
            (None, parsed) => {
                values.0.insert(spec.name, parsed);
            }
            (Some(Value::List(have)), Value::List(more)) => {
                have.extend(more);
                if have.len() > MAX_LIST {
                    return Err(ParamError::new(
                        spec.name,
                        format!("at most {MAX_LIST} values"),
                    ));
                }
            }
            (Some(_), _) => return Err(ParamError::new(spec.name, "given more than once")),
        }
    }
    if let Some(missing) = specs().find(|p| p.required && !values.0.contains_key(p.name)) {
        return Err(ParamError::new(missing.name, "is required"));
    }
    Ok(values)
}

fn parse_value(spec: &Param, value: &str) -> Result<Value, ParamError> {
    let bad = |message: &str| ParamError::new(spec.name, message);
    if value.is_empty() {
        return Err(bad("must not be empty"));
    }
    Ok(match spec.kind {
        Kind::Ids | Kind::Labels => {
            let items: Vec<String> = value.split(',').map(str::to_owned).collect();
            if items.len() > MAX_LIST {
                return Err(bad(&format!("at most {MAX_LIST} values")));
            }
            let (valid, rule): (fn(&str) -> bool, _) = match spec.kind {
                Kind::Ids => (
                    is_identifier,
                    format!("each value must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 _ -"),
                ),
                _ => (
                    is_label,
                    format!("each label must be 1-{MAX_LABEL_LEN} bytes without control characters"),
                ),
            };
            if !items.iter().all(|item| valid(item)) {
                return Err(bad(&rule));
            }
            Value::List(items)
        }
        Kind::Time => Value::Time(timestamp(value).ok_or_else(|| {
            bad("must be an RFC 3339 time such as 2026-11-22T03:00:00Z, or epoch milliseconds, between 1970 and 2105")
        })?),
        Kind::Confidence => Value::Number(
            value
                .parse::<f32>()
                .ok()
                .filter(|c| (0.0..=1.0).contains(c))
                .ok_or_else(|| bad("must be a number from 0 to 1"))?,
        ),
        Kind::Bool => Value::Bool(match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad("must be true or false")),
        }),
        Kind::Choice(choices) => {
            if !choices.contains(&value) {
                return Err(bad(&format!("must be one of: {}", choices.join(" | "))));
            }
            Value::Word(value.to_owned())
        }
        Kind::Count(_) => Value::Count(
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("must be a positive integer"))?,
        ),
        Kind::Cursor => Value::Cursor(
            Cursor::decode(value)
                .ok_or_else(|| bad("is not a cursor this service handed out"))?,
        ),
        Kind::TrackCursor => Value::TrackCursor(
            TrackCursor::decode(value)
                .ok_or_else(|| bad("is not a cursor this service handed out for tracks"))?,
        ),
        Kind::Duration => Value::Millis(
            value
                .parse::<f64>()
                .ok()
                .filter(|secs| (0.0..=MAX_DURATION_SECS).contains(secs))
                .map(|secs| (secs * 1000.0).round() as i64)
                .ok_or_else(|| {
                    bad("must be a number of seconds from 0 to 315360000 (ten years), such as 90 or 2.5")
                })?,
        ),
        Kind::Subject => {
            if !is_literal_subject(value) {
                return Err(bad(&format!(
                    "must be a NATS subject of dot-separated tokens of A-Z a-z 0-9 _ - (no wildcards), at most {MAX_SUBJECT_LEN} bytes"
                )));
            }
            Value::Word(value.to_owned())
        }
        Kind::TimeZone => {
            let ok = value.len() <= 64
                && !value.contains("..")
                && !value.starts_with('/')
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
            if !ok {
                return Err(bad("must be an IANA time zone name such as Europe/Berlin"));
            }
            Value::Word(value.to_owned())
        }
    })
}

/// An RFC 3339 timestamp or integer epoch milliseconds, between 1970 and 2105 (the range a
/// ClickHouse `DateTime` holds).
fn timestamp(value: &str) -> Option<Timestamp> {
    let parsed = match value.parse::<i64>() {
        Ok(millis) => Some(Timestamp::from_millis(millis)),
        Err(_) => Timestamp::parse_rfc3339(value).ok(),
    };
    parsed.filter(|t| (0..=4_294_967_295_000).contains(&t.as_millis()))
}

impl Values {
    fn list(&mut self, name: &str) -> Vec<String> {
        match self.0.remove(name) {
            Some(Value::List(items)) => items,
            _ => Vec::new(),
        }
    }

    fn time(&self, name: &str) -> Option<Timestamp> {
        match self.0.get(name) {
            Some(Value::Time(t)) => Some(*t),
            _ => None,
        }
    }

    fn number(&self, name: &str) -> Option<f32> {
        match self.0.get(name) {
            Some(Value::Number(n)) => Some(*n),
            _ => None,
        }
    }

    fn bool(&self, name: &str) -> Option<bool> {
        match self.0.get(name) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn word(&self, name: &str) -> Option<&str> {
        match self.0.get(name) {
            Some(Value::Word(w)) => Some(w),
            _ => None,
        }
    }

    /// A count no larger than `max`, if given.
    fn count(&self, name: &str, max: u64) -> Result<Option<u64>, ParamError> {
        match self.0.get(name) {
            Some(Value::Count(n)) if *n <= max => Ok(Some(*n)),
            Some(_) => Err(ParamError::new(
                name,
                format!("must be an integer from 1 to {max}"),
            )),
            None => Ok(None),
        }
    }

    /// A count no larger than `max`, `default` when absent.
    fn count_or(&self, name: &str, default: u32, max: u32) -> Result<u32, ParamError> {
        // `count` caps the value at a u32.
        Ok(self
            .count(name, max.into())?
            .map_or(default, |n| n.try_into().unwrap_or(max)))
    }

    fn cursor(&self) -> Option<Cursor> {
        match self.0.get("cursor") {
            Some(Value::Cursor(c)) => Some(*c),
            _ => None,
        }
    }

    fn track_cursor(&mut self) -> Option<TrackCursor> {
        match self.0.remove("cursor") {
            Some(Value::TrackCursor(c)) => Some(c),
            _ => None,
        }
    }

    fn millis(&self, name: &str) -> Option<i64> {
        match self.0.get(name) {
            Some(Value::Millis(ms)) => Some(*ms),
            _ => None,
        }
    }

    /// `since` before `until`, when both are given.
    fn range(&self) -> Result<(Option<Timestamp>, Option<Timestamp>), ParamError> {
        let (since, until) = (self.time("since"), self.time("until"));
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(ParamError::new("until", "must be later than since"));
        }
        Ok((since, until))
    }

    /// The shared event filter; checks that the range and the confidence bounds make sense.
    fn filter(&mut self) -> Result<EventFilter, ParamError> {
        let (since, until) = self.range()?;
        let filter = EventFilter {
            cameras: self.list("camera"),
            edges: self.list("edge"),
            labels: self.list("label"),
            zones: self.list("zone"),
            since,
            until,
            min_confidence: self.number("min_confidence"),
            max_confidence: self.number("max_confidence"),
            has_snapshot: self.bool("has_snapshot"),
            in_cloud: self.bool("in_cloud"),
        };
        if let (Some(min), Some(max)) = (filter.min_confidence, filter.max_confidence)
            && min > max
        {
            return Err(ParamError::new(
                "max_confidence",
                "must not be below min_confidence",
            ));
        }
        Ok(filter)
    }

    fn sort(&self) -> Sort {
        match self.word("sort") {
            Some("oldest") => Sort::Oldest,
            _ => Sort::Newest,
        }
    }
}

pub fn list_query(
    raw: Option<&str>,
    default_limit: u32,
    max_limit: u32,
) -> Result<ListQuery, ParamError> {
    let mut values = parse(raw, LIST_QUERY)?;
    let sort = values.sort();
    let cursor = values.cursor();
    if let Some(cursor) = cursor
        && cursor.sort != sort
    {
        return Err(ParamError::new(
            "cursor",
            format!("belongs to sort={}", cursor.sort.as_str()),
        ));
    }
    let limit = values.count_or("limit", default_limit, max_limit)?;
    Ok(ListQuery {
        filter: values.filter()?,
        sort,
        limit,
        cursor,
    })
}

/// Most events one export may ask for.
pub const MAX_EXPORT: u64 = 1_000_000_000;

pub fn export_query(raw: Option<&str>) -> Result<ExportQuery, ParamError> {
    let mut values = parse(raw, EXPORT_QUERY)?;
    Ok(ExportQuery {
        sort: values.sort(),
        format: match values.word("format") {
            Some("csv") => Format::Csv,
            _ => Format::Ndjson,
        },
        limit: values.count("limit", MAX_EXPORT)?,
        filter: values.filter()?,
    })
}

/// `GET /v1/cameras`.
pub fn cameras_query(raw: Option<&str>) -> Result<EventFilter, ParamError> {
    parse(raw, CAMERAS_QUERY)?.filter()
}

/// Most buckets (per group) one stats request may span.
pub const MAX_BUCKETS: i64 = 10_000;

pub fn stats_query(raw: Option<&str>, now: Timestamp) -> Result<StatsQuery, ParamError> {
    let mut values = parse(raw, STATS_QUERY)?;
    let interval = match values.word("interval") {
        Some("1m") => Interval::Minute,
        Some("5m") => Interval::FiveMinutes,
        Some("15m") => Interval::FifteenMinutes,
        Some("1d") => Interval::Day,
        Some("all") => Interval::All,
        _ => Interval::Hour,
    };
    let grouping = values.word("group_by").unwrap_or("camera");
    let by = |field: &str| grouping.split(',').any(|g| g == field);
    let (by_camera, by_label, by_zone) = (by("camera"), by("label"), by("zone"));
    let measure = match values.word("measure") {
        Some("objects") => Measure::Objects,
        _ => Measure::Detections,
    };
    let zones = values.list("zone");
    // Zones are where tracks stood: the measure is what to change.
    if measure == Measure::Detections && (!zones.is_empty() || by_zone) {
        return Err(ParamError::new(
            "measure",
            "must be objects to filter or group by zone (zones are where tracks stood)",
        ));
    }
    let tz = values.word("tz").unwrap_or("UTC").to_owned();
    let filter = values.filter()?;
    let until = filter.until.unwrap_or(now);
    let since = filter
        .since
        .unwrap_or_else(|| Timestamp::from_millis((until.as_millis() - 86_400_000).max(0)));
    if since >= until {
        // The same rule, naming the same parameter, as every other endpoint's.
        return Err(ParamError::new("until", "must be later than since"));
    }
    if (until.as_millis() - since.as_millis()) / interval.millis() > MAX_BUCKETS {
        return Err(ParamError::new(
            "interval",
            format!(
                "the range spans more than {MAX_BUCKETS} buckets of this size; use a larger interval or a shorter range"
            ),
        ));
    }
    Ok(StatsQuery {
        filter,
        since,
        until,
        interval,
        by_camera,
        by_label,
        measure,
        zones,
        by_zone,
        tz,
    })
}

pub fn replay_query(
    raw: Option<&str>,
    subject_prefix: &str,
    max_rate: u32,
) -> Result<ReplayQuery, ParamError> {
    let mut values = parse(raw, REPLAY_QUERY)?;
    let subject = values.word("subject").unwrap_or_default().to_owned();
    if !subject.starts_with(subject_prefix) || subject.len() == subject_prefix.len() {
        return Err(ParamError::new(
            "subject",
            format!("must start with {subject_prefix:?} and name a subject below it"),
        ));
    }
    let rate = values.count_or("rate", max_rate, max_rate)?;
    let encoding = values
        .word("encoding")
        .and_then(|w| w.parse().ok())
        .unwrap_or_default();
    let filter = values.filter()?;
    let since = filter
        .since
        .ok_or_else(|| ParamError::new("since", "is required: replay a bounded time range"))?;
    let until = filter
        .until
        .ok_or_else(|| ParamError::new("until", "is required: replay a bounded time range"))?;
    Ok(ReplayQuery {
        filter,
        since,
        until,
        subject,
        rate,
        encoding,
    })
}

/// `GET /v1/tracks`.
pub fn tracks_query(
    raw: Option<&str>,
    default_limit: u32,
    max_limit: u32,
) -> Result<TrackListQuery, ParamError> {
    let mut values = parse(raw, TRACKS_QUERY)?;
    let sort = values.sort();
    let cursor = values.track_cursor();
    if let Some(cursor) = &cursor
        && cursor.sort != sort
    {
        return Err(ParamError::new(
            "cursor",
            format!("belongs to sort={}", cursor.sort.as_str()),
        ));
    }
    let limit = values.count_or("limit", default_limit, max_limit)?;
    let (since, until) = values.range()?;
    let filter = TrackFilter {
        cameras: values.list("camera"),
        edges: values.list("edge"),
        labels: values.list("label"),
        zones: values.list("zone"),
        since,
        until,
        min_duration_ms: values.millis("min_duration"),
        max_duration_ms: values.millis("max_duration"),
        min_confidence: values.number("min_confidence"),
        ended: values.bool("ended"),
    };
    if let (Some(min), Some(max)) = (filter.min_duration_ms, filter.max_duration_ms)
        && min > max
    {
        return Err(ParamError::new(
            "max_duration",
            "must not be below min_duration",
        ));
    }
    Ok(TrackListQuery {
        filter,
        sort,
        limit,
        cursor,
    })
}

/// Rejects any parameter: for endpoints that take none.
/// `GET /v1/edges`: which edges (`Some(true)`: online only) and in what order.
pub fn edges_query(raw: Option<&str>) -> Result<(Option<bool>, EdgeSort), ParamError> {
    let values = parse(raw, EDGES_QUERY)?;
    let online = values.word("status").map(|w| w == "online");
    let sort = match values.word("sort") {
        Some("edge") => EdgeSort::Edge,
        Some("backlog") => EdgeSort::Backlog,
        _ => EdgeSort::Status,
    };
    Ok((online, sort))
}

/// The order of `GET /v1/edges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeSort {
    /// Offline first, then by edge id.
    Status,
    /// By edge id.
    Edge,
    /// Largest backlog first, then by edge id.
    Backlog,
}

/// A snapshot's query: the thumbnail width, if one is asked for.
pub fn snapshot_query(raw: Option<&str>) -> Result<Option<u32>, ParamError> {
    let values = parse(raw, SNAPSHOT_QUERY)?;
    Ok(values
        .count("max_width", MAX_THUMBNAIL_WIDTH.into())?
        .map(|n| n as u32))
}

pub fn none(raw: Option<&str>) -> Result<(), ParamError> {
    parse(raw, &[]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn the_fleet_takes_a_status_and_an_order() {
        assert_eq!(edges_query(None), Ok((None, EdgeSort::Status)));
        assert_eq!(
            edges_query(Some("status=offline&sort=backlog")),
            Ok((Some(false), EdgeSort::Backlog))
        );
        for (raw, named) in [
            ("status=up", "status"),
            ("sort=name", "sort"),
            ("limit=5", "limit"),
        ] {
            assert_eq!(
                edges_query(Some(raw)).unwrap_err().parameter,
                named,
                "{raw}"
            );
        }
    }

    #[test]
    fn a_snapshot_takes_a_bounded_width_and_nothing_else() {
        assert_eq!(snapshot_query(None), Ok(None));
        assert_eq!(snapshot_query(Some("max_width=320")), Ok(Some(320)));
        for (raw, named) in [
            ("max_width=0", "max_width"),
            ("max_width=1921", "max_width"),
            ("max_width=wide", "max_width"),
            ("width=10", "width"),
        ] {
            assert_eq!(
                snapshot_query(Some(raw)).unwrap_err().parameter,
                named,
                "{raw}"
            );
        }
    }

    #[test]
    fn parses_a_full_list_query() {
        let q = list_query(
            Some("camera=gate-1,porch&camera=yard&label=car,traffic%20light&edge=e1&since=2026-11-22T00:00:00Z&until=1800000000000&min_confidence=0.5&max_confidence=0.9&has_snapshot=true&sort=oldest&limit=5"),
            100,
            1000,
        )
        .unwrap();
        assert_eq!(q.filter.cameras, ["gate-1", "porch", "yard"]);
        assert_eq!(q.filter.labels, ["car", "traffic light"]);
        assert_eq!(q.filter.edges, ["e1"]);
        assert_eq!(
            q.filter.since.unwrap().to_rfc3339(),
            "2026-11-22T00:00:00.000Z"
        );
        assert_eq!(q.filter.until.unwrap().as_millis(), 1_800_000_000_000);
        assert_eq!(q.filter.min_confidence, Some(0.5));
        assert_eq!(q.filter.has_snapshot, Some(true));
        assert_eq!(q.filter.in_cloud, None);
        assert_eq!((q.sort, q.limit), (Sort::Oldest, 5));
        assert_eq!(
            list_query(Some("in_cloud=false"), 100, 1000)
                .unwrap()
                .filter
                .in_cloud,
            Some(false)
        );
        assert_eq!(list_query(None, 100, 1000).unwrap().limit, 100);
    }

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let cursor = Cursor {
            sort: Sort::Oldest,
            captured_at_ms: 1_795_000_000_123,
            event_id: Uuid::now_v7(),
        };
        let text = cursor.encode();
        assert_eq!(Cursor::decode(&text), Some(cursor));
        let q = list_query(Some(&format!("sort=oldest&cursor={text}")), 10, 10).unwrap();
        assert_eq!(q.cursor, Some(cursor));
        let err = list_query(Some(&format!("cursor={text}")), 10, 10).unwrap_err();
        assert_eq!(err.parameter, "cursor");
        for forged in [
            "",
            "zz",
            &text[..50],
            &format!("02{}", &text[2..]),
            "é".repeat(26).as_str(),
        ] {
            assert_eq!(Cursor::decode(forged), None, "{forged}");
        }
    }

    #[test]
    fn every_mistake_names_its_parameter() {
        for (query, parameter) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("limit=99999999999999999999", "limit"),
            ("camera=a%27%3B%20DROP%20TABLE%20events", "camera"),
            ("camera=", "camera"),
            ("camera=a,,b", "camera"),
            ("label=a%00b", "label"),
            ("since=yesterday", "since"),
            ("until=-5", "until"),
            (
                "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
                "until",
            ),
            ("min_confidence=1.5", "min_confidence"),
            ("min_confidence=NaN", "min_confidence"),
            ("min_confidence=0.9&max_confidence=0.1", "max_confidence"),
            ("has_snapshot=yes", "has_snapshot"),
            ("in_cloud=1", "in_cloud"),
            ("sort=random", "sort"),
            ("cursor=abc", "cursor"),
            ("cameras=x", "cameras"),
            ("limit=1&limit=2", "limit"),
        ] {
            let err = list_query(Some(query), 100, 1000).unwrap_err();
            assert_eq!(err.parameter, parameter, "{query}: {err}");
        }
        let many = vec!["c"; MAX_LIST + 1].join("&camera=");
        let err = list_query(Some(&format!("camera={many}")), 100, 1000).unwrap_err();
        assert_eq!(err.parameter, "camera");
    }

    #[test]
    fn stats_defaults_and_limits() {
        let now = Timestamp::from_millis(1_795_000_000_000);
        let q = stats_query(None, now).unwrap();
        assert_eq!(
            (q.interval, q.by_camera, q.by_label),
            (Interval::Hour, true, false)
        );
        assert_eq!(q.until, now);
        assert_eq!(q.until.as_millis() - q.since.as_millis(), 86_400_000);
        assert_eq!(q.tz, "UTC");
        let err = stats_query(Some("interval=1m&since=0"), now).unwrap_err();
        assert_eq!(err.parameter, "interval");
        for (query, parameter) in [
            ("tz=../../etc/passwd", "tz"),
            ("interval=2h", "interval"),
            ("group_by=edge", "group_by"),
            ("has_snapshot=true", "has_snapshot"),
            // Later than the default until (now): the one since/until rule, naming until.
            ("since=1800000000000", "until"),
        ] {
            assert_eq!(
                stats_query(Some(query), now).unwrap_err().parameter,
                parameter,
                "{query}"
            );
        }
    }

    #[test]
    fn parses_a_full_tracks_query_and_names_each_mistake() {
        let q = tracks_query(
            Some("camera=gate&edge=e1&label=person&zone=driveway,porch&since=1000&until=2000&min_duration=2.5&max_duration=90&min_confidence=0.5&ended=true&sort=oldest&limit=7"),
            100,
            1000,
        )
        .unwrap();
        let want = TrackFilter {
            cameras: vec!["gate".into()],
            edges: vec!["e1".into()],
            labels: vec!["person".into()],
            zones: vec!["driveway".into(), "porch".into()],
            since: Some(Timestamp::from_millis(1000)),
            until: Some(Timestamp::from_millis(2000)),
            min_duration_ms: Some(2_500),
            max_duration_ms: Some(90_000),
            min_confidence: Some(0.5),
            ended: Some(true),
        };
        assert_eq!(q.filter, want);
        assert_eq!((q.sort, q.limit, q.cursor), (Sort::Oldest, 7, None));
        for (query, parameter) in [
            ("min_duration=-1", "min_duration"),
            ("max_duration=1e12", "max_duration"),
            ("min_duration=inf", "min_duration"),
            ("min_duration=10&max_duration=5", "max_duration"),
            ("zone=a%20b", "zone"),
            ("since=5&until=5", "until"),
            ("ended=maybe", "ended"),
            ("has_snapshot=true", "has_snapshot"),
            ("cursor=00", "cursor"),
        ] {
            let err = tracks_query(Some(query), 100, 1000).unwrap_err();
            assert_eq!(err.parameter, parameter, "{query}: {err}");
        }
        // An event cursor is not a track cursor.
        let event_cursor = Cursor {
            sort: Sort::Newest,
            captured_at_ms: 1,
            event_id: Uuid::now_v7(),
        }
        .encode();
        let err = tracks_query(Some(&format!("cursor={event_cursor}")), 10, 10).unwrap_err();
        assert_eq!(err.parameter, "cursor");
    }

    #[test]
    fn track_cursors_round_trip_and_reject_forgeries() {
        let cursor = TrackCursor {
            sort: Sort::Newest,
            started_at_ms: -1_500,
            edge_id: "edge-01".into(),
            track_id: u64::MAX,
        };
        let text = cursor.encode();
        assert_eq!(TrackCursor::decode(&text), Some(cursor.clone()));
        let q = tracks_query(Some(&format!("cursor={text}")), 10, 10).unwrap();
        assert_eq!(q.cursor, Some(cursor));
        let err = tracks_query(Some(&format!("cursor={text}&sort=oldest")), 10, 10).unwrap_err();
        assert_eq!(err.parameter, "cursor");
        // A cut edge id is still an identifier: only the version, the length and the
        // edge's characters are checked, and a cursor only ever narrows a query.
        for forged in [
            &text[..36],
            &format!("01{}", &text[2..]),
            &format!("{}2e", &text),
            &text[1..],
        ] {
            assert_eq!(TrackCursor::decode(forged), None, "{forged}");
        }
    }

    #[test]
    fn stats_count_objects_by_zone_only_when_asked_for_objects() {
        let now = Timestamp::from_millis(1_795_000_000_000);
        let q = stats_query(
            Some("measure=objects&zone=gate&group_by=label,zone&interval=all&since=0"),
            now,
        )
        .unwrap();
        assert_eq!(q.measure, Measure::Objects);
        assert_eq!(q.zones, ["gate"]);
        assert_eq!(
            (q.by_camera, q.by_label, q.by_zone, q.interval),
            (false, true, true, Interval::All)
        );
        assert!(q.in_zones());
        for (query, parameter) in [
            ("zone=gate", "measure"),
            ("group_by=camera,zone", "measure"),
            ("measure=tracks", "measure"),
        ] {
            assert_eq!(
                stats_query(Some(query), now).unwrap_err().parameter,
                parameter,
                "{query}"
            );
        }
    }

    #[test]
    fn replay_needs_a_range_and_an_allowed_subject() {
        let ok = replay_query(
            Some("subject=replay.test.a&since=0&until=1000&rate=50&encoding=json&camera=x"),
            "replay.",
            1000,
        )
        .unwrap();
        assert_eq!(
            (ok.subject.as_str(), ok.rate, ok.encoding),
            ("replay.test.a", 50, Encoding::Json)
        );
        for (query, parameter) in [
            ("since=0&until=1", "subject"),
            ("subject=sightline.events.e.c&since=0&until=1", "subject"),
            ("subject=replay.&since=0&until=1", "subject"),
            ("subject=replay.>&since=0&until=1", "subject"),
            ("subject=replay.x&until=1", "since"),
            ("subject=replay.x&since=0", "until"),
            ("subject=replay.x&since=0&until=1&rate=5000", "rate"),
        ] {
            assert_eq!(
                replay_query(Some(query), "replay.", 1000)
                    .unwrap_err()
                    .parameter,
                parameter,
                "{query}"
            );
        }
    }
}
