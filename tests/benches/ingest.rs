//! Ingest throughput: JetStream -> ClickHouse, against its two ceilings on this machine.
//!
//! `cargo bench -p sightline-tests --bench ingest` starts its own nats-server and
//! clickhouse-server, fills the stream with N realistic events (default 1,000,000; set
//! `SIGHTLINE_BENCH_EVENTS`; `SIGHTLINE_BENCH_BATCH_ROWS` changes the batch from the
//! default 50,000 rows; `SIGHTLINE_BENCH_ACK_WAIT_SECS` the consumer's ack wait from the
//! default 8 s; `SIGHTLINE_BENCH_SCHEMA=N` gives steps 2 and 3 the schema as migration N
//! left it), then measures, in one run:
//!
//! 1. NATS alone: a pull consumer drains the stream, decoding, validating and acking every
//!    message (what ingest does without ClickHouse);
//! 2. ClickHouse alone: the same rows, already in memory, inserted in batches of the same
//!    size through the same sink;
//! 3. ingest: the real service drains the stream into ClickHouse.
//!
//! It prints events/s for each, the ratio ingest / min(ceilings), and the insert latency
//! quantiles from the service's histogram.

use std::time::{Duration, Instant};

use futures::StreamExt;
use prometheus_client::registry::Registry;
use sightline_ingest::IngestConfig;
use sightline_ingest::consumer::{check_message, content_type};
use sightline_ingest::metrics::Metrics as IngestMetrics;
use sightline_ingest::sink::Sink;
use sightline_shared::{DetectionEvent, Encoding, Timestamp, subjects};
use sightline_store::EventRow;
use sightline_tests::stack::{metric, publish_via};
use sightline_tests::{ClickHouseServer, NatsServer};
use tokio_util::sync::CancellationToken;

fn events(n: usize) -> Vec<DetectionEvent> {
    let mut rng = rand::rng();
    let mut track = 0;
    (0..n)
        .map(|i| sightline_tests::data::event(i, None, &mut track, &mut rng))
        .collect()
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// Upper bound of the bucket holding quantile `q` of a Prometheus histogram in `text`.
fn quantile(text: &str, name: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                },
                count,
            ))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map_or(f64::NAN, |b| b.0)
}

/// The ingest service's allocator (ingest-service/src/main.rs), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("SIGHTLINE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let nats = NatsServer::start()?;
    let clickhouse = ClickHouseServer::start()?;
    let mut config = IngestConfig {
        nats: nats.config(),
        clickhouse: clickhouse.config(),
        ..Default::default()
    };
    // Another ack wait than the default (60: as before issue 21), to compare in one sitting.
    if let Some(secs) = std::env::var("SIGHTLINE_BENCH_ACK_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.consumer.ack_wait_secs = secs;
    }
    if let Some(rows) = std::env::var("SIGHTLINE_BENCH_BATCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.batch.max_rows = rows;
    }
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    sightline_ingest::nats::declare(&js, &config, None).await?;

    println!(
        "ingest benchmark: {n} events, batch {} rows, ack wait {} s, on the {} servers (ClickHouse {}, nats-server {})",
        config.batch.max_rows,
        config.consumer.ack_wait_secs,
        clickhouse.servers().name(),
        clickhouse.query("SELECT version()").await?,
        client.server_info().version,
    );
    println!(
        "  servers' data in {}",
        sightline_tests::fixtures::data_filesystem()
    );
    let all = events(n);
    let started = Instant::now();
    let report = publish_via(js.clone(), all.clone(), Encoding::Bincode, 4096).await;
    assert_eq!(report.published as usize, n);
    println!(
        "  publish (edge publisher, 4096 in flight): {:>10.0} events/s",
        rate(n, started.elapsed())
    );

    // 1. NATS alone.
    let consumer = js
        .get_stream(subjects::EVENTS_STREAM)
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("bench-drain".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: config.consumer.max_ack_pending,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.consumer.fetch_batch)
        .messages()
        .await?;
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    let mut drained = 0;
    while drained < n {
        let message = messages
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?
            .map_err(|e| anyhow::anyhow!(e))?;
        let event = check_message(
            &message.subject,
            content_type(&message),
            &message.payload,
            now,
            sightline_shared::validate::MAX_FUTURE_SKEW_MS,
        )
        .map_err(|(_, e)| anyhow::anyhow!(e))?;
        std::hint::black_box(EventRow::from(event));
        message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        drained += 1;
    }
    client.flush().await?;
    let nats_alone = rate(n, started.elapsed());
    println!("  1. NATS alone (fetch, decode, validate, ack): {nats_alone:>10.0} events/s");
    drop(messages);

    // 2. ClickHouse alone.
    let admin = sightline_store::client(&clickhouse.config())?;
    let schema = sightline_tests::stack::bench_schema()?;
    sightline_store::migrations::migrate_to(&admin, "bench_ch", schema.unwrap_or(u32::MAX)).await?;
    let sink = Sink::new(
        admin.clone().with_database("bench_ch"),
        Duration::from_secs(60),
        IngestMetrics::new(&mut Registry::default()),
    );
    let rows: Vec<EventRow> = all.iter().map(EventRow::from).collect();
    let started = Instant::now();
    for chunk in rows.chunks(config.batch.max_rows) {
        sink.insert(chunk).await.map_err(|e| anyhow::anyhow!(e))?;
    }
    let clickhouse_alone = rate(n, started.elapsed());
    println!("  2. ClickHouse alone (RowBinary INSERTs):     {clickhouse_alone:>10.0} events/s");

    // 3. The ingest service, end to end. On `SIGHTLINE_BENCH_SCHEMA=N` its store is made as
    // migration N left it and the later migrations are recorded as applied without running
    // them, so ingest (which migrates at start) writes the old layout: the same code on
    // either schema, for an A/B of the schema alone.
    if let Some(last) = schema {
        sightline_store::migrations::migrate_to(&admin, "sightline", last).await?;
        for later in sightline_store::migrations::MIGRATIONS
            .iter()
            .filter(|m| m.version > last)
        {
            sightline_store::migrations::record_applied(&admin, "sightline", later).await?;
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics_url = format!("http://{}/metrics", listener.local_addr()?);
    let stop = CancellationToken::new();
    let started = Instant::now();
    let service = tokio::spawn(sightline_ingest::run(
        config.clone(),
        listener,
        stop.clone().cancelled_owned(),
    ));
    let http = reqwest::Client::new();
    let text = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = http.get(&metrics_url).send().await.map(|r| r.text());
        if let Ok(text) = text {
            let text = text.await?;
            if metric(&text, "sightline_ingest_rows_inserted_total", "") as usize >= n {
                break text;
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1200),
            "ingest did not finish in 20 minutes"
        );
    };
    let ingest = rate(n, started.elapsed());
    stop.cancel();
    service.await??;
    let ceiling = nats_alone.min(clickhouse_alone);
    println!("  3. ingest (JetStream -> ClickHouse):          {ingest:>10.0} events/s");
    println!("  ratio ingest / min(ceilings): {:.2}", ingest / ceiling);
    println!(
        "  insert latency per batch: p50 <= {:.0} ms, p95 <= {:.0} ms (histogram bucket bounds), {} inserts",
        quantile(&text, "sightline_ingest_insert_duration_seconds", 0.5) * 1000.0,
        quantile(&text, "sightline_ingest_insert_duration_seconds", 0.95) * 1000.0,
        metric(&text, "sightline_ingest_inserts_total", "Ok"),
    );
    println!(
        "  messages received: {}, pulls restarted: {}",
        metric(&text, "sightline_ingest_messages_received_total", ""),
        metric(&text, "sightline_ingest_pulls_restarted_total", ""),
    );
    let stored: u64 = clickhouse
        .query("SELECT count() FROM (SELECT event_id FROM sightline.events LIMIT 1 BY event_id)")
        .await?
        .parse()?;
    println!("  stored distinct events: {stored}");
    Ok(())
}
