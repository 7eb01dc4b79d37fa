//! `POST /v1/replay`: history republished in order, at the asked rate, into a real subject.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use sightline_shared::codec;
use sightline_tests::Stack;

use crate::{known_events, now};

/// Polls a replay's progress at `path` until it is no longer running (10 s at most).
async fn replay_finished(stack: &Stack, path: &str) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = stack.get(path).await?;
        if body["state"] != "running" || Instant::now() > deadline {
            return Ok(body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_republishes_in_order_at_the_asked_rate() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let events = known_events("edge-r", "dock", 120);
    stack.insert_direct(&events).await?;
    stack
        .insert_direct(&known_events("edge-r", "other", 30))
        .await?;
    let nats = async_nats::connect(stack.nats.url()).await?;
    let mut received = nats.subscribe("replay.test.>").await?;
    nats.flush().await?;

    let (since, until) = (events[10].captured_at, events[110].captured_at);
    let started = Instant::now();
    let response = stack
        .http
        .post(format!(
            "{}/v1/replay?subject=replay.test.dock&camera=dock&since={}&until={}&rate=200&encoding=json",
            stack.api,
            since.to_rfc3339(),
            until.as_millis()
        ))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("no Location")?
        .to_owned();
    let job_id = location.rsplit('/').next().unwrap_or_default().to_owned();
    let mut got = Vec::new();
    while got.len() < 100 {
        let message = tokio::time::timeout(Duration::from_secs(30), received.next())
            .await?
            .context("subscription ended")?;
        let content_type = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.to_string());
        assert!(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get("Sightline-Replay-Id"))
                .is_some_and(|v| v.as_str() == job_id),
            "every message names its replay"
        );
        got.push(codec::decode(content_type.as_deref(), &message.payload)?);
    }
    let elapsed = started.elapsed();
    assert_eq!(got, events[10..110], "the range, oldest first, intact");
    // 100 events at 200/s cannot arrive in less than half a second.
    assert!(
        elapsed >= Duration::from_millis(450),
        "rate not applied: {elapsed:?}"
    );
    let progress = replay_finished(&stack, &location).await?;
    assert_eq!(progress["state"], "done", "{progress}");
    assert_eq!(
        (progress["total"].as_u64(), progress["published"].as_u64()),
        (Some(100), Some(100))
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), received.next())
            .await
            .is_err(),
        "nothing more"
    );

    // A slow replay can be cancelled.
    let response = stack
        .http
        .post(format!(
            "{}/v1/replay?subject=replay.test.slow&since=0&until={}&rate=5",
            stack.api,
            now().as_millis()
        ))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await?;
    let id = body["id"].as_str().context("id")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled = stack
        .http
        .delete(format!("{}/v1/replay/{id}", stack.api))
        .send()
        .await?;
    assert_eq!(cancelled.status(), 200);
    let progress = replay_finished(&stack, &format!("/v1/replay/{id}")).await?;
    assert_eq!(progress["state"], "cancelled", "{progress}");
    assert!(
        // 5 a second for about half a second: a handful, nowhere near the 150 in range.
        progress["published"].as_u64().is_some_and(|p| p <= 20),
        "{progress}"
    );
    let (_, list) = stack.get("/v1/replay").await?;
    assert_eq!(list["replays"].as_array().map(Vec::len), Some(2), "{list}");

    for path in [
        "/v1/replay?subject=sightline.events.x.y&since=0&until=1",
        "/v1/replay?subject=replay.x&since=0",
        "/v1/replay?subject=replay.x&since=0&until=1&rate=999999",
    ] {
        let response = stack
            .http
            .post(format!("{}{path}", stack.api))
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{path}");
    }
    stack.stop().await
}
