//! Migrations and retention against a real ClickHouse of either generation: 18.16 has no
//! TTL and sweeps expired partitions, a modern server (26.x) drops them by the TTL ingest
//! sets at start-up.

use sightline_ingest::IngestConfig;
use sightline_store::migrations::{self, MIGRATIONS, MigrationError};
use sightline_store::retention::{self, RetentionSettings};

use sightline_shared::{Encoding, Timestamp};
use sightline_tests::{ClickHouseServer, NatsServer, Servers, Stack};

use crate::{known_events, now};

fn admin(clickhouse: &ClickHouseServer) -> anyhow::Result<clickhouse::Client> {
    Ok(sightline_store::client(&clickhouse.config())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_even_from_two_replicas_at_once() -> anyhow::Result<()> {
    sightline_tests::stack::init_tracing();
    let clickhouse = ClickHouseServer::start()?;
    let client = admin(&clickhouse)?;
    let (a, b) = tokio::join!(
        migrations::migrate(&client, "twin"),
        migrations::migrate(&client, "twin")
    );
    let (a, b) = (a?, b?);
    assert!(a.len() + b.len() >= MIGRATIONS.len(), "{a:?} {b:?}");
    assert!(
        migrations::migrate(&client, "twin").await?.is_empty(),
        "nothing left to apply"
    );
    let recorded = clickhouse
        .query("SELECT groupArray(version) FROM (SELECT DISTINCT version FROM twin.schema_migrations ORDER BY version)")
        .await?;
    let every: Vec<String> = MIGRATIONS.iter().map(|m| m.version.to_string()).collect();
    assert_eq!(recorded, format!("[{}]", every.join(",")));
    let tables = clickhouse
        .query("SELECT groupArray(name) FROM (SELECT name FROM system.tables WHERE database = 'twin' ORDER BY name)")
        .await?;
    assert_eq!(
        tables,
        "['detections','detections_hourly','detections_hourly_mv','detections_mv','edge_heartbeats','events','events_by_id','events_by_id_mv','schema_migrations','snapshots','tracks','tracks_by_id','tracks_by_id_mv']"
    );

    // An applied migration that changed since is refused, naming it.
    clickhouse
        .query("INSERT INTO twin.schema_migrations (version, name, checksum) VALUES (2, 'detections', 'edited')")
        .await?;
    clickhouse
        .query("OPTIMIZE TABLE twin.schema_migrations FINAL")
        .await?;
    let err = migrations::migrate(&client, "twin").await.unwrap_err();
    assert!(
        matches!(err, MigrationError::Changed { version: 2, .. }),
        "{err}"
    );
    assert!(!err.is_transient());
    Ok(())
}

/// Events stored before migration 9 (event zones) read, after it, with one empty zone list
/// per detection: a zone filter skips them instead of failing on arrays of unequal size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_before_zones_read_with_an_empty_list_per_detection() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let client = admin(&stack.clickhouse)?;
    // The table as it was before migration 9, with an event of three detections in it
    // (modern servers drop no column a view reads: the view is set aside meanwhile).
    for statement in [
        "DETACH TABLE sightline.detections_mv",
        "ALTER TABLE sightline.events DROP COLUMN `detections.zones`",
    ] {
        client.query(statement).execute().await?;
    }
    let mut old = known_events("edge-z", "yard", 4).remove(3);
    for d in &mut old.detections {
        d.zones.clear();
    }
    old.schema_version = 1;
    let column = |f: &dyn Fn(&sightline_shared::Detection) -> String| {
        let items: Vec<String> = old.detections.iter().map(f).collect();
        format!("[{}]", items.join(","))
    };
    let columns = [
        column(&|d| format!("'{}'", d.label)),
        column(&|d| d.class_id.to_string()),
        column(&|d| d.confidence.to_string()),
        column(&|d| d.bbox.x_min.to_string()),
        column(&|d| d.bbox.y_min.to_string()),
        column(&|d| d.bbox.x_max.to_string()),
        column(&|d| d.bbox.y_max.to_string()),
        column(&|d| d.track_id.map_or("NULL".to_owned(), |t| t.to_string())),
    ]
    .join(", ");
    stack
        .clickhouse
        .query(&format!(
            "INSERT INTO sightline.events (schema_version, event_id, edge_id, camera_id, captured_at, \
             captured_at_ms, frame_seq, motion_score, detections.label, detections.class_id, \
             detections.confidence, detections.x_min, detections.y_min, detections.x_max, \
             detections.y_max, detections.track_id, model_name, model_version, inference_ms) \
             SELECT 1, toUUID('{}'), 'edge-z', 'yard', toDateTime({}), {}, {}, {}, {columns}, '{}', '{}', {}",
            old.event_id,
            old.captured_at.as_secs(),
            old.captured_at.as_millis(),
            old.frame_seq,
            old.motion_score,
            old.model.name,
            old.model.version,
            old.inference_ms,
        ))
        .await?;
    // Migration 9's statement, as the runner gives it to this server.
    let migration = MIGRATIONS
        .iter()
        .find(|m| m.name == "event_zones")
        .expect("migration 9");
    for statement in migration.statements("sightline") {
        client
            .query(&migrations::portable(statement))
            .execute()
            .await?;
    }
    client
        .query("ATTACH TABLE sightline.detections_mv")
        .execute()
        .await?;
    let (status, body) = stack.get("/v1/events?camera=yard&zone=driveway").await?;
    assert_eq!((status, &body["count"]), (200, &0.into()), "{body}");
    let (status, body) = stack.get("/v1/events?camera=yard").await?;
    assert_eq!(status, 200, "{body}");
    let got: Vec<sightline_shared::DetectionEvent> =
        serde_json::from_value(body["events"].clone())?;
    let mut want = old;
    want.snapshot = None;
    want.description = None;
    want.attributes.clear();
    assert_eq!(got, [want]);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_stops_the_service_with_the_migration_named() -> anyhow::Result<()> {
    sightline_tests::stack::init_tracing();
    let nats = NatsServer::start()?;
    let clickhouse = ClickHouseServer::start()?;
    // Someone else's `events` table is in the way: migration 2's view over it cannot be built.
    clickhouse.query("CREATE DATABASE sightline").await?;
    clickhouse
        .query("CREATE TABLE sightline.events (x UInt8) ENGINE = Memory")
        .await?;
    let config = IngestConfig {
        nats: nats.config(),
        clickhouse: clickhouse.config(),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sightline_ingest::run(config, listener, std::future::pending()),
    )
    .await?;
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("migration 0002_detections failed"), "{err}");
    Ok(())
}

/// Publishes four events captured 0, 10, 45 and 500 days ago (one detection each) and
/// waits until ingest has stored and acknowledged them all.
async fn publish_aged_events(
    stack: &Stack,
) -> anyhow::Result<Vec<sightline_shared::DetectionEvent>> {
    let day = 86_400_000;
    let mut events = known_events("edge-r", "cam", 4);
    for (event, days_ago) in events.iter_mut().zip([0i64, 10, 45, 500]) {
        event.captured_at = Timestamp::from_millis(now().as_millis() - days_ago * day);
        event.event_id = sightline_shared::EventId::new_v7(event.captured_at);
        event.detections = known_events("x", "y", 2)[1].detections.clone();
        event.detections.truncate(1);
    }
    stack.publish(events.clone(), Encoding::Bincode).await?;
    stack
        .wait_for_consumer(
            "all four events acknowledged",
            std::time::Duration::from_secs(30),
            |info| info.ack_floor.stream_sequence >= 4,
        )
        .await?;
    Ok(events)
}

/// Waits until the views have written all four aged events' rows.
async fn wait_for_views(stack: &Stack) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack
        .clickhouse
        .query("SELECT count() FROM sightline.detections")
        .await?
        != "4"
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the views did not write the detections"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

/// How many rows `table` holds.
async fn rows(stack: &Stack, table: &str) -> anyhow::Result<String> {
    stack
        .clickhouse
        .query(&format!("SELECT count() FROM sightline.{table}"))
        .await
}

/// Hours in the rollup.
async fn rollup_hours(stack: &Stack) -> anyhow::Result<String> {
    stack
        .clickhouse
        .query("SELECT count() FROM (SELECT hour FROM sightline.detections_hourly GROUP BY hour)")
        .await
}

/// Events captured 45 and 500 days ago that arrive now are kept for retention's 30 days
/// from now (not deleted as they arrive); 31 days later every partition of the events and
/// their index and detections is dropped, and nothing else is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_keeps_late_arrivals_then_drops_exactly_the_expired_partitions()
-> anyhow::Result<()> {
    if !Servers::only(
        Servers::Debian,
        "a TTL server drops expired rows itself and ingest runs no sweep there \
             (ttl_keeps_late_arrivals_and_drops_what_arrived_long_ago covers it)",
    ) {
        return Ok(());
    }
    let stack = Stack::start().await?;
    publish_aged_events(&stack).await?;
    wait_for_views(&stack).await?;
    let client = admin(&stack.clickhouse)?;
    let settings = RetentionSettings::default();
    let now = time::OffsetDateTime::now_utc();
    // Every partition was written just now: none is due, however old its capture day.
    assert_eq!(
        retention::sweep(&client, "sightline", &settings, now).await?,
        0
    );
    assert_eq!(stack.wait_for_events("camera=cam", 4).await?.len(), 4);
    for table in ["events", "events_by_id", "detections"] {
        assert_eq!(rows(&stack, table).await?, "4", "{table}");
    }
    // 31 days on, all four capture days of the three event tables are past retention and
    // were written before the cutoff.
    let later = now + time::Duration::days(31);
    assert_eq!(
        retention::sweep(&client, "sightline", &settings, later).await?,
        12
    );
    for table in ["events", "events_by_id", "detections"] {
        assert_eq!(rows(&stack, table).await?, "0", "{table}");
    }
    // The rollup keeps its four hours (400 days, and written since that cutoff too).
    assert_eq!(rollup_hours(&stack).await?, "4");
    assert_eq!(
        retention::sweep(&client, "sightline", &settings, later).await?,
        0
    );
    stack.stop().await
}

/// On a server with TTL, the TTL that ingest set at start-up counts from the later of
/// capture and arrival: aged events that arrive now stay, rows that arrived long ago go,
/// over the real HTTP path (TTL runs at merges, forced here with OPTIMIZE ... FINAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_keeps_late_arrivals_and_drops_what_arrived_long_ago() -> anyhow::Result<()> {
    if !Servers::only(
        Servers::Modern,
        "ClickHouse 18.16 has no TTL (the_sweep_keeps_late_arrivals_then_drops_exactly_the_expired_partitions covers it)",
    ) {
        return Ok(());
    }
    let stack = Stack::start().await?;
    for table in ["events", "events_by_id", "detections"] {
        let engine = stack
            .clickhouse
            .query(&format!("SELECT engine_full FROM system.tables WHERE database = 'sightline' AND name = '{table}'"))
            .await?;
        assert!(
            engine.contains("TTL greatest(captured_at, ingested_at) + toIntervalDay(30)"),
            "{table}: {engine}"
        );
        assert!(engine.contains("ttl_only_drop_parts = 1"), "{engine}");
    }
    publish_aged_events(&stack).await?;
    wait_for_views(&stack).await?;
    // An event captured 60 days ago that arrived 40 days ago, in a capture day of its own (a
    // part goes only when all its rows are due). (The tables kept by views compute their
    // arrival when the view inserts: tests/chdb covers their old rows.)
    let old = |days: i64| format!("now() - INTERVAL {days} DAY");
    stack
        .clickhouse
        .query(&format!(
            "INSERT INTO sightline.events (schema_version, event_id, edge_id, camera_id, \
             captured_at, captured_at_ms, ingested_at) VALUES (1, generateUUIDv4(), 'edge-r', \
             'old', {}, toInt64(toUnixTimestamp({})) * 1000, {})",
            old(60),
            old(60),
            old(40)
        ))
        .await?;
    for table in ["events", "events_by_id", "detections", "detections_hourly"] {
        stack
            .clickhouse
            .query(&format!("OPTIMIZE TABLE sightline.{table} FINAL"))
            .await?;
    }
    // The aged events stay, all four; the event that arrived 40 days ago is gone (the index
    // keeps the view's row of it, which arrived now).
    assert_eq!(stack.wait_for_events("camera=cam", 4).await?.len(), 4);
    assert_eq!(rows(&stack, "events").await?, "4");
    assert_eq!(rows(&stack, "events_by_id").await?, "5");
    assert_eq!(rows(&stack, "detections").await?, "4");
    // The rollup counts from its hour: the 500-day hour is past its 400 days.
    assert_eq!(rollup_hours(&stack).await?, "3");
    stack.stop().await
}
