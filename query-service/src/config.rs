//! The query service's config file (TOML). The listen address and log level are flags.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sightline_shared::config::ClickHouseConfig;
use sightline_shared::validate::is_identifier;
use thiserror::Error;

/// Why a config could not be used. The message names the file and the field.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// The whole query-service configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// How to reach ClickHouse (ideally as a read-only user).
    pub clickhouse: ClickHouseConfig,
    /// Rows returned when a request gives no `limit`.
    pub default_limit: u32,
    /// The largest `limit` a request may ask for.
    pub max_limit: u32,
    /// ClickHouse-side limit on one query's run time, in seconds (`max_execution_time`).
    pub query_timeout_secs: u64,
    /// Whole-request timeout on the HTTP side, in seconds.
    pub request_timeout_secs: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            clickhouse: ClickHouseConfig::default(),
            default_limit: 100,
            max_limit: 1000,
            query_timeout_secs: 10,
            request_timeout_secs: 15,
        }
    }
}

impl QueryConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown,
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.into(),
            })
        };
        if !is_identifier(&self.clickhouse.database) {
            return invalid(
                "clickhouse.database",
                "must be 1-64 characters of A-Z a-z 0-9 _ -",
            );
        }
        if self.max_limit == 0 || self.max_limit > 100_000 {
            return invalid("max_limit", "must be 1 to 100000");
        }
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            return invalid("default_limit", "must be 1 to max_limit");
        }
        if self.query_timeout_secs == 0 {
            return invalid("query_timeout_secs", "must be at least 1");
        }
        if self.request_timeout_secs == 0 {
            return invalid("request_timeout_secs", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_bad_field() {
        let dir =
            std::env::temp_dir().join(format!("sightline-query-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "default_limit = 5000\n").unwrap();
        let err = QueryConfig::load(&path).unwrap_err();
        assert!(err.to_string().contains("default_limit"), "{err}");
        std::fs::write(&path, "max_limt = 5\n").unwrap();
        let err = QueryConfig::load(&path).unwrap_err();
        assert!(
            err.to_string().contains("max_limt") && err.to_string().contains("bad.toml"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
