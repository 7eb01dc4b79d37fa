//! Runs the HTTP server until shutdown, then drains in-flight requests and stops replays.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use sightline_runtime::http::HttpLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, Readiness, router};
use crate::auth::Clients;
use crate::config::QueryConfig;
use crate::metrics::Metrics;
use crate::replay::Replays;
use crate::snapshots::{Snapshots, Thumbnails};
use crate::store::{Limits, Store};
use sightline_runtime::objects::JetStreamSnapshots;

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
    let clients = Clients::new(config.auth.load_clients()?);
    if !clients.enabled() {
        tracing::warn!("authentication is off: no [[auth.clients]] or [auth] tokens configured");
    }
    if config.auth.uses_plain_tokens() {
        tracing::warn!(
            "[auth] tokens and token_file are deprecated: each such token may read, export \
             and replay; name each client with its scopes in [[auth.clients]] instead"
        );
    }
    let nats = if config.replay.enabled || config.snapshots.enabled {
        Some(sightline_runtime::connect_nats(&config.nats, "sightline-query").await?)
    } else {
        None
    };
    let snapshots = match &nats {
        Some(nats) if config.snapshots.enabled => Some(Snapshots {
            store: Arc::new(JetStreamSnapshots::new(
                async_nats::jetstream::new(nats.clone()),
                sightline_shared::subjects::SNAPSHOTS_BUCKET,
            )),
            thumbnails: Arc::new(Thumbnails::new(config.snapshots.thumbnail_cache_bytes)),
            quality: config.snapshots.thumbnail_quality,
            making: Arc::new(tokio::sync::Semaphore::new(2)),
        }),
        _ => None,
    };
    let nats = nats.filter(|_| config.replay.enabled);
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
        clients,
        replays,
        exports: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_exports)),
        queries: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_queries)),
        readiness: Readiness::default(),
        snapshots,
    };
    let watching = tokio::spawn(
        state
            .readiness
            .clone()
            .watch(state.store.clone(), stop.clone()),
    );
    let app = router(state, Duration::from_secs(config.request_timeout_secs));
    tracing::info!(address = %listener.local_addr()?, "query service listening");
    let stopping = stop.clone();
    let limits = HttpLimits::from_secs(config.header_read_timeout_secs);
    sightline_runtime::http::serve(listener, app, limits, async move {
        shutdown.await;
        // Replays stop publishing at once; open exports end when their clients are done.
        stopping.cancel();
    })
    .await?;
    stop.cancel();
    watching.await.ok();
    tracing::info!("query service stopped");
    Ok(())
}
