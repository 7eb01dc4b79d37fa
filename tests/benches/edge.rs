//! The edge buffer: catching up after an outage, and what it costs at a steady rate.
//!
//! `cargo bench -p sightline-tests --bench edge` starts its own nats-server and measures, in
//! one run:
//!
//! 1. buffering while offline: N events (default 1,000,000; `SIGHTLINE_BENCH_EVENTS`)
//!    committed to a DuckDB buffer in groups of 1000, as cameras' appends group;
//! 2. the drain: the agent's publisher takes them from the buffer to JetStream (the agent's
//!    default window of 256 in flight), marking each sent after its ack;
//! 3. the ceiling: the same events published from memory by the same publisher and window,
//!    no buffer. Printed with the ratio drain / ceiling;
//! 4. steady state: 30 events/s for `SIGHTLINE_BENCH_STEADY_SECS` (default 30) through the
//!    buffer thread and out to JetStream, then the same through memory only: CPU time per
//!    event for each, and resident memory.

use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use sightline_edge_agent::buffer::Buffer;
use sightline_edge_agent::buffer::worker::{self, BUFFER_FILE};
use sightline_edge_agent::heartbeat::ProcessUsage;
use sightline_edge_agent::metrics::Metrics;
use sightline_edge_agent::outbox::Message;
use sightline_edge_agent::publisher::Publisher;
use sightline_shared::{DetectionEvent, Encoding};
use sightline_tests::stack::publish_via;
use tokio_util::sync::CancellationToken;

const WINDOW: usize = 256;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events(n: usize) -> Vec<DetectionEvent> {
    let mut rng = rand::rng();
    let mut track = 0;
    let now = sightline_runtime::now();
    (0..n)
        .map(|i| sightline_tests::data::event(i, Some(now), &mut track, &mut rng))
        .collect()
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env("SIGHTLINE_BENCH_EVENTS", 1_000_000) as usize;
    let steady_secs = env("SIGHTLINE_BENCH_STEADY_SECS", 30);
    let (_nats, client, js) = sightline_tests::stack::bench_nats().await?;
    let dir = tempfile::tempdir()?;
    println!("edge buffer benchmark: {n} events, {WINDOW} publishes in flight");

    // 1. Offline: commit N events.
    let all = events(n);
    let started = Instant::now();
    {
        let (mut buffer, _) = Buffer::open(&dir.path().join(BUFFER_FILE))?;
        let now = sightline_runtime::now().as_millis();
        for chunk in all.chunks(1000) {
            buffer.append(chunk, now)?;
        }
        buffer.checkpoint()?;
    }
    let buffered = started.elapsed();
    let file = std::fs::metadata(dir.path().join(BUFFER_FILE))?.len();
    println!(
        "  buffer while offline (groups of 1000): {:>10.0} events/s, file {:.1} MB ({:.0} bytes/event)",
        rate(n, buffered),
        file as f64 / 1e6,
        file as f64 / n as f64
    );

    // 2. The drain through the agent's publisher.
    let metrics = Metrics::new(&mut Registry::default());
    let (handle, thread) = sightline_tests::data::bench_buffer(dir.path(), &metrics)?;
    let closed = CancellationToken::new();
    closed.cancel();
    let mut outbox = handle.outbox(worker::PAGE_SIZE, closed);
    let publisher = sightline_tests::data::bench_publisher(&client, WINDOW, &metrics);
    let started = Instant::now();
    let report = publisher.run(&mut outbox, &CancellationToken::new()).await;
    outbox.flush();
    let drain = started.elapsed();
    let status = handle.status().await.map_err(anyhow::Error::msg)?;
    handle.close().await;
    let _ = thread.join();
    assert_eq!(report.published as usize, n);
    assert_eq!(status.stats.unsent, 0, "every event marked sent");
    let drain_rate = rate(n, drain);
    println!("  drain buffer -> JetStream:              {drain_rate:>10.0} events/s");

    // 3. The ceiling: the same publisher from memory (fresh ids, so nothing is a duplicate).
    let fresh = events(n);
    let started = Instant::now();
    let report = publish_via(js.clone(), fresh, Encoding::Bincode, WINDOW).await;
    let ceiling = rate(n, started.elapsed());
    assert_eq!(report.published as usize, n);
    println!("  publish from memory (ceiling):          {ceiling:>10.0} events/s");
    println!(
        "  drain / ceiling: {:.2}   (target: drain >= 50000 events/s)",
        drain_rate / ceiling
    );

    // 4. Steady state at 30 events/s, through the buffer and through memory only.
    let steady = steady_secs as usize * 30;
    let through_buffer = steady_run(&client, dir.path(), steady, true).await?;
    let through_memory = steady_run(&client, dir.path(), steady, false).await?;
    println!(
        "  steady 30 events/s for {steady_secs} s: buffer {:.0} us CPU/event, memory only {:.0} us CPU/event; buffer cost {:.0} us/event ({:.2} % of one core); RSS {:.0} MB",
        through_buffer * 1e6,
        through_memory * 1e6,
        (through_buffer - through_memory) * 1e6,
        (through_buffer - through_memory) * 30.0 * 100.0,
        ProcessUsage::read().rss_bytes as f64 / 1e6
    );
    Ok(())
}

/// Appends `count` events at 30/s and publishes them; returns CPU seconds per event.
async fn steady_run(
    client: &async_nats::Client,
    dir: &std::path::Path,
    count: usize,
    buffer: bool,
) -> anyhow::Result<f64> {
    let js = async_nats::jetstream::new(client.clone());
    let events = events(count);
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / 30));
    // Steady state: from after the buffer is open (its migrations checked) to when the
    // last event is out, before the close's checkpoint.
    let (before, after);
    if buffer {
        let metrics = Metrics::default();
        let (handle, thread) = sightline_tests::data::bench_buffer(dir, &metrics)?;
        before = ProcessUsage::read();
        let closed = CancellationToken::new();
        let mut outbox = handle.outbox(worker::PAGE_SIZE, closed.clone());
        let publisher = Publisher::new(js, Encoding::Bincode, WINDOW, metrics);
        let publishing = tokio::spawn(async move {
            let report = publisher.run(&mut outbox, &CancellationToken::new()).await;
            outbox.flush();
            report
        });
        // As a camera does: hand each event over and go on; the commits are checked after.
        let mut commits = Vec::with_capacity(count);
        for event in events {
            ticker.tick().await;
            commits.push(handle.submit(Message::Event(event), None));
        }
        for commit in commits {
            commit.await.map_err(anyhow::Error::msg)?;
        }
        closed.cancel();
        let report = publishing.await?;
        after = ProcessUsage::read();
        assert_eq!(report.published as usize, count);
        handle.close().await;
        let _ = thread.join();
    } else {
        before = ProcessUsage::read();
        for event in events {
            ticker.tick().await;
            publish_via(js.clone(), vec![event], Encoding::Bincode, WINDOW).await;
        }
        after = ProcessUsage::read();
    }
    Ok((after.cpu_secs - before.cpu_secs) / count as f64)
}
