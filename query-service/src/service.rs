//! Runs the HTTP server until shutdown, then drains in-flight requests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::api::{AppState, router};
use crate::config::QueryConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// Serves the API on `listener` until `shutdown` completes.
pub async fn run(
    config: QueryConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let client = sightline_ingest::schema::client(&config.clickhouse)?
        .with_database(&config.clickhouse.database);
    let state = AppState {
        store: Store::new(client, config.query_timeout_secs),
        metrics,
        registry: Arc::new(registry),
        default_limit: config.default_limit,
        max_limit: config.max_limit,
    };
    let app = router(state, Duration::from_secs(config.request_timeout_secs));
    tracing::info!(address = %listener.local_addr()?, "query service listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("query service stopped");
    Ok(())
}
