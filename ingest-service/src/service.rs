//! Wiring: connect, declare, migrate, consume, serve HTTP; stop in order on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use sightline_runtime::http::HttpLimits;
use sightline_runtime::objects::JetStreamSnapshots;
use sightline_runtime::retry::{retry, start_up_backoff};
use sightline_store::{SetupError, setup};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backlog::{self, AckFloor};
use crate::config::IngestConfig;
use crate::consumer::Consumer;
use crate::deadletter::DeadLetters;
use crate::http::{HttpState, router};
use crate::leader::{self, Elector};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::writer::{self, Writer};
use crate::{nats, retention, side, snapshots};

/// Runs the ingest service until `shutdown` completes.
///
/// Start-up waits for ClickHouse and NATS (retrying with backoff) instead of failing, so a
/// service started before its servers simply becomes ready later. Shutdown order: stop
/// fetching, flush the open batch and ack it, flush the NATS connection (acks are publishes), close HTTP.
pub async fn run(
    config: IngestConfig,
    http_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Boxed: the whole service is one large future (start-up and the consume loop), made
    // once; callers then hold a pointer.
    Box::pin(serve(config, http_listener, shutdown)).await
}

async fn serve(
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

    let admin = sightline_store::client(&config.clickhouse)?;
    let client = admin.clone().with_database(&config.clickhouse.database);
    let sink = Sink::new(client, config.clickhouse.timeout(), metrics.clone());
    let nats = sightline_runtime::connect_nats(&config.nats, "sightline-ingest").await?;
    // Edges' clock requests need only NATS: answered even while ClickHouse is not there yet.
    tokio::spawn(crate::clock::answer(
        nats.clone(),
        metrics.clone(),
        cancel.clone(),
    ));

    let schema_ready = Arc::new(AtomicBool::new(false));
    let streams_ready = Arc::new(AtomicBool::new(false));
    let http = tokio::spawn({
        let state = HttpState {
            registry: Arc::new(registry),
            sink: sink.clone(),
            nats: nats.clone(),
            schema_ready: schema_ready.clone(),
            streams_ready: streams_ready.clone(),
        };
        let cancel = cancel.clone();
        let limits = HttpLimits::from_secs(config.http.header_read_timeout_secs);
        async move {
            sightline_runtime::http::serve(http_listener, router(state), limits, async move {
                cancel.cancelled().await;
            })
            .await
        }
    });

    let elector = match leader::candidate(&config.leader).await {
        Ok(elector) => elector,
        Err(error) => return abort(&cancel, http, nats, error).await,
    };
    let schema_lock = elector.as_ref().map(Elector::for_schema);
    let db = config.clickhouse.database.clone();
    let prepared = retry(
        "prepare the ClickHouse schema",
        &cancel,
        start_up_backoff(),
        SetupError::is_transient,
        || setup::prepare(&admin, &db, &config.retention, &schema_lock),
    )
    .await;
    let caps = match prepared {
        Ok(Some(caps)) => caps,
        Ok(None) => return finish(http, nats).await,
        Err(error) => {
            let error = anyhow::Error::new(error).context("cannot run on this ClickHouse schema");
            return abort(&cancel, http, nats, error).await;
        }
    };
    let columns = retry(
        "read the events table's columns",
        &cancel,
        start_up_backoff(),
        sightline_store::error::is_unavailable,
        || sink.columns(),
    )
    .await;
    let columns = match columns {
        Ok(Some(columns)) => Arc::new(columns),
        Ok(None) => return finish(http, nats).await,
        Err(error) => {
            let error = anyhow::Error::new(error).context("cannot read the events table's columns");
            return abort(&cancel, http, nats, error).await;
        }
    };
    schema_ready.store(true, Ordering::Relaxed);
    // The leader runs the retention sweep (servers without TTL) and counts stream losses.
    let leadership = leader::lead(elector, cancel.clone());
    if !caps.ttl {
        tracing::info!(
            version = ?caps.version,
            "ClickHouse has no TTL: expired partitions are dropped by a scheduled sweep"
        );
        tokio::spawn(retention::run_sweeps(
            admin.clone(),
            db.clone(),
            config.retention.clone(),
            metrics.clone(),
            leadership.clone(),
            cancel.clone(),
        ));
    }
    let js = async_nats::jetstream::new(nats.clone());
    let declared = retry(
        "declare the JetStream streams and consumer",
        &cancel,
        start_up_backoff(),
        |_| true,
        || nats::declare(&js, &config, None),
    )
    .await;
    let Ok(Some(consumer)) = declared else {
        return finish(http, nats).await;
    };
    streams_ready.store(true, Ordering::Relaxed);
    tracing::info!(
        stream = sightline_shared::subjects::EVENTS_STREAM,
        consumer = %config.consumer.durable_name,
        database = %config.clickhouse.database,
        "ingest running"
    );
    let ack_wait = Duration::from_secs(config.consumer.ack_wait_secs);
    let dead_letters = DeadLetters::new(js.clone(), metrics.clone());
    let heartbeats = side::heartbeats(&metrics);
    let tracks = side::tracks(
        &metrics,
        (config.consumer.max_future_skew_secs as i64).saturating_mul(1000),
    );
    let snapshot_store = Arc::new(JetStreamSnapshots::new(
        js.clone(),
        sightline_shared::subjects::SNAPSHOTS_BUCKET,
    ));
    let bucket = retry(
        "declare the snapshot bucket",
        &cancel,
        start_up_backoff(),
        |_| true,
        || snapshot_store.declare(config.stream.replicas),
    )
    .await;
    let (Some(heartbeat_consumer), Some(track_consumer), Ok(Some(())), Some(snapshot_consumer)) = (
        side::declare_with_retry(&js, heartbeats.durable(), ack_wait, &cancel).await,
        side::declare_with_retry(&js, tracks.durable(), ack_wait, &cancel).await,
        bucket,
        side::declare_with_retry(&js, snapshots::durable(), ack_wait, &cancel).await,
    ) else {
        return finish(http, nats).await;
    };
    tokio::spawn(
        snapshots::SnapshotWriter {
            client: admin.clone().with_database(&config.clickhouse.database),
            store: snapshot_store.clone(),
            dead_letters: dead_letters.clone(),
            metrics: metrics.clone(),
            settings: config.snapshots,
            max_future_skew_ms: (config.consumer.max_future_skew_secs as i64).saturating_mul(1000),
            timeout: config.clickhouse.timeout(),
        }
        .run(snapshot_consumer, cancel.clone()),
    );
    tokio::spawn(retention::run_snapshot_sweeps(
        admin.clone().with_database(&config.clickhouse.database),
        snapshot_store.clone(),
        config.retention.clone(),
        metrics.clone(),
        leadership.clone(),
        cancel.clone(),
    ));
    tokio::spawn(snapshots::watch_usage(
        snapshot_store.clone(),
        Duration::from_secs(config.consumer.info_interval_secs),
        metrics.clone(),
        cancel.clone(),
    ));
    let writing = side::Writing {
        client: admin.clone().with_database(&config.clickhouse.database),
        dead_letters: dead_letters.clone(),
        timeout: config.clickhouse.timeout(),
        cancel: cancel.clone(),
    };
    tokio::spawn(side::run(heartbeat_consumer, heartbeats, writing.clone()));
    tokio::spawn(side::run(track_consumer, tracks, writing));
    let mut writer_client = admin.clone().with_database(&config.clickhouse.database);
    if caps.partitions_per_insert_limit {
        writer_client = writer_client.with_setting("max_partitions_per_insert_block", "0");
    }
    let sink = Sink::new(writer_client, config.clickhouse.timeout(), metrics.clone())
        .with_dedup_tokens(caps.insert_dedup_token);
    let ack_floor = AckFloor::default();
    tokio::spawn(backlog::watch(
        js.clone(),
        consumer.clone(),
        Duration::from_secs(config.consumer.info_interval_secs),
        ack_floor.clone(),
        leadership,
        metrics.clone(),
        cancel.clone(),
    ));
    let writer = Writer {
        sink,
        dead_letters: dead_letters.clone(),
        metrics: metrics.clone(),
        ack_wait,
        columns,
    };
    // The write stage runs as its own task; the consume loop hands it batches through the
    // outlet. One batch being written, one waiting in the writer, one filling (or waiting
    // for the writer): bounded memory, fetching overlaps with inserting, all kept alive.
    let (outlet, intake) = writer::hand_over();
    let stop_writer = CancellationToken::new();
    let writing = tokio::spawn(writer.clone().run(intake, stop_writer.clone()));
    Consumer {
        consumer,
        config: Arc::new(config),
        outlet,
        writer,
        dead_letters,
        metrics: metrics.clone(),
        js,
        ack_floor,
    }
    .run(cancel.clone())
    .await;
    // The consume loop left its batch with the writer if it had room: a last, bounded flush.
    writer::finish(writing, stop_writer, writer::LAST_FLUSH).await?;
    metrics.pending_rows.set(0);
    anyhow::ensure!(
        cancel.is_cancelled(),
        "the consume loop stopped unasked: the write stage is gone"
    );
    finish(http, nats).await
}

/// A start-up step failed for good: stops what started and returns `error`.
async fn abort(
    cancel: &CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    nats: async_nats::Client,
    error: anyhow::Error,
) -> anyhow::Result<()> {
    cancel.cancel();
    let _ = finish(http, nats).await;
    Err(error)
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
