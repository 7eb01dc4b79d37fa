//! Wiring: connect, declare, migrate, consume, serve HTTP; stop in order on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use sightline_shared::Backoff;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::consumer::Consumer;
use crate::deadletter::DeadLetters;
use crate::http::{HttpState, router};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::{nats, schema};

/// Runs the ingest service until `shutdown` completes.
///
/// Start-up waits for ClickHouse and NATS (retrying with backoff) instead of failing, so a
/// service started before its servers simply becomes ready later. Shutdown order: stop
/// fetching, flush the open batch and ack it, drain the NATS connection, close HTTP.
pub async fn run(
    config: IngestConfig,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        trigger.cancel();
    });

    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);

    let admin = schema::client(&config.clickhouse)?;
    let client = admin.clone().with_database(&config.clickhouse.database);
    let sink = Sink::new(client, config.clickhouse.timeout(), metrics.clone());
    let nats = sightline_runtime::connect_nats(&config.nats, "sightline-ingest").await?;

    let http = tokio::spawn({
        let state = HttpState {
            registry: Arc::new(registry),
            sink: sink.clone(),
            nats: nats.clone(),
        };
        let cancel = cancel.clone();
        async move {
            axum::serve(http_listener, router(state))
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
        }
    });

    if retry("create the ClickHouse schema", &cancel, || {
        schema::ensure(&admin, &config.clickhouse.database)
    })
    .await
    .is_none()
    {
        return finish(http, nats).await;
    }
    let js = async_nats::jetstream::new(nats.clone());
    let Some(consumer) = retry(
        "declare the JetStream streams and consumer",
        &cancel,
        || nats::declare(&js, &config),
    )
    .await
    else {
        return finish(http, nats).await;
    };
    tracing::info!(
        stream = sightline_shared::subjects::EVENTS_STREAM,
        consumer = %config.consumer.durable_name,
        database = %config.clickhouse.database,
        "ingest running"
    );
    let dead_letters = DeadLetters::new(js, metrics.clone());
    Consumer::new(
        consumer,
        config.consumer.clone(),
        config.batch.clone(),
        sink,
        dead_letters,
        metrics,
    )
    .run(cancel.clone())
    .await?;
    finish(http, nats).await
}

async fn finish(
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    nats: async_nats::Client,
) -> anyhow::Result<()> {
    // Acks are plain publishes: flush them out before the connection goes.
    // A redelivery of anything whose ack is lost here is deduplicated downstream.
    match tokio::time::timeout(Duration::from_secs(5), nats.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "failed to flush NATS on shutdown"),
        Err(_) => tracing::warn!("NATS unreachable, gave up flushing acks on shutdown"),
    }
    http.await
        .context("HTTP task panicked")?
        .context("HTTP server failed")?;
    tracing::info!("ingest stopped");
    Ok(())
}

/// Retries `op` with capped backoff until it succeeds (`Some`) or `cancel` fires (`None`).
async fn retry<T, E, F, Fut>(what: &str, cancel: &CancellationToken, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match op().await {
            Ok(value) => return Some(value),
            Err(error) => {
                let delay = backoff.next_delay(rand::random());
                tracing::warn!(error = %format!("{error:#}"), retry_in_ms = delay.as_millis() as u64, "failed to {what}, retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => return None,
                }
            }
        }
    }
}
