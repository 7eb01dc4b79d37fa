//! Clocks: an edge learns its offset from the cloud's, and ingest deals with capture times
//! from before retention (counted, logged) and from too far ahead (dead-lettered, with a
//! configurable bound).

use std::time::Duration;

use sightline_shared::{Encoding, EventId, Timestamp};
use sightline_tests::Stack;
use sightline_tests::fixtures::poll_until;
use sightline_tests::stack::metric;

use crate::known_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_tells_an_edge_its_clock_offset() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let client = async_nats::connect(stack.nats.url()).await?;
    let ask =
        || async { anyhow::Ok(sightline_edge_agent::heartbeat::measure_clock(&client).await) };
    // Ingest subscribes once it is running.
    let offset = poll_until(Duration::from_secs(20), ask, |o: &Option<i64>| o.is_some())
        .await?
        .map_err(|_| anyhow::anyhow!("ingest never answered the clock request"))?
        .unwrap_or(i64::MAX);
    // One host, one clock: the offset is the round trip's error at most.
    assert!(offset.abs() < 1_000, "{offset} ms");
    let metrics = stack.ingest_metrics().await?;
    assert!(
        metric(&metrics, "sightline_ingest_time_requests_total", "") >= 1.0,
        "{metrics}"
    );
    stack.stop().await
}

/// `events` moved by `shift_ms`, with ids that match their new capture times.
fn shifted(
    mut events: Vec<sightline_shared::DetectionEvent>,
    shift_ms: i64,
) -> Vec<sightline_shared::DetectionEvent> {
    for e in &mut events {
        e.captured_at = Timestamp::from_millis(e.captured_at.as_millis() + shift_ms);
        e.event_id = EventId::new_v7(e.captured_at);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_before_retention_are_counted_and_from_too_far_ahead_dead_lettered()
-> anyhow::Result<()> {
    let stack = Stack::start_with(|c| c.consumer.max_future_skew_secs = 120).await?;
    let days = i64::from(stack.ingest_config.retention.events_days);
    // An edge offline for longer than retention (or its clock set back)...
    let old = shifted(
        known_events("edge-clock", "past", 3),
        -(days + 10) * 86_400_000,
    );
    // ...and one whose clock runs 200 s ahead, past the configured 120 s.
    let ahead = shifted(known_events("edge-clock", "future", 2), 200_000);
    stack
        .publish(old.into_iter().chain(ahead).collect(), Encoding::Bincode)
        .await?;
    let expired =
        |m: &str| metric(m, "sightline_ingest_events_expired_on_arrival_total", "") >= 3.0;
    let metrics = stack
        .wait_for_ingest_metrics(
            "3 events expired on arrival",
            Duration::from_secs(30),
            expired,
        )
        .await?;
    assert_eq!(
        metric(
            &metrics,
            "sightline_ingest_events_expired_on_arrival_total",
            ""
        ),
        3.0,
        "{metrics}"
    );
    let read = || stack.dead_letters(10);
    let dead = poll_until(Duration::from_secs(30), read, |d| d.len() >= 2)
        .await?
        .map_err(|d| anyhow::anyhow!("{} dead letters", d.len()))?;
    assert_eq!(dead.len(), 2, "only the events from the future");
    for letter in &dead {
        assert!(
            letter.original_subject.ends_with(".future")
                && letter.reason.contains("more than 120s ahead"),
            "{} {}",
            letter.original_subject,
            letter.reason
        );
    }
    stack.stop().await
}
