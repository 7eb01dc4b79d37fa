//! The query service's config file (TOML). The listen address and log level are flags.

use serde::{Deserialize, Serialize};
use sightline_shared::config::{ClickHouseConfig, NatsConfig, redact};
pub(crate) use sightline_shared::config::{ConfigError, Validate};
use sightline_shared::subjects::{self, is_literal_subject};

/// The whole query-service configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// How to reach ClickHouse, as a read-only user (`readonly = 2`, see docs/sql.md).
    pub clickhouse: ClickHouseConfig,
    /// Rows returned when a request gives no `limit`.
    pub default_limit: u32,
    /// The largest `limit` a request may ask for.
    pub max_limit: u32,
    /// ClickHouse-side limit on one query's run time, in seconds (`max_execution_time`).
    /// Exports are streamed and limited by `export_timeout_secs` instead.
    pub query_timeout_secs: u64,
    /// ClickHouse-side limit on one query's memory, in bytes (`max_memory_usage`).
    pub query_max_memory_bytes: u64,
    /// Whole-request timeout on the HTTP side, in seconds (not for exports).
    pub request_timeout_secs: u64,
    /// Longest an export may run, in seconds (ClickHouse's `max_execution_time` for it;
    /// exports have no HTTP-side timeout, since they stream for as long as they need).
    pub export_timeout_secs: u64,
    /// Bearer-token authentication.
    pub auth: AuthConfig,
    /// Republishing history to NATS (`POST /v1/replay`).
    pub replay: ReplayConfig,
    /// The NATS server replays publish to.
    pub nats: NatsConfig,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            clickhouse: ClickHouseConfig::default(),
            default_limit: 100,
            max_limit: 1000,
            query_timeout_secs: 10,
            query_max_memory_bytes: 2_000_000_000,
            request_timeout_secs: 15,
            export_timeout_secs: 3600,
            auth: AuthConfig::default(),
            replay: ReplayConfig::default(),
            nats: NatsConfig::default(),
        }
    }
}

/// Who may call the API. With no tokens at all, authentication is off. `/healthz`,
/// `/readyz`, `/metrics` and `/openapi.json` are always open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted bearer tokens. Prefer `token_file` outside development. Printed redacted.
    #[serde(serialize_with = "redact")]
    pub tokens: Option<Vec<String>>,
    /// A file with one accepted token per line (e.g. a mounted Kubernetes secret); blank
    /// lines and lines starting with `#` are ignored. Read at start-up.
    pub token_file: Option<String>,
}

/// Shortest token accepted in the config, so nobody runs with `tokens = ["x"]`.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

impl AuthConfig {
    /// The accepted tokens: the inline ones and the file's.
    pub fn load_tokens(&self) -> Result<Vec<String>, ConfigError> {
        let mut tokens = self.tokens.clone().unwrap_or_default();
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if tokens.iter().any(|t| t.len() < MIN_TOKEN_LEN) {
            return Err(ConfigError::invalid(
                "auth.tokens",
                format!("every token must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        if tokens
            .iter()
            .any(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::invalid(
                "auth.tokens",
                "tokens must be printable ASCII without spaces",
            ));
        }
        Ok(tokens)
    }
}

/// Limits on `POST /v1/replay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Whether replay is offered at all (it needs NATS). Off by default: it lets a token
    /// holder publish into NATS.
    pub enabled: bool,
    /// Callers may only publish to subjects under this prefix.
    pub subject_prefix: String,
    /// The highest rate a replay may ask for, in events per second (also the default).
    pub max_rate: u32,
    /// Replays running at once; more get a 429.
    pub max_concurrent: usize,
    /// Finished replays remembered for `GET /v1/replay/{id}` (the oldest finished ones are
    /// forgotten once more than this plus `max_concurrent` jobs are kept).
    pub keep_finished: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            subject_prefix: "replay.".into(),
            max_rate: 5000,
            max_concurrent: 2,
            keep_finished: 100,
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
        for (field, value) in [
            ("query_timeout_secs", self.query_timeout_secs),
            ("request_timeout_secs", self.request_timeout_secs),
            ("export_timeout_secs", self.export_timeout_secs),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if self.query_max_memory_bytes < 10_000_000 {
            return invalid("query_max_memory_bytes", "must be at least 10000000");
        }
        self.auth.load_tokens()?;
        let replay = &self.replay;
        let prefix_ok = replay
            .subject_prefix
            .strip_suffix('.')
            .is_some_and(is_literal_subject);
        if !prefix_ok {
            return invalid(
                "replay.subject_prefix",
                "must be dot-separated tokens ending in a dot, such as \"replay.\"",
            );
        }
        if replay.subject_prefix.split('.').next() == Some(subjects::ROOT) {
            return invalid(
                "replay.subject_prefix",
                "must not be under \"sightline.\": replays must never feed the live streams",
            );
        }
        if replay.max_rate == 0 || replay.max_rate > 1_000_000 {
            return invalid("replay.max_rate", "must be 1 to 1000000");
        }
        if replay.max_concurrent == 0 {
            return invalid("replay.max_concurrent", "must be at least 1");
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
        for (text, field) in [
            ("default_limit = 5000\n", "default_limit"),
            ("max_limt = 5\n", "max_limt"),
            ("[clickhouse]\nurl = \"tcp://x\"\n", "clickhouse.url"),
            ("[auth]\ntokens = [\"short\"]\n", "auth.tokens"),
            (
                "[replay]\nsubject_prefix = \"sightline.events.\"\n",
                "replay.subject_prefix",
            ),
            (
                "[replay]\nsubject_prefix = \"replay\"\n",
                "replay.subject_prefix",
            ),
            ("[replay]\nmax_rate = 0\n", "replay.max_rate"),
        ] {
            let err = parse::<QueryConfig>(text, "query.toml").unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let err = parse::<QueryConfig>("max_limt = 5\n", "query.toml").unwrap_err();
        assert!(err.to_string().contains("query.toml"), "{err}");
    }

    #[test]
    fn tokens_come_from_the_file_too_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# ops team\nabcdefghijklmnopqrst\n\n").unwrap();
        let config: QueryConfig = parse(
            &format!(
                "[auth]\ntokens = [\"0123456789abcdef\"]\ntoken_file = {:?}\n",
                file.display().to_string()
            ),
            "query.toml",
        )
        .unwrap();
        assert_eq!(
            config.auth.load_tokens().unwrap(),
            ["0123456789abcdef", "abcdefghijklmnopqrst"]
        );
        let printed = toml::to_string(&config).unwrap();
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
