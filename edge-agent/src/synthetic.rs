//! A synthetic camera: plausible detection events at a steady rate, without a camera or a
//! model. It stands in front of the same outbox the real pipeline uses.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use sightline_shared::{
    BoundingBox, Detection, DetectionEvent, EventId, ModelInfo, SCHEMA_VERSION,
};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::buffer::worker::BufferHandle;
use crate::camera::{CameraState, MAX_UNCOMMITTED};
use crate::config::SyntheticConfig;
use crate::metrics::Metrics;
use crate::outbox::Message;

/// Emits events for one camera until `stop` fires or `max_events` is reached. Each event
/// counts as created once the buffer has committed it; one the buffer refuses (storage full,
/// a disk error) is counted as dropped and logged at ERROR.
pub async fn run(
    edge_id: String,
    camera_id: String,
    config: SyntheticConfig,
    buffer: BufferHandle,
    metrics: Metrics,
    state: Arc<CameraState>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / config.events_per_second));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut frame_seq = 0u64;
    let mut next_track = 1u64;
    let mut commits = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if config.max_events.is_some_and(|max| frame_seq >= max) {
            tracing::info!(camera = %camera_id, events = frame_seq, "synthetic camera finished");
            state.finish();
            break;
        }
        let event = make_event(
            &edge_id,
            &camera_id,
            &config,
            frame_seq,
            &mut next_track,
            &mut rand::rng(),
        );
        frame_seq += 1;
        let event_id = event.event_id;
        // Handed over without waiting for the commit (group commit, as a real camera), and
        // counted when it reports. Not raced against `stop`: every append handed over is
        // waited for below, so an event is either committed or counted as refused.
        let commit = buffer.submit(Message::Event(event), None);
        let (metrics, state, camera_id) = (metrics.clone(), state.clone(), camera_id.clone());
        commits.spawn(async move {
            match commit.await {
                Ok(_) => {
                    metrics.events_created.inc();
                    state.count_event();
                }
                Err(error) => {
                    metrics.refused(error.drop_reason(), 1);
                    tracing::error!(camera = %camera_id, %event_id, %error, "the buffer refused a new event");
                }
            }
        });
        while commits.try_join_next().is_some() {}
        if commits.len() > MAX_UNCOMMITTED {
            commits.join_next().await;
        }
    }
    while commits.join_next().await.is_some() {}
}

/// One synthetic event captured now.
pub fn make_event(
    edge_id: &str,
    camera_id: &str,
    config: &SyntheticConfig,
    frame_seq: u64,
    next_track: &mut u64,
    rng: &mut impl Rng,
) -> DetectionEvent {
    let captured_at = sightline_runtime::now();
    let count = rng.random_range(1..=config.max_detections.max(1));
    let detections = (0..count)
        .map(|_| {
            let class = rng.random_range(0..config.labels.len());
            let (x, y) = (rng.random_range(0.0f32..0.8), rng.random_range(0.0f32..0.8));
            let (w, h) = (
                rng.random_range(0.05f32..0.2),
                rng.random_range(0.05f32..0.2),
            );
            let track_id = *next_track;
            *next_track += 1;
            Detection {
                label: config.labels[class].clone(),
                class_id: class as u32,
                confidence: rng.random_range(0.35f32..0.99),
                bbox: BoundingBox {
                    x_min: x,
                    y_min: y,
                    x_max: x + w,
                    y_max: y + h,
                },
                track_id: Some(track_id),
                zones: Vec::new(),
            }
        })
        .collect();
    DetectionEvent {
        event_id: EventId::new_v7(captured_at),
        schema_version: SCHEMA_VERSION,
        edge_id: edge_id.to_owned(),
        camera_id: camera_id.to_owned(),
        captured_at,
        frame_seq,
        motion_score: rng.random_range(0.05f32..1.0),
        detections,
        model: ModelInfo {
            name: "synthetic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        inference_ms: rng.random_range(5.0f32..20.0),
        snapshot: None,
        description: None,
        attributes: BTreeMap::from([("source".to_owned(), "synthetic".to_owned())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_events_are_valid() {
        let config = SyntheticConfig::default();
        let mut track = 1;
        let mut rng = rand::rng();
        for seq in 0..200 {
            let event = make_event("edge-1", "cam-1", &config, seq, &mut track, &mut rng);
            event.validate(event.captured_at).unwrap();
        }
    }
}
