//! Realistic synthetic events for benchmarks: many sites, cameras and COCO labels.

use rand::Rng;
use sightline_edge_agent::config::SyntheticConfig;
use sightline_shared::{DetectionEvent, EventId, Timestamp};

/// The labels benchmark events carry (COCO classes a street camera sees).
pub const LABELS: [&str; 12] = [
    "person",
    "car",
    "bicycle",
    "dog",
    "truck",
    "bus",
    "motorcycle",
    "cat",
    "backpack",
    "handbag",
    "umbrella",
    "bird",
];

/// Sites (edge agents) events come from.
pub const EDGES: usize = 8;
/// Cameras events come from, spread over the sites.
pub const CAMERAS: usize = 64;

/// The camera of event `i`.
pub fn camera(i: usize) -> String {
    format!("cam-{:02}", i % CAMERAS)
}

/// Event `i` of a benchmark set: site and camera round-robin, one to four detections with
/// random labels, boxes and confidences, captured at `at` (now when `None`).
pub fn event(
    i: usize,
    at: Option<Timestamp>,
    next_track: &mut u64,
    rng: &mut impl Rng,
) -> DetectionEvent {
    let config = SyntheticConfig {
        labels: LABELS.map(String::from).to_vec(),
        max_detections: 4,
        ..SyntheticConfig::default()
    };
    let edge = format!("site-{}", i % EDGES);
    let mut event = sightline_edge_agent::synthetic::make_event(
        &edge,
        &camera(i),
        &config,
        i as u64,
        next_track,
        rng,
    );
    if let Some(at) = at {
        event.captured_at = at;
        event.event_id = EventId::new_v7(at);
    }
    event
}

/// A buffer thread for benches over [`bench_buffer_settings`] in `dir`.
///
/// # Errors
/// When the buffer cannot be opened.
pub fn bench_buffer(
    dir: &std::path::Path,
    metrics: &sightline_edge_agent::metrics::Metrics,
) -> anyhow::Result<(
    sightline_edge_agent::buffer::worker::BufferHandle,
    std::thread::JoinHandle<()>,
)> {
    Ok(sightline_edge_agent::buffer::worker::start(
        bench_buffer_settings(dir),
        metrics.clone(),
        tokio_util::sync::CancellationToken::new(),
    )?)
}

/// The edge agent's publisher for benches: bincode, `window` publishes in flight on a
/// JetStream context of its own with the same window.
pub fn bench_publisher(
    client: &async_nats::Client,
    window: usize,
    metrics: &sightline_edge_agent::metrics::Metrics,
) -> sightline_edge_agent::publisher::Publisher {
    sightline_edge_agent::publisher::Publisher::new(
        async_nats::jetstream::context::ContextBuilder::new()
            .max_ack_inflight(window)
            .build(client.clone()),
        sightline_shared::Encoding::Bincode,
        window,
        metrics.clone(),
    )
}

/// Buffer worker settings for benches: the buffer in `dir`, a budget that never fills, no
/// day logs, a storage check every 10 s, the agent's default group commit window.
pub fn bench_buffer_settings(
    dir: &std::path::Path,
) -> sightline_edge_agent::buffer::worker::Settings {
    use sightline_edge_agent::storage::{Budget, FreeSpace, FullPolicy};
    sightline_edge_agent::buffer::worker::Settings {
        data_dir: dir.to_owned(),
        budget: Budget {
            limit_bytes: 100_000_000_000,
            min_retention_days: 7,
            policy: FullPolicy::RejectNew,
            min_free_bytes: 0,
            free_space: FreeSpace::Filesystem,
        },
        check_interval: std::time::Duration::from_secs(10),
        daily_logs: false,
        group_window: std::time::Duration::from_millis(
            sightline_edge_agent::config::StorageConfig::default().group_commit_ms,
        ),
    }
}
