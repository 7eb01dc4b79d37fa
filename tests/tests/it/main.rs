//! One integration-test binary for the whole workspace: end-to-end, dead letters, the HTTP
//! API and faults, all against real `nats-server` and `clickhouse-server` processes.

mod api;
mod backup;
mod camera;
mod clock;
mod console;
mod deadletter;
mod deploy;
mod e2e;
mod edge;
mod faults;
mod monitoring;
mod rebuild;
mod schema;
mod snapshots;
mod tracks;

use std::collections::BTreeMap;

use sightline_shared::{
    BoundingBox, Detection, DetectionEvent, EventId, ModelInfo, SCHEMA_VERSION, Timestamp,
};

pub use sightline_runtime::now;

/// Publishes `n` [`known_events`] of `edge`/`camera` as the edge does and waits until the
/// query API shows them all.
pub(crate) async fn deliver(
    stack: &sightline_tests::Stack,
    edge: &str,
    camera: &str,
    n: usize,
) -> anyhow::Result<()> {
    stack
        .publish(
            known_events(edge, camera, n),
            sightline_shared::Encoding::Bincode,
        )
        .await?;
    stack
        .wait_for_events(&format!("camera={camera}&limit=1000"), n)
        .await?;
    Ok(())
}

/// The repository's root (scripts, deployment files).
pub(crate) fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `n` distinct, valid events of one camera, one second apart and ending `n` seconds before
/// now, exercising every optional field and odd-but-legal values.
pub fn known_events(edge: &str, camera: &str, n: usize) -> Vec<DetectionEvent> {
    let start = now().as_millis() - (n as i64 + 1) * 1000;
    (0..n)
        .map(|i| {
            let at = Timestamp::from_millis(start + i as i64 * 1000 + (i as i64 % 1000));
            let detections = (0..i % 4)
                .map(|k| Detection {
                    label: ["person", "car", "traffic light", "dog"][k].to_owned(),
                    class_id: k as u32 * 3,
                    confidence: 0.25 + (i % 70) as f32 / 100.0,
                    bbox: BoundingBox {
                        x_min: 0.1 * k as f32,
                        y_min: 0.05,
                        x_max: 0.1 * k as f32 + 0.2,
                        y_max: 1.0,
                    },
                    track_id: (k % 2 == 0).then_some(i as u64 * 10 + k as u64),
                    // Schema v2: the first object stands on the porch step, the third in
                    // the driveway and the street at once.
                    zones: match k {
                        0 => vec!["porch-step".to_owned()],
                        2 => vec!["driveway".to_owned(), "street".to_owned()],
                        _ => Vec::new(),
                    },
                })
                .collect();
            DetectionEvent {
                event_id: EventId::new_v7(at),
                schema_version: SCHEMA_VERSION,
                edge_id: edge.to_owned(),
                camera_id: camera.to_owned(),
                captured_at: at,
                frame_seq: i as u64 * 7,
                motion_score: (i % 100) as f32 / 100.0,
                detections,
                model: ModelInfo {
                    name: "nanodet-m".into(),
                    version: "416-v1".into(),
                },
                inference_ms: 13.75 + i as f32,
                snapshot: (i % 3 == 0).then(|| format!("2026-11-22/{camera}/{i}.jpg")),
                description: (i % 5 == 0).then(|| format!("event {i}: «ünïcödé» ✓\nsecond line")),
                attributes: if i % 2 == 0 {
                    BTreeMap::from([
                        ("site".to_owned(), "north gate".to_owned()),
                        ("zone".to_owned(), format!("z{i}")),
                    ])
                } else {
                    BTreeMap::new()
                },
            }
        })
        .collect()
}
