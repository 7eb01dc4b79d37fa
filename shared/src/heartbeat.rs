//! The edge heartbeat: every few seconds an agent publishes its status on
//! `sightline.heartbeats.<edge_id>` as JSON with [`CONTENT_TYPE`], and ingest stores it in
//! ClickHouse's `edge_heartbeats`. A heartbeat is a snapshot, not an event: one that cannot be
//! sent is counted and skipped, never buffered.

use serde::{Deserialize, Serialize};

use crate::Timestamp;
use crate::validate::is_identifier;

/// The `Content-Type` of a heartbeat (schema version 1).
pub const CONTENT_TYPE: &str = "application/vnd.sightline.heartbeat.v1+json";

/// One heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Events dropped since the agent started (see the agent's `events_dropped` metric).
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
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("heartbeat is not valid JSON of schema v1: {0}")]
    Malformed(String),
    #[error("heartbeat edge_id {0:?} is not an identifier (1-64 of A-Z a-z 0-9 _ -)")]
    EdgeId(String),
    #[error("heartbeat {field} is out of range")]
    Range { field: &'static str },
}

impl Heartbeat {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a heartbeat.
    pub fn decode(payload: &[u8]) -> Result<Self, HeartbeatError> {
        let heartbeat: Self = serde_json::from_slice(payload)
            .map_err(|e| HeartbeatError::Malformed(e.to_string()))?;
        if !is_identifier(&heartbeat.edge_id) {
            return Err(HeartbeatError::EdgeId(heartbeat.edge_id));
        }
        for (field, value) in [
            ("fps", heartbeat.fps),
            ("cpu_percent", heartbeat.cpu_percent),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(HeartbeatError::Range { field });
            }
        }
        Ok(heartbeat)
    }
}
