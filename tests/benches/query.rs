//! Query latency: the typical lookups through the HTTP API, next to the same SQL run directly
//! against ClickHouse in the same run.
//!
//! `cargo bench -p sightline-tests --bench query` starts its own ClickHouse (of the
//! `SIGHTLINE_SERVERS` generation), loads N
//! realistic events (default 10,000,000; set `SIGHTLINE_BENCH_EVENTS`) spread over 30 days,
//! 64 cameras on 8 sites and 12 labels, through the same sink the ingest service uses (so the
//! per-object table and the hourly rollup are filled by their views), then runs each query
//! `SIGHTLINE_BENCH_ROUNDS` times (default 200) both ways, interleaved, and prints p50 and p99
//! for each, and the overhead ratio API / direct. With `SIGHTLINE_BENCH_SCHEMA=N` the store
//! is loaded on the schema as migration N left it, measured, migrated to this build's
//! schema (timed) and measured again. `SIGHTLINE_BENCH_HOLD_SECS` holds the
//! loaded store that long before the queries, for profiling by hand.
//!
//! Queries: the latest 100 events of a camera; 100 events of one label within one hour; one
//! event by id; 24 hours of hourly detection counts for every camera. Then the latest 100 of
//! a camera read with each page plan (two steps, one query), to show which is faster on the
//! server at hand. Last, the console's first screen on this store: the requests its events
//! view makes on load (the newest 50 events, and the cameras of the last day beside them)
//! through the API, and the time from navigation to the first page of events drawn in a
//! real browser (Debian's Chromium, `console/tests/first-screen.mjs`; needs `npm ci` in
//! `console/`, which scripts/test.sh runs).

use std::time::{Duration, Instant};

use rand::Rng as _;
use sightline_query::QueryConfig;
use sightline_query::model::{EventFilter, Sort};
use sightline_query::params;
use sightline_query::store::{Limits, PagePlan, Store};
use sightline_shared::Timestamp;
use sightline_shared::config::ClickHouseConfig;
use sightline_store::EventRow;
use sightline_tests::data;
use tokio_util::sync::CancellationToken;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
fn quantile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("SIGHTLINE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let rounds: usize = std::env::var("SIGHTLINE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (clickhouse, admin, sink) = sightline_tests::stack::bench_clickhouse().await?;

    // Load: time-ordered over the last 30 days, in batches like the ingest service's.
    println!(
        "query benchmark on the {} servers (ClickHouse {}): loading {n} events over 30 days",
        clickhouse.servers().name(),
        clickhouse.query("SELECT version()").await?,
    );
    let end =
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()).as_millis() / HOUR_MS * HOUR_MS;
    let start = end - 30 * DAY_MS;
    let step = (30 * DAY_MS) as f64 / n as f64;
    let (mut rng, mut track) = (rand::rng(), 0);
    let mut sample_ids = Vec::new();
    let loading = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
        let rows: Vec<EventRow> = chunk
            .iter()
            .map(|&i| {
                let at = Timestamp::from_millis(start + (i as f64 * step) as i64);
                let event = data::event(i, Some(at), &mut track, &mut rng);
                if i % (n / 1000).max(1) == 0 {
                    sample_ids.push(event.event_id);
                }
                EventRow::from(event)
            })
            .collect();
        for batch in rows.chunks(50_000) {
            sink.insert(batch).await.map_err(|e| anyhow::anyhow!(e))?;
        }
    }
    println!(
        "  loaded in {:.0} s ({:.0} events/s)",
        loading.elapsed().as_secs_f64(),
        n as f64 / loading.elapsed().as_secs_f64()
    );
    // Let background merges settle so both paths see the same parts.
    admin
        .query("OPTIMIZE TABLE sightline.detections_hourly FINAL")
        .execute()
        .await
        .ok();
    tokio::time::sleep(Duration::from_secs(10)).await;
    hold(&clickhouse).await;

    // The query service, in-process, as the read-only user.
    let config_clickhouse = ClickHouseConfig {
        user: sightline_tests::stack::READER.into(),
        ..clickhouse.config()
    };
    let mut config = QueryConfig {
        clickhouse: config_clickhouse.clone(),
        ..Default::default()
    };
    // Replay and snapshots need NATS, which this benchmark does not start.
    config.replay.enabled = false;
    config.snapshots.enabled = false;
    let limits = Limits::from(&config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let service = tokio::spawn(sightline_query::run(
        config,
        listener,
        stop.clone().cancelled_owned(),
    ));
    let http = reqwest::Client::new();
    sightline_tests::stack::wait_ready(&http, &api).await?;
    // The direct path: the service's own store (the same SQL, user and settings) called
    // in-process, so the difference is what HTTP, routing, parsing and JSON add.
    let store = Store::new(
        sightline_store::client(&config_clickhouse)?.with_database("sightline"),
        limits,
    );

    lookups(&http, &api, &store, &mut rng, rounds, end, &sample_ids).await?;
    // On a store an older build left (`SIGHTLINE_BENCH_SCHEMA`): the migrations since, timed,
    // then the same lookups on the same events, for a before-and-after in one sitting.
    if sightline_tests::stack::bench_schema()?.is_some() {
        let migrating = Instant::now();
        let applied = sightline_store::migrations::migrate(&admin, "sightline").await?;
        println!(
            "  migrations {applied:?} applied to the loaded store in {:.1} s",
            migrating.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        hold(&clickhouse).await;
        println!("  after the migrations:");
        lookups(&http, &api, &store, &mut rng, rounds, end, &sample_ids).await?;
    }

    // The page plans against each other on this server: a camera's latest 100 (an open
    // range, which is where they differ), read directly with each, interleaved.
    let plans = [PagePlan::TwoStep, PagePlan::OneQuery];
    let mut plan_ms: Vec<Vec<Duration>> = vec![Vec::new(); plans.len()];
    for round in 0..rounds {
        let camera = data::camera(rng.random_range(0..data::CAMERAS));
        let filter = EventFilter {
            cameras: vec![camera],
            ..EventFilter::default()
        };
        for k in 0..plans.len() {
            let k = (k + round) % plans.len();
            let store = store.clone().with_page_plan(plans[k]);
            let t = Instant::now();
            store.list_events(&filter, Sort::Newest, None, 100).await?;
            plan_ms[k].push(t.elapsed());
        }
    }
    println!(
        "  latest 100 for a camera by page plan (direct; the service uses {:?}):",
        PagePlan::default()
    );
    for (k, plan) in plans.iter().enumerate() {
        println!(
            "  {:<34} {:>7.1}ms {:>7.1}ms",
            format!("{plan:?}"),
            quantile(&mut plan_ms[k], 0.5),
            quantile(&mut plan_ms[k], 0.99)
        );
    }
    console_first_screen(&http, &api, rounds.min(100), end).await?;
    stop.cancel();
    service.await??;
    Ok(())
}

/// For profiling by hand (clickhouse-client, EXPLAIN, system.query_log) on the loaded store:
/// holds it `SIGHTLINE_BENCH_HOLD_SECS`.
async fn hold(clickhouse: &sightline_tests::ClickHouseServer) {
    if let Some(secs) = std::env::var("SIGHTLINE_BENCH_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        println!(
            "  holding the store at {} (tcp {}) for {secs} s",
            clickhouse.url(),
            clickhouse.tcp_port()
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// `rounds` rounds of the four lookups, each through the API and directly, interleaved;
/// prints p50 and p99 of each and the API's overhead.
async fn lookups(
    http: &reqwest::Client,
    api: &str,
    store: &Store,
    rng: &mut impl rand::Rng,
    rounds: usize,
    end: i64,
    sample_ids: &[sightline_shared::EventId],
) -> anyhow::Result<()> {
    let names = [
        "latest 100 for a camera",
        "a label over one hour (100)",
        "one event by id",
        "24 h hourly counts, all cameras",
    ];
    let mut api_ms: Vec<Vec<Duration>> = vec![Vec::new(); 4];
    let mut sql_ms: Vec<Vec<Duration>> = vec![Vec::new(); 4];
    for round in 0..rounds {
        let camera = data::camera(rng.random_range(0..data::CAMERAS));
        let label = data::LABELS[rng.random_range(0..data::LABELS.len())];
        let hour = end - rng.random_range(1..30 * 24) * HOUR_MS;
        let id = sample_ids[rng.random_range(0..sample_ids.len())];
        let day_end = end - rng.random_range(0..29) * DAY_MS;
        let paths = [
            format!("/v1/events?camera={camera}&limit=100"),
            format!(
                "/v1/events?label={label}&since={hour}&until={}&limit=100",
                hour + HOUR_MS
            ),
            format!("/v1/events/{id}"),
            format!(
                "/v1/stats?since={}&until={day_end}&interval=1h&group_by=camera",
                day_end - DAY_MS
            ),
        ];
        for (q, path) in paths.iter().enumerate() {
            // Alternate which path goes first so caches favour neither.
            for api_first in [round % 2 == 0, round % 2 != 0] {
                if api_first {
                    let t = Instant::now();
                    let response = http.get(format!("{api}{path}")).send().await?;
                    anyhow::ensure!(response.status() == 200, "{path}: {}", response.status());
                    let _ = response.bytes().await?;
                    api_ms[q].push(t.elapsed());
                    continue;
                }
                let t = Instant::now();
                match q {
                    0 => {
                        let filter = EventFilter {
                            cameras: vec![camera.clone()],
                            ..EventFilter::default()
                        };
                        store.list_events(&filter, Sort::Newest, None, 100).await?;
                    }
                    1 => {
                        let filter = EventFilter {
                            labels: vec![label.to_owned()],
                            since: Some(Timestamp::from_millis(hour)),
                            until: Some(Timestamp::from_millis(hour + HOUR_MS)),
                            ..EventFilter::default()
                        };
                        store.list_events(&filter, Sort::Newest, None, 100).await?;
                    }
                    2 => {
                        store.get_event(id).await?;
                    }
                    _ => {
                        let query = params::stats_query(
                            Some(&paths[3].replace("/v1/stats?", "")),
                            Timestamp::from_millis(end),
                        )?;
                        store.stats(&query).await?;
                    }
                }
                sql_ms[q].push(t.elapsed());
            }
        }
    }
    println!("  {rounds} rounds, each query through the API and directly, interleaved");
    println!(
        "  {:<34} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "query", "API p50", "API p99", "SQL p50", "SQL p99", "p50 x", "p99 x"
    );
    for q in 0..4 {
        let (a50, a99) = (
            quantile(&mut api_ms[q], 0.5),
            quantile(&mut api_ms[q], 0.99),
        );
        let (s50, s99) = (
            quantile(&mut sql_ms[q], 0.5),
            quantile(&mut sql_ms[q], 0.99),
        );
        println!(
            "  {:<34} {a50:>7.1}ms {a99:>7.1}ms {s50:>7.1}ms {s99:>7.1}ms {:>8.2} {:>8.2}",
            names[q],
            a50 / s50,
            a99 / s99
        );
    }

    Ok(())
}

/// The console's first screen on this store: its events view's requests on load through the
/// API (the events it shows first, and the cameras strip's list beside them, at once), then
/// the same page in a real browser, from navigation to the first events drawn.
async fn console_first_screen(
    http: &reqwest::Client,
    api: &str,
    rounds: usize,
    end: i64,
) -> anyhow::Result<()> {
    let fetch = |path: String| async move {
        let t = Instant::now();
        let response = http.get(format!("{api}{path}")).send().await?;
        anyhow::ensure!(response.status() == 200, "{path}: {}", response.status());
        let _ = response.bytes().await?;
        Ok::<_, anyhow::Error>(t.elapsed())
    };
    let (mut events_ms, mut cameras_ms) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (events, cameras) = tokio::join!(
            fetch("/v1/events?limit=50".into()),
            fetch(format!("/v1/cameras?since={}", end - DAY_MS))
        );
        events_ms.push(events?);
        cameras_ms.push(cameras?);
    }
    println!("  the console's first screen ({rounds} rounds):");
    println!(
        "  {:<34} {:>7.1}ms {:>7.1}ms",
        "API: newest 50 events",
        quantile(&mut events_ms, 0.5),
        quantile(&mut events_ms, 0.99)
    );
    println!(
        "  {:<34} {:>7.1}ms {:>7.1}ms",
        "API: the cameras of the day, beside",
        quantile(&mut cameras_ms, 0.5),
        quantile(&mut cameras_ms, 0.99)
    );
    let mut command = match sightline_tests::fixtures::console_script("tests/first-screen.mjs") {
        Ok(command) => command,
        Err(missing) => {
            println!("  browser: not measured ({missing})");
            return Ok(());
        }
    };
    command.env("CONSOLE_URL", api).env("ROUNDS", "20");
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "first-screen.mjs failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    println!(
        "  {:<34} {:>7.0}ms {:>7.0}ms  (p50, p95 of {} page loads, nothing cached)",
        "browser: navigation to first events",
        figures["p50_ms"].as_f64().unwrap_or(f64::NAN),
        figures["p95_ms"].as_f64().unwrap_or(f64::NAN),
        figures["rounds"]
    );
    Ok(())
}
