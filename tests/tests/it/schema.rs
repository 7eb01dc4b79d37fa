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
    assert_eq!(recorded, "[1,2,3,4,5,6]");
    let tables = clickhouse
        .query("SELECT groupArray(name) FROM (SELECT name FROM system.tables WHERE database = 'twin' ORDER BY name)")
        .await?;
    assert_eq!(
        tables,
        "['detections','detections_hourly','detections_hourly_mv','detections_mv','edge_heartbeats','events','events_by_id','events_by_id_mv','schema_migrations']"
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

/// What must be left once retention has run (30 days for events, their index and
/// detections; 400 for the rollup): exactly the two recent events, and three rollup hours.
async fn assert_only_unexpired_left(
    stack: &Stack,
    events: &[sightline_shared::DetectionEvent],
) -> anyhow::Result<()> {
    let count = |table: &str| format!("SELECT count() FROM sightline.{table}");
    let left = stack.wait_for_events("camera=cam", 2).await?;
    let ids: Vec<_> = left.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, vec![events[0].event_id, events[1].event_id]);
    assert_eq!(stack.clickhouse.query(&count("events")).await?, "2");
    assert_eq!(stack.clickhouse.query(&count("events_by_id")).await?, "2");
    assert_eq!(stack.clickhouse.query(&count("detections")).await?, "2");
    let rollup_hours = stack
        .clickhouse
        .query("SELECT count() FROM (SELECT hour FROM sightline.detections_hourly GROUP BY hour)")
        .await?;
    assert_eq!(rollup_hours, "3");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_drops_exactly_the_expired_partitions() -> anyhow::Result<()> {
    if !Servers::only(
        Servers::Debian,
        "a TTL server drops expired rows itself and ingest runs no sweep there \
             (ttl_drops_exactly_the_expired_rows covers it)",
    ) {
        return Ok(());
    }
    let stack = Stack::start().await?;
    let events = publish_aged_events(&stack).await?;
    let count = |table: &str| format!("SELECT count() FROM sightline.{table}");
    // Views are written after the events part becomes visible, within the same INSERT.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stack.clickhouse.query(&count("detections")).await? != "4"
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(stack.clickhouse.query(&count("detections")).await?, "4");

    let client = admin(&stack.clickhouse)?;
    let settings = RetentionSettings::default();
    let dropped = retention::sweep(
        &client,
        "sightline",
        &settings,
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    // events, events_by_id and detections: 45 and 500 days; rollups (400 days): 500 days.
    assert_eq!(dropped, 7);
    assert_only_unexpired_left(&stack, &events).await?;
    // Nothing else is due.
    assert_eq!(
        retention::sweep(
            &client,
            "sightline",
            &settings,
            time::OffsetDateTime::now_utc()
        )
        .await?,
        0
    );
    stack.stop().await
}

/// On a server with TTL, the TTL that ingest set at start-up removes exactly the expired
/// rows of every table, over the real HTTP path (the rows went through NATS and ingest's
/// INSERT; TTL runs at merges, forced here with OPTIMIZE ... FINAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_drops_exactly_the_expired_rows() -> anyhow::Result<()> {
    if !Servers::only(
        Servers::Modern,
        "ClickHouse 18.16 has no TTL (the_sweep_drops_exactly_the_expired_partitions covers it)",
    ) {
        return Ok(());
    }
    let stack = Stack::start().await?;
    let engine = stack
        .clickhouse
        .query("SELECT engine_full FROM system.tables WHERE database = 'sightline' AND name = 'events'")
        .await?;
    assert!(
        engine.contains("TTL captured_at + toIntervalDay(30)"),
        "{engine}"
    );
    assert!(engine.contains("ttl_only_drop_parts = 1"), "{engine}");
    let events = publish_aged_events(&stack).await?;
    for table in ["events", "events_by_id", "detections", "detections_hourly"] {
        stack
            .clickhouse
            .query(&format!("OPTIMIZE TABLE sightline.{table} FINAL"))
            .await?;
    }
    assert_only_unexpired_left(&stack, &events).await?;
    stack.stop().await
}
