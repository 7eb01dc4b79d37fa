//! The track record, schema version 1: one object's visit to one camera, from the frame it
//! first appeared in to the frame it was last seen in.
//!
//! The edge's tracker emits a record while the track lasts (every `update_interval_secs`,
//! so a car parked for hours is visible before it leaves) and a final one when it ends
//! ([`TrackRecord::ended_by`] set). Each record is complete, not a delta: the latest
//! [`TrackRecord::revision`] of a `(edge_id, track_id)` replaces every earlier one, so a lost
//! or repeated update changes nothing once a later one arrives.
//!
//! Like [`crate::event`], the field order is the bincode wire format: any change is a new
//! schema version. The first four fields have the same types and order as an event's, so
//! [`crate::codec::decode_head`] routes both kinds.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{BoundingBox, EventId};
use crate::timestamp::Timestamp;
use crate::validate::{
    MAX_LABEL_LEN, MAX_SNAPSHOT_LEN, ValidationError, attributes, bbox, count, identifier,
    in_range, seen_at, text, uuid_v7,
};

/// The track record schema version this crate writes and reads.
pub const TRACK_SCHEMA_VERSION: u16 = 1;
/// Most points in a track's sampled path.
pub const MAX_PATH_POINTS: usize = 256;
/// Most zone stays in one record (an object pacing across a zone's edge enters it again
/// and again).
pub const MAX_ZONE_VISITS: usize = 256;
/// Mean and max confidence are sums and maxima of `f32` scores: the mean may exceed the
/// max by this much from rounding alone.
const CONFIDENCE_SLACK: f32 = 1e-4;

/// Why a track ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// Not seen for the tracker's `max_age_secs`: the object left (or hid).
    Lost,
    /// The camera stopped (the agent shut down, or a file source played to its end) while
    /// the object was still in view.
    Shutdown,
}

impl EndedBy {
    /// The name used in JSON, SQL and the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Lost => "lost",
            Self::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for EndedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The frame the object scored highest in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestFrame {
    pub captured_at: Timestamp,
    pub bbox: BoundingBox,
    pub confidence: f32,
}

/// One sample of where the object stood (the bottom-centre of its box), normalized.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathPoint {
    pub at: Timestamp,
    pub x: f32,
    pub y: f32,
}

/// A stay in one zone: entered when the object first stood in it, exited when it was first
/// seen standing outside it again (`None`: still inside at the record's time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneVisit {
    pub zone: String,
    pub entered_at: Timestamp,
    pub exited_at: Option<Timestamp>,
}

/// One object's visit to one camera, as known when the record was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackRecord {
    /// UUIDv7 of this record (not of the track): the message's idempotency key.
    pub record_id: EventId,
    /// [`TRACK_SCHEMA_VERSION`] for everything this crate writes.
    pub schema_version: u16,
    pub edge_id: String,
    pub camera_id: String,
    /// The track's id, unique per edge across its cameras and restarts; never 0.
    pub track_id: u64,
    /// 0 for the track's first record, one more for each later one: the highest wins.
    pub revision: u32,
    /// Class name (the tracker matches within one class, so a track has one).
    pub label: String,
    pub class_id: u32,
    /// When the object was first seen.
    pub started_at: Timestamp,
    /// When it was last seen (or, while the picture did not change, known to be there).
    pub last_seen_at: Timestamp,
    /// `None` while the track lasts; why it ended on its final record.
    pub ended_by: Option<EndedBy>,
    /// Frames the object was detected in.
    pub frames: u64,
    pub max_confidence: f32,
    pub mean_confidence: f32,
    pub best: BestFrame,
    /// Up to [`MAX_PATH_POINTS`] samples of where it stood, oldest first.
    pub path: Vec<PathPoint>,
    /// The zones it stood in, in the order it entered them (one entry per stay).
    pub zones: Vec<ZoneVisit>,
    /// The event that reported its arrival, when one was made.
    pub arrival_event_id: Option<EventId>,
    /// Where the best frame's annotated snapshot is kept on the edge, once written.
    pub snapshot: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl TrackRecord {
    /// How long the object was in view, in milliseconds.
    pub fn duration_ms(&self) -> i64 {
        self.last_seen_at.as_millis() - self.started_at.as_millis()
    }

    /// Checks every rule of the v1 contract, naming the offending field. `now` is the
    /// validator's clock; times may be up to `max_future_skew_ms` ahead of it.
    pub fn validate(&self, now: Timestamp, max_future_skew_ms: i64) -> Result<(), ValidationError> {
        if self.schema_version != TRACK_SCHEMA_VERSION {
            return Err(ValidationError::SchemaVersion {
                found: self.schema_version,
                reads: TRACK_SCHEMA_VERSION,
            });
        }
        uuid_v7("record_id", &self.record_id)?;
        identifier("edge_id", &self.edge_id)?;
        identifier("camera_id", &self.camera_id)?;
        if self.track_id == 0 {
            return Err(ValidationError::OutOfRange {
                field: "track_id".into(),
                value: 0.0,
                min: 1.0,
                max: u64::MAX as f64,
            });
        }
        text("label", &self.label, MAX_LABEL_LEN, false)?;
        seen_at("started_at", self.started_at, now, max_future_skew_ms)?;
        seen_at("last_seen_at", self.last_seen_at, now, max_future_skew_ms)?;
        within(
            "last_seen_at",
            self.last_seen_at,
            ("started_at", self.started_at),
            None,
        )?;
        if self.frames == 0 {
            return Err(ValidationError::OutOfRange {
                field: "frames".into(),
                value: 0.0,
                min: 1.0,
                max: u64::MAX as f64,
            });
        }
        in_range("max_confidence", self.max_confidence, 0.0, 1.0)?;
        in_range(
            "mean_confidence",
            self.mean_confidence,
            0.0,
            self.max_confidence + CONFIDENCE_SLACK,
        )?;
        self.validate_best()?;
        count("path", self.path.len(), MAX_PATH_POINTS)?;
        let mut previous = ("started_at".to_owned(), self.started_at);
        for (i, point) in self.path.iter().enumerate() {
            let field = format!("path[{i}].at");
            within(
                &field,
                point.at,
                (&previous.0, previous.1),
                Some(self.last_seen_at),
            )?;
            in_range(format_args!("path[{i}].x"), point.x, 0.0, 1.0)?;
            in_range(format_args!("path[{i}].y"), point.y, 0.0, 1.0)?;
            previous = (field, point.at);
        }
        count("zones", self.zones.len(), MAX_ZONE_VISITS)?;
        for (i, visit) in self.zones.iter().enumerate() {
            identifier(format_args!("zones[{i}].zone"), &visit.zone)?;
            within(
                &format!("zones[{i}].entered_at"),
                visit.entered_at,
                ("started_at", self.started_at),
                Some(self.last_seen_at),
            )?;
            if let Some(exited) = visit.exited_at {
                within(
                    &format!("zones[{i}].exited_at"),
                    exited,
                    (&format!("zones[{i}].entered_at"), visit.entered_at),
                    Some(self.last_seen_at),
                )?;
            }
        }
        if let Some(arrival) = &self.arrival_event_id {
            uuid_v7("arrival_event_id", arrival)?;
        }
        if let Some(snapshot) = &self.snapshot {
            text("snapshot", snapshot, MAX_SNAPSHOT_LEN, false)?;
        }
        attributes(&self.attributes)
    }

    fn validate_best(&self) -> Result<(), ValidationError> {
        within(
            "best.captured_at",
            self.best.captured_at,
            ("started_at", self.started_at),
            Some(self.last_seen_at),
        )?;
        bbox("best.bbox", &self.best.bbox)?;
        in_range(
            "best.confidence",
            self.best.confidence,
            0.0,
            self.max_confidence + CONFIDENCE_SLACK,
        )
    }

    /// The track's id as the API names it: the edge and its track id, `edge-01:42`.
    pub fn key(&self) -> TrackKey {
        TrackKey {
            edge_id: self.edge_id.clone(),
            track_id: self.track_id,
        }
    }
}

/// `at` must not be before `earlier` (named), nor after `latest` when given (the record's
/// `last_seen_at`).
fn within(
    field: &str,
    at: Timestamp,
    earlier: (&str, Timestamp),
    latest: Option<Timestamp>,
) -> Result<(), ValidationError> {
    if at < earlier.1 {
        return Err(ValidationError::OutOfOrder {
            field: field.to_owned(),
            at,
            earlier_field: earlier.0.to_owned(),
            earlier: earlier.1,
        });
    }
    if let Some(latest) = latest
        && at > latest
    {
        return Err(ValidationError::OutOfOrder {
            field: "last_seen_at".to_owned(),
            at: latest,
            earlier_field: field.to_owned(),
            earlier: at,
        });
    }
    Ok(())
}

/// A track's id across the fleet: track ids are unique per edge, so the edge is part of it.
/// Written `<edge_id>:<track_id>` (edge ids never hold a `:`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackKey {
    pub edge_id: String,
    pub track_id: u64,
}

impl fmt::Display for TrackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.edge_id, self.track_id)
    }
}

impl std::str::FromStr for TrackKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not <edge_id>:<track_id>, e.g. edge-01:42");
        let (edge, track) = s.rsplit_once(':').ok_or_else(bad)?;
        if !crate::validate::is_identifier(edge) {
            return Err(bad());
        }
        match track.parse::<u64>() {
            // One spelling per id: no sign, no leading zeros.
            Ok(track_id) if track_id > 0 && !track.starts_with(['+', '0']) => Ok(Self {
                edge_id: edge.to_owned(),
                track_id,
            }),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const T0: i64 = 1_795_000_000_000;
    const NOW: Timestamp = Timestamp::from_millis(T0 + 60_000);

    pub(crate) fn record() -> TrackRecord {
        let at = |ms: i64| Timestamp::from_millis(T0 + ms);
        TrackRecord {
            record_id: EventId::new_v7(at(30_000)),
            schema_version: TRACK_SCHEMA_VERSION,
            edge_id: "edge-1".into(),
            camera_id: "gate".into(),
            track_id: 42,
            revision: 1,
            label: "person".into(),
            class_id: 0,
            started_at: at(0),
            last_seen_at: at(30_000),
            ended_by: Some(EndedBy::Lost),
            frames: 120,
            max_confidence: 0.91,
            mean_confidence: 0.7,
            best: BestFrame {
                captured_at: at(12_000),
                bbox: BoundingBox {
                    x_min: 0.2,
                    y_min: 0.3,
                    x_max: 0.4,
                    y_max: 0.9,
                },
                confidence: 0.91,
            },
            path: vec![
                PathPoint {
                    at: at(0),
                    x: 0.1,
                    y: 0.9,
                },
                PathPoint {
                    at: at(30_000),
                    x: 0.8,
                    y: 0.9,
                },
            ],
            zones: vec![ZoneVisit {
                zone: "gate".into(),
                entered_at: at(10_000),
                exited_at: Some(at(20_000)),
            }],
            arrival_event_id: Some(EventId::new_v7(at(0))),
            snapshot: None,
            attributes: BTreeMap::new(),
        }
    }

    fn rejected(change: impl FnOnce(&mut TrackRecord)) -> String {
        let mut r = record();
        change(&mut r);
        r.validate(NOW, 300_000).unwrap_err().to_string()
    }

    #[test]
    fn a_well_formed_record_passes() {
        record().validate(NOW, 300_000).unwrap();
        assert_eq!(record().duration_ms(), 30_000);
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        type Change = Box<dyn FnOnce(&mut TrackRecord)>;
        let cases: Vec<(&str, Change)> = vec![
            ("schema_version:", Box::new(|r| r.schema_version = 2)),
            (
                "record_id:",
                Box::new(|r| r.record_id = EventId::from_uuid(uuid::Uuid::nil())),
            ),
            ("camera_id:", Box::new(|r| r.camera_id = "gate cam".into())),
            ("track_id:", Box::new(|r| r.track_id = 0)),
            ("label:", Box::new(|r| r.label.clear())),
            (
                "last_seen_at: ",
                Box::new(|r| r.last_seen_at = Timestamp::from_millis(T0 - 1)),
            ),
            (
                "started_at:",
                Box::new(|r| r.started_at = Timestamp::from_millis(T0 + 3_600_000)),
            ),
            ("frames:", Box::new(|r| r.frames = 0)),
            ("max_confidence:", Box::new(|r| r.max_confidence = f32::NAN)),
            ("mean_confidence:", Box::new(|r| r.mean_confidence = 0.95)),
            ("best.confidence:", Box::new(|r| r.best.confidence = 0.99)),
            ("best.bbox.y:", Box::new(|r| r.best.bbox.y_min = 0.95)),
            (
                "best.captured_at:",
                Box::new(|r| r.best.captured_at = Timestamp::from_millis(T0 - 5)),
            ),
            ("path[1].at:", Box::new(|r| r.path.swap(0, 1))),
            ("path[0].x:", Box::new(|r| r.path[0].x = 1.5)),
            ("zones[0].zone:", Box::new(|r| r.zones[0].zone = "".into())),
            (
                "zones[0].exited_at:",
                Box::new(|r| r.zones[0].exited_at = Some(Timestamp::from_millis(T0 + 5_000))),
            ),
            (
                "path:",
                Box::new(|r| r.path = vec![r.path[0]; MAX_PATH_POINTS + 1]),
            ),
            (
                "arrival_event_id:",
                Box::new(|r| r.arrival_event_id = Some(EventId::from_uuid(uuid::Uuid::nil()))),
            ),
            (
                "attributes key:",
                Box::new(|r| {
                    r.attributes.insert("a b".into(), "c".into());
                }),
            ),
        ];
        for (field, change) in cases {
            let message = rejected(change);
            assert!(message.starts_with(field), "{field}: {message}");
        }
        // A time after the end names the end.
        assert_eq!(
            rejected(|r| r.path[1].at = Timestamp::from_millis(T0 + 31_000)),
            format!(
                "last_seen_at: {} is before path[1].at ({})",
                Timestamp::from_millis(T0 + 30_000),
                Timestamp::from_millis(T0 + 31_000)
            )
        );
    }

    #[test]
    fn a_track_key_names_the_edge_and_round_trips() {
        let key = record().key();
        assert_eq!(key.to_string(), "edge-1:42");
        assert_eq!("edge-1:42".parse::<TrackKey>(), Ok(key));
        for bad in [
            "edge-1",
            "edge-1:0",
            "edge-1:-3",
            "edge-1:+3",
            "edge-1:042",
            ":4",
            "a b:4",
            "e:4:5",
            "e:x",
        ] {
            assert!(bad.parse::<TrackKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ended_by_reads_as_its_name() {
        assert_eq!(
            serde_json::to_string(&EndedBy::Shutdown).unwrap(),
            "\"shutdown\""
        );
        assert_eq!(EndedBy::Lost.to_string(), "lost");
    }
}
