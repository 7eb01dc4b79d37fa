//! The query service's config file (TOML). The listen address and log level are flags.

use serde::{Deserialize, Serialize};
use sightline_shared::config::ClickHouseConfig;
pub use sightline_shared::config::{ConfigError, Validate};

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

impl Validate for QueryConfig {
    /// Checks the values serde cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: &str| Err(ConfigError::invalid(field, problem));
        self.clickhouse.validate()?;
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
    use sightline_shared::config::parse;

    #[test]
    fn names_the_bad_field() {
        let err = parse::<QueryConfig>("default_limit = 5000\n", "query.toml").unwrap_err();
        assert!(err.to_string().contains("default_limit"), "{err}");
        let err = parse::<QueryConfig>("max_limt = 5\n", "query.toml").unwrap_err();
        assert!(
            err.to_string().contains("max_limt") && err.to_string().contains("query.toml"),
            "{err}"
        );
        let err =
            parse::<QueryConfig>("[clickhouse]\nurl = \"tcp://x\"\n", "query.toml").unwrap_err();
        assert!(err.to_string().contains("clickhouse.url"), "{err}");
    }
}
