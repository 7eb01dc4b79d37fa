//! The edge heartbeat: every few seconds an agent publishes its status on
//! `sightline.heartbeats.<edge_id>` as JSON with [`CONTENT_TYPE`], and ingest stores it in
//! ClickHouse's `edge_heartbeats`. A heartbeat is a snapshot, not an event: one that cannot be
//! sent is counted and skipped, never buffered.
//!
//! Versions:
//!
//! - **v2** ([`CONTENT_TYPE`], [`Heartbeat`]): v1's fields and the interval (so "offline" can
//!   be judged), the filesystem's free space, the clock offset, quarantined rows and each
//!   camera's state, and since issue 17 the snapshot upload queue. v2 grows by *adding* optional fields: a reader ignores fields it does not
//!   know, and a field missing from an older v2 sender takes its default. Removing a field or
//!   changing what one means needs v3.
//! - **v1** ([`CONTENT_TYPE_V1`], [`HeartbeatV1`]): strict (unknown fields are refused), as
//!   agents before v2 send it. Ingest reads both; a v1 heartbeat becomes a v2 one with the
//!   new fields unknown.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::validate::is_identifier;

/// The schema version of a heartbeat this build sends.
pub const SCHEMA_VERSION: u16 = 2;
/// The `Content-Type` of a heartbeat this build sends (schema version 2).
pub const CONTENT_TYPE: &str = "application/vnd.sightline.heartbeat.v2+json";
/// The `Content-Type` of a heartbeat of schema version 1 (agents before v2).
pub const CONTENT_TYPE_V1: &str = "application/vnd.sightline.heartbeat.v1+json";

/// One heartbeat (schema v2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub edge_id: String,
    /// When the agent made it.
    pub sent_at: Timestamp,
    /// The agent's version.
    pub agent_version: String,
    pub uptime_secs: u64,
    /// Cameras configured on the host.
    pub cameras: u32,
    /// Frames per second captured, all cameras together (0 with only synthetic cameras).
    pub fps: f64,
    /// Events committed to the buffer since the agent started.
    pub events_created: u64,
    /// Events acknowledged by JetStream since the agent started.
    pub events_sent: u64,
    /// Events dropped since the agent started (see the agent's `events_dropped` metric; in
    /// v1, new events refused are counted here too).
    pub events_dropped: u64,
    /// Events in the buffer not yet acknowledged.
    pub backlog: u64,
    /// Capture time of the oldest of them.
    pub oldest_unsent_at: Option<Timestamp>,
    pub storage_used_bytes: u64,
    pub storage_limit_bytes: u64,
    /// CPU used by the agent over the last interval, in percent of one core.
    pub cpu_percent: f64,
    /// Resident memory of the agent.
    pub rss_bytes: u64,
    /// The schema version this heartbeat was sent as (1 for a converted v1 heartbeat).
    #[serde(default = "v2")]
    pub schema_version: u16,
    /// Seconds between heartbeats: an edge is offline once a few intervals passed without
    /// one (0: unknown, a v1 sender).
    #[serde(default)]
    pub interval_secs: u32,
    /// Free bytes on the filesystem holding the data directory, if measured.
    #[serde(default)]
    pub storage_free_bytes: Option<u64>,
    /// The edge clock minus the cloud's, in milliseconds, if measured.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// Unsent buffer rows that could not be read and were quarantined.
    #[serde(default)]
    pub events_quarantined: u64,
    /// New events the buffer refused since the agent started (never created).
    #[serde(default)]
    pub events_refused: u64,
    /// Each camera's state (empty from a v1 sender).
    #[serde(default)]
    pub camera_states: Vec<CameraHeartbeat>,
    /// Snapshot uploads queued and not yet acknowledged (0 from senders before uploads).
    #[serde(default)]
    pub uploads_pending: u64,
    /// Snapshot uploads acknowledged since the agent started.
    #[serde(default)]
    pub uploads_sent: u64,
    /// Queued snapshot uploads that will never be sent, since the agent started.
    #[serde(default)]
    pub uploads_dropped: u64,
    /// Failed upload attempts (each retried) since the agent started.
    #[serde(default)]
    pub upload_errors: u64,
    /// Bytes of snapshots acknowledged since the agent started.
    #[serde(default)]
    pub upload_bytes: u64,
}

fn v2() -> u16 {
    SCHEMA_VERSION
}

/// One camera in a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraHeartbeat {
    pub camera_id: String,
    /// `starting`, `running`, `retrying` or `finished`.
    pub state: String,
    /// Frames per second captured.
    pub fps: f64,
    /// Events created since the agent started.
    pub events_created: u64,
    /// Failed opens and reads since the agent started.
    pub errors: u64,
}

/// One heartbeat of schema v1, exactly as agents before v2 send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatV1 {
    pub edge_id: String,
    pub sent_at: Timestamp,
    pub agent_version: String,
    pub uptime_secs: u64,
    pub cameras: u32,
    pub fps: f64,
    pub events_created: u64,
    pub events_sent: u64,
    pub events_dropped: u64,
    pub backlog: u64,
    pub oldest_unsent_at: Option<Timestamp>,
    pub storage_used_bytes: u64,
    pub storage_limit_bytes: u64,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
}

impl From<HeartbeatV1> for Heartbeat {
    fn from(v1: HeartbeatV1) -> Self {
        Self {
            edge_id: v1.edge_id,
            sent_at: v1.sent_at,
            agent_version: v1.agent_version,
            uptime_secs: v1.uptime_secs,
            cameras: v1.cameras,
            fps: v1.fps,
            events_created: v1.events_created,
            events_sent: v1.events_sent,
            events_dropped: v1.events_dropped,
            backlog: v1.backlog,
            oldest_unsent_at: v1.oldest_unsent_at,
            storage_used_bytes: v1.storage_used_bytes,
            storage_limit_bytes: v1.storage_limit_bytes,
            cpu_percent: v1.cpu_percent,
            rss_bytes: v1.rss_bytes,
            schema_version: 1,
            interval_secs: 0,
            storage_free_bytes: None,
            clock_offset_ms: None,
            events_quarantined: 0,
            events_refused: 0,
            camera_states: Vec::new(),
            uploads_pending: 0,
            uploads_sent: 0,
            uploads_dropped: 0,
            upload_errors: 0,
            upload_bytes: 0,
        }
    }
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("Content-Type {0:?} is not a heartbeat ({CONTENT_TYPE} or {CONTENT_TYPE_V1})")]
    ContentType(Option<String>),
    #[error("heartbeat is not valid JSON of schema v{version}: {reason}")]
    Malformed { version: u16, reason: String },
    #[error("heartbeat edge_id {0:?} is not an identifier (1-64 of A-Z a-z 0-9 _ -)")]
    EdgeId(String),
    #[error("heartbeat {field} is out of range")]
    Range { field: &'static str },
}

impl Heartbeat {
    /// As v2 JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a heartbeat of either version, by its content type (parameters
    /// after `;` and case are ignored).
    pub fn decode(content_type: Option<&str>, payload: &[u8]) -> Result<Self, HeartbeatError> {
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|c| c.trim().to_ascii_lowercase());
        let malformed = |version| {
            move |e: serde_json::Error| HeartbeatError::Malformed {
                version,
                reason: e.to_string(),
            }
        };
        let heartbeat: Self = match media.as_deref() {
            Some(CONTENT_TYPE) => {
                let mut heartbeat: Self =
                    serde_json::from_slice(payload).map_err(malformed(SCHEMA_VERSION))?;
                heartbeat.schema_version = SCHEMA_VERSION;
                heartbeat
            }
            Some(CONTENT_TYPE_V1) => serde_json::from_slice::<HeartbeatV1>(payload)
                .map_err(malformed(1))?
                .into(),
            _ => {
                return Err(HeartbeatError::ContentType(
                    content_type.map(|c| c.chars().take(200).collect()),
                ));
            }
        };
        if !is_identifier(&heartbeat.edge_id) {
            return Err(HeartbeatError::EdgeId(heartbeat.edge_id));
        }
        let fps = heartbeat
            .camera_states
            .iter()
            .map(|c| ("camera fps", c.fps));
        for (field, value) in [
            ("fps", heartbeat.fps),
            ("cpu_percent", heartbeat.cpu_percent),
        ]
        .into_iter()
        .chain(fps)
        {
            if !(value.is_finite() && value >= 0.0) {
                return Err(HeartbeatError::Range { field });
            }
        }
        if heartbeat.camera_states.len() > 1024 {
            return Err(HeartbeatError::Range {
                field: "camera_states",
            });
        }
        Ok(heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> HeartbeatV1 {
        HeartbeatV1 {
            edge_id: "edge-1".into(),
            sent_at: Timestamp::from_millis(1_795_000_000_123),
            agent_version: "0.1.0".into(),
            uptime_secs: 60,
            cameras: 1,
            fps: 5.0,
            events_created: 10,
            events_sent: 9,
            events_dropped: 0,
            backlog: 1,
            oldest_unsent_at: None,
            storage_used_bytes: 1,
            storage_limit_bytes: 2,
            cpu_percent: 1.0,
            rss_bytes: 3,
        }
    }

    #[test]
    fn both_versions_decode_by_content_type() {
        let old = v1();
        let payload = serde_json::to_vec(&old).unwrap();
        let read = Heartbeat::decode(Some(CONTENT_TYPE_V1), &payload).unwrap();
        assert_eq!(read, Heartbeat::from(old.clone()));
        assert_eq!((read.schema_version, read.interval_secs), (1, 0));

        let mut new = Heartbeat::from(old);
        new.schema_version = 2;
        new.interval_secs = 5;
        new.storage_free_bytes = Some(7);
        new.camera_states = vec![CameraHeartbeat {
            camera_id: "cam-1".into(),
            state: "running".into(),
            fps: 5.0,
            events_created: 10,
            errors: 0,
        }];
        let read = Heartbeat::decode(Some(CONTENT_TYPE), &new.encode()).unwrap();
        assert_eq!(read, new);
        // Parameters and case do not matter.
        let loose = "Application/Vnd.Sightline.Heartbeat.V2+JSON; charset=utf-8";
        assert_eq!(Heartbeat::decode(Some(loose), &new.encode()).unwrap(), new);
        // A v2 payload under the v1 type is refused (v1 is strict), and no type at all too.
        assert!(matches!(
            Heartbeat::decode(Some(CONTENT_TYPE_V1), &new.encode()),
            Err(HeartbeatError::Malformed { version: 1, .. })
        ));
        assert!(matches!(
            Heartbeat::decode(None, &new.encode()),
            Err(HeartbeatError::ContentType(None))
        ));
    }

    #[test]
    fn v2_ignores_fields_it_does_not_know_and_defaults_the_ones_missing() {
        let mut json = serde_json::to_value(v1()).unwrap();
        json["a_field_from_a_later_agent"] = 1.into();
        let read =
            Heartbeat::decode(Some(CONTENT_TYPE), &serde_json::to_vec(&json).unwrap()).unwrap();
        assert_eq!(read.schema_version, 2);
        assert!(read.camera_states.is_empty());
        assert_eq!(read.storage_free_bytes, None);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let mut bad = Heartbeat::from(v1());
        bad.camera_states = vec![CameraHeartbeat {
            camera_id: "cam-1".into(),
            state: "running".into(),
            fps: -1.0,
            events_created: 0,
            errors: 0,
        }];
        assert_eq!(
            Heartbeat::decode(Some(CONTENT_TYPE), &bad.encode()),
            Err(HeartbeatError::Range {
                field: "camera fps"
            })
        );
        let mut bad = Heartbeat::from(v1());
        bad.edge_id = "not an id".into();
        assert!(matches!(
            Heartbeat::decode(Some(CONTENT_TYPE), &bad.encode()),
            Err(HeartbeatError::EdgeId(_))
        ));
    }
}
