//! Cameras through the whole agent binary: real pictures from a file source, the shipped
//! model in ONNX Runtime, the tracker, snapshots on disk, the DuckDB buffer, JetStream,
//! ingest and ClickHouse; and a camera that fails mid-run while another keeps going.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use sightline_edge_agent::buffer::Buffer;
use sightline_edge_agent::buffer::worker::BUFFER_FILE;
use sightline_tests::fixtures::{NatsServer, poll_until};
use sightline_tests::stack::Stack;

use crate::edge::{
    metrics_text, spawn_agent, spawn_agent_logging, wait_status, write_agent_config,
};

/// Capture time (ms) to frame number, from the camera's debug lines in an agent's log.
fn frame_times(log: &str) -> anyhow::Result<std::collections::BTreeMap<i64, u64>> {
    let field = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        Some(
            line[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect(),
        )
    };
    let mut frames = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("captured_ms=")) {
        let (Some(seq), Some(ms)) = (field(line, " frame"), field(line, "captured_ms")) else {
            continue;
        };
        frames.insert(ms.parse()?, seq.parse()?);
    }
    anyhow::ensure!(
        !frames.is_empty(),
        "no frame lines in the agent's log:\n{log}"
    );
    Ok(frames)
}

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
motion = {{ enabled = false }}

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
    // The camera logs each frame's number and capture time at debug: where tracks (stamped
    // with times) start, end and have their best frame, whatever the pace the frames ran at.
    let mut agent = spawn_agent_logging(
        &config,
        &tmp.path().join("agent.log"),
        "info,sightline_edge_agent::camera=debug",
    )?;
    let status = agent.wait_exit(Duration::from_secs(120)).await?;
    let log = std::fs::read_to_string(tmp.path().join("agent.log"))?;
    anyhow::ensure!(status.success(), "agent failed: {log}");
    let frames = frame_times(&log)?;

    let data = tmp.path().join("data");
    let (buffer, _) = Buffer::open(&data.join(BUFFER_FILE))?;
    assert_eq!(buffer.stats()?.unsent, 0, "everything published");
    assert_eq!(
        buffer.upload_counts()?.pending,
        0,
        "every snapshot uploaded before the agent stopped"
    );
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
            // The logged frames' span: no track outlasts it.
            let run = frames.keys().last().unwrap_or(&0) - frames.keys().next().unwrap_or(&0);
            for (row, (track, (event_id, label))) in stored.iter().zip(&arrivals) {
                assert_eq!(row[0], track.to_string(), "{rows}");
                assert_eq!(row[1], label, "{rows}");
                assert!(matches!(row[2], "shutdown" | "lost"), "{rows}");
                assert!(row[3].parse::<u64>()? >= 1, "{rows}");
                assert_eq!(row[4], event_id, "{rows}");
                // A track seen in one frame lasts 0 ms, and none outlasts the 16 frames.
                assert!(
                    row[5].parse::<i64>()? <= run,
                    "{rows} (frames over {run} ms)"
                );
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
    // Every picture reached the cloud byte for byte: each event's snapshot, and each
    // track's best frame as it was last rendered (the newest upload of the track).
    for event in &events {
        let local = std::fs::read(data.join(event.snapshot.as_deref().unwrap_or_default()))?;
        let served =
            served_picture(&stack, &format!("/v1/events/{}/snapshot", event.event_id)).await?;
        assert_eq!(
            sightline_shared::jpeg::sha256_hex(&served),
            sightline_shared::jpeg::sha256_hex(&local),
            "event {}",
            event.event_id
        );
    }
    for track in arrivals.keys() {
        let local = walk_track_snapshot(&data.join("events"), *track)?;
        let path = format!("/v1/tracks/edge-cam:{track}/snapshot");
        let served = poll_until(
            Duration::from_secs(30),
            || served_picture(&stack, &path),
            |served| *served == local,
        )
        .await?;
        assert!(
            served.is_ok(),
            "{path} never served the track's last best frame"
        );
    }

    // The tracks, worked out from the frames: the same pictures panned the same way, through
    // the same model, label filter and tracker. Their start, end, frames, best frame and
    // score are what ClickHouse holds (a time is the frame the agent's log says was captured
    // then: on a busy machine the frames fall behind their 250 ms).
    let expected = worked_out_tracks(&["dog.jpg", "person.jpg"], 8)?;
    let frame_of = |ms: i64| {
        frames
            .get(&ms)
            .map(|&seq| seq as i64)
            .ok_or_else(|| anyhow::anyhow!("no frame was captured at {ms} ms: {frames:?}"))
    };
    let rows = stack
        .clickhouse
        .query("SELECT argMax(label, revision), argMax(started_at_ms, revision), argMax(last_seen_at_ms, revision), argMax(frames, revision), argMax(best_at_ms, revision), argMax(max_confidence, revision) FROM sightline.tracks WHERE edge_id = 'edge-cam' GROUP BY track_id FORMAT TabSeparated")
        .await?;
    let mut stored: Vec<TrackSummary> = rows
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            anyhow::ensure!(f.len() == 6, "{l}");
            Ok((
                f[0].to_owned(),
                frame_of(f[1].parse()?)?,
                frame_of(f[2].parse()?)?,
                f[3].parse()?,
                frame_of(f[4].parse()?)?,
                f[5].parse()?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    stored.sort_by(|a, b| (a.1, &a.0, a.3).cmp(&(b.1, &b.0, b.3)));
    assert!(
        expected.len() >= 2,
        "the pictures hold objects: {expected:?}"
    );
    println!("tracks worked out from the frames: {expected:?}");
    assert_eq!(
        stored.len(),
        expected.len(),
        "{stored:?}\nwant {expected:?}"
    );
    for (got, want) in stored.iter().zip(&expected) {
        assert_eq!(
            (&got.0, got.1, got.2, got.3, got.4),
            (&want.0, want.1, want.2, want.3, want.4),
            "label, first and last frame, frames, best frame: {stored:?}\nwant {expected:?}"
        );
        assert!(
            (got.5 - want.5).abs() < 1e-3,
            "best score {} vs {}",
            got.5,
            want.5
        );
    }
    stack.stop().await
}

/// `GET {path}` until it answers 200 (30 s at most): the picture.
async fn served_picture(stack: &Stack, path: &str) -> anyhow::Result<Vec<u8>> {
    let url = format!("{}{path}", stack.api);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = stack.http.get(&url).send().await?;
        if response.status() == 200 {
            return Ok(response.bytes().await?.to_vec());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "GET {path}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The bytes of track `id`'s best-frame snapshot under the day folders in `events`.
fn walk_track_snapshot(events: &Path, id: u64) -> anyhow::Result<Vec<u8>> {
    let name = format!("track-{id}.jpg");
    for day in std::fs::read_dir(events)? {
        let path = day?.path().join("snapshots").join(&name);
        if path.exists() {
            return Ok(std::fs::read(path)?);
        }
    }
    anyhow::bail!("no {name} under {}", events.display())
}

/// A track as the camera test compares it: label, first frame, last frame, frames seen,
/// best frame, best score.
type TrackSummary = (String, i64, i64, u64, i64, f32);

/// The tracks a camera panning over `pictures` (each over `steps` frames, every frame
/// detected, 250 ms apart) makes with the shipped model, the camera's label filter
/// (dog, person, bicycle, horse at 0.4 or more) and the default tracker, ordered by first
/// frame, label and frames: (label, first frame, last frame, frames, best frame, best score).
fn worked_out_tracks(pictures: &[&str], steps: u32) -> anyhow::Result<Vec<TrackSummary>> {
    use sightline_edge_agent::capture::jpeg::{DecodeSize, JpegDecoder};
    use sightline_edge_agent::config::{ModelConfig, SnapshotConfig, TrackerConfig};
    use sightline_edge_agent::detect::Detector;
    use sightline_edge_agent::track::{Settings, Tracker};
    let repo = crate::repo();
    let detector = Detector::load(&ModelConfig {
        path: repo.join("models/nanodet_coco_416.onnx"),
        labels: repo.join("models/coco.names"),
        ..ModelConfig::default()
    })?;
    let wanted = ["dog", "person", "bicycle", "horse"];
    let mut next = 0;
    let mut tracker = Tracker::new(
        Settings::from(&TrackerConfig::default()),
        "edge-cam",
        "yard",
        Vec::new(),
        Box::new(move || {
            next += 1;
            next
        }),
    );
    let mut records = Vec::new();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images");
    let mut frame = 0i64;
    // Decoded as the camera decodes them (its snapshots are the default width).
    let mut decoder = JpegDecoder::new(DecodeSize::for_camera(
        detector.input_size(),
        Some(SnapshotConfig::default().max_width),
    ))?;
    for name in pictures {
        let picture = decoder.decode(&std::fs::read(from.join(name))?)?;
        for step in 0..steps {
            let image = sightline_edge_agent::pan_window(&picture, step, steps);
            let (found, _) = detector.detect(&image)?;
            let found: Vec<_> = found
                .into_iter()
                .filter(|f| f.score >= 0.4 && wanted.contains(&detector.label(f.class_id).as_str()))
                .collect();
            let at = frame * 250;
            if found.is_empty() {
                tracker.idle(at, false, &mut records);
            } else {
                tracker.update(&found, |c| detector.label(c), at, &mut records);
            }
            frame += 1;
        }
    }
    tracker.close((frame - 1) * 250, &mut records);
    // The latest record of each track.
    let mut latest = std::collections::BTreeMap::new();
    for r in records {
        latest.insert(r.track_id, r);
    }
    let mut tracks: Vec<_> = latest
        .into_values()
        .map(|r| {
            let frame = |t: sightline_shared::Timestamp| t.as_millis() / 250;
            (
                r.label.clone(),
                frame(r.started_at),
                frame(r.last_seen_at),
                r.frames,
                frame(r.best.captured_at),
                r.max_confidence,
            )
        })
        .collect();
    tracks.sort_by(|a, b| (a.1, &a.0, a.3).cmp(&(b.1, &b.0, b.3)));
    Ok(tracks)
}

/// The latest record of each track of `edge`: (track id, revision, ended_by, ms in view).
async fn latest_tracks(stack: &Stack, edge: &str) -> anyhow::Result<Vec<(u64, u32, String, i64)>> {
    let rows = stack
        .clickhouse
        .query(&format!(
            "SELECT track_id, max(revision), argMax(ended_by, revision), \
             argMax(last_seen_at_ms - started_at_ms, revision) FROM sightline.tracks \
             WHERE edge_id = '{edge}' GROUP BY track_id ORDER BY track_id FORMAT TabSeparated"
        ))
        .await?;
    rows.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            anyhow::ensure!(f.len() == 4, "{line}");
            Ok((f[0].parse()?, f[1].parse()?, f[2].to_owned(), f[3].parse()?))
        })
        .collect()
}

/// A dog that never moves in front of a camera that never moves: one event and one track,
/// whose record is updated every `update_interval_secs` while the agent runs, and closed
/// with `shutdown` when it stops; the agent started again gives the same dog a new track
/// id, never the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stationary_object_is_one_track_updated_while_it_stays_and_closed_on_stop()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let tmp = tempfile::tempdir()?;
    let pictures = tmp.path().join("pictures");
    copy_pictures(&pictures, &["dog.jpg"])?;
    let (config, _) = write_agent_config(
        tmp.path(),
        &stack.nats.url(),
        "edge-still",
        &format!(
            r#"[[cameras]]
id = "kennel"
source = {{ kind = "file", path = "{}", fps = 4.0, pan = false, repeat = true }}
labels = ["dog"]
min_score = 0.4
tracker = {{ update_interval_secs = 1.0 }}
"#,
            pictures.display()
        ),
    )?;
    let log = tmp.path().join("agent.log");
    let mut agent = spawn_agent(&config, &log)?;
    // Updates arrive while the dog stays: revision 3 is three intervals in.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tracks = latest_tracks(&stack, "edge-still").await?;
        if tracks.first().is_some_and(|t| t.1 >= 3) {
            assert_eq!(tracks.len(), 1, "one dog, one track: {tracks:?}");
            assert_eq!(tracks[0].2, "", "still lasting: {tracks:?}");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no third update: {tracks:?}\n{}",
            std::fs::read_to_string(&log)?
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::ensure!(agent.terminate().await?.success(), "the agent failed");
    // Closed by the stop, having lasted as long as its updates say.
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let tracks = latest_tracks(&stack, "edge-still").await?;
        if let [track] = tracks.as_slice()
            && track.2 == "shutdown"
        {
            assert!(track.1 >= 4, "updates, then the final record: {track:?}");
            assert!(
                track.3 >= 3_000,
                "in view at least three intervals: {track:?}"
            );
            break track.0;
        }
        anyhow::ensure!(Instant::now() < deadline, "not closed: {tracks:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // One event, not one per frame.
    let events = stack.wait_for_events("edge=edge-still", 1).await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].detections[0].track_id, Some(first));

    // Started again on the same data: the same dog is a new track with a new id.
    let mut agent = spawn_agent(&config, &log)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tracks = latest_tracks(&stack, "edge-still").await?;
        if tracks.len() == 2 {
            // (Reusing the old id would have made one track of both visits.)
            assert!(tracks[1].0 > first, "{tracks:?}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no second track: {tracks:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::ensure!(agent.terminate().await?.success(), "the agent failed");
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

/// A nats-server with the streams as ingest declares them, so that an agent's publishes land
/// and its shutdown drain is quick.
async fn nats_with_streams() -> anyhow::Result<NatsServer> {
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    sightline_ingest::nats::declare(
        &async_nats::jetstream::new(client),
        &sightline_ingest::IngestConfig::default(),
        None,
    )
    .await?;
    Ok(nats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_fails_is_retried_and_reported_while_the_others_run() -> anyhow::Result<()> {
    let nats = nats_with_streams().await?;
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

/// A picture that cannot be decoded is one bad frame, not a broken camera: it is counted,
/// reported and skipped, and the camera keeps running on the pictures around it (before,
/// the camera reopened its source at every bad frame and, with the bad picture first in the
/// directory, never captured a frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_picture_is_skipped_and_counted_while_the_camera_runs() -> anyhow::Result<()>
{
    let nats = nats_with_streams().await?;
    let tmp = tempfile::tempdir()?;
    let pictures = tmp.path().join("pictures");
    copy_pictures(&pictures, &["dog.jpg", "person.jpg"])?;
    // First in name order: a JPEG start, then nothing a decoder can use.
    std::fs::write(pictures.join("broken.jpg"), b"\xFF\xD8\xFF\xE0garbage")?;
    // A picture whose end was lost, as over a bad USB link: decoded, kept and counted.
    let dog = std::fs::read(pictures.join("dog.jpg"))?;
    std::fs::write(pictures.join("cut.jpg"), &dog[..dog.len() * 2 / 3])?;
    let (config, base) = write_agent_config(
        tmp.path(),
        &nats.url(),
        "edge-bad-frame",
        &format!(
            r#"[[cameras]]
id = "door"
source = {{ kind = "file", path = "{}", fps = 10.0 }}
"#,
            pictures.display()
        ),
    )?;
    let mut agent = spawn_agent(&config, &tmp.path().join("agent.log"))?;
    let http = reqwest::Client::new();
    let status = wait_status(
        &http,
        &base,
        "the door camera past the broken picture, twice",
        Duration::from_secs(60),
        |s| {
            camera(s, "door")["frames_captured"].as_u64() >= Some(8)
                && camera(s, "door")["errors"].as_u64() >= Some(2)
        },
    )
    .await?;
    let door = camera(&status, "door");
    assert_eq!(door["state"], "running", "{status}");
    let error = door["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("broken.jpg") && error.contains("JPEG"),
        "{error}"
    );
    // Three pictures decoded (one damaged) for each bad one: the bad one is skipped.
    let (frames, errors) = (
        door["frames_captured"].as_u64().unwrap_or(0),
        door["errors"].as_u64().unwrap_or(0),
    );
    assert!(frames >= 3 * errors - 3, "{frames} frames, {errors} errors");
    let metrics = metrics_text(&http, &base).await?;
    assert!(
        sightline_tests::stack::metric(
            &metrics,
            "sightline_edge_camera_errors_total",
            "camera=\"door\""
        ) >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        sightline_tests::stack::metric(&metrics, "sightline_edge_camera_up", "camera=\"door\""),
        1.0
    );
    assert!(
        sightline_tests::stack::metric(
            &metrics,
            "sightline_edge_camera_frames_damaged_total",
            "camera=\"door\""
        ) >= 2.0,
        "{metrics}"
    );
    let exit = agent.terminate().await?;
    anyhow::ensure!(exit.success(), "the agent exited with {exit}");
    Ok(())
}

/// Every message of `stream` (up to 10,000), in stream order: its headers and when the
/// server stored it.
async fn stream_messages(
    stack: &Stack,
    stream: &str,
) -> anyhow::Result<Vec<(async_nats::HeaderMap, time::OffsetDateTime)>> {
    use futures::StreamExt as _;
    let consumer = stack
        .jetstream()
        .await?
        .get_stream(stream)
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await?;
    let mut out = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        let before = out.len();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            let published = message.info().map_err(|e| anyhow::anyhow!(e))?.published;
            out.push((message.headers.clone().unwrap_or_default(), published));
        }
        if out.len() == before || out.len() >= 10_000 {
            return Ok(out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_edge_queues_its_snapshots_and_sends_them_oldest_first_after_their_events()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // The uplink is down from the start.
    stack.nats.kill();
    let tmp = tempfile::tempdir()?;
    let pictures = tmp.path().join("pictures");
    copy_pictures(&pictures, &["dog.jpg", "person.jpg", "horses.jpg"])?;
    let (config, status_url) = write_agent_config(
        tmp.path(),
        &stack.nats.url(),
        "edge-off",
        &format!(
            r#"[[cameras]]
id = "porch"
source = {{ kind = "file", path = "{}", fps = 4.0, pan = true, pan_frames = 4, repeat = true }}
labels = ["dog", "person", "horse"]
min_score = 0.4
motion = {{ enabled = false }}

[snapshots.upload]
max_in_flight = 1
max_bytes_per_sec = 2000000
"#,
            pictures.display()
        ),
    )?;
    let log = tmp.path().join("agent.log");
    let mut agent = spawn_agent(&config, &log)?;
    let http = reqwest::Client::new();
    let pending = |s: &serde_json::Value| s["buffer"]["uploads"]["pending"].as_u64().unwrap_or(0);
    wait_status(
        &http,
        &status_url,
        "snapshots queued while offline",
        Duration::from_secs(120),
        |s| pending(s) >= 6,
    )
    .await?;
    // kill -9 mid-queue: the queue is in the buffer, committed with its events.
    agent.kill()?;
    agent.wait()?;
    stack.nats.start_again()?;
    // The uplink is back: the queue drains slowly (40 kB/s, a picture every second or two),
    // and the agent is killed again mid-drain, after two pictures went.
    let fast = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        fast.replace("max_bytes_per_sec = 2000000", "max_bytes_per_sec = 40000"),
    )?;
    let mut agent = spawn_agent(&config, &log)?;
    wait_status(
        &http,
        &status_url,
        "two snapshots uploaded",
        Duration::from_secs(120),
        |s| s["uploads"]["sent"].as_u64().unwrap_or(0) >= 2,
    )
    .await?;
    agent.kill()?;
    agent.wait()?;
    std::fs::write(&config, fast)?;
    let mut agent = spawn_agent(&config, &log)?;
    wait_status(
        &http,
        &status_url,
        "snapshots uploaded once the uplink is back",
        Duration::from_secs(120),
        |s| s["uploads"]["sent"].as_u64().unwrap_or(0) >= 6,
    )
    .await?;
    // Heartbeats told the cloud how the queue went.
    let told = poll_until(
        Duration::from_secs(30),
        || async {
            stack
                .clickhouse
                .query("SELECT max(uploads_sent), max(upload_bytes), max(uploads_dropped) FROM sightline.edge_heartbeats WHERE edge_id = 'edge-off' FORMAT TabSeparated")
                .await
        },
        |row| row.split('\t').next().and_then(|n| n.trim().parse::<u64>().ok()).is_some_and(|n| n >= 6),
    )
    .await?;
    let told =
        told.map_err(|row| anyhow::anyhow!("heartbeats never reported the uploads: {row}"))?;
    let fields: Vec<u64> = told
        .trim()
        .split('\t')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    assert!(fields[1] > 0 && fields[2] == 0, "{told}");

    let exit = agent.terminate().await?;
    anyhow::ensure!(exit.success(), "{}", std::fs::read_to_string(&log)?);

    // Everything the camera queued was sent (or replaced by a newer best frame of its
    // track), nothing else dropped.
    let (buffer, _) = Buffer::open(&tmp.path().join("data").join(BUFFER_FILE))?;
    let queue = buffer.uploads()?;
    drop(buffer);
    assert!(queue.len() >= 6, "{queue:?}");
    for upload in &queue {
        assert!(
            upload.state == "uploaded" || upload.reason.as_deref() == Some("superseded"),
            "{upload:?}"
        );
    }
    let sent: Vec<uuid::Uuid> = queue
        .iter()
        .filter(|upload| upload.state == "uploaded")
        .map(|upload| upload.snapshot_id)
        .collect();

    // In the cloud: each one once, object and row.
    let expected: BTreeSet<uuid::Uuid> = sent.iter().copied().collect();
    let stored = poll_until(
        Duration::from_secs(60),
        || crate::snapshots::objects_and_rows(&stack),
        |(objects, rows)| *objects == expected && *rows == expected,
    )
    .await?;
    assert!(stored.is_ok(), "{stored:?} want {expected:?}");
    // On the wire: oldest first (the order they were queued), each after its own event.
    let uploads = stream_messages(&stack, sightline_shared::subjects::SNAPSHOTS_STREAM).await?;
    let header = |h: &async_nats::HeaderMap, name: &str| {
        h.get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let order: Vec<uuid::Uuid> = uploads
        .iter()
        .map(|(h, _)| header(h, sightline_shared::snapshot::ID_HEADER).parse())
        .collect::<Result<_, _>>()?;
    assert_eq!(order, sent, "uploads in queue order");
    let events = stream_messages(&stack, sightline_shared::subjects::EVENTS_STREAM).await?;
    let event_times: std::collections::HashMap<String, time::OffsetDateTime> = events
        .iter()
        .map(|(h, at)| (header(h, "Nats-Msg-Id"), *at))
        .collect();
    let mut checked = 0;
    for (h, at) in &uploads {
        let of = header(h, sightline_shared::snapshot::OF_HEADER);
        if let Some(event) = of.strip_prefix("event:") {
            let published = event_times
                .get(event)
                .ok_or_else(|| anyhow::anyhow!("the upload of {of} came without its event"))?;
            assert!(
                published <= at,
                "{of}: event at {published}, picture at {at}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} event pictures checked");
    stack.stop().await
}
