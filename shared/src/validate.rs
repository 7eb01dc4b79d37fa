//! The rules an event must satisfy before it is published or stored.
//!
//! The edge validates what it creates, ingest validates what it receives (other tools may
//! publish too), and a failure names the field and the problem so an operator can fix the
//! producer. `now` is a parameter: this crate never reads the clock.

use std::collections::BTreeMap;
use std::fmt::Display;

use thiserror::Error;

use crate::event::{BoundingBox, DetectionEvent, EventId, OLDEST_SCHEMA_VERSION, SCHEMA_VERSION};
use crate::timestamp::Timestamp;

/// Longest `edge_id` or `camera_id`, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest detection label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// Most detections in one event.
pub const MAX_DETECTIONS: usize = 512;
/// Longest model name or version, in bytes.
pub const MAX_MODEL_FIELD_LEN: usize = 128;
/// Longest snapshot reference, in bytes.
pub const MAX_SNAPSHOT_LEN: usize = 1024;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Most attributes on one event.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute value, in bytes (keys follow [`MAX_ID_LEN`] and the id character set).
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 1024;
/// How far in the future of the receiver's clock a capture time may be (clock skew).
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;
/// The earliest capture time accepted: 2000-01-01T00:00:00Z.
pub const MIN_CAPTURED_AT: Timestamp = Timestamp::from_millis(946_684_800_000);
/// The longest plausible inference time for one frame (an hour), in milliseconds.
pub const MAX_INFERENCE_MS: f32 = 3_600_000.0;

/// Why an event was rejected. The `field` names the offending field with its path, such as
/// `detections[2].confidence`.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("schema_version: unsupported version {found}, this build reads versions 1 to {reads}")]
    SchemaVersion { found: u16, reads: u16 },
    #[error("{field}: {id} is not a UUIDv7 (version {version})")]
    NotUuidV7 {
        field: &'static str,
        id: String,
        version: usize,
    },
    #[error("{field}: must be 1 to {max} characters of A-Z a-z 0-9 _ -, got {value:?}")]
    BadIdentifier {
        field: String,
        value: String,
        max: usize,
    },
    #[error("{field}: must not be empty")]
    Empty { field: String },
    #[error("{field}: {len} bytes is longer than the limit of {max}")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("{field}: contains control characters")]
    ControlCharacters { field: String },
    #[error("{field}: {count} entries is more than the limit of {max}")]
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
    #[error("{field}: {value} is outside {min}..={max}")]
    OutOfRange {
        field: String,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{field}: box is inverted ({min} > {max})")]
    InvertedBox { field: String, min: f32, max: f32 },
    #[error(
        "{field}: {at} is more than {max_secs}s ahead of the receiver's clock ({now}): is the sender's clock right?"
    )]
    InFuture {
        field: &'static str,
        at: Timestamp,
        now: Timestamp,
        max_secs: i64,
    },
    #[error("{field}: {at} is before {MIN_CAPTURED_AT}")]
    TooOld { field: &'static str, at: Timestamp },
    #[error("{field}: {at} is before {earlier_field} ({earlier})")]
    OutOfOrder {
        field: String,
        at: Timestamp,
        earlier_field: String,
        earlier: Timestamp,
    },
    #[error("{field}: {value:?} appears twice")]
    Duplicate { field: String, value: String },
    #[error("{field}: the outline encloses no area")]
    Degenerate { field: String },
}

/// Most zones on one camera, so also the most one detection can stand in.
pub const MAX_ZONES: usize = 64;

impl DetectionEvent {
    /// Checks every rule of the v1 contract; `now` is the validator's clock, and a capture
    /// time up to [`MAX_FUTURE_SKEW_MS`] ahead of it is accepted.
    pub fn validate(&self, now: Timestamp) -> Result<(), ValidationError> {
        self.validate_with_skew(now, MAX_FUTURE_SKEW_MS)
    }

    /// [`DetectionEvent::validate`] with another bound on how far ahead of `now` a capture
    /// time may be (ingest's `consumer.max_future_skew_secs`).
    pub fn validate_with_skew(
        &self,
        now: Timestamp,
        max_future_skew_ms: i64,
    ) -> Result<(), ValidationError> {
        if !(OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&self.schema_version) {
            return Err(ValidationError::SchemaVersion {
                found: self.schema_version,
                reads: SCHEMA_VERSION,
            });
        }
        uuid_v7("event_id", &self.event_id)?;
        identifier("edge_id", &self.edge_id)?;
        identifier("camera_id", &self.camera_id)?;
        seen_at("captured_at", self.captured_at, now, max_future_skew_ms)?;
        in_range("motion_score", self.motion_score, 0.0, 1.0)?;
        in_range("inference_ms", self.inference_ms, 0.0, MAX_INFERENCE_MS)?;
        text("model.name", &self.model.name, MAX_MODEL_FIELD_LEN, false)?;
        text(
            "model.version",
            &self.model.version,
            MAX_MODEL_FIELD_LEN,
            false,
        )?;
        if let Some(snapshot) = &self.snapshot {
            text("snapshot", snapshot, MAX_SNAPSHOT_LEN, false)?;
        }
        if let Some(description) = &self.description {
            bounded("description", description, MAX_DESCRIPTION_LEN)?;
            if description
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t')
            {
                return Err(ValidationError::ControlCharacters {
                    field: "description".into(),
                });
            }
        }
        count("detections", self.detections.len(), MAX_DETECTIONS)?;
        for (i, d) in self.detections.iter().enumerate() {
            text(
                format_args!("detections[{i}].label"),
                &d.label,
                MAX_LABEL_LEN,
                false,
            )?;
            in_range(
                format_args!("detections[{i}].confidence"),
                d.confidence,
                0.0,
                1.0,
            )?;
            bbox(format_args!("detections[{i}].bbox"), &d.bbox)?;
            if self.schema_version < 2 && !d.zones.is_empty() {
                return Err(ValidationError::TooMany {
                    field: format!("detections[{i}].zones"),
                    count: d.zones.len(),
                    max: 0,
                });
            }
            count(
                format_args!("detections[{i}].zones"),
                d.zones.len(),
                MAX_ZONES,
            )?;
            for (z, zone) in d.zones.iter().enumerate() {
                identifier(format_args!("detections[{i}].zones[{z}]"), zone)?;
                if d.zones[..z].contains(zone) {
                    return Err(ValidationError::Duplicate {
                        field: format!("detections[{i}].zones[{z}]"),
                        value: zone.clone(),
                    });
                }
            }
        }
        attributes(&self.attributes)
    }
}

/// Checks that `id` is a UUIDv7.
pub(crate) fn uuid_v7(field: &'static str, id: &EventId) -> Result<(), ValidationError> {
    let version = id.as_uuid().get_version_num();
    if version != 7 {
        return Err(ValidationError::NotUuidV7 {
            field,
            id: id.to_string(),
            version,
        });
    }
    Ok(())
}

/// Checks a time something was seen at the edge: not before [`MIN_CAPTURED_AT`], and at
/// most `max_future_skew_ms` ahead of the validator's clock `now`.
pub(crate) fn seen_at(
    field: &'static str,
    at: Timestamp,
    now: Timestamp,
    max_future_skew_ms: i64,
) -> Result<(), ValidationError> {
    if at < MIN_CAPTURED_AT {
        return Err(ValidationError::TooOld { field, at });
    }
    if at.as_millis() > now.as_millis().saturating_add(max_future_skew_ms) {
        return Err(ValidationError::InFuture {
            field,
            at,
            now,
            max_secs: max_future_skew_ms / 1000,
        });
    }
    Ok(())
}

/// Checks free string attributes: at most [`MAX_ATTRIBUTES`], identifier keys, bounded
/// values without control characters.
pub(crate) fn attributes(attributes: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    count("attributes", attributes.len(), MAX_ATTRIBUTES)?;
    for (key, value) in attributes {
        identifier("attributes key", key)?;
        text(
            format_args!("attributes[{key}]"),
            value,
            MAX_ATTRIBUTE_VALUE_LEN,
            true,
        )?;
    }
    Ok(())
}

/// Whether `s` is a valid edge, camera or attribute-key id: 1 to [`MAX_ID_LEN`] bytes of
/// ASCII letters, digits, `_` and `-`. Such ids are safe as NATS subject tokens, file names
/// and metric label values.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` is a valid detection label: 1 to [`MAX_LABEL_LEN`] bytes without control
/// characters.
pub fn is_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_LABEL_LEN && !s.chars().any(char::is_control)
}

pub(crate) fn identifier(field: impl Display, value: &str) -> Result<(), ValidationError> {
    if is_identifier(value) {
        return Ok(());
    }
    let mut shown: String = value.chars().take(MAX_ID_LEN + 8).collect();
    if shown.len() < value.len() {
        shown.push_str("...");
    }
    Err(ValidationError::BadIdentifier {
        field: field.to_string(),
        value: shown,
        max: MAX_ID_LEN,
    })
}

pub(crate) fn bounded(field: impl Display, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(ValidationError::TooLong {
            field: field.to_string(),
            len: value.len(),
            max,
        });
    }
    Ok(())
}

pub(crate) fn text(
    field: impl Display + Copy,
    value: &str,
    max: usize,
    may_be_empty: bool,
) -> Result<(), ValidationError> {
    if value.is_empty() && !may_be_empty {
        return Err(ValidationError::Empty {
            field: field.to_string(),
        });
    }
    bounded(field, value, max)?;
    if value.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacters {
            field: field.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn count(field: impl Display, count: usize, max: usize) -> Result<(), ValidationError> {
    if count > max {
        return Err(ValidationError::TooMany {
            field: field.to_string(),
            count,
            max,
        });
    }
    Ok(())
}

pub(crate) fn in_range(
    field: impl Display,
    value: f32,
    min: f32,
    max: f32,
) -> Result<(), ValidationError> {
    // NaN fails both comparisons, so it is out of range too.
    if value >= min && value <= max {
        return Ok(());
    }
    Err(ValidationError::OutOfRange {
        field: field.to_string(),
        value: f64::from(value),
        min: f64::from(min),
        max: f64::from(max),
    })
}

pub(crate) fn bbox(field: impl Display + Copy, b: &BoundingBox) -> Result<(), ValidationError> {
    for (name, v) in [
        ("x_min", b.x_min),
        ("y_min", b.y_min),
        ("x_max", b.x_max),
        ("y_max", b.y_max),
    ] {
        in_range(format_args!("{field}.{name}"), v, 0.0, 1.0)?;
    }
    if b.x_min > b.x_max {
        return Err(ValidationError::InvertedBox {
            field: format!("{field}.x"),
            min: b.x_min,
            max: b.x_max,
        });
    }
    if b.y_min > b.y_max {
        return Err(ValidationError::InvertedBox {
            field: format!("{field}.y"),
            min: b.y_min,
            max: b.y_max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Detection, EventId, ModelInfo};
    use std::collections::BTreeMap;

    const NOW: Timestamp = Timestamp::from_millis(1_795_000_000_000);

    fn event() -> DetectionEvent {
        DetectionEvent {
            event_id: EventId::new_v7(NOW),
            schema_version: SCHEMA_VERSION,
            edge_id: "edge-1".into(),
            camera_id: "gate_cam".into(),
            captured_at: NOW,
            frame_seq: 7,
            motion_score: 0.4,
            detections: vec![Detection {
                label: "traffic light".into(),
                class_id: 9,
                confidence: 0.9,
                bbox: BoundingBox {
                    x_min: 0.0,
                    y_min: 0.1,
                    x_max: 1.0,
                    y_max: 0.5,
                },
                track_id: Some(3),
                zones: vec!["driveway".into(), "street".into()],
            }],
            model: ModelInfo {
                name: "nanodet".into(),
                version: "m-416".into(),
            },
            inference_ms: 14.2,
            snapshot: None,
            description: Some("line one\nline two".into()),
            attributes: BTreeMap::from([("site".into(), "north gate".into())]),
        }
    }

    fn rejects(mutate: impl FnOnce(&mut DetectionEvent), expected: &str) {
        let mut e = event();
        mutate(&mut e);
        let err = e.validate(NOW).expect_err("event should be rejected");
        assert!(
            err.to_string().contains(expected),
            "{err} should mention {expected}"
        );
    }

    #[test]
    fn accepts_a_good_event() {
        event().validate(NOW).unwrap();
    }

    #[test]
    fn version_1_events_are_valid_without_zones() {
        let mut e = event();
        e.schema_version = 1;
        rejects(|e| e.schema_version = 1, "detections[0].zones");
        e.detections[0].zones.clear();
        e.validate(NOW).unwrap();
    }

    #[test]
    fn names_the_bad_field() {
        rejects(|e| e.schema_version = 3, "schema_version");
        rejects(|e| e.schema_version = 0, "schema_version");
        rejects(
            |e| e.detections[0].zones[1] = "a zone".into(),
            "detections[0].zones[1]",
        );
        rejects(
            |e| e.detections[0].zones[1] = "driveway".into(),
            "detections[0].zones[1]",
        );
        rejects(
            |e| e.detections[0].zones = vec!["z".into(); MAX_ZONES + 1],
            "detections[0].zones",
        );
        rejects(
            |e| e.event_id = EventId::from_uuid(uuid::Uuid::nil()),
            "UUIDv7",
        );
        rejects(|e| e.edge_id = "edge.1".into(), "edge_id");
        rejects(|e| e.camera_id = String::new(), "camera_id");
        rejects(|e| e.camera_id = "c".repeat(65), "camera_id");
        rejects(|e| e.motion_score = f32::NAN, "motion_score");
        rejects(|e| e.inference_ms = -1.0, "inference_ms");
        rejects(
            |e| e.detections[0].confidence = 1.01,
            "detections[0].confidence",
        );
        rejects(
            |e| e.detections[0].bbox.x_max = 1.5,
            "detections[0].bbox.x_max",
        );
        rejects(|e| e.detections[0].bbox.y_min = 0.9, "detections[0].bbox.y");
        rejects(
            |e| e.detections[0].label = "a\u{7}b".into(),
            "detections[0].label",
        );
        rejects(|e| e.model.name.clear(), "model.name");
        rejects(|e| e.snapshot = Some("x".repeat(2000)), "snapshot");
        rejects(|e| e.description = Some("bell\u{7}".into()), "description");
        rejects(
            |e| e.captured_at = Timestamp::from_millis(NOW.as_millis() + 301_000),
            "ahead",
        );
        rejects(|e| e.captured_at = Timestamp::from_millis(0), "before 2000");
        rejects(
            |e| {
                e.attributes.insert("bad key".into(), "v".into());
            },
            "attributes key",
        );
        rejects(
            |e| e.detections = vec![e.detections[0].clone(); MAX_DETECTIONS + 1],
            "detections",
        );
    }

    #[test]
    fn allows_small_clock_skew() {
        let mut e = event();
        e.captured_at = Timestamp::from_millis(NOW.as_millis() + 60_000);
        e.validate(NOW).unwrap();
    }
}
