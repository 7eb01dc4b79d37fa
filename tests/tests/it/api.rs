//! The HTTP API against a real ClickHouse: filters, and clear 400s for bad parameters.

use sightline_shared::Encoding;
use sightline_tests::Stack;

use crate::known_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_bad_parameters() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let events = known_events("edge-q", "porch", 20);
    stack.publish(events.clone(), Encoding::Bincode).await?;
    stack
        .publish(known_events("edge-q", "garage", 5), Encoding::Bincode)
        .await?;
    stack.wait_for_events("limit=100", 25).await?;

    // Time range: since inclusive, until exclusive, newest first; limit.
    let (since, until) = (events[5].captured_at, events[12].captured_at);
    let got = stack
        .wait_for_events(
            &format!(
                "camera=porch&since={}&until={}",
                since.to_rfc3339(),
                until.as_millis()
            ),
            7,
        )
        .await?;
    let ids: Vec<_> = got.iter().map(|e| e.event_id).collect();
    let want: Vec<_> = events[5..12].iter().rev().map(|e| e.event_id).collect();
    assert_eq!(ids, want);
    let (status, body) = stack.get("/v1/events?camera=porch&limit=3").await?;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 3);
    assert_eq!(
        body["events"][0]["event_id"],
        events[19].event_id.to_string()
    );
    let (_, body) = stack.get("/v1/events?camera=nobody").await?;
    assert_eq!(body["count"], 0);

    for (path, parameter) in [
        ("/v1/events?limit=abc", "limit"),
        ("/v1/events?limit=100000", "limit"),
        ("/v1/events?since=not-a-time", "since"),
        ("/v1/events?camera=x%27%20OR%201%3D1", "camera"),
        ("/v1/events?color=red", "color"),
        ("/v1/events/not-a-uuid", "id"),
        ("/v1/events/0190b1d2-0000-7000-8000-000000000000?x=1", "x"),
    ] {
        let (status, body) = stack.get(path).await?;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["parameter"], parameter, "{path}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }
    let (status, body) = stack
        .get("/v1/events/0190b1d2-0000-7000-8000-000000000000")
        .await?;
    assert_eq!(status, 404, "{body}");
    let (status, _) = stack.get("/v1/nothing").await?;
    assert_eq!(status, 404);
    let (status, _) = stack.get("/healthz").await?;
    assert_eq!(status, 200);

    // The service is still fine after all that, and counted it.
    let (status, _) = stack.get("/v1/events?limit=1").await?;
    assert_eq!(status, 200);
    let metrics = stack.text("/metrics").await?;
    assert!(
        metrics.contains("route=\"/v1/events\",status=\"400\""),
        "{metrics}"
    );
    stack.stop().await
}
