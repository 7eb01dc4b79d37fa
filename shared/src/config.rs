//! Config plumbing shared by every service: the error type, the validation trait, TOML
//! parsing, and the connection sections that mean the same in every config file.
//!
//! Reading the file is I/O and lives in `sightline-runtime` (`load_config`); everything here
//! is pure.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::validate::is_identifier;

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
    Invalid { field: String, problem: String },
}

impl ConfigError {
    /// A value serde accepted but the service cannot use.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl From<crate::validate::ValidationError> for ConfigError {
    /// A contract rule a configured value breaks: its message starts with the field.
    fn from(error: crate::validate::ValidationError) -> Self {
        let message = error.to_string();
        match message.split_once(": ") {
            Some((field, problem)) => Self::invalid(field, problem),
            None => Self::invalid("", message),
        }
    }
}

/// The checks serde cannot express (ranges, cross-field rules, safe identifiers).
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Parses and validates config text; `origin` (a file name) appears in parse errors.
/// Unknown fields are errors wherever the config types say `deny_unknown_fields`.
pub fn parse<T: DeserializeOwned + Validate>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let config: T = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: e.to_string(),
    })?;
    config.validate()?;
    Ok(config)
}

/// Checks that `value` is a safe identifier (see [`is_identifier`]).
pub fn check_identifier(field: &str, value: &str) -> Result<(), ConfigError> {
    if is_identifier(value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            "must be 1-64 characters of A-Z a-z 0-9 _ -",
        ))
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222`; a user and password
    /// may be given in it (`nats://edge-1:secret@host:4222`), never printed.
    #[serde(default = "default_nats_url", serialize_with = "redact_password")]
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

/// A URL's user info: `(scheme, user info, host and path)` for `scheme://info@host/path`,
/// `None` for a URL without one.
fn user_info(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find('/').unwrap_or(rest.len());
    let (info, _) = rest[..end].rsplit_once('@')?;
    Some((scheme, info, &rest[info.len() + 1..]))
}

/// `urls` (comma separated) with any password in them replaced by `<redacted>`: for logs
/// and printed configs.
pub fn redacted_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| match user_info(url.trim()) {
            Some((scheme, info, rest)) if info.contains(':') => {
                let user = info.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:<redacted>@{rest}")
            }
            _ => url.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `urls` (comma separated) without the `user:password@` any of them holds, and the first
/// such user and password (percent-decoded): what a NATS client connects to and with.
pub fn split_user(urls: &str) -> (String, Option<(String, String)>) {
    let mut user = None;
    let stripped: Vec<String> = urls
        .split(',')
        .map(|url| match user_info(url.trim()) {
            Some((scheme, info, rest)) => {
                if user.is_none() {
                    let (name, password) = info.split_once(':').unwrap_or((info, ""));
                    user = Some((percent_decode(name), percent_decode(password)));
                }
                format!("{scheme}://{rest}")
            }
            None => url.trim().to_owned(),
        })
        .collect();
    (stripped.join(","), user)
}

/// `text` with its `%XX` escapes decoded (a user or password in a URL must escape `@`, `:`
/// and `/`); an escape that does not decode is kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        let escape = bytes
            .get(i + 1)
            .copied()
            .and_then(hex)
            .zip(bytes.get(i + 2).copied().and_then(hex));
        match (bytes[i], escape) {
            (b'%', Some((high, low))) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn redact_password<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted_urls(url))
}

/// Serializes a secret as `<redacted>`, so printing an effective config never shows it.
pub fn redact<T, S: serde::Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_some("<redacted>"),
        None => serializer.serialize_none(),
    }
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
    /// Password; prefer `password_file` outside development. Printed as `<redacted>`.
    #[serde(default, serialize_with = "redact")]
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

impl Validate for ClickHouseConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_identifier("clickhouse.database", &self.database)?;
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            return Err(ConfigError::invalid(
                "clickhouse.url",
                "must start with http:// or https://",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "clickhouse.timeout_ms",
                "must be at least 1",
            ));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_in_the_url_is_taken_out_of_it() {
        assert_eq!(
            split_user("nats://query:s3cr:et@10.0.0.1:4222, nats://10.0.0.2:4222"),
            (
                "nats://10.0.0.1:4222,nats://10.0.0.2:4222".to_owned(),
                Some(("query".to_owned(), "s3cr:et".to_owned()))
            )
        );
        assert_eq!(
            split_user("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".to_owned(), None)
        );
        // Escaped characters, as a URL must carry them.
        assert_eq!(
            split_user("nats://edge%2D1:p%40ss%2Fw%3Ard@host:4222").1,
            Some(("edge-1".to_owned(), "p@ss/w:rd".to_owned()))
        );
    }

    #[test]
    fn a_password_in_a_nats_url_is_never_printed() {
        assert_eq!(
            redacted_urls("nats://edge-1:secret@10.0.0.1:4222/x,nats://10.0.0.2:4222"),
            "nats://edge-1:<redacted>@10.0.0.1:4222/x,nats://10.0.0.2:4222"
        );
        let config = NatsConfig {
            url: "nats://q:pw@h:4222".into(),
            credentials_file: None,
        };
        let printed = serde_json::to_string(&config).unwrap();
        assert!(!printed.contains("pw@"), "{printed}");
    }
}
