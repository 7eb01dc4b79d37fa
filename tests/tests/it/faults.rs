//! Fault tests: servers really killed, then started again.

use std::time::Duration;

use sightline_shared::Encoding;
use sightline_tests::Stack;

use crate::known_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_and_ingest_crash_lose_nothing() -> anyhow::Result<()> {
    // A short ack wait so the crashed consumer's messages come back quickly.
    let mut stack = Stack::start_with(|c| c.consumer.ack_wait_secs = 2).await?;
    let before = known_events("edge-f", "cam", 10);
    stack.publish(before.clone(), Encoding::Bincode).await?;
    stack.wait_for_events("camera=cam", 10).await?;

    stack.clickhouse.kill();
    // The API says so clearly instead of hanging or lying.
    let (status, body) = stack.get("/v1/events?limit=5").await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, _) = stack.get("/readyz").await?;
    assert_eq!(status, 503);

    // Events published while ClickHouse is down wait in JetStream, unacknowledged. The
    // ingest service holding them in a batch crashes; its successor must get them again.
    let during = known_events("edge-f", "cam2", 30);
    let report = stack.publish(during.clone(), Encoding::Bincode).await?;
    assert_eq!(report.published, 30);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.crash_ingest().await;
    stack.start_ingest().await?;

    stack.clickhouse.start_again()?;
    let got = stack.wait_for_events("camera=cam2&limit=100", 30).await?;
    assert_eq!(got.len(), 30);
    let all = stack.wait_for_events("limit=100", 40).await?;
    assert_eq!(all.len(), 40);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_then_back_the_publisher_retries_until_acked() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let js = stack.jetstream().await?;
    stack.nats.kill();
    let events = known_events("edge-n", "cam", 25);
    let publishing = {
        let js = js.clone();
        let events = events.clone();
        tokio::spawn(async move {
            let (tx, mut outbox) = sightline_edge_agent::outbox::ChannelOutbox::new(100);
            for e in events {
                tx.send(e).await.expect("outbox open");
            }
            drop(tx);
            let publisher = sightline_edge_agent::publisher::Publisher::new(
                js,
                Encoding::Bincode,
                8,
                sightline_edge_agent::metrics::Metrics::default(),
            );
            publisher
                .run(&mut outbox, &tokio_util::sync::CancellationToken::new())
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !publishing.is_finished(),
        "nothing can be acknowledged while NATS is down"
    );
    stack.nats.start_again()?;
    let report = tokio::time::timeout(Duration::from_secs(60), publishing).await??;
    assert_eq!((report.published, report.unpublished), (25, 0));
    let got = stack.wait_for_events("camera=cam&limit=100", 25).await?;
    assert_eq!(got.len(), 25);
    stack.stop().await
}
