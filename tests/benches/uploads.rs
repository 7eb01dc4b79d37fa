//! The snapshot uploader against its bandwidth cap.
//!
//! `cargo bench -p sightline-tests --bench uploads` starts its own nats-server, queues
//! `SIGHTLINE_BENCH_UPLOADS` (default 120) snapshot uploads of the test pictures (114 to
//! 383 kB, 190 kB on average) in a DuckDB buffer, their events already sent, and lets the
//! agent's uploader send them all under three caps in turn: none to speak of (the machine's
//! ceiling), 4 MiB/s and 1 MiB/s. For each it prints the bytes per second JetStream
//! acknowledged, over the whole drain and past the bucket's first second (the burst it
//! starts with), against the cap.

use std::time::Instant;

use prometheus_client::registry::Registry;
use sightline_edge_agent::buffer::worker::BUFFER_FILE;
use sightline_edge_agent::buffer::{Buffer, UploadRequest};
use sightline_edge_agent::config::{UploadConfig, UploadSend};
use sightline_edge_agent::metrics::Metrics;
use sightline_edge_agent::uploader::Uploader;
use tokio_util::sync::CancellationToken;

const PICTURES: [&str; 5] = [
    "dog.jpg",
    "eagle.jpg",
    "giraffe.jpg",
    "horses.jpg",
    "person.jpg",
];

/// Queues `n` uploads in a new buffer under `dir`, their events marked sent.
fn queue(dir: &std::path::Path, n: usize) -> anyhow::Result<u64> {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/images");
    std::fs::create_dir_all(dir.join("pictures"))?;
    for name in PICTURES {
        std::fs::copy(fixtures.join(name), dir.join("pictures").join(name))?;
    }
    let (mut buffer, _) = Buffer::open(&dir.join(BUFFER_FILE))?;
    let now = sightline_runtime::now();
    let mut rng = rand::rng();
    let mut track = 0;
    let mut bytes = 0;
    for i in 0..n {
        let mut event = sightline_tests::data::event(i, Some(now), &mut track, &mut rng);
        event.edge_id = "edge-bench".into();
        let name = PICTURES[i % PICTURES.len()];
        bytes += std::fs::metadata(dir.join("pictures").join(name))?.len();
        let upload =
            UploadRequest::of_event(uuid::Uuid::now_v7(), &event, format!("pictures/{name}"));
        let seqs = buffer.append_with_uploads(&[event], &[Some(upload)], now.as_millis())?;
        buffer.mark_sent(&seqs)?;
    }
    buffer.checkpoint()?;
    Ok(bytes)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = std::env::var("SIGHTLINE_BENCH_UPLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let (_nats, _client, js) = sightline_tests::stack::bench_nats().await?;
    println!("snapshot upload benchmark: {n} uploads of the test pictures, 4 in flight");
    for cap in [1u64 << 30, 4 << 20, 1 << 20] {
        let dir = tempfile::tempdir()?;
        let queued = queue(dir.path(), n)?;
        let metrics = Metrics::new(&mut Registry::default());
        let (handle, thread) = sightline_tests::data::bench_buffer(dir.path(), &metrics)?;
        let uploader = Uploader {
            buffer: handle.clone(),
            js: js.clone(),
            edge_id: "edge-bench".into(),
            data_dir: dir.path().to_owned(),
            config: UploadConfig {
                send: UploadSend::All,
                max_bytes_per_sec: cap,
                ..UploadConfig::default()
            },
            metrics: metrics.clone(),
        };
        // Finishing from the start: it sends everything, then returns.
        let finish = CancellationToken::new();
        finish.cancel();
        let started = Instant::now();
        uploader.run(CancellationToken::new(), finish).await;
        let elapsed = started.elapsed().as_secs_f64();
        handle.close().await;
        let _ = thread.join();
        let sent = metrics.snapshot_upload_bytes.get();
        anyhow::ensure!(
            sent == queued && metrics.snapshot_uploads.get() == n as u64,
            "sent {sent} of {queued} bytes"
        );
        let rate = sent as f64 / elapsed;
        // The bucket starts full (a second's worth): past it, the rate it holds.
        let held = (sent as f64 - cap as f64).max(0.0) / elapsed;
        if cap >= 1 << 30 {
            println!(
                "  no cap:          {:>7.1} MB in {elapsed:>5.2} s = {:>6.1} MB/s (the ceiling here)",
                sent as f64 / 1e6,
                rate / 1e6
            );
        } else {
            println!(
                "  cap {:>5.1} MB/s: {:>7.1} MB in {elapsed:>5.2} s = {:>6.2} MB/s overall, {:>6.2} MB/s past the first second's burst = {:.3} x the cap",
                cap as f64 / 1e6,
                sent as f64 / 1e6,
                rate / 1e6,
                held / 1e6,
                held / cap as f64
            );
        }
    }
    Ok(())
}
