//! Process plumbing shared by the three binaries, so each `main.rs` stays a thin shell
//! around its library's `run(config, ..., shutdown)`: logging flags and set-up, loading the
//! config file, shutdown signals, the NATS connection, the `/metrics` response, serving
//! HTTP with timeouts ([`http`], for the three listeners), the shared retry loop
//! ([`retry`]) and the snapshot store both cloud services use ([`objects`]) and the
//! picture scaling the edge's snapshots and the API's thumbnails share ([`picture`]).

pub mod http;
pub mod objects;
pub mod picture;
pub mod retry;

use std::path::Path;

use anyhow::Context as _;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sightline_shared::config::{self, ConfigError, Validate};
use tracing_subscriber::EnvFilter;

/// The logging flags every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `sightline_ingest=debug,info`.
    #[arg(long, env = "SIGHTLINE_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SIGHTLINE_LOG_JSON", global = true)]
    pub log_json: bool,
}

impl LogArgs {
    /// Installs the global tracing subscriber these flags describe.
    pub fn init(&self) -> anyhow::Result<()> {
        init_tracing(&self.log, self.log_json)
    }
}

/// The current time as the event contract measures it (UTC, milliseconds). The `shared`
/// crate never reads the clock; the services take it from here.
pub fn now() -> sightline_shared::Timestamp {
    sightline_shared::Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

/// Reads, parses and validates a config file; errors name the file and the field.
pub fn load_config<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    config::parse(&text, &shown)
}

/// [`load_config`] when a path is given, the built-in defaults otherwise.
pub fn load_config_or_default<T: DeserializeOwned + Validate + Default>(
    path: Option<&Path>,
) -> Result<T, ConfigError> {
    path.map_or_else(|| Ok(T::default()), load_config)
}

/// Prints the effective config as TOML (the binaries' `check-config`).
pub fn print_config<T: Serialize>(config: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        toml::to_string_pretty(config).context("failed to print config")?
    );
    Ok(())
}

/// The content type of [`metrics_response`]: the OpenMetrics text format.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `/metrics` response: the registry in the OpenMetrics text format.
pub fn metrics_response(registry: &Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "failed to encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Installs the global tracing subscriber: `filter` in `EnvFilter` syntax (`info`,
/// `sightline_ingest=debug,info`), as text or as JSON lines.
pub fn init_tracing(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (what Kubernetes and systemd send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "failed to listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}

/// Connects to NATS as `name`. With `retry_on_initial_connect` the client keeps trying in
/// the background, so a service (or an edge agent without uplink) starts before its server.
pub async fn connect_nats(
    config: &sightline_shared::config::NatsConfig,
    name: &str,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(std::time::Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("disconnected from NATS, reconnecting")
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    if let Some(path) = &config.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("failed to read NATS credentials file {path}"))?;
    }
    // A user and password in the URL (`nats://user:password@host:4222`), as other NATS
    // clients take them: async-nats reads them only from its options.
    let (urls, user) = sightline_shared::config::split_user(&config.url);
    if let Some((user, password)) = user {
        options = options.user_and_password(user, password);
    }
    options
        .connect(urls.as_str())
        .await
        .with_context(|| format!("failed to connect to NATS at {urls}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        limit: u32,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.limit == 0 {
                return Err(ConfigError::invalid("limit", "must be at least 1"));
            }
            Ok(())
        }
    }

    #[test]
    fn load_errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let missing = load_config::<Sample>(&path).unwrap_err().to_string();
        assert!(missing.contains("bad.toml"), "{missing}");
        std::fs::write(&path, "limt = 5\n").unwrap();
        let err = load_config::<Sample>(&path).unwrap_err().to_string();
        assert!(err.contains("limt") && err.contains("bad.toml"), "{err}");
        std::fs::write(&path, "limit = 0\n").unwrap();
        let err = load_config::<Sample>(&path).unwrap_err().to_string();
        assert!(err.contains("limit: must be at least 1"), "{err}");
        std::fs::write(&path, "limit = 3\n").unwrap();
        assert_eq!(load_config::<Sample>(&path).unwrap().limit, 3);
    }
}
