//! `GET /v1/events/export`: a large set streamed at flat memory, NDJSON and CSV.

use sightline_tests::Stack;
use sightline_tests::stack::metric;

use super::ndjson;
use crate::known_events;

/// Streams an export and returns (lines, bytes) without keeping it.
async fn drain_export(http: &reqwest::Client, url: &str) -> anyhow::Result<(usize, usize)> {
    let mut response = http.get(url).send().await?;
    anyhow::ensure!(response.status() == 200, "{url}: {}", response.status());
    let (mut lines, mut bytes) = (0, 0);
    while let Some(chunk) = response.chunk().await? {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    Ok((lines, bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_streams_a_large_set_at_flat_memory() -> anyhow::Result<()> {
    const N: usize = 200_000;
    let stack = Stack::start().await?;
    let events = known_events("edge-x", "bulk", N);
    stack.insert_direct(&events).await?;
    stack.insert_direct(&events[..10]).await?; // copies must not show twice

    // The real binary, so its memory is its own.
    let dir = tempfile::tempdir()?;
    let (mut child, api) = sightline_tests::stack::spawn_query_binary(
        None,
        &stack.clickhouse.url(),
        "[replay]\nenabled = false",
        dir.path(),
    )
    .await?;
    let http = reqwest::Client::new();

    let (lines, _) = drain_export(
        &http,
        &format!("{api}/v1/events/export?camera=bulk&limit=1000"),
    )
    .await?;
    assert_eq!(lines, 1000);
    let before = sightline_tests::stack::proc_status_bytes(child.id(), "VmHWM:")?;
    let (lines, bytes) =
        drain_export(&http, &format!("{api}/v1/events/export?camera=bulk")).await?;
    let after = sightline_tests::stack::proc_status_bytes(child.id(), "VmHWM:")?;
    assert_eq!(lines, N, "every event once");
    println!("exported {N} events, {bytes} bytes; peak RSS {before} -> {after}");
    assert!(bytes > 50_000_000, "the export is large: {bytes} bytes");
    assert!(
        after < before + 32 * 1024 * 1024,
        "peak memory grew from {before} to {after} bytes for a {bytes}-byte export"
    );
    child.kill()?;
    child.wait()?;

    // CSV: a header, one record per event, quoted where the text needs it.
    let text = stack
        .text("/v1/events/export?camera=bulk&format=csv&limit=10&sort=oldest")
        .await?;
    assert!(
        text.starts_with(sightline_query::export::CSV_HEADER),
        "{text}"
    );
    assert!(
        text.contains("\"event 0: «ünïcödé» ✓\nsecond line\""),
        "{text}"
    );
    assert!(text.contains(&events[0].event_id.to_string()));
    // NDJSON lines parse back into the very events.
    let text = stack
        .text("/v1/events/export?camera=bulk&limit=3&sort=oldest")
        .await?;
    let got = ndjson(&text)?;
    assert_eq!(got, events[..3]);
    let metrics = stack.text("/metrics").await?;
    assert_eq!(
        metric(
            &metrics,
            "sightline_query_events_returned_total",
            "route=\"/v1/events/export\""
        ),
        13.0
    );
    stack.stop().await
}
