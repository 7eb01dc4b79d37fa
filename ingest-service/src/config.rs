//! The ingest service's config file (TOML). Runtime knobs (log level, HTTP listen address)
//! are command-line flags instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sightline_shared::config::check_identifier;
use sightline_shared::config::{ClickHouseConfig, NatsConfig};
pub(crate) use sightline_shared::config::{ConfigError, Validate};

pub(crate) use sightline_store::retention::RetentionSettings;

/// The whole ingest configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsConfig,
    /// How to reach ClickHouse.
    #[serde(default)]
    pub clickhouse: ClickHouseConfig,
    /// The JetStream stream the service creates (or updates) at start-up.
    #[serde(default)]
    pub stream: StreamSettings,
    /// The durable pull consumer it reads with.
    #[serde(default)]
    pub consumer: ConsumerSettings,
    /// When a batch is written.
    #[serde(default)]
    pub batch: BatchSettings,
    /// How long each table keeps its rows.
    #[serde(default)]
    pub retention: RetentionSettings,
    /// Leases for the singleton jobs (the retention sweep; start-up migrations and TTL).
    #[serde(default)]
    pub leader: crate::leader::LeaderSettings,
    /// The HTTP listener (probes and metrics).
    #[serde(default)]
    pub http: HttpSettings,
    /// The snapshot writer.
    #[serde(default)]
    pub snapshots: SnapshotSettings,
}

/// What the snapshot writer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    /// Largest snapshot accepted, in bytes (at most NATS's message limit, 1 MiB by default).
    pub max_bytes: usize,
    /// How long a snapshot waits for the event or track it shows to reach ClickHouse, in
    /// seconds, before it is dead-lettered (`Owner`): uploads follow their events, but a
    /// backlog of events can hold the event back for a while.
    pub owner_wait_secs: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            max_bytes: sightline_shared::snapshot::MAX_BYTES,
            owner_wait_secs: 3600,
        }
    }
}

/// The HTTP listener's limits (its address is the `--listen` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Longest wait for a request's headers, in seconds, which is also how long a
    /// kept-alive connection may sit idle.
    pub header_read_timeout_secs: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: sightline_runtime::http::DEFAULT_HEADER_READ_TIMEOUT_SECS,
        }
    }
}

/// Settings of the events stream and the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// How long the events stream keeps messages, in hours (a replay window for new consumers).
    pub max_age_hours: u64,
    /// Largest size of the events stream in bytes; -1 for no limit.
    pub max_bytes: i64,
    /// JetStream's duplicate window in seconds: a re-publish with the same `Nats-Msg-Id`
    /// within it is dropped by the server. Older duplicates are removed by ClickHouse.
    pub duplicate_window_secs: u64,
    /// Stream replicas (1 for a single server, 3 for a cluster).
    pub replicas: usize,
    /// How long the dead-letter stream keeps messages, in days.
    pub deadletter_max_age_days: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_age_hours: 72,
            max_bytes: -1,
            duplicate_window_secs: 120,
            replicas: 1,
            deadletter_max_age_days: 30,
        }
    }
}

/// Settings of the durable pull consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Durable consumer name; all replicas of the service share it.
    pub durable_name: String,
    /// How long JetStream waits for an ack before redelivering, in seconds. Messages in
    /// hand get in-progress acks three times per wait; messages fetched ahead that may have
    /// waited unread for a quarter of it are let go with their pull. It is also how long
    /// the messages a crashed ingest held wait before another replica (or the restarted
    /// one) gets them: 8 s by default, so they are stored within about 10 s of a crash
    /// (60 s before issue 21; a durable made with the old value is updated at start).
    pub ack_wait_secs: u64,
    /// Most unacknowledged messages across all replicas.
    pub max_ack_pending: i64,
    /// Messages requested per pull.
    pub fetch_batch: usize,
    /// How often the consumer's position is read, in seconds: backlog gauges, the ack
    /// floor a re-declared durable resumes from, events removed before delivery.
    pub info_interval_secs: u64,
    /// How far ahead of ingest's clock a capture time may be, in seconds; an event further
    /// ahead (an edge clock set forward) is dead-lettered with the reason. The edge reports
    /// its clock offset in heartbeats.
    pub max_future_skew_secs: u64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            durable_name: "sightline-ingest".into(),
            ack_wait_secs: 8,
            max_ack_pending: 200_000,
            fetch_batch: 5_000,
            info_interval_secs: 5,
            max_future_skew_secs: (sightline_shared::validate::MAX_FUTURE_SKEW_MS / 1000) as u64,
        }
    }
}

/// When a batch is written: whichever limit is reached first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Most rows in one INSERT.
    pub max_rows: usize,
    /// Most payload bytes in one INSERT.
    pub max_bytes: usize,
    /// Longest time the first message of a batch waits, in milliseconds; at most half of
    /// `consumer.ack_wait_secs`.
    pub max_wait_ms: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_rows: 50_000,
            max_bytes: 16 * 1024 * 1024,
            max_wait_ms: 1_000,
        }
    }
}

impl BatchSettings {
    /// The time limit as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
}

impl Validate for IngestConfig {
    /// Checks the values serde cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: &str| Err(ConfigError::invalid(field, problem));
        self.clickhouse.validate()?;
        check_identifier("consumer.durable_name", &self.consumer.durable_name)?;
        if self.http.header_read_timeout_secs == 0 {
            return invalid("http.header_read_timeout_secs", "must be at least 1");
        }
        if self.batch.max_rows == 0 {
            return invalid("batch.max_rows", "must be at least 1");
        }
        if self.batch.max_bytes < 1024 {
            return invalid("batch.max_bytes", "must be at least 1024");
        }
        if self.batch.max_wait_ms == 0 {
            return invalid("batch.max_wait_ms", "must be at least 1");
        }
        if self.consumer.fetch_batch == 0 {
            return invalid("consumer.fetch_batch", "must be at least 1");
        }
        if !(1..=86_400).contains(&self.consumer.max_future_skew_secs) {
            return invalid("consumer.max_future_skew_secs", "must be 1 to 86400");
        }
        if !(1..=300).contains(&self.consumer.info_interval_secs) {
            return invalid("consumer.info_interval_secs", "must be 1 to 300");
        }
        if self.consumer.ack_wait_secs < 2 {
            return invalid("consumer.ack_wait_secs", "must be at least 2");
        }
        if self.batch.max_wait() > Duration::from_secs(self.consumer.ack_wait_secs) / 2 {
            return invalid(
                "batch.max_wait_ms",
                "must be at most half of consumer.ack_wait_secs, or the first messages of a filling batch are delivered again",
            );
        }
        if self.consumer.max_ack_pending < self.batch.max_rows as i64 {
            return invalid(
                "consumer.max_ack_pending",
                "must be at least batch.max_rows, or batches never fill",
            );
        }
        if self.stream.duplicate_window_secs == 0 {
            return invalid("stream.duplicate_window_secs", "must be at least 1");
        }
        if !(1..=100_000).contains(&self.stream.max_age_hours)
            || self.stream.duplicate_window_secs > self.stream.max_age_hours * 3600
        {
            return invalid(
                "stream.max_age_hours",
                "must be 1 to 100000 and cover the duplicate window",
            );
        }
        if !(1..=10_000).contains(&self.stream.deadletter_max_age_days) {
            return invalid("stream.deadletter_max_age_days", "must be 1 to 10000");
        }
        let r = &self.retention;
        for (field, days) in [
            ("retention.events_days", r.events_days),
            ("retention.detections_days", r.detections_days),
            ("retention.rollups_days", r.rollups_days),
            ("retention.heartbeats_days", r.heartbeats_days),
            ("retention.tracks_days", r.tracks_days),
        ] {
            if !(1..=36_500).contains(&days) {
                return invalid(field, "must be 1 to 36500 days");
            }
        }
        if r.sweep_interval_secs < 10 {
            return invalid("retention.sweep_interval_secs", "must be at least 10");
        }
        if !(1024..=8 * 1024 * 1024).contains(&self.snapshots.max_bytes) {
            return invalid("snapshots.max_bytes", "must be 1024 to 8388608 bytes");
        }
        if !(1..=30 * 86_400).contains(&self.snapshots.owner_wait_secs) {
            return invalid("snapshots.owner_wait_secs", "must be 1 to 2592000 seconds");
        }
        if self.stream.replicas == 0 || self.stream.replicas > 5 {
            return invalid("stream.replicas", "must be 1 to 5");
        }
        // The same bounds as the chart's values.schema.json; 246, not 253, characters so
        // the schema Lease (`<lease_name>-schema`) is a valid name too.
        let l = &self.leader;
        let label = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        if l.lease_name.is_empty()
            || l.lease_name.len() > 246
            || !l.lease_name.starts_with(label)
            || !l.lease_name.ends_with(label)
            || !l
                .lease_name
                .chars()
                .all(|c| label(c) || c == '-' || c == '.')
        {
            return invalid(
                "leader.lease_name",
                "must be a Kubernetes object name of at most 246 characters: lower-case letters, digits, '-' and '.'",
            );
        }
        if !(1..=3600).contains(&l.renew_interval_secs) {
            return invalid("leader.renew_interval_secs", "must be 1 to 3600");
        }
        // A holder whose API calls stall drops leadership within one and a half renew
        // intervals (a round's wait plus its call timeout, half an interval): its Lease must
        // outlast that for the others, so it is at least two renew intervals.
        if !(2..=3600).contains(&l.lease_duration_secs)
            || l.lease_duration_secs < 2 * l.renew_interval_secs
        {
            return invalid(
                "leader.lease_duration_secs",
                "must be 2 to 3600 and at least twice renew_interval_secs",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_shared::config::parse;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            parse::<IngestConfig>("", "test").unwrap(),
            IngestConfig::default()
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse::<IngestConfig>("[batch]\nmax_rows = 0", "test").unwrap_err();
        assert!(err.to_string().contains("batch.max_rows"), "{err}");
        let err = parse::<IngestConfig>("[batch]\nmax_rowz = 1", "test").unwrap_err();
        assert!(err.to_string().contains("max_rowz"), "{err}");
        let err = parse::<IngestConfig>("[clickhouse]\ndatabase = \"a;drop\"", "test").unwrap_err();
        assert!(err.to_string().contains("clickhouse.database"), "{err}");
        let err = parse::<IngestConfig>("[stream]\nmax_age_hours = \"x\"", "test").unwrap_err();
        assert!(err.to_string().contains("max_age_hours"), "{err}");
        for (toml, field) in [
            (
                "[leader]\nrenew_interval_secs = 0",
                "leader.renew_interval_secs",
            ),
            (
                "[leader]\nlease_duration_secs = 5",
                "leader.lease_duration_secs",
            ),
            (
                "[leader]\nlease_duration_secs = 9\nrenew_interval_secs = 5",
                "leader.lease_duration_secs",
            ),
            ("[leader]\nlease_name = \"Bad_Name\"", "leader.lease_name"),
            ("[leader]\nlease_name = \"-x\"", "leader.lease_name"),
            (
                &format!("[leader]\nlease_name = \"{}\"", "a".repeat(247)),
                "leader.lease_name",
            ),
            ("[snapshots]\nmax_bytes = 10", "snapshots.max_bytes"),
            (
                "[snapshots]\nowner_wait_secs = 0",
                "snapshots.owner_wait_secs",
            ),
            (
                "[consumer]\ninfo_interval_secs = 0",
                "consumer.info_interval_secs",
            ),
            (
                "[consumer]\nack_wait_secs = 2\n[batch]\nmax_wait_ms = 1001",
                "batch.max_wait_ms",
            ),
        ] {
            let err = parse::<IngestConfig>(toml, "test").unwrap_err();
            assert!(err.to_string().contains(field), "{toml}: {err}");
        }
    }
}
