//! The detection event, schema version 2, and version 1 ([`v1`]), which ingest reads forever
//! (an edge may hold v1 events in its buffer for as long as it was offline).
//!
//! The field order of these structs is part of the bincode wire format: bincode writes
//! fields in declaration order with no names. Changing, reordering or removing a field is a
//! new schema version (see [`crate::codec`]); never change a version in place. Version 2
//! added [`Detection::zones`] (where the object stood).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::timestamp::Timestamp;

/// The schema version this crate writes.
pub const SCHEMA_VERSION: u16 = 2;
/// The oldest schema version this crate reads: it reads every version from this one to
/// [`SCHEMA_VERSION`].
pub const OLDEST_SCHEMA_VERSION: u16 = 1;

/// The id of an event: a UUIDv7 made at the edge, time-ordered.
///
/// It is the idempotency key end to end: `Nats-Msg-Id` on publish, the deduplication key in
/// ClickHouse and the id in the HTTP API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new UUIDv7 for an event captured at `at`.
    ///
    /// The id's time prefix is the capture time, so ids sort like captures.
    pub fn new_v7(at: Timestamp) -> Self {
        let millis = u64::try_from(at.as_millis()).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            millis / 1000,
            (millis % 1000) as u32 * 1_000_000,
        );
        Self(Uuid::new_v7(ts))
    }

    /// Wraps an existing UUID (any version; see [`crate::validate`] for the v7 rule).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// An axis-aligned box in normalized frame coordinates: `0.0` is the left or top edge of the
/// frame and `1.0` the right or bottom edge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundingBox {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

/// One object found in a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detection {
    /// Class name from the model's labels file, e.g. `person`.
    pub label: String,
    /// Index of the class in the model's output.
    pub class_id: u32,
    /// Detector score in `0.0..=1.0`.
    pub confidence: f32,
    /// Where the object is, normalized to the frame.
    pub bbox: BoundingBox,
    /// Stable id of the tracked object across frames of one camera, when a tracker ran.
    pub track_id: Option<u64>,
    /// The zones of its camera it stood in (the bottom-centre of its box inside the zone's
    /// outline), in the camera's zone order. Schema version 2; empty in version 1 events.
    #[serde(default)]
    pub zones: Vec<String>,
}

/// The model that produced the detections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
}

/// A detection event: what one camera saw in one frame, as created at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionEvent {
    /// UUIDv7 made at the edge; the idempotency key.
    pub event_id: EventId,
    /// Schema version of this event; [`SCHEMA_VERSION`] for everything this crate writes.
    pub schema_version: u16,
    /// The agent (camera host) that made the event.
    pub edge_id: String,
    /// The camera on that host.
    pub camera_id: String,
    /// When the frame was captured (UTC, millisecond precision).
    pub captured_at: Timestamp,
    /// Sequence number of the frame within the camera's stream.
    pub frame_seq: u64,
    /// How much the frame differed from the previous one, `0.0..=1.0`.
    pub motion_score: f32,
    /// Every object found in the frame.
    pub detections: Vec<Detection>,
    /// The model that found them.
    pub model: ModelInfo,
    /// Time spent in inference for this frame, in milliseconds.
    pub inference_ms: f32,
    /// Where the annotated snapshot of the frame is kept, if one was saved.
    pub snapshot: Option<String>,
    /// Free-text description, if any.
    pub description: Option<String>,
    /// Free string attributes (site, zone, firmware, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Schema version 1: the same event without [`Detection::zones`]. Decoded into the current
/// types (zones empty, `schema_version` kept at 1, so a stored v1 event stays what it was),
/// and encoded from them for a v1 event that is published or replayed again.
pub mod v1 {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::{BoundingBox, EventId, ModelInfo};
    use crate::timestamp::Timestamp;

    /// A v1 detection: no zones.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Detection {
        pub label: String,
        pub class_id: u32,
        pub confidence: f32,
        pub bbox: BoundingBox,
        pub track_id: Option<u64>,
    }

    /// A v1 event: the fields of [`super::DetectionEvent`] in the same order, with v1
    /// detections.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DetectionEvent {
        pub event_id: EventId,
        pub schema_version: u16,
        pub edge_id: String,
        pub camera_id: String,
        pub captured_at: Timestamp,
        pub frame_seq: u64,
        pub motion_score: f32,
        pub detections: Vec<Detection>,
        pub model: ModelInfo,
        pub inference_ms: f32,
        pub snapshot: Option<String>,
        pub description: Option<String>,
        #[serde(default)]
        pub attributes: BTreeMap<String, String>,
    }

    impl From<DetectionEvent> for super::DetectionEvent {
        fn from(e: DetectionEvent) -> Self {
            Self {
                event_id: e.event_id,
                schema_version: e.schema_version,
                edge_id: e.edge_id,
                camera_id: e.camera_id,
                captured_at: e.captured_at,
                frame_seq: e.frame_seq,
                motion_score: e.motion_score,
                detections: e
                    .detections
                    .into_iter()
                    .map(|d| super::Detection {
                        label: d.label,
                        class_id: d.class_id,
                        confidence: d.confidence,
                        bbox: d.bbox,
                        track_id: d.track_id,
                        zones: Vec::new(),
                    })
                    .collect(),
                model: e.model,
                inference_ms: e.inference_ms,
                snapshot: e.snapshot,
                description: e.description,
                attributes: e.attributes,
            }
        }
    }

    impl DetectionEvent {
        /// The v1 form of `event`; `None` if a detection has zones, which v1 cannot carry.
        pub fn from_current(event: &super::DetectionEvent) -> Option<Self> {
            Some(Self {
                event_id: event.event_id,
                schema_version: event.schema_version,
                edge_id: event.edge_id.clone(),
                camera_id: event.camera_id.clone(),
                captured_at: event.captured_at,
                frame_seq: event.frame_seq,
                motion_score: event.motion_score,
                detections: event
                    .detections
                    .iter()
                    .map(|d| {
                        d.zones.is_empty().then(|| Detection {
                            label: d.label.clone(),
                            class_id: d.class_id,
                            confidence: d.confidence,
                            bbox: d.bbox,
                            track_id: d.track_id,
                        })
                    })
                    .collect::<Option<_>>()?,
                model: event.model.clone(),
                inference_ms: event.inference_ms,
                snapshot: event.snapshot.clone(),
                description: event.description.clone(),
                attributes: event.attributes.clone(),
            })
        }
    }
}
