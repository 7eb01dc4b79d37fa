//! Wiring and shutdown: cameras -> DuckDB buffer -> publisher, plus the local status
//! endpoint, the status line and heartbeats.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::buffer::worker::{self, BufferHandle};
use crate::camera::{Camera, CameraState};
use crate::config::{AgentConfig, SessionSharing, SourceConfig, Validate};
use crate::detect::Detector;
use crate::metrics::Metrics;
use crate::publisher::{PublishReport, Publisher};
use crate::status::{StatusState, StatusTicker};
use crate::{heartbeat, synthetic};

/// Runs the agent until `shutdown` completes or every camera has finished (a synthetic
/// camera with `max_events`) and the buffer has nothing left to publish.
///
/// Shutdown order: stop the cameras (every event is then either committed or counted as
/// dropped), keep publishing the backlog for up to `drain_timeout_secs`, write the acks back,
/// close the buffer, flush NATS. Whatever is still unpublished stays in the buffer and goes
/// out after the next start: `unpublished` in the report counts it, and nothing is lost.
///
/// Fails if the buffer cannot be opened, or if the `stop` full-disk policy fired.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<PublishReport> {
    config.validate()?;
    let started = Instant::now();
    // The model first: a missing model or runtime library is a set-up error to report
    // before anything else starts.
    let detectors = load_detectors(&config).await?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let storage_stop = CancellationToken::new();
    let settings = config.storage.worker_settings();
    let (buffer, buffer_thread) = tokio::task::spawn_blocking({
        let (metrics, storage_stop) = (metrics.clone(), storage_stop.clone());
        move || worker::start(settings, metrics, storage_stop)
    })
    .await??;

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

    let state = Arc::new(StatusState {
        edge_id: config.edge_id.clone(),
        cameras: config
            .cameras
            .iter()
            .map(|c| Arc::new(CameraState::new(c)))
            .collect(),
        buffer: buffer.clone(),
        metrics: metrics.clone(),
        registry,
        nats: client.clone(),
        started,
        clock_offset: crate::status::ClockOffset::default(),
    });
    let background = CancellationToken::new();
    let mut tasks = JoinSet::new();
    if config.status.enabled {
        let addr = config.status.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("status.listen: cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, "status endpoint listening");
        let token = match &config.status.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("status.token_file: cannot read {path}: {e}"))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            )
            .filter(|t| !t.is_empty()),
            None => None,
        };
        let access = crate::status::Access::new(addr, &config.status.allowed_hosts, token);
        let app = crate::status::router(state.clone(), access);
        let stop = background.clone();
        let limits =
            sightline_runtime::http::HttpLimits::from_secs(config.status.header_read_timeout_secs);
        tasks.spawn(async move {
            if let Err(error) =
                sightline_runtime::http::serve(listener, app, limits, stop.cancelled_owned()).await
            {
                tracing::error!(%error, "the status endpoint failed");
            }
        });
    }
    if config.status.log_interval_secs > 0 {
        tasks.spawn(status_lines(
            state.clone(),
            Duration::from_secs(config.status.log_interval_secs),
            background.clone(),
        ));
    }
    if config.heartbeat.interval_secs > 0 {
        tasks.spawn(heartbeat::run(
            state.clone(),
            js.clone(),
            Duration::from_secs(config.heartbeat.interval_secs),
            Duration::from_secs(config.heartbeat.max_clock_offset_secs),
            background.clone(),
        ));
    }

    let stop_cameras = CancellationToken::new();
    let mut cameras = JoinSet::new();
    for ((camera, camera_state), detector) in
        config.cameras.iter().zip(&state.cameras).zip(detectors)
    {
        match (&camera.source, detector) {
            (SourceConfig::Synthetic(source), _) => {
                cameras.spawn(synthetic::run(
                    config.edge_id.clone(),
                    camera.id.clone(),
                    source.clone(),
                    buffer.clone(),
                    metrics.clone(),
                    camera_state.clone(),
                    stop_cameras.clone(),
                ));
            }
            (_, Some(detector)) => {
                let camera = Camera {
                    edge_id: config.edge_id.clone(),
                    config: camera.clone(),
                    detector,
                    snapshots: config.snapshots.clone(),
                    data_dir: config.storage.data_dir.clone(),
                    buffer: buffer.clone(),
                    metrics: metrics.clone(),
                    state: camera_state.clone(),
                };
                let (rt, stop) = (tokio::runtime::Handle::current(), stop_cameras.clone());
                cameras.spawn_blocking(move || camera.run(&rt, &stop));
            }
            (_, None) => unreachable!("load_detectors gives every camera with frames a detector"),
        }
    }
    tracing::info!(edge_id = %config.edge_id, cameras = config.cameras.len(), nats = %sightline_shared::config::redacted_urls(&config.nats.url), data_dir = %config.storage.data_dir.display(), "edge agent running");

    // Snapshots to the cloud, after their events; on shutdown they drain after the events,
    // within what is left of the drain timeout, and stop before the buffer closes (what is
    // pending stays queued for the next start).
    let stop_uploads = CancellationToken::new();
    let finish_uploads = CancellationToken::new();
    let uploading = tokio::spawn(
        crate::uploader::Uploader {
            buffer: buffer.clone(),
            js: crate::uploader::context(&client, &config),
            edge_id: config.edge_id.clone(),
            data_dir: config.storage.data_dir.clone(),
            config: config.snapshots.upload.clone(),
            metrics: metrics.clone(),
        }
        .run(stop_uploads.clone(), finish_uploads.clone()),
    );

    let cameras_done = CancellationToken::new();
    let stop_publisher = CancellationToken::new();
    let publisher = Publisher::new(
        js,
        config.publisher.encoding,
        config.publisher.max_in_flight,
        metrics.clone(),
    );
    let mut publishing = tokio::spawn({
        let stop = stop_publisher.clone();
        let mut outbox = buffer.outbox(worker::PAGE_SIZE, cameras_done.clone());
        async move {
            let report = publisher.run(&mut outbox, &stop).await;
            outbox.flush();
            report
        }
    });

    let mut storage_full = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = storage_stop.cancelled() => {
                storage_full = true;
                break;
            }
            joined = cameras.join_next() => match joined {
                None => break,
                Some(Err(error)) => tracing::error!(%error, "a camera task failed"),
                Some(Ok(())) => {}
            }
        }
    }
    stop_cameras.cancel();
    while cameras.join_next().await.is_some() {}
    cameras_done.cancel();

    let drain = Duration::from_secs(config.publisher.drain_timeout_secs);
    let draining = tokio::time::Instant::now() + drain;
    let report = match tokio::time::timeout(drain, &mut publishing).await {
        Ok(joined) => joined?,
        Err(_) => {
            tracing::warn!(
                timeout_secs = drain.as_secs(),
                "drain timeout passed, stopping the publisher; the rest stays in the buffer"
            );
            stop_publisher.cancel();
            publishing.await?
        }
    };
    finish_uploads.cancel();
    let mut uploading = uploading;
    if tokio::time::timeout_at(draining, &mut uploading)
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed with snapshots still to upload; they stay queued");
        stop_uploads.cancel();
        let _ = uploading.await;
    }
    let unsent = close_buffer(&buffer, buffer_thread).await;
    background.cancel();
    while tasks.join_next().await.is_some() {}
    match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "failed to flush NATS on shutdown"),
        Err(_) => tracing::warn!("NATS unreachable, gave up flushing on shutdown"),
    }
    tracing::info!(
        published = report.published,
        unsent,
        "edge agent stopped; unsent events stay in the buffer"
    );
    if storage_full {
        anyhow::bail!(
            "storage is full ({} GB) and storage.full_policy is stop: the agent stopped",
            config.storage.max_storage_gb
        );
    }
    Ok(PublishReport {
        published: report.published,
        unpublished: unsent,
    })
}

/// One detector per camera with frames (`None` for synthetic cameras): the same one for
/// all of them with `model.sessions = "shared"`. Labels a camera asks for must be the
/// model's.
async fn load_detectors(config: &AgentConfig) -> anyhow::Result<Vec<Option<Arc<Detector>>>> {
    let mut shared: Option<Arc<Detector>> = None;
    let mut detectors = Vec::with_capacity(config.cameras.len());
    for (i, camera) in config.cameras.iter().enumerate() {
        if !camera.has_frames() {
            detectors.push(None);
            continue;
        }
        let detector = match (&shared, config.model.sessions) {
            (Some(d), SessionSharing::Shared) => d.clone(),
            _ => {
                let model = config.model.clone();
                let loaded =
                    Arc::new(tokio::task::spawn_blocking(move || Detector::load(&model)).await??);
                tracing::info!(camera = %camera.id, model = %loaded.info().name, version = %loaded.info().version, input = ?loaded.input_size(), labels = loaded.labels().len(), "model loaded");
                shared = Some(loaded.clone());
                loaded
            }
        };
        if let Some(unknown) = camera
            .labels
            .iter()
            .find(|l| !detector.labels().contains(l))
        {
            anyhow::bail!(
                "cameras[{i}].labels: {unknown:?} is not a label of the model (see {})",
                config.model.labels.display()
            );
        }
        detectors.push(Some(detector));
    }
    Ok(detectors)
}

/// Closes the buffer and returns how many events stay unsent in it.
async fn close_buffer(buffer: &BufferHandle, thread: std::thread::JoinHandle<()>) -> u64 {
    let unsent = buffer.status().await.map_or(0, |s| s.stats.unsent);
    buffer.close().await;
    if !matches!(
        tokio::task::spawn_blocking(move || thread.join()).await,
        Ok(Ok(()))
    ) {
        tracing::error!("the buffer thread panicked");
    }
    unsent
}

/// The status line (seed story 3.8), every `every`.
async fn status_lines(state: Arc<StatusState>, every: Duration, stop: CancellationToken) {
    let mut last_created = state.metrics.events_created.get();
    let mut last = Instant::now();
    let mut ticker = StatusTicker::new(every, stop);
    while let Some(status) = ticker.next(&state).await {
        let rate = (status.events_created - last_created) as f64 / last.elapsed().as_secs_f64();
        (last_created, last) = (status.events_created, Instant::now());
        let backlog_age = status
            .buffer
            .stats
            .oldest_unsent_ms
            .map(|ms| {
                format!(
                    "{}s",
                    (sightline_runtime::now().as_millis() - ms).max(0) / 1000
                )
            })
            .unwrap_or_else(|| "-".into());
        tracing::info!(
            storage = %status.buffer.storage.display(),
            backlog = status.buffer.stats.unsent,
            backlog_age = %backlog_age,
            events_per_second = format!("{rate:.1}"),
            nats_connected = status.nats_connected,
            "Storage: {}, backlog {} (oldest {}), {:.1} events/s, created {}, published {}, dropped {}, refused {}",
            status.buffer.storage.display(),
            status.buffer.stats.unsent,
            backlog_age,
            rate,
            status.events_created,
            status.events_published,
            status.events_dropped,
            status.events_refused
        );
    }
}
