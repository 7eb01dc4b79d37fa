//! Migration 0012 rebuilds `events` into 1,024-row granules (`store/src/rebuild.rs`), on a
//! real ClickHouse of either generation: with a writer inserting throughout, after a
//! `kill -9` of the server in the middle of the copy, from each state a crash can leave, and
//! with an INSERT still running when `events` is renamed away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sightline_ingest::sink::Sink;
use sightline_shared::Timestamp;
use sightline_store::EventRow;
use sightline_store::migrations::{self, MIGRATIONS};
use sightline_tests::{ClickHouseServer, data};

use crate::now;

const DB: &str = "sightline";
const BEFORE: u32 = 11;
const DAY_MS: i64 = 86_400_000;

/// The rebuild migration and its plain statements (`--print-schema`), to make by hand the
/// states a crash leaves.
fn rebuild_statements() -> (&'static migrations::Migration, Vec<String>) {
    let migration = MIGRATIONS
        .iter()
        .find(|m| m.rebuild.is_some())
        .expect("a rebuild migration");
    let rebuild = migration.rebuild.expect("a rebuild");
    let plain = rebuild.plain_statements(DB, &migrations::statements_before(DB, migration.version));
    (migration, plain)
}

/// `n` events numbered from `first`, spread over `days` days back from now (one partition
/// each).
fn rows(first: usize, n: usize, days: i64) -> Vec<EventRow> {
    let mut rng = StdRng::seed_from_u64(first as u64);
    let mut track = first as u64 * 10;
    let now = now().as_millis();
    (first..first + n)
        .map(|i| {
            let at = now - (i as i64 % days) * DAY_MS - i as i64;
            EventRow::from(data::event(
                i,
                Some(Timestamp::from_millis(at)),
                &mut track,
                &mut rng,
            ))
        })
        .collect()
}

fn detections(rows: &[EventRow]) -> u64 {
    rows.iter().map(|r| r.det_label.len() as u64).sum()
}

/// A server with the schema as build 11 left it and `rows` in it.
async fn old_store(
    rows: &[EventRow],
) -> anyhow::Result<(ClickHouseServer, clickhouse::Client, Sink)> {
    sightline_tests::stack::init_tracing();
    let clickhouse = ClickHouseServer::start()?;
    let admin = sightline_store::client(&clickhouse.config())?;
    migrations::migrate_to(&admin, DB, BEFORE).await?;
    let sink = sightline_tests::stack::sink(&admin);
    for chunk in rows.chunks(5_000) {
        sink.insert(chunk).await?;
    }
    Ok((clickhouse, admin, sink))
}

/// Everything a finished rebuild leaves: the new layout, no leftover table, `events` holding
/// each written row once (and at most `copies_allowed` second copies: `u64::MAX` for any),
/// its views' tables and the id lookups each row exactly once (the hourly rollup at most
/// `rollup_slack` detections more: see `store::rebuild`).
async fn assert_rebuilt(
    clickhouse: &ClickHouseServer,
    events: u64,
    detections: u64,
    rollup_slack: u64,
    copies_allowed: u64,
) -> anyhow::Result<()> {
    let engine = clickhouse
        .query("SELECT engine_full FROM system.tables WHERE database = 'sightline' AND name = 'events'")
        .await?;
    anyhow::ensure!(engine.contains("index_granularity = 1024"), "{engine}");
    let leftovers = clickhouse
        .query("SELECT groupArray(name) FROM system.tables WHERE database = 'sightline' AND (name LIKE '%_rebuild' OR name LIKE '%_old' OR name LIKE '%_dropped')")
        .await?;
    anyhow::ensure!(leftovers.trim() == "[]", "left over: {leftovers}");
    let copies = events.saturating_add(copies_allowed);
    for (what, sql, least, most) in [
        (
            "events",
            "SELECT uniqExact(event_id) FROM sightline.events",
            events,
            events,
        ),
        // No row was copied twice by the rebuild: pages need no second read.
        (
            "events (rows, copies included)",
            "SELECT count() FROM sightline.events",
            events,
            copies,
        ),
        (
            "events_by_id",
            "SELECT uniqExact(event_id) FROM sightline.events_by_id",
            events,
            events,
        ),
        (
            "detections",
            "SELECT uniqExact(event_id, idx) FROM sightline.detections",
            detections,
            detections,
        ),
        (
            "the hourly rollup (detections)",
            "SELECT countMerge(detections) FROM sightline.detections_hourly",
            detections,
            detections + rollup_slack,
        ),
    ] {
        let got: u64 = clickhouse.query(sql).await?.trim().parse()?;
        anyhow::ensure!(
            (least..=most).contains(&got),
            "{what} holds {got}, not {least}..={most}"
        );
    }
    Ok(())
}

/// The most detections of events that arrived within one second: what the rollup may count
/// twice when another writer inserts while an Atomic database's views are made again.
async fn busiest_second(clickhouse: &ClickHouseServer) -> anyhow::Result<u64> {
    let engine = clickhouse
        .query("SELECT engine FROM system.databases WHERE name = 'sightline'")
        .await?;
    if engine.trim() == "Ordinary" {
        return Ok(0);
    }
    Ok(clickhouse
        .query("SELECT max(c) FROM (SELECT sum(length(detections.label)) AS c FROM sightline.events GROUP BY ingested_at)")
        .await?
        .trim()
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_rebuilt_while_a_writer_keeps_inserting() -> anyhow::Result<()> {
    let before = rows(0, 30_000, 5);
    let (clickhouse, admin, sink) = old_store(&before).await?;

    // A writer of 50-event batches all through the migration, retrying a batch the server
    // refuses (while `events` is renamed away) as ingest does.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut written, mut retried, mut refused) = (Vec::new(), Vec::new(), 0u32);
            let mut first = 100_000;
            while !stop.load(Ordering::Relaxed) {
                let batch = rows(first, 50, 2);
                let mut tries = 0;
                while let Err(error) = sink.insert(&batch).await {
                    refused += 1;
                    tries += 1;
                    tracing::info!(%error, "batch refused during the rebuild; retrying");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if tries > 0 {
                    retried.extend(batch.iter().cloned());
                }
                written.extend(batch);
                first += 50;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (written, retried, refused)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let applied = migrations::migrate(&admin, DB).await?;
    assert_eq!(applied, [12]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (written, retried, refused) = writer.await?;
    tracing::info!(
        written = written.len(),
        refused,
        "the writer's batches during the rebuild"
    );
    assert!(written.len() >= 100, "the writer wrote during the rebuild");

    // A refused batch may have been written in part: 18.16 writes an INSERT's partitions one
    // at a time, and the rename can land between them (the batch then fails "while pushing to
    // view"). Its retry stores those rows again, as any retried batch on a server without
    // insert deduplication does: copies and rollup counts the rebuild did not make.
    let slack = busiest_second(&clickhouse).await? + detections(&retried);
    assert_rebuilt(
        &clickhouse,
        (before.len() + written.len()) as u64,
        detections(&before) + detections(&written),
        slack,
        retried.len() as u64,
    )
    .await?;
    assert!(migrations::migrate(&admin, DB).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_killed_in_its_copy_finishes_after_the_restart() -> anyhow::Result<()> {
    let before = rows(0, 200_000, 30);
    let (mut clickhouse, admin, _sink) = old_store(&before).await?;
    let migrating = tokio::spawn({
        let admin = admin.clone();
        async move { migrations::migrate(&admin, DB).await }
    });
    // Kill the server once the copy has written part of the new table.
    let copied = sightline_tests::fixtures::poll_until(
        Duration::from_secs(60),
        || async {
            let rows = clickhouse
                .query("SELECT sum(rows) FROM system.parts WHERE database = 'sightline' AND table = 'events_rebuild' AND active")
                .await?;
            Ok(rows.trim().parse::<u64>().unwrap_or(0))
        },
        |rows| *rows > 0,
    )
    .await?;
    assert!(copied.is_ok(), "the copy never began");
    clickhouse.kill();
    let error = migrating
        .await?
        .expect_err("the server was killed mid-copy");
    assert!(error.is_transient(), "{error}");
    clickhouse.start_again()?;
    // The half-made copy is there; the next start copies into it again and finishes.
    let state = clickhouse
        .query("SELECT groupArray(name) FROM (SELECT name FROM system.tables WHERE database = 'sightline' AND name LIKE 'events%' ORDER BY name)")
        .await?;
    assert_eq!(
        state.trim(),
        "['events','events_by_id','events_by_id_mv','events_rebuild']"
    );
    assert_eq!(migrations::migrate(&admin, DB).await?, [12]);
    assert_rebuilt(&clickhouse, before.len() as u64, detections(&before), 0, 0).await
}

/// The states a crash between two steps leaves, made by hand with the plain statements
/// (`--print-schema`) up to that step, each with events that arrived meanwhile where a
/// writer could put them; each resumes and ends with every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_resumes_from_each_state_a_crash_leaves() -> anyhow::Result<()> {
    let (migration, plain) = rebuild_statements();
    // (statements run, after how many of them late events reach `events`, the copy dropped
    // by hand):
    // - after the copy, late events in the live table;
    // - after the first rename, with late events that came between the copy and it;
    // - after both renames, the views not yet made again, and late events in the new table
    //   from another writer;
    // - after the first rename with the copy gone: the old table alone.
    let cases = [(1, 1, false), (2, 1, false), (3, 3, false), (2, 1, true)];
    for (stop_after, late_after, drop_copy) in cases {
        let case = format!(
            "stopped after {stop_after}, late events after {late_after}, copy dropped: {drop_copy}"
        );
        let before = rows(0, 3_000, 3);
        let (clickhouse, admin, sink) = old_store(&before).await?;
        for statement in migration.statements(DB) {
            admin.query(&statement).execute().await?;
        }
        let late = rows(50_000, 200, 2);
        for (i, statement) in plain.iter().take(stop_after).enumerate() {
            admin.query(statement).execute().await?;
            if i + 1 == late_after {
                sink.insert(&late).await?;
            }
        }
        if drop_copy {
            admin
                .query("DROP TABLE sightline.events_rebuild")
                .execute()
                .await?;
        }
        assert_eq!(migrations::migrate(&admin, DB).await?, [12], "{case}");
        let all: Vec<EventRow> = before.into_iter().chain(late).collect();
        assert_rebuilt(&clickhouse, all.len() as u64, detections(&all), 0, 0)
            .await
            .context(case.clone())?;
        // The views follow the new table: a new event reaches every one.
        let new = rows(90_000, 10, 1);
        sink.insert(&new).await?;
        let all: Vec<EventRow> = all.into_iter().chain(new).collect();
        assert_rebuilt(&clickhouse, all.len() as u64, detections(&all), 0, 0)
            .await
            .context(case)?;
    }
    Ok(())
}

/// Two writers starting the rebuild at once without a lock (outside Kubernetes): both
/// finish, and nothing is lost (a row both copied may be stored twice until parts merge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_rebuilding_at_once_both_finish_and_lose_nothing() -> anyhow::Result<()> {
    let before = rows(0, 40_000, 8);
    let (clickhouse, admin, _sink) = old_store(&before).await?;
    let (a, b) = tokio::join!(
        migrations::migrate(&admin, DB),
        migrations::migrate(&admin, DB)
    );
    let (a, b) = (a?, b?);
    assert!(a == [12] || b == [12], "{a:?} {b:?}");
    assert_rebuilt(
        &clickhouse,
        before.len() as u64,
        detections(&before),
        0,
        u64::MAX,
    )
    .await
}

/// An INSERT still running when `events` was renamed away finishes into the old table on a
/// modern server. Made by hand: both renames done, then rows written into `events_old`;
/// the resumed rebuild moves them into `events` before dropping the old table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_reach_the_old_table_after_the_swap_are_kept() -> anyhow::Result<()> {
    let (migration, plain) = rebuild_statements();
    let before = rows(0, 3_000, 3);
    let (clickhouse, admin, _sink) = old_store(&before).await?;
    for statement in migration.statements(DB).iter().chain(plain.iter().take(3)) {
        admin.query(statement).execute().await?;
    }
    let late = rows(70_000, 100, 2);
    sightline_store::insert::insert_rows(
        &admin.clone().with_database(DB),
        "events_old",
        &late,
        Duration::from_secs(30),
        None,
    )
    .await?;
    assert_eq!(migrations::migrate(&admin, DB).await?, [12]);
    let want = (before.len() + late.len()).to_string();
    for sql in [
        "SELECT uniqExact(event_id) FROM sightline.events",
        "SELECT count() FROM sightline.events",
    ] {
        assert_eq!(clickhouse.query(sql).await?.trim(), want, "{sql}");
    }
    Ok(())
}

/// An INSERT that is still running when the rebuild renames `events` away: on a modern
/// server it finishes into the old table through the views it started with (the rebuild
/// waits for it, then copies its rows into the new `events`); on 18.16 the rename waits for
/// it. Either way its rows end up once in `events` and in every view's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_running_at_the_swap_reaches_events_and_every_view() -> anyhow::Result<()> {
    let before = rows(0, 3_000, 3);
    let (clickhouse, admin, _sink) = old_store(&before).await?;
    // 20 events, one block per row and a quarter of a second per row: the server spends
    // 5 s on the INSERT and writes its part (and the views' parts) at the end.
    const SLOW: u64 = 20;
    let slow = tokio::spawn({
        let admin = admin.clone();
        async move {
            admin
                .query(&format!(
                    "INSERT INTO sightline.events (schema_version, event_id, edge_id, camera_id, \
                     captured_at, captured_at_ms, frame_seq, motion_score, detections.label, \
                     detections.class_id, detections.confidence, detections.x_min, \
                     detections.y_min, detections.x_max, detections.y_max, detections.track_id, \
                     model_name, model_version, inference_ms) \
                     SELECT 1, generateUUIDv4(), 'edge-slow', 'cam-slow', \
                     toDateTime(intDiv({now}, 1000), 'UTC'), {now} + number, number, 0.5, \
                     ['person', 'dog'], [0, 16], [0.9, 0.8], [0.1, 0.2], [0.1, 0.2], \
                     [0.3, 0.4], [0.3, 0.4], [NULL, NULL], 'nanodet', '1', 20 \
                     FROM numbers({SLOW}) WHERE sleepEachRow(0.25) = 0 \
                     SETTINGS max_block_size = 1",
                    now = now().as_millis(),
                ))
                .execute()
                .await?;
            anyhow::Ok(std::time::Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    assert_eq!(migrations::migrate(&admin, DB).await?, [12]);
    let ended = std::time::Instant::now();
    let inserted = slow.await??;
    assert_rebuilt(
        &clickhouse,
        before.len() as u64 + SLOW,
        detections(&before) + 2 * SLOW,
        0,
        0,
    )
    .await?;
    // The rebuild overlapped the INSERT and did not end before it.
    anyhow::ensure!(
        started < inserted && inserted <= ended,
        "the INSERT ended {:?} after the rebuild started and the rebuild {:?} after that",
        inserted.saturating_duration_since(started),
        ended.saturating_duration_since(inserted)
    );
    Ok(())
}
