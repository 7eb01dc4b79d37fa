//! Process plumbing shared by the three binaries, so each `main.rs` stays a thin shell
//! around its library's `run(config, ..., shutdown)`.

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

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
    options
        .connect(config.url.as_str())
        .await
        .with_context(|| format!("failed to connect to NATS at {}", config.url))
}
