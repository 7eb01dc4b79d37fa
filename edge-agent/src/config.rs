//! The agent's one config file (TOML). It carries a `version` because devices lag the cloud:
//! an agent refuses a config written for a format it does not know.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sightline_shared::Encoding;
pub use sightline_shared::config::{ConfigError, Validate};
use sightline_shared::config::{NatsConfig, check_identifier};
use sightline_shared::validate::{MAX_LABEL_LEN, is_label};

/// The config format this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Config format version; must be 1.
    pub version: u32,
    /// This host's id: 1-64 characters of A-Z a-z 0-9 _ -; part of every subject.
    pub edge_id: String,
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsConfig,
    /// How events are published.
    #[serde(default)]
    pub publisher: PublisherConfig,
    /// The data directory and its budget.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The local status endpoint and the periodic status line.
    #[serde(default)]
    pub status: StatusConfig,
    /// Heartbeats to the cloud.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// The cameras on this host.
    pub cameras: Vec<CameraConfig>,
}

/// How events are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Wire encoding: `bincode` (default, compact) or `json`.
    #[serde(with = "encoding_name")]
    pub encoding: Encoding,
    /// Most publishes awaiting their JetStream ack at once.
    pub max_in_flight: usize,
    /// How long to wait for one publish ack, in milliseconds.
    pub ack_timeout_ms: u64,
    /// On shutdown, how long to keep publishing the backlog, in seconds (what is left stays
    /// in the buffer for the next start).
    pub drain_timeout_secs: u64,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            encoding: Encoding::Bincode,
            max_in_flight: 256,
            ack_timeout_ms: 5_000,
            drain_timeout_secs: 10,
        }
    }
}

/// The data directory (buffer, daily logs, snapshots) and its one storage budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Where the buffer (`buffer.duckdb`) and the day folders (`events/YYYY-MM-DD/`) live.
    pub data_dir: PathBuf,
    /// The budget for everything under `data_dir`, in GB (10^9 bytes). WARNING at 80 %,
    /// rotation at 90 % down to 80 %.
    pub max_storage_gb: f64,
    /// Days never rotated away, counting today (today is always kept).
    pub min_retention_days: u32,
    /// When unpublished events alone fill the budget: `reject_new` (default), `drop_oldest`
    /// or `stop`.
    pub full_policy: crate::storage::FullPolicy,
    /// How often usage is measured, in seconds (also after every 1 % of growth).
    pub check_interval_secs: u64,
    /// Write `events.json` and `events.log` per day.
    pub daily_logs: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/sightline"),
            max_storage_gb: 4.0,
            min_retention_days: 7,
            full_policy: crate::storage::FullPolicy::RejectNew,
            check_interval_secs: 10,
            daily_logs: true,
        }
    }
}

impl StorageConfig {
    /// The budget in bytes.
    pub fn limit_bytes(&self) -> u64 {
        (self.max_storage_gb * 1e9) as u64
    }
}

/// The local HTTP status endpoint and the status line in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// Serve the endpoint.
    pub enabled: bool,
    /// Address for `/healthz`, `/metrics`, `/v1/status`, `/v1/events/recent`,
    /// `POST /v1/rotate`. Loopback by default: it has no authentication.
    pub listen: SocketAddr,
    /// Seconds between status lines in the log (0: none).
    pub log_interval_secs: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9470)),
            log_interval_secs: 60,
        }
    }
}

/// The agent's periodic status message to the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Seconds between heartbeats (0: none).
    pub interval_secs: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self { interval_secs: 30 }
    }
}

mod encoding_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use sightline_shared::Encoding;

    pub fn serialize<S: Serializer>(e: &Encoding, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(e.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Encoding, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown encoding {name:?}, expected \"bincode\" or \"json\""
            ))
        })
    }
}

/// One camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera id, unique on this host: 1-64 characters of A-Z a-z 0-9 _ -.
    pub id: String,
    /// Where its frames (or, for now, its events) come from.
    pub source: SourceConfig,
}

/// A camera source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Made-up detections at a steady rate, for demos and tests.
    Synthetic(SyntheticConfig),
}

/// The synthetic source's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Events per second.
    pub events_per_second: f64,
    /// Labels to draw from.
    pub labels: Vec<String>,
    /// Most detections per event.
    pub max_detections: usize,
    /// Stop after this many events (unset: run until shutdown).
    pub max_events: Option<u64>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            events_per_second: 2.0,
            labels: ["person", "car", "bicycle", "dog", "truck"]
                .map(String::from)
                .to_vec(),
            max_detections: 3,
            max_events: None,
        }
    }
}

impl Validate for AgentConfig {
    /// Checks the values serde cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: &str| Err(ConfigError::invalid(field, problem));
        if self.version != CONFIG_VERSION {
            return invalid(
                "version",
                &format!("this agent reads config version {CONFIG_VERSION}"),
            );
        }
        check_identifier("edge_id", &self.edge_id)?;
        let p = &self.publisher;
        if p.max_in_flight == 0 || p.max_in_flight > 65_536 {
            return invalid("publisher.max_in_flight", "must be 1 to 65536");
        }
        let st = &self.storage;
        if st.data_dir.as_os_str().is_empty() {
            return invalid("storage.data_dir", "must not be empty");
        }
        if !(st.max_storage_gb.is_finite() && st.max_storage_gb >= 0.001) {
            return invalid("storage.max_storage_gb", "must be at least 0.001 (1 MB)");
        }
        if st.check_interval_secs == 0 || st.check_interval_secs > 3600 {
            return invalid("storage.check_interval_secs", "must be 1 to 3600");
        }
        if st.min_retention_days > 3650 {
            return invalid("storage.min_retention_days", "must be at most 3650");
        }
        if p.ack_timeout_ms < 100 {
            return invalid("publisher.ack_timeout_ms", "must be at least 100");
        }
        if self.cameras.is_empty() {
            return invalid("cameras", "at least one camera is needed");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            check_identifier(&format!("cameras[{i}].id"), &camera.id)?;
            if !seen.insert(&camera.id) {
                return invalid(
                    &format!("cameras[{i}].id"),
                    &format!("{:?} is used twice", camera.id),
                );
            }
            match &camera.source {
                SourceConfig::Synthetic(s) => {
                    if !(s.events_per_second > 0.0 && s.events_per_second <= 100_000.0) {
                        return invalid(
                            &format!("cameras[{i}].source.events_per_second"),
                            "must be above 0 and at most 100000",
                        );
                    }
                    if s.labels.is_empty() || !s.labels.iter().all(|l| is_label(l)) {
                        return invalid(
                            &format!("cameras[{i}].source.labels"),
                            &format!(
                                "must be 1 or more labels of 1-{MAX_LABEL_LEN} bytes without control characters"
                            ),
                        );
                    }
                    if s.max_detections > 64 {
                        return invalid(
                            &format!("cameras[{i}].source.max_detections"),
                            "must be at most 64",
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        version = 1
        edge_id = "edge-1"
        [[cameras]]
        id = "gate"
        source = { kind = "synthetic", events_per_second = 10.0 }
    "#;

    #[test]
    fn parses_a_minimal_config() {
        let c = sightline_shared::config::parse::<AgentConfig>(GOOD, "test").unwrap();
        assert_eq!(c.publisher, PublisherConfig::default());
        assert!(
            matches!(&c.cameras[0].source, SourceConfig::Synthetic(s) if s.events_per_second == 10.0)
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            (GOOD.replace("version = 1", "version = 2"), "version"),
            (GOOD.replace("edge-1", "edge 1"), "edge_id"),
            (
                GOOD.replace("10.0", "-1.0"),
                "cameras[0].source.events_per_second",
            ),
            (GOOD.replace("\"gate\"", "\"a.b\""), "cameras[0].id"),
            (GOOD.replace("synthetic\"", "v4l3\""), "v4l3"),
            (GOOD.replace("edge_id", "edgeid"), "edgeid"),
            (
                format!("{GOOD}\n[storage]\nmax_storage_gb = 0.0"),
                "storage.max_storage_gb",
            ),
            (
                format!("{GOOD}\n[storage]\nfull_policy = \"panic\""),
                "panic",
            ),
            (format!("{GOOD}\n[publisher]\nencoding = \"xml\""), "xml"),
            (
                format!("{GOOD}\n[publisher]\nmax_in_flight = 0"),
                "publisher.max_in_flight",
            ),
            (
                format!("{GOOD}\n[[cameras]]\nid = \"gate\"\nsource = {{ kind = \"synthetic\" }}"),
                "cameras[1].id",
            ),
        ] {
            let err = sightline_shared::config::parse::<AgentConfig>(&text, "test")
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
