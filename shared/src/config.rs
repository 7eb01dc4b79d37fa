//! Connection settings read by more than one service.
//!
//! Each service has its own config file; the sections below mean the same in all of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222`.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// Optional path to a `.creds` file for authentication.
    #[serde(default)]
    pub credentials_file: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: default_nats_url(),
            credentials_file: None,
        }
    }
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}

/// How to reach ClickHouse over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    #[serde(default = "default_clickhouse_url")]
    pub url: String,
    /// Database holding the Sightline tables.
    #[serde(default = "default_clickhouse_database")]
    pub database: String,
    /// User name.
    #[serde(default = "default_clickhouse_user")]
    pub user: String,
    /// Password; prefer `password_file` outside development.
    #[serde(default)]
    pub password: Option<String>,
    /// File whose first line is the password (e.g. a mounted Kubernetes secret).
    #[serde(default)]
    pub password_file: Option<String>,
    /// Per-request timeout in milliseconds.
    #[serde(default = "default_clickhouse_timeout_ms")]
    pub timeout_ms: u64,
}

impl ClickHouseConfig {
    /// The request timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: default_clickhouse_url(),
            database: default_clickhouse_database(),
            user: default_clickhouse_user(),
            password: None,
            password_file: None,
            timeout_ms: default_clickhouse_timeout_ms(),
        }
    }
}

fn default_clickhouse_url() -> String {
    "http://127.0.0.1:8123".into()
}

fn default_clickhouse_database() -> String {
    "sightline".into()
}

fn default_clickhouse_user() -> String {
    "default".into()
}

const fn default_clickhouse_timeout_ms() -> u64 {
    30_000
}
