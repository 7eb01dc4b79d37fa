//! The detection event, schema version 1.
//!
//! The field order of these structs is part of the bincode wire format: bincode writes
//! fields in declaration order with no names. Changing, reordering or removing a field is a
//! new schema version (see [`crate::codec`]); never change v1 in place.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::timestamp::Timestamp;

/// The schema version this crate writes, and the only one it reads today.
pub const SCHEMA_VERSION: u16 = 1;

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
