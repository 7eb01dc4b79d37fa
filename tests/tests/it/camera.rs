//! Cameras through the whole agent binary: real pictures from a file source, the shipped
//! model in ONNX Runtime, the tracker, snapshots on disk, the DuckDB buffer, JetStream,
//! ingest and ClickHouse; and a camera that fails mid-run while another keeps going.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use sightline_edge_agent::buffer::Buffer;
use sightline_edge_agent::buffer::worker::BUFFER_FILE;
use sightline_tests::fixtures::NatsServer;
use sightline_tests::stack::Stack;

use crate::edge::{metrics_text, spawn_agent, wait_status, write_agent_config};

fn copy_pictures(to: &Path, names: &[&str]) -> anyhow::Result<()> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images");
    std::fs::create_dir_all(to)?;
    for name in names {
        std::fs::copy(from.join(name), to.join(name))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictures_become_tracked_events_with_snapshots_in_clickhouse() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let tmp = tempfile::tempdir()?;
    let pictures = tmp.path().join("pictures");
    copy_pictures(&pictures, &["dog.jpg", "person.jpg"])?;
    // Each picture is panned over 8 frames, once: 16 frames, then the camera finishes and
    // the agent exits after publishing everything.
    let (config, _) = write_agent_config(
        tmp.path(),
        &stack.nats.url(),
        "edge-cam",
        &format!(
            r#"[[cameras]]
id = "yard"
source = {{ kind = "file", path = "{}", fps = 4.0, pan = true, pan_frames = 8, repeat = false }}
labels = ["dog", "person", "bicycle", "horse"]
min_score = 0.4

[[cameras.zones]]
name = "left"
points = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]

[[cameras.zones]]
name = "everywhere"
points = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
"#,
            pictures.display()
        ),
    )?;
    let mut agent = spawn_agent(&config, &tmp.path().join("agent.log"))?;
    let status = agent.wait_exit(Duration::from_secs(120)).await?;
    let log = std::fs::read_to_string(tmp.path().join("agent.log"))?;
    anyhow::ensure!(status.success(), "agent failed: {log}");

    let data = tmp.path().join("data");
    let (buffer, _) = Buffer::open(&data.join(BUFFER_FILE))?;
    assert_eq!(buffer.stats()?.unsent, 0, "everything published");
    let events: Vec<_> = buffer.recent(1000)?.into_iter().map(|r| r.event).collect();
    drop(buffer);
    let labels: BTreeSet<&str> = events
        .iter()
        .flat_map(|e| e.detections.iter().map(|d| d.label.as_str()))
        .collect();
    assert!(
        labels.contains("dog") && labels.contains("person"),
        "{labels:?}"
    );
    assert!(
        labels.is_subset(&BTreeSet::from(["dog", "person", "bicycle", "horse"])),
        "{labels:?}"
    );
    println!(
        "{} events: {:?}",
        events.len(),
        events
            .iter()
            .map(|e| (
                e.frame_seq,
                e.detections
                    .iter()
                    .map(|d| format!("{} {:.2}", d.label, d.confidence))
                    .collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
    );
    // The tracker: each object panning across 8 frames is one event, not eight. A box can
    // flicker below the score, so allow a few, but far fewer than frames with objects.
    assert!(
        events.len() <= 8,
        "{} events from 16 frames: {:#?}",
        events.len(),
        events
            .iter()
            .map(|e| (e.frame_seq, e.detections.len()))
            .collect::<Vec<_>>()
    );
    // Each detection names the zones it stands in (the bottom-centre of its box), in the
    // camera's zone order: worked out here from its box.
    let mut sides = BTreeSet::new();
    for d in events.iter().flat_map(|e| &e.detections) {
        let x = (d.bbox.x_min + d.bbox.x_max) / 2.0;
        let left = x < 0.5;
        sides.insert(left);
        let want: Vec<&str> = if left {
            vec!["left", "everywhere"]
        } else {
            vec!["everywhere"]
        };
        assert_eq!(d.zones, want, "{d:?}");
    }
    assert_eq!(
        sides.len(),
        2,
        "objects on both sides of the left zone's edge"
    );
    let mut tracks = BTreeSet::new();
    for event in &events {
        assert_eq!(event.model.name, "nanodet_coco_416");
        assert!(event.inference_ms > 0.0);
        assert!(
            event
                .detections
                .iter()
                .all(|d| d.confidence >= 0.4 && d.track_id.is_some())
        );
        tracks.extend(event.detections.iter().filter_map(|d| d.track_id));
        let snapshot = event
            .snapshot
            .as_deref()
            .expect("every event has a snapshot");
        let path = data.join(snapshot);
        let jpeg = image::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        assert!(jpeg.width() <= 640, "{}", jpeg.width());
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path)?.permissions());
        assert_eq!(mode & 0o777, 0o644);
        assert!(
            snapshot.starts_with("events/") && snapshot.contains("/snapshots/"),
            "{snapshot}"
        );
    }
    let on_disk = walk_jpegs(&data.join("events"), false);
    assert_eq!(on_disk, events.len(), "one snapshot per event, no strays");

    // Through JetStream and ingest into ClickHouse, with the model and snapshot.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = stack
            .clickhouse
            .query("SELECT count(), countIf(snapshot LIKE 'events/%/snapshots/%.jpg'), any(model_name), countIf(has(detections.label, 'dog')) FROM sightline.events FINAL WHERE edge_id = 'edge-cam' FORMAT TabSeparated")
            .await?;
        let fields: Vec<&str> = rows.trim().split('\t').collect();
        if fields.first() == Some(&events.len().to_string().as_str()) {
            assert_eq!(fields[1], fields[0], "{rows}");
            assert_eq!(fields[2], "nanodet_coco_416");
            assert_ne!(fields[3], "0", "{rows}");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "ClickHouse has {rows}, want {}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The API's zone filter finds the events with an object on the left.
    let on_left = events
        .iter()
        .filter(|e| {
            e.detections
                .iter()
                .any(|d| d.zones.iter().any(|z| z == "left"))
        })
        .count();
    let (status, body) = stack.get("/v1/events?edge=edge-cam&zone=left").await?;
    assert_eq!(
        (status, body["count"].as_u64()),
        (200, Some(on_left as u64)),
        "{body}"
    );

    // Every tracked object's whole visit reaches ClickHouse's tracks: one track per track
    // id the events name, closed when the camera finished, naming the event that reported
    // its arrival (the first event that carries it).
    let mut arrivals = std::collections::BTreeMap::new();
    for event in events.iter().rev() {
        for d in &event.detections {
            if let Some(track) = d.track_id {
                arrivals
                    .entry(track)
                    .or_insert((event.event_id.to_string(), d.label.clone()));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = stack
            .clickhouse
            .query("SELECT track_id, argMax(label, revision), argMax(ended_by, revision), argMax(frames, revision), argMax(ifNull(toString(arrival_event_id), ''), revision), argMax(last_seen_at_ms - started_at_ms, revision), argMax(ifNull(snapshot, ''), revision), argMax(indexOf(zones.zone, 'everywhere') > 0 AND zones.entered_at_ms[indexOf(zones.zone, 'everywhere')] = started_at_ms, revision) FROM sightline.tracks WHERE edge_id = 'edge-cam' GROUP BY track_id ORDER BY track_id FORMAT TabSeparated")
            .await?;
        let stored: Vec<Vec<&str>> = rows
            .lines()
            .map(|l| l.split('\t').collect::<Vec<_>>())
            .collect();
        if stored.len() == arrivals.len() {
            for (row, (track, (event_id, label))) in stored.iter().zip(&arrivals) {
                assert_eq!(row[0], track.to_string(), "{rows}");
                assert_eq!(row[1], label, "{rows}");
                assert!(matches!(row[2], "shutdown" | "lost"), "{rows}");
                assert!(row[3].parse::<u64>()? >= 1, "{rows}");
                assert_eq!(row[4], event_id, "{rows}");
                // Frames come 250 ms apart: a track seen in one frame lasts 0 ms, and none
                // outlasts the 16 frames.
                assert!(row[5].parse::<i64>()? < 16 * 250, "{rows}");
                // Its best frame, on disk where the record says.
                assert!(
                    row[6].ends_with(&format!("/snapshots/track-{track}.jpg")),
                    "{rows}"
                );
                image::open(data.join(row[6])).map_err(|e| anyhow::anyhow!("{}: {e}", row[6]))?;
                // In the zone that covers the frame from its first frame on.
                assert_eq!(row[7], "1", "{rows}");
            }
            assert_eq!(
                walk_jpegs(&data.join("events"), true),
                arrivals.len(),
                "one best-frame snapshot per track"
            );
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "ClickHouse has tracks {rows}, want the {} the events name",
            arrivals.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stack.stop().await
}

/// The JPEGs under `dir`: the tracks' best frames (`track-<id>.jpg`) with `tracks`, the
/// events' snapshots without.
fn walk_jpegs(dir: &Path, tracks: bool) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        walk_jpegs(&path, tracks)
                    } else {
                        let name = e.file_name().to_string_lossy().into_owned();
                        usize::from(name.ends_with(".jpg") && name.starts_with("track-") == tracks)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn camera<'a>(status: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    status["cameras"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == id))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_fails_is_retried_and_reported_while_the_others_run() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    // The streams, as ingest declares them, so the agent's publishes land and its shutdown
    // drain is quick.
    let client = async_nats::connect(nats.url()).await?;
    sightline_ingest::nats::declare(
        &async_nats::jetstream::new(client),
        &sightline_ingest::IngestConfig::default(),
        None,
    )
    .await?;
    let tmp = tempfile::tempdir()?;
    let pictures = tmp.path().join("pictures");
    copy_pictures(&pictures, &["dog.jpg"])?;
    let (config, base) = write_agent_config(
        tmp.path(),
        &nats.url(),
        "edge-fail",
        &format!(
            r#"[[cameras]]
id = "door"
source = {{ kind = "file", path = "{}", fps = 5.0, pan = true }}
[[cameras]]
id = "lab"
source = {{ kind = "pattern", width = 320, height = 240, fps = 5.0 }}
"#,
            pictures.display()
        ),
    )?;
    let mut agent = spawn_agent(&config, &tmp.path().join("agent.log"))?;
    let http = reqwest::Client::new();
    let frames =
        |s: &serde_json::Value, id: &str| camera(s, id)["frames_captured"].as_u64().unwrap_or(0);
    let running = wait_status(
        &http,
        &base,
        "both cameras running",
        Duration::from_secs(60),
        |s| frames(s, "door") > 3 && frames(s, "lab") > 3,
    )
    .await?;
    assert_eq!(camera(&running, "door")["state"], "running", "{running}");
    assert!(
        camera(&running, "door")["inference_ms"]["p95"].as_f64() > Some(0.0),
        "{running}"
    );

    // The door camera's pictures vanish: it fails, is retried and reported, and the lab
    // camera keeps capturing.
    std::fs::remove_dir_all(&pictures)?;
    let failing = wait_status(
        &http,
        &base,
        "the door camera retrying",
        Duration::from_secs(30),
        |s| {
            camera(s, "door")["state"] == "retrying"
                && camera(s, "door")["errors"].as_u64() >= Some(2)
        },
    )
    .await?;
    let error = camera(&failing, "door")["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("pictures"), "{error}");
    let lab_frames = frames(&failing, "lab");
    wait_status(
        &http,
        &base,
        "the lab camera going on",
        Duration::from_secs(30),
        |s| frames(s, "lab") > lab_frames + 5,
    )
    .await?;
    let metrics = metrics_text(&http, &base).await?;
    let door_errors = sightline_tests::stack::metric(
        &metrics,
        "sightline_edge_camera_errors_total",
        "camera=\"door\"",
    );
    assert!(door_errors >= 2.0, "{metrics}");
    assert_eq!(
        sightline_tests::stack::metric(&metrics, "sightline_edge_camera_up", "camera=\"door\""),
        0.0
    );
    assert_eq!(
        sightline_tests::stack::metric(&metrics, "sightline_edge_camera_up", "camera=\"lab\""),
        1.0
    );

    // The pictures come back: so does the camera.
    copy_pictures(&pictures, &["dog.jpg"])?;
    let door_frames = frames(&failing, "door");
    wait_status(
        &http,
        &base,
        "the door camera back",
        Duration::from_secs(60),
        |s| camera(s, "door")["state"] == "running" && frames(s, "door") > door_frames + 3,
    )
    .await?;
    let exit = agent.terminate().await?;
    anyhow::ensure!(exit.success(), "the agent exited with {exit}");
    Ok(())
}
