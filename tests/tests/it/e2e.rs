//! Edge -> JetStream -> ingest -> ClickHouse -> query API, with real servers.

use std::collections::HashMap;
use std::time::Duration;

use sightline_edge_agent::AgentConfig;
use sightline_shared::{DetectionEvent, Encoding};
use sightline_tests::Stack;

use crate::known_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_exactly_once_with_all_fields() -> anyhow::Result<()> {
    // A one-second duplicate window lets the test re-publish the same ids past it, so the
    // duplicates really reach ClickHouse and the read path has to hide them.
    let stack = Stack::start_with(|c| c.stream.duplicate_window_secs = 1).await?;
    // No merges, so duplicate rows stay in storage and only the read path can hide them.
    stack
        .clickhouse
        .query("SYSTEM STOP MERGES sightline.events")
        .await?;
    let bincode_events = known_events("edge-a", "gate", 300);
    let json_events = known_events("edge-a", "dock", 200);
    let report = stack
        .publish(bincode_events.clone(), Encoding::Bincode)
        .await?;
    assert_eq!((report.published, report.unpublished), (300, 0));
    let report = stack.publish(json_events.clone(), Encoding::Json).await?;
    assert_eq!((report.published, report.unpublished), (200, 0));

    // Re-publish inside the window (JetStream drops them) and after it (ClickHouse gets them).
    stack
        .publish(bincode_events[..50].to_vec(), Encoding::Bincode)
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack
        .publish(bincode_events[..100].to_vec(), Encoding::Json)
        .await?;

    let mut expected: HashMap<_, DetectionEvent> = bincode_events
        .iter()
        .chain(&json_events)
        .map(|e| (e.event_id, e.clone()))
        .collect();
    stack.wait_for_events("camera=gate&limit=1000", 300).await?;
    let dock = stack.wait_for_events("camera=dock&limit=1000", 200).await?;
    // Wait for the late duplicates to be inserted too, so the check below means something.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let raw: u64 = stack
            .clickhouse
            .query("SELECT count() FROM sightline.events")
            .await?
            .parse()?;
        if raw >= 600 {
            // Merges are stopped: 500 events, plus the 100 re-published after the duplicate
            // window; the 50 inside it were dropped by JetStream.
            assert_eq!(raw, 600, "rows in ClickHouse");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {raw} rows reached ClickHouse"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Read again now that the copies are stored: the camera filter hides them too.
    let gate = stack.wait_for_events("camera=gate&limit=1000", 300).await?;
    let all = stack.wait_for_events("limit=1000", 500).await?;
    assert_eq!(all.len(), 500, "the API must show each event once");
    assert_eq!(gate.len(), 300);
    assert_eq!(dock.len(), 200);
    for event in &all {
        let want = expected
            .remove(&event.event_id)
            .expect("an unexpected or repeated event");
        assert_eq!(event, &want, "fields must survive the round trip");
    }
    assert!(expected.is_empty(), "{} events missing", expected.len());
    // Newest first.
    assert!(all.windows(2).all(|w| w[0].captured_at >= w[1].captured_at));

    // One event by id, exactly as published.
    let one = &json_events[7];
    let (status, mut body) = stack.get(&format!("/v1/events/{}", one.event_id)).await?;
    assert_eq!(status, 200);
    // Beside the event, the tracks its detections belong to, each once.
    let tracks = body
        .as_object_mut()
        .and_then(|event| event.remove("tracks"))
        .unwrap_or_default();
    let mut named: Vec<String> = Vec::new();
    for d in &one.detections {
        if let Some(id) = d.track_id.filter(|&id| id > 0) {
            let id = format!("{}:{id}", one.edge_id);
            if !named.contains(&id) {
                named.push(id);
            }
        }
    }
    let listed: Vec<&str> = tracks
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, named, "{tracks}");
    assert_eq!(&serde_json::from_value::<DetectionEvent>(body)?, one);

    let metrics = stack.ingest_metrics().await?;
    assert!(
        sightline_tests::stack::metric(&metrics, "sightline_ingest_rows_inserted_total", "")
            >= 600.0
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_agent_with_a_synthetic_camera_reaches_the_api() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let data = tempfile::tempdir()?;
    let config: AgentConfig = sightline_shared::config::parse(
        &format!(
            r#"
        version = 1
        edge_id = "edge-synth"
        [nats]
        url = "{}"
        [storage]
        data_dir = "{}"
        [status]
        enabled = false
        [[cameras]]
        id = "lobby"
        source = {{ kind = "synthetic", events_per_second = 200.0, max_events = 40 }}
        [[cameras]]
        id = "yard"
        source = {{ kind = "synthetic", events_per_second = 200.0, max_events = 25, labels = ["cat"] }}
        "#,
            stack.nats.url(),
            data.path().display()
        ),
        "edge-agent.toml",
    )?;
    let report = sightline_edge_agent::run(config, std::future::pending()).await?;
    assert_eq!((report.published, report.unpublished), (65, 0));
    // The day logs hold every event: one JSON line and one text record each.
    let (mut json, mut text) = (0, 0);
    for day in std::fs::read_dir(data.path().join(sightline_edge_agent::daylog::EVENTS_DIR))? {
        let day = day?.path();
        json += std::fs::read_to_string(day.join("events.json"))?
            .lines()
            .count();
        text += std::fs::read_to_string(day.join("events.log"))?
            .matches("] EVENT: ")
            .count();
    }
    assert_eq!((json, text), (65, 65));
    let lobby = stack.wait_for_events("camera=lobby&limit=100", 40).await?;
    let yard = stack.wait_for_events("camera=yard&limit=100", 25).await?;
    assert_eq!((lobby.len(), yard.len()), (40, 25));
    assert!(
        yard.iter()
            .flat_map(|e| &e.detections)
            .all(|d| d.label == "cat")
    );
    assert!(
        lobby
            .iter()
            .all(|e| e.edge_id == "edge-synth" && !e.detections.is_empty())
    );
    stack.stop().await
}
