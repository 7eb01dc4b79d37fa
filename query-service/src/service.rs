//! Runs the HTTP server until shutdown, then drains in-flight requests and stops replays.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, router};
use crate::auth::Tokens;
use crate::config::QueryConfig;
use crate::metrics::Metrics;
use crate::replay::Replays;
use crate::store::{Limits, Store};

/// Serves the API on `listener` until `shutdown` completes.
pub async fn run(
    config: QueryConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let client =
        sightline_store::client(&config.clickhouse)?.with_database(&config.clickhouse.database);
    let store = Store::new(client, Limits::from(&config));
    let tokens = Tokens::new(config.auth.load_tokens()?);
    if !tokens.enabled() {
        tracing::warn!("authentication is off: no [auth] tokens configured");
    }
    let nats = if config.replay.enabled {
        Some(sightline_runtime::connect_nats(&config.nats, "sightline-query").await?)
    } else {
        None
    };
    let stop = CancellationToken::new();
    let replays = Replays::new(
        config.replay.clone(),
        nats,
        store.clone(),
        stop.clone(),
        metrics.replay_published.clone(),
    );
    let state = AppState {
        store,
        metrics,
        registry: Arc::new(registry),
        default_limit: config.default_limit,
        max_limit: config.max_limit,
        tokens,
        replays,
    };
    let app = router(state, Duration::from_secs(config.request_timeout_secs));
    tracing::info!(address = %listener.local_addr()?, "query service listening");
    let stopping = stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Replays stop publishing at once; open exports end when their clients are done.
            stopping.cancel();
        })
        .await?;
    stop.cancel();
    tracing::info!("query service stopped");
    Ok(())
}
