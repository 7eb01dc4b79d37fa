//! The row types, in column order (RowBinary has no names): [`EventRow`] for `events`
//! (written by ingest, read back by the query service), [`HeartbeatRow`] for
//! `edge_heartbeats` and [`TrackRow`] for `tracks`; and the ClickHouse client set-up. The tables themselves are made by
//! [`crate::migrations`] (see `store/migrations/`).
//!
//! Column notes for SQL users:
//! * `captured_at` is the capture time in whole seconds (partitioning and coarse filters);
//!   `captured_at_ms` is the exact time in epoch milliseconds (ordering and precise filters).
//! * `detections.*` and `attributes.*` are `Nested` columns: parallel arrays, one element per
//!   detection or attribute (`ARRAY JOIN detections` turns them into rows).

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use sightline_shared::config::ClickHouseConfig;
use sightline_shared::heartbeat::Heartbeat;
use sightline_shared::snapshot::Owner;
use sightline_shared::track::{BestFrame, EndedBy, PathPoint, TrackRecord, ZoneVisit};
use sightline_shared::{BoundingBox, Detection, DetectionEvent, EventId, ModelInfo, Timestamp};
use uuid::Uuid;

/// The password file named in the config could not be read.
#[derive(Debug, thiserror::Error)]
#[error("failed to read clickhouse.password_file {path}: {source}")]
pub struct PasswordFileError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// A ClickHouse client for `config`'s server and database.
///
/// Row validation is off: ClickHouse 18.16 cannot describe types the way the crate's
/// validating format needs, and our row types are checked against the real servers in the
/// integration tests instead.
pub fn client(config: &ClickHouseConfig) -> Result<Client, PasswordFileError> {
    let mut client = Client::default()
        .with_url(&config.url)
        .with_user(&config.user)
        .with_validation(false);
    let password = match (&config.password, &config.password_file) {
        (_, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| PasswordFileError {
                    path: path.clone(),
                    source,
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        (Some(password), None) => Some(password.clone()),
        (None, None) => None,
    };
    if let Some(password) = password {
        client = client.with_password(password);
    }
    Ok(client)
}

/// One row of the `events` table, in column order (RowBinary has no names).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct EventRow {
    pub schema_version: u16,
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub edge_id: String,
    pub camera_id: String,
    /// `DateTime` travels as seconds since the epoch.
    pub captured_at: u32,
    pub captured_at_ms: i64,
    pub frame_seq: u64,
    pub motion_score: f32,
    #[serde(rename = "detections.label")]
    pub det_label: Vec<String>,
    #[serde(rename = "detections.class_id")]
    pub det_class_id: Vec<u32>,
    #[serde(rename = "detections.confidence")]
    pub det_confidence: Vec<f32>,
    #[serde(rename = "detections.x_min")]
    pub det_x_min: Vec<f32>,
    #[serde(rename = "detections.y_min")]
    pub det_y_min: Vec<f32>,
    #[serde(rename = "detections.x_max")]
    pub det_x_max: Vec<f32>,
    #[serde(rename = "detections.y_max")]
    pub det_y_max: Vec<f32>,
    #[serde(rename = "detections.track_id")]
    pub det_track_id: Vec<Option<u64>>,
    /// Schema version 2: the zones each object stood in (empty for version 1 events).
    #[serde(rename = "detections.zones")]
    pub det_zones: Vec<Vec<String>>,
    pub model_name: String,
    pub model_version: String,
    pub inference_ms: f32,
    pub snapshot: Option<String>,
    pub description: Option<String>,
    #[serde(rename = "attributes.key")]
    pub attr_key: Vec<String>,
    #[serde(rename = "attributes.value")]
    pub attr_value: Vec<String>,
}

impl From<DetectionEvent> for EventRow {
    /// Moves the event's strings into the row (the ingest hot path: no copies).
    fn from(e: DetectionEvent) -> Self {
        let n = e.detections.len();
        let mut row = Self {
            schema_version: e.schema_version,
            event_id: *e.event_id.as_uuid(),
            edge_id: e.edge_id,
            camera_id: e.camera_id,
            // Validated events are captured between 2000 and now + skew, well inside u32.
            captured_at: u32::try_from(e.captured_at.as_secs()).unwrap_or(0),
            captured_at_ms: e.captured_at.as_millis(),
            frame_seq: e.frame_seq,
            motion_score: e.motion_score,
            det_label: Vec::with_capacity(n),
            det_class_id: Vec::with_capacity(n),
            det_confidence: Vec::with_capacity(n),
            det_x_min: Vec::with_capacity(n),
            det_y_min: Vec::with_capacity(n),
            det_x_max: Vec::with_capacity(n),
            det_y_max: Vec::with_capacity(n),
            det_track_id: Vec::with_capacity(n),
            det_zones: Vec::with_capacity(n),
            model_name: e.model.name,
            model_version: e.model.version,
            inference_ms: e.inference_ms,
            snapshot: e.snapshot,
            description: e.description,
            attr_key: Vec::with_capacity(e.attributes.len()),
            attr_value: Vec::with_capacity(e.attributes.len()),
        };
        for d in e.detections {
            row.det_label.push(d.label);
            row.det_class_id.push(d.class_id);
            row.det_confidence.push(d.confidence);
            row.det_x_min.push(d.bbox.x_min);
            row.det_y_min.push(d.bbox.y_min);
            row.det_x_max.push(d.bbox.x_max);
            row.det_y_max.push(d.bbox.y_max);
            row.det_track_id.push(d.track_id);
            row.det_zones.push(d.zones);
        }
        for (key, value) in e.attributes {
            row.attr_key.push(key);
            row.attr_value.push(value);
        }
        row
    }
}

impl From<&DetectionEvent> for EventRow {
    fn from(e: &DetectionEvent) -> Self {
        Self::from(e.clone())
    }
}

impl EventRow {
    /// Turns a stored row back into the event it came from.
    ///
    /// `Nested` columns always have equal lengths in ClickHouse; if a hand-made row breaks
    /// that, the extra elements are ignored rather than panicking.
    pub fn into_event(self) -> DetectionEvent {
        let detections = self
            .det_label
            .into_iter()
            .zip(self.det_class_id)
            .zip(self.det_confidence)
            .zip(self.det_x_min.into_iter().zip(self.det_y_min))
            .zip(self.det_x_max.into_iter().zip(self.det_y_max))
            .zip(self.det_track_id.into_iter().zip(self.det_zones))
            .map(
                |(
                    ((((label, class_id), confidence), (x_min, y_min)), (x_max, y_max)),
                    (track_id, zones),
                )| {
                    Detection {
                        label,
                        class_id,
                        confidence,
                        bbox: BoundingBox {
                            x_min,
                            y_min,
                            x_max,
                            y_max,
                        },
                        track_id,
                        zones,
                    }
                },
            )
            .collect();
        DetectionEvent {
            event_id: EventId::from_uuid(self.event_id),
            schema_version: self.schema_version,
            edge_id: self.edge_id,
            camera_id: self.camera_id,
            captured_at: Timestamp::from_millis(self.captured_at_ms),
            frame_seq: self.frame_seq,
            motion_score: self.motion_score,
            detections,
            model: ModelInfo {
                name: self.model_name,
                version: self.model_version,
            },
            inference_ms: self.inference_ms,
            snapshot: self.snapshot,
            description: self.description,
            attributes: self.attr_key.into_iter().zip(self.attr_value).collect(),
        }
    }
}

/// One row of `edge_heartbeats` (without `received_at`, which defaults); v2's per-camera
/// states are parallel arrays.
#[derive(Debug, Clone, PartialEq, Row, Serialize)]
pub struct HeartbeatRow {
    pub edge_id: String,
    /// `DateTime` travels as seconds since the epoch.
    pub sent_at: u32,
    pub sent_at_ms: i64,
    pub agent_version: String,
    pub uptime_secs: u64,
    pub cameras: u32,
    pub fps: f64,
    pub events_created: u64,
    pub events_sent: u64,
    pub events_dropped: u64,
    pub backlog: u64,
    pub oldest_unsent_at_ms: Option<i64>,
    pub storage_used_bytes: u64,
    pub storage_limit_bytes: u64,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub schema_version: u16,
    pub interval_secs: u32,
    pub storage_free_bytes: Option<u64>,
    pub clock_offset_ms: Option<i64>,
    pub events_quarantined: u64,
    pub events_refused: u64,
    pub camera_ids: Vec<String>,
    pub camera_states: Vec<String>,
    pub camera_fps: Vec<f64>,
    pub camera_events_created: Vec<u64>,
    pub camera_errors: Vec<u64>,
    pub uploads_pending: u64,
    pub uploads_sent: u64,
    pub uploads_dropped: u64,
    pub upload_errors: u64,
    pub upload_bytes: u64,
}

impl From<Heartbeat> for HeartbeatRow {
    fn from(h: Heartbeat) -> Self {
        Self {
            edge_id: h.edge_id,
            sent_at: u32::try_from(h.sent_at.as_secs()).unwrap_or(0),
            sent_at_ms: h.sent_at.as_millis(),
            agent_version: h.agent_version,
            uptime_secs: h.uptime_secs,
            cameras: h.cameras,
            fps: h.fps,
            events_created: h.events_created,
            events_sent: h.events_sent,
            events_dropped: h.events_dropped,
            backlog: h.backlog,
            oldest_unsent_at_ms: h.oldest_unsent_at.map(|t| t.as_millis()),
            storage_used_bytes: h.storage_used_bytes,
            storage_limit_bytes: h.storage_limit_bytes,
            cpu_percent: h.cpu_percent,
            rss_bytes: h.rss_bytes,
            schema_version: h.schema_version,
            interval_secs: h.interval_secs,
            storage_free_bytes: h.storage_free_bytes,
            clock_offset_ms: h.clock_offset_ms,
            events_quarantined: h.events_quarantined,
            events_refused: h.events_refused,
            camera_fps: h.camera_states.iter().map(|c| c.fps).collect(),
            camera_events_created: h.camera_states.iter().map(|c| c.events_created).collect(),
            camera_errors: h.camera_states.iter().map(|c| c.errors).collect(),
            camera_ids: h
                .camera_states
                .iter()
                .map(|c| c.camera_id.clone())
                .collect(),
            camera_states: h.camera_states.into_iter().map(|c| c.state).collect(),
            uploads_pending: h.uploads_pending,
            uploads_sent: h.uploads_sent,
            uploads_dropped: h.uploads_dropped,
            upload_errors: h.upload_errors,
            upload_bytes: h.upload_bytes,
        }
    }
}

/// One row of `tracks` (without `ingested_at`, which defaults): a track record, its best
/// frame flattened, its path and zone stays as parallel arrays.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct TrackRow {
    pub schema_version: u16,
    #[serde(with = "clickhouse::serde::uuid")]
    pub record_id: Uuid,
    pub edge_id: String,
    pub camera_id: String,
    pub track_id: u64,
    pub revision: u32,
    pub label: String,
    pub class_id: u32,
    /// `DateTime` travels as seconds since the epoch.
    pub started_at: u32,
    pub started_at_ms: i64,
    pub last_seen_at_ms: i64,
    /// `""` while the track lasts.
    pub ended_by: String,
    pub frames: u64,
    pub max_confidence: f32,
    pub mean_confidence: f32,
    pub best_at_ms: i64,
    pub best_x_min: f32,
    pub best_y_min: f32,
    pub best_x_max: f32,
    pub best_y_max: f32,
    pub best_confidence: f32,
    #[serde(rename = "path.at_ms")]
    pub path_at_ms: Vec<i64>,
    #[serde(rename = "path.x")]
    pub path_x: Vec<f32>,
    #[serde(rename = "path.y")]
    pub path_y: Vec<f32>,
    #[serde(rename = "zones.zone")]
    pub zone_name: Vec<String>,
    #[serde(rename = "zones.entered_at_ms")]
    pub zone_entered_at_ms: Vec<i64>,
    #[serde(rename = "zones.exited_at_ms")]
    pub zone_exited_at_ms: Vec<Option<i64>>,
    #[serde(with = "clickhouse::serde::uuid::option")]
    pub arrival_event_id: Option<Uuid>,
    pub snapshot: Option<String>,
    #[serde(rename = "attributes.key")]
    pub attr_key: Vec<String>,
    #[serde(rename = "attributes.value")]
    pub attr_value: Vec<String>,
}

impl From<TrackRecord> for TrackRow {
    fn from(r: TrackRecord) -> Self {
        let (attr_key, attr_value) = r.attributes.into_iter().unzip();
        Self {
            schema_version: r.schema_version,
            record_id: *r.record_id.as_uuid(),
            edge_id: r.edge_id,
            camera_id: r.camera_id,
            track_id: r.track_id,
            revision: r.revision,
            label: r.label,
            class_id: r.class_id,
            // Validated records start between 2000 and now + skew, well inside u32.
            started_at: u32::try_from(r.started_at.as_secs()).unwrap_or(0),
            started_at_ms: r.started_at.as_millis(),
            last_seen_at_ms: r.last_seen_at.as_millis(),
            ended_by: r
                .ended_by
                .map(EndedBy::as_str)
                .unwrap_or_default()
                .to_owned(),
            frames: r.frames,
            max_confidence: r.max_confidence,
            mean_confidence: r.mean_confidence,
            best_at_ms: r.best.captured_at.as_millis(),
            best_x_min: r.best.bbox.x_min,
            best_y_min: r.best.bbox.y_min,
            best_x_max: r.best.bbox.x_max,
            best_y_max: r.best.bbox.y_max,
            best_confidence: r.best.confidence,
            path_at_ms: r.path.iter().map(|p| p.at.as_millis()).collect(),
            path_x: r.path.iter().map(|p| p.x).collect(),
            path_y: r.path.iter().map(|p| p.y).collect(),
            zone_entered_at_ms: r.zones.iter().map(|z| z.entered_at.as_millis()).collect(),
            zone_exited_at_ms: r
                .zones
                .iter()
                .map(|z| z.exited_at.map(|t| t.as_millis()))
                .collect(),
            zone_name: r.zones.into_iter().map(|z| z.zone).collect(),
            arrival_event_id: r.arrival_event_id.map(|id| *id.as_uuid()),
            snapshot: r.snapshot,
            attr_key,
            attr_value,
        }
    }
}

/// One row of `snapshots`: a picture the snapshot writer checked and stored, and what it
/// shows (an event, or a track of its edge: `track_id` > 0 and the nil `event_id`).
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct SnapshotRow {
    pub schema_version: u16,
    #[serde(with = "clickhouse::serde::uuid")]
    pub snapshot_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    pub track_id: u64,
    pub edge_id: String,
    pub camera_id: String,
    /// `DateTime` travels as seconds since the epoch.
    pub captured_at: u32,
    pub captured_at_ms: i64,
    pub width: u16,
    pub height: u16,
    pub size: u32,
    /// Lowercase hex.
    pub sha256: String,
    pub stored_at_ms: i64,
}

impl SnapshotRow {
    /// The row's schema version.
    pub const SCHEMA_VERSION: u16 = 1;

    /// What the snapshot shows.
    pub fn owner(&self) -> Owner {
        if self.track_id > 0 {
            Owner::Track(self.track_id)
        } else {
            Owner::Event(EventId::from_uuid(self.event_id))
        }
    }

    /// The `(event_id, track_id)` columns of `owner`.
    pub fn owner_columns(owner: Owner) -> (Uuid, u64) {
        match owner {
            Owner::Event(id) => (*id.as_uuid(), 0),
            Owner::Track(id) => (Uuid::nil(), id),
        }
    }
}

impl TrackRow {
    /// Turns a stored row back into the record it came from (an unknown `ended_by`, which
    /// only a hand-made row can have, reads as `lost`). Parallel arrays of unequal length
    /// are cut to the shortest rather than panicking.
    pub fn into_record(self) -> TrackRecord {
        let ms = Timestamp::from_millis;
        TrackRecord {
            record_id: EventId::from_uuid(self.record_id),
            schema_version: self.schema_version,
            edge_id: self.edge_id,
            camera_id: self.camera_id,
            track_id: self.track_id,
            revision: self.revision,
            label: self.label,
            class_id: self.class_id,
            started_at: ms(self.started_at_ms),
            last_seen_at: ms(self.last_seen_at_ms),
            ended_by: match self.ended_by.as_str() {
                "" => None,
                "shutdown" => Some(EndedBy::Shutdown),
                _ => Some(EndedBy::Lost),
            },
            frames: self.frames,
            max_confidence: self.max_confidence,
            mean_confidence: self.mean_confidence,
            best: BestFrame {
                captured_at: ms(self.best_at_ms),
                bbox: BoundingBox {
                    x_min: self.best_x_min,
                    y_min: self.best_y_min,
                    x_max: self.best_x_max,
                    y_max: self.best_y_max,
                },
                confidence: self.best_confidence,
            },
            path: self
                .path_at_ms
                .into_iter()
                .zip(self.path_x)
                .zip(self.path_y)
                .map(|((at, x), y)| PathPoint { at: ms(at), x, y })
                .collect(),
            zones: self
                .zone_name
                .into_iter()
                .zip(self.zone_entered_at_ms)
                .zip(self.zone_exited_at_ms)
                .map(|((zone, entered), exited)| ZoneVisit {
                    zone,
                    entered_at: ms(entered),
                    exited_at: exited.map(ms),
                })
                .collect(),
            arrival_event_id: self.arrival_event_id.map(EventId::from_uuid),
            snapshot: self.snapshot,
            attributes: self.attr_key.into_iter().zip(self.attr_value).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_shared::SCHEMA_VERSION;
    use std::collections::BTreeMap;

    #[test]
    fn row_round_trips_a_track_record() {
        let at = |ms: i64| Timestamp::from_millis(1_795_000_000_000 + ms);
        let mut record = TrackRecord {
            record_id: EventId::new_v7(at(9_000)),
            schema_version: 1,
            edge_id: "edge-1".into(),
            camera_id: "gate".into(),
            track_id: 7,
            revision: 2,
            label: "car".into(),
            class_id: 2,
            started_at: at(0),
            last_seen_at: at(9_000),
            ended_by: Some(EndedBy::Shutdown),
            frames: 10,
            max_confidence: 0.9,
            mean_confidence: 0.8,
            best: BestFrame {
                captured_at: at(3_000),
                bbox: BoundingBox {
                    x_min: 0.1,
                    y_min: 0.2,
                    x_max: 0.3,
                    y_max: 0.4,
                },
                confidence: 0.9,
            },
            path: vec![
                PathPoint {
                    at: at(0),
                    x: 0.2,
                    y: 0.4,
                },
                PathPoint {
                    at: at(9_000),
                    x: 0.5,
                    y: 0.4,
                },
            ],
            zones: vec![
                ZoneVisit {
                    zone: "driveway".into(),
                    entered_at: at(1_000),
                    exited_at: Some(at(2_000)),
                },
                ZoneVisit {
                    zone: "driveway".into(),
                    entered_at: at(5_000),
                    exited_at: None,
                },
            ],
            arrival_event_id: Some(EventId::new_v7(at(0))),
            snapshot: Some("x.jpg".into()),
            attributes: BTreeMap::from([("site".to_owned(), "north".to_owned())]),
        };
        let row = TrackRow::from(record.clone());
        assert_eq!(row.ended_by, "shutdown");
        assert_eq!(row.started_at, 1_795_000_000);
        assert_eq!(row.zone_exited_at_ms, [Some(1_795_000_002_000), None]);
        assert_eq!(row.into_record(), record);
        record.ended_by = None;
        record.arrival_event_id = None;
        let row = TrackRow::from(record.clone());
        assert_eq!(row.ended_by, "");
        assert_eq!(row.into_record(), record);
    }

    #[test]
    fn row_round_trips_an_event() {
        let at = Timestamp::from_millis(1_795_000_000_123);
        let event = DetectionEvent {
            event_id: EventId::new_v7(at),
            schema_version: SCHEMA_VERSION,
            edge_id: "e".into(),
            camera_id: "c".into(),
            captured_at: at,
            frame_seq: 9,
            motion_score: 0.25,
            detections: vec![
                Detection {
                    label: "person".into(),
                    class_id: 0,
                    confidence: 0.75,
                    bbox: BoundingBox {
                        x_min: 0.1,
                        y_min: 0.2,
                        x_max: 0.3,
                        y_max: 0.4,
                    },
                    track_id: None,
                    zones: vec!["porch".into()],
                },
                Detection {
                    label: "car".into(),
                    class_id: 2,
                    confidence: 0.5,
                    bbox: BoundingBox {
                        x_min: 0.0,
                        y_min: 0.0,
                        x_max: 1.0,
                        y_max: 1.0,
                    },
                    track_id: Some(4),
                    zones: Vec::new(),
                },
            ],
            model: ModelInfo {
                name: "m".into(),
                version: "1".into(),
            },
            inference_ms: 3.5,
            snapshot: Some("2026-11-18/c/x.jpg".into()),
            description: None,
            attributes: BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
        };
        let row = EventRow::from(&event);
        assert_eq!(row.captured_at, 1_795_000_000);
        assert_eq!(row.into_event(), event);
    }
}
