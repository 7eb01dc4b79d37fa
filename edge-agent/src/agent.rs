//! Wiring and shutdown: cameras -> outbox -> publisher.

use std::future::Future;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, SourceConfig, Validate};
use crate::metrics::{DropReason, Metrics};
use crate::outbox::ChannelOutbox;
use crate::publisher::{PublishReport, Publisher};
use crate::synthetic;

/// Runs the agent until `shutdown` completes or every camera has finished (a synthetic
/// camera with `max_events`), and everything queued is published or the drain timeout
/// passes.
///
/// Shutdown order: stop the cameras, publish what is queued (up to `drain_timeout_secs`),
/// flush the NATS connection. Events still unacknowledged after the drain are counted as
/// dropped and logged at ERROR (the DuckDB buffer will keep them instead).
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<PublishReport> {
    config.validate()?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let client = sightline_runtime::connect_nats(
        &config.nats,
        &format!("sightline-edge-{}", config.edge_id),
    )
    .await?;
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_millis(config.publisher.ack_timeout_ms))
        // The publisher keeps its own window; the context must never block below it.
        .max_ack_inflight(config.publisher.max_in_flight)
        .build(client.clone());

    let (tx, mut outbox) = ChannelOutbox::new(config.publisher.queue_capacity);
    let stop_cameras = CancellationToken::new();
    let mut cameras = JoinSet::new();
    for camera in &config.cameras {
        match &camera.source {
            SourceConfig::Synthetic(source) => {
                cameras.spawn(synthetic::run(
                    config.edge_id.clone(),
                    camera.id.clone(),
                    source.clone(),
                    tx.clone(),
                    metrics.clone(),
                    stop_cameras.clone(),
                ));
            }
        }
    }
    drop(tx);
    tracing::info!(edge_id = %config.edge_id, cameras = config.cameras.len(), nats = %config.nats.url, "edge agent running");

    let stop_publisher = CancellationToken::new();
    let publisher = Publisher::new(
        js,
        config.publisher.encoding,
        config.publisher.max_in_flight,
        metrics.clone(),
    );
    let mut publishing = tokio::spawn({
        let stop = stop_publisher.clone();
        async move {
            let report = publisher.run(&mut outbox, &stop).await;
            (report, outbox.queued())
        }
    });

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            joined = cameras.join_next() => match joined {
                None => break,
                Some(Err(error)) => tracing::error!(%error, "a camera task failed"),
                Some(Ok(())) => {}
            }
        }
    }
    stop_cameras.cancel();
    while cameras.join_next().await.is_some() {}

    let drain = Duration::from_secs(config.publisher.drain_timeout_secs);
    let (report, queued) = match tokio::time::timeout(drain, &mut publishing).await {
        Ok(joined) => joined?,
        Err(_) => {
            tracing::warn!(
                timeout_secs = drain.as_secs(),
                "drain timeout passed, stopping the publisher"
            );
            stop_publisher.cancel();
            publishing.await?
        }
    };
    let lost = report.unpublished + queued as u64;
    if lost > 0 {
        metrics.dropped(DropReason::Shutdown, lost);
        tracing::error!(
            lost,
            "events were not acknowledged by JetStream before shutdown and are lost"
        );
    }
    match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "failed to flush NATS on shutdown"),
        Err(_) => tracing::warn!("NATS unreachable, gave up flushing on shutdown"),
    }
    tracing::info!(published = report.published, lost, "edge agent stopped");
    Ok(PublishReport {
        published: report.published,
        unpublished: lost,
    })
}
