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
    /// Most rows one answer may have: ClickHouse's `max_result_rows` on every query but an
    /// export's, and the total number of buckets of `/v1/stats` and cameras of
    /// `/v1/cameras` (more is a 400 `too_large` saying how to narrow the request). Must be
    /// above `max_limit`.
    pub max_result_rows: u64,
    /// Exports streaming at once; more get a 429 `busy`.
    pub max_concurrent_exports: usize,
    /// Other ClickHouse queries (pages, stats, cameras, lookups) running at once; more wait
    /// up to 2 s for a place, then get a 429 `busy`. Keeps a flood of heavy requests queued
    /// here rather than in ClickHouse.
    pub max_concurrent_queries: usize,
    /// Longest wait for a request's headers, in seconds, which is also how long a kept-alive
    /// connection may sit idle (a proxy in front must keep idle connections for less).
    pub header_read_timeout_secs: u64,
    /// Bearer-token authentication.
    pub auth: AuthConfig,
    /// Republishing history to NATS (`POST /v1/replay`).
    pub replay: ReplayConfig,
    /// The NATS server replays publish to, and whose object store keeps the snapshots.
    pub nats: NatsConfig,
    /// Serving snapshots (`GET /v1/events/{id}/snapshot`, `GET /v1/tracks/{id}/snapshot`).
    pub snapshots: SnapshotConfig,
}

/// Serving snapshots from the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Serve snapshots (needs NATS); with `false` the snapshot routes answer 404 and event
    /// JSON carries no `snapshot_url`.
    pub enabled: bool,
    /// Bytes of thumbnails (`max_width`) kept in memory; the oldest go first.
    pub thumbnail_cache_bytes: usize,
    /// JPEG quality of thumbnails, 1 to 100.
    pub thumbnail_quality: u8,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            thumbnail_cache_bytes: 32 * 1024 * 1024,
            thumbnail_quality: 80,
        }
    }
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
            max_result_rows: 100_000,
            max_concurrent_exports: 2,
            max_concurrent_queries: 4,
            header_read_timeout_secs: sightline_runtime::http::DEFAULT_HEADER_READ_TIMEOUT_SECS,
            auth: AuthConfig::default(),
            replay: ReplayConfig::default(),
            nats: NatsConfig::default(),
            snapshots: SnapshotConfig::default(),
        }
    }
}

/// Who may call the API. With no clients and no tokens at all, authentication is off.
/// `/healthz`, `/readyz`, `/metrics` and `/openapi.json` are always open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Named API clients, each with its token and what it may do.
    pub clients: Vec<ClientConfig>,
    /// Deprecated: plain bearer tokens, each allowed every scope and named `token-<n>` by
    /// its place (the inline ones first). Use `clients`. Printed redacted.
    #[serde(serialize_with = "redact")]
    pub tokens: Option<Vec<String>>,
    /// Deprecated with `tokens`: a file with one accepted token per line; blank lines and
    /// lines starting with `#` are ignored. Read at start-up.
    pub token_file: Option<String>,
}

/// One API client: a name for the access log, a token, and its scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Lowercase letters, digits, `-` and `_`; unique. Never the token.
    pub name: String,
    /// What the client may do.
    pub scopes: Vec<Scope>,
    /// The token inline; prefer `token_file`. Printed redacted.
    #[serde(
        default,
        serialize_with = "redact",
        skip_serializing_if = "Option::is_none"
    )]
    pub token: Option<String>,
    /// A file whose first non-empty line is the token (e.g. a mounted Kubernetes secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// What a client may do; every data route needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET /v1/events`, `/v1/events/{id}`, `/v1/cameras`, `/v1/stats`.
    Read,
    /// `GET /v1/events/export`.
    Export,
    /// `/v1/replay` (start, list, look up, cancel).
    Replay,
}

impl Scope {
    /// Every scope, as the deprecated plain tokens get.
    pub const ALL: [Self; 3] = [Self::Read, Self::Export, Self::Replay];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Export => "export",
            Self::Replay => "replay",
        }
    }
}

/// A client as the service checks it: the token loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    pub token: String,
    pub scopes: Vec<Scope>,
}

/// Shortest token accepted in the config, so nobody runs with `tokens = ["x"]`.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

impl AuthConfig {
    /// Every accepted client with its token: the named clients, then the deprecated plain
    /// tokens (inline, then the file's) as `token-<n>` with every scope. A token given
    /// twice, a name given twice, a short token or one with spaces is refused.
    pub fn load_clients(&self) -> Result<Vec<Client>, ConfigError> {
        let mut clients = Vec::new();
        for (i, client) in self.clients.iter().enumerate() {
            let field = format!("auth.clients[{i}]");
            let name_ok = (1..=64).contains(&client.name.len())
                && client.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !name_ok {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    "must be 1 to 64 lowercase letters, digits, '-' or '_'",
                ));
            }
            if client.scopes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{field}.scopes"),
                    "must name at least one of read, export, replay",
                ));
            }
            let token = match (&client.token, &client.token_file) {
                (Some(token), None) => token.clone(),
                (None, Some(path)) => read_secret_file(path)?
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or_default()
                    .to_owned(),
                _ => {
                    return Err(ConfigError::invalid(
                        &field,
                        "give exactly one of token and token_file",
                    ));
                }
            };
            let mut scopes = client.scopes.clone();
            scopes.dedup();
            clients.push(Client {
                name: client.name.clone(),
                token,
                scopes,
            });
        }
        let mut plain = self.tokens.clone().unwrap_or_default();
        if let Some(path) = &self.token_file {
            plain.extend(
                read_secret_file(path)?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        for (i, token) in plain.into_iter().enumerate() {
            clients.push(Client {
                name: format!("token-{}", i + 1),
                token,
                scopes: Scope::ALL.to_vec(),
            });
        }
        for (i, client) in clients.iter().enumerate() {
            let field = if self.clients.len() > i {
                format!("auth.clients[{i}].token")
            } else {
                "auth.tokens".to_owned()
            };
            if client.token.len() < MIN_TOKEN_LEN {
                return Err(ConfigError::invalid(
                    &field,
                    format!("every token must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
            if !client.token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::invalid(
                    &field,
                    "tokens must be printable ASCII without spaces",
                ));
            }
            if clients[..i].iter().any(|c| c.name == client.name) {
                return Err(ConfigError::invalid(
                    format!("auth.clients[{i}].name"),
                    format!("{:?} is given twice", client.name),
                ));
            }
            if clients[..i].iter().any(|c| c.token == client.token) {
                return Err(ConfigError::invalid(
                    &field,
                    format!("{:?} has the same token as another client", client.name),
                ));
            }
        }
        Ok(clients)
    }

    /// Whether the deprecated plain token list is in use.
    pub fn uses_plain_tokens(&self) -> bool {
        self.tokens.is_some() || self.token_file.is_some()
    }
}

fn read_secret_file(path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
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
        if !(1..=100).contains(&self.snapshots.thumbnail_quality) {
            return invalid("snapshots.thumbnail_quality", "must be 1 to 100");
        }
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
            ("header_read_timeout_secs", self.header_read_timeout_secs),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if self.max_result_rows <= u64::from(self.max_limit) || self.max_result_rows > 10_000_000 {
            return invalid(
                "max_result_rows",
                "must be above max_limit and at most 10000000",
            );
        }
        if self.max_concurrent_exports == 0 {
            return invalid("max_concurrent_exports", "must be at least 1");
        }
        if self.max_concurrent_queries == 0 {
            return invalid("max_concurrent_queries", "must be at least 1");
        }
        if self.query_max_memory_bytes < 10_000_000 {
            return invalid("query_max_memory_bytes", "must be at least 10000000");
        }
        self.auth.load_clients()?;
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
            ("max_result_rows = 1000\n", "max_result_rows"),
            ("max_concurrent_exports = 0\n", "max_concurrent_exports"),
            ("header_read_timeout_secs = 0\n", "header_read_timeout_secs"),
            (
                "[[auth.clients]]\nname = \"Grafana\"\nscopes = [\"read\"]\ntoken = \"0123456789abcdef\"\n",
                "auth.clients[0].name",
            ),
            (
                "[[auth.clients]]\nname = \"g\"\nscopes = []\ntoken = \"0123456789abcdef\"\n",
                "auth.clients[0].scopes",
            ),
            (
                "[[auth.clients]]\nname = \"g\"\nscopes = [\"write\"]\ntoken = \"0123456789abcdef\"\n",
                "scopes",
            ),
            (
                "[[auth.clients]]\nname = \"g\"\nscopes = [\"read\"]\n",
                "auth.clients[0]",
            ),
            (
                "[[auth.clients]]\nname = \"g\"\nscopes = [\"read\"]\ntoken = \"short\"\n",
                "auth.clients[0].token",
            ),
            (
                "[[auth.clients]]\nname = \"g\"\nscopes = [\"read\"]\ntoken = \"0123456789abcdef\"\n\
                 [[auth.clients]]\nname = \"g\"\nscopes = [\"export\"]\ntoken = \"fedcba9876543210\"\n",
                "auth.clients[1].name",
            ),
            (
                "[auth]\ntokens = [\"0123456789abcdef\"]\n\
                 [[auth.clients]]\nname = \"g\"\nscopes = [\"read\"]\ntoken = \"0123456789abcdef\"\n",
                "auth.tokens",
            ),
        ] {
            let err = parse::<QueryConfig>(text, "query.toml").unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let err = parse::<QueryConfig>("max_limt = 5\n", "query.toml").unwrap_err();
        assert!(err.to_string().contains("query.toml"), "{err}");
    }

    #[test]
    fn named_clients_load_their_tokens_and_scopes_and_never_print_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grafana");
        std::fs::write(&file, "\nabcdefghijklmnopqrst\n").unwrap();
        let config: QueryConfig = parse(
            &format!(
                "[[auth.clients]]\nname = \"grafana\"\nscopes = [\"read\"]\ntoken_file = {:?}\n\
                 [[auth.clients]]\nname = \"ops_1\"\nscopes = [\"read\", \"export\"]\ntoken = \"0123456789abcdef\"\n",
                file.display().to_string()
            ),
            "query.toml",
        )
        .unwrap();
        let clients = config.auth.load_clients().unwrap();
        assert_eq!(
            clients,
            [
                Client {
                    name: "grafana".into(),
                    token: "abcdefghijklmnopqrst".into(),
                    scopes: vec![Scope::Read],
                },
                Client {
                    name: "ops_1".into(),
                    token: "0123456789abcdef".into(),
                    scopes: vec![Scope::Read, Scope::Export],
                },
            ]
        );
        assert!(!config.auth.uses_plain_tokens());
        let printed = toml::to_string(&config).unwrap();
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
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
        let clients = config.auth.load_clients().unwrap();
        let tokens: Vec<_> = clients.iter().map(|c| c.token.as_str()).collect();
        assert_eq!(tokens, ["0123456789abcdef", "abcdefghijklmnopqrst"]);
        // Plain tokens keep what they could do before scopes existed.
        assert!(clients.iter().all(|c| c.scopes == Scope::ALL));
        assert_eq!(clients[1].name, "token-2");
        let printed = toml::to_string(&config).unwrap();
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
