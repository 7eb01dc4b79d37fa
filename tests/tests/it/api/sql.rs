//! The SQL examples in the docs run as the read-only user.

use std::time::Duration;

use anyhow::Context as _;
use sightline_tests::Stack;

use crate::known_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_examples_in_the_docs_run_as_the_reader() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let events = known_events("edge-s", "lobby", 200);
    stack.insert_direct(&events).await?;
    // A picture in the cloud, of an event with a car.
    let car = events
        .iter()
        .find(|e| e.detections.iter().any(|d| d.label == "car"))
        .context("an event with a car")?;
    let dog = crate::snapshots::picture("dog.jpg");
    let header = crate::snapshots::header_for(
        sightline_shared::snapshot::Owner::Event(car.event_id),
        car.captured_at,
        &dog,
    );
    sightline_runtime::objects::publish_upload(
        &stack.jetstream().await?,
        "edge-s",
        "lobby",
        &header,
        dog,
    )
    .await?;
    stack
        .wait_for_ingest_metrics("the picture stored", Duration::from_secs(30), |m| {
            sightline_tests::stack::metric(m, "sightline_ingest_snapshots_stored_total", "") >= 1.0
        })
        .await?;
    // A heartbeat from that edge, the way the agent sends it (through ingest).
    let heartbeat = sightline_shared::heartbeat::HeartbeatV1 {
        edge_id: "edge-s".into(),
        sent_at: sightline_shared::Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        agent_version: "0.1.0".into(),
        uptime_secs: 5,
        cameras: 1,
        fps: 0.0,
        events_created: 200,
        events_sent: 200,
        events_dropped: 0,
        backlog: 0,
        oldest_unsent_at: None,
        storage_used_bytes: 1_000_000,
        storage_limit_bytes: 4_000_000_000,
        cpu_percent: 0.5,
        rss_bytes: 30_000_000,
    };
    let mut heartbeat = sightline_shared::heartbeat::Heartbeat::from(heartbeat);
    heartbeat.schema_version = 2;
    heartbeat.interval_secs = 30;
    heartbeat.storage_free_bytes = Some(10_000_000_000);
    heartbeat.camera_states = vec![sightline_shared::heartbeat::CameraHeartbeat {
        camera_id: "lobby".into(),
        state: "running".into(),
        fps: 5.0,
        events_created: 200,
        errors: 0,
    }];
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        sightline_shared::codec::CONTENT_TYPE_HEADER,
        sightline_shared::heartbeat::CONTENT_TYPE,
    );
    stack
        .jetstream()
        .await?
        .publish_with_headers(
            "sightline.heartbeats.edge-s",
            headers,
            heartbeat.encode().into(),
        )
        .await?
        .await?;
    // Two people's visits to the gate, an update and a final record each, as an agent
    // sends them.
    let start = sightline_runtime::now().as_millis() - 120_000;
    for (track, revision, seen, ended) in [
        (1, 0, 60_000, None),
        (1, 1, 70_000, Some(sightline_shared::track::EndedBy::Lost)),
        (
            2,
            0,
            30_000,
            Some(sightline_shared::track::EndedBy::Shutdown),
        ),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            sightline_shared::codec::CONTENT_TYPE_HEADER,
            "application/vnd.sightline.track.v1+json",
        );
        let record = crate::tracks::record(start, track, revision, seen, ended);
        stack
            .jetstream()
            .await?
            .publish_with_headers(
                "sightline.tracks.edge-t.gate",
                headers,
                sightline_shared::codec::encode_track(&record, sightline_shared::Encoding::Json)?
                    .into(),
            )
            .await?
            .await?;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stack
        .clickhouse
        .query("SELECT count() FROM sightline.edge_heartbeats")
        .await?
        == "0"
        || stack
            .clickhouse
            .query("SELECT count() FROM sightline.tracks")
            .await?
            != "3"
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the heartbeat was not stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/sql.md"))?;
    let examples: Vec<&str> = guide
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .collect();
    assert!(
        examples.len() >= 4,
        "docs/sql.md has {} SQL examples",
        examples.len()
    );
    let (_, body) = stack.get("/v1/events?camera=lobby&limit=1").await?;
    let stored = body["events"][0]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await; // views
    for sql in examples {
        let sql = sql.replace("{event_id}", &stored);
        let text = stack
            .clickhouse
            .query_as(sightline_tests::stack::READER, "sightline", &sql)
            .await
            .with_context(|| sql.clone())?;
        assert!(!text.is_empty(), "{sql}\n-> no rows");
    }
    stack.stop().await
}
