//! `GET /v1/cameras` and `GET /v1/stats`: the hourly rollup and the raw table agree.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sightline_shared::{EventId, Timestamp};
use sightline_tests::Stack;

use crate::{known_events, now};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cameras_and_stats_from_rollup_and_raw_agree() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // Two days of events on whole hours, 10 minutes apart, yesterday and the day before.
    let day_ms = 86_400_000;
    let midnight = now().as_millis() / day_ms * day_ms - day_ms;
    let mut events = Vec::new();
    for (i, at) in (midnight - day_ms..midnight + day_ms)
        .step_by(600_000)
        .enumerate()
    {
        for (camera, edge) in [("north", "edge-n"), ("south", "edge-s")] {
            let mut e = known_events(edge, camera, 4)[i % 4].clone();
            e.captured_at = Timestamp::from_millis(at + i as i64 % 1000);
            e.event_id = EventId::new_v7(e.captured_at);
            events.push(e);
        }
    }
    stack.insert_direct(&events).await?;
    let detections: usize = events.iter().map(|e| e.detections.len()).sum();

    let (status, body) = stack.get("/v1/cameras").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 2, "{body}");
    let north = &body["cameras"][0];
    assert_eq!(north["camera_id"], "north");
    assert_eq!(north["edges"], serde_json::json!(["edge-n"]));
    assert_eq!(north["events"], events.len() / 2);
    assert_eq!(north["first_seen"], events[0].captured_at.to_rfc3339());
    assert_eq!(
        north["last_seen"],
        events[events.len() - 2].captured_at.to_rfc3339()
    );
    let (_, body) = stack
        .get(&format!("/v1/cameras?since={}", midnight))
        .await?;
    assert_eq!(body["cameras"][1]["events"], events.len() / 4, "{body}");

    let range = format!("since={}&until={}", midnight - day_ms, midnight + day_ms);
    let sum = |body: &serde_json::Value| -> u64 {
        body["buckets"].as_array().map_or(0, |b| {
            b.iter().filter_map(|b| b["detections"].as_u64()).sum()
        })
    };
    // The views fill the rollup and the per-object table just after the insert.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rollup = loop {
        let (status, body) = stack
            .get(&format!("/v1/stats?{range}&group_by=camera,label"))
            .await?;
        assert_eq!(status, 200, "{body}");
        if sum(&body) == detections as u64 || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rollup["source"], "rollup", "{rollup}");
    assert_eq!(sum(&rollup), detections as u64);
    // min_confidence=0 keeps every detection but needs the per-object table.
    let (_, raw) = stack
        .get(&format!(
            "/v1/stats?{range}&group_by=camera,label&min_confidence=0"
        ))
        .await?;
    assert_eq!(raw["source"], "raw", "{raw}");
    assert_eq!(raw["buckets"], rollup["buckets"]);

    // The reference: per hour, camera and label.
    let mut want: BTreeMap<(i64, String, String), (u64, f32)> = BTreeMap::new();
    for e in &events {
        for d in &e.detections {
            let hour = e.captured_at.as_millis() / 3_600_000 * 3_600_000;
            let slot = want
                .entry((hour, e.camera_id.clone(), d.label.clone()))
                .or_default();
            slot.0 += 1;
            slot.1 = slot.1.max(d.confidence);
        }
    }
    let got: BTreeMap<(i64, String, String), (u64, f32)> = rollup["buckets"]
        .as_array()
        .context("buckets")?
        .iter()
        .map(|b| {
            let start = Timestamp::parse_rfc3339(b["start"].as_str().unwrap_or_default())
                .map_or(0, Timestamp::as_millis);
            let key = (
                start,
                b["camera_id"].as_str().unwrap_or_default().to_owned(),
                b["label"].as_str().unwrap_or_default().to_owned(),
            );
            (
                key,
                (
                    b["detections"].as_u64().unwrap_or(0),
                    b["max_confidence"].as_f64().unwrap_or(0.0) as f32,
                ),
            )
        })
        .collect();
    assert_eq!(got, want);

    // Day buckets: UTC days, Berlin days (from the rollup), Kolkata days (+05:30: raw).
    for (tz, source, first_start) in [
        ("UTC", "rollup", midnight - day_ms),
        ("Europe/Berlin", "rollup", midnight - day_ms - 3_600_000),
        ("Asia/Kolkata", "raw", midnight - day_ms - 19_800_000),
    ] {
        let (status, body) = stack
            .get(&format!(
                "/v1/stats?{range}&interval=1d&group_by=none&tz={tz}"
            ))
            .await?;
        assert_eq!(status, 200, "{tz}: {body}");
        assert_eq!(body["source"], source, "{tz}: {body}");
        assert_eq!(sum(&body), detections as u64, "{tz}: {body}");
        let first =
            Timestamp::parse_rfc3339(body["buckets"][0]["start"].as_str().unwrap_or_default())?;
        // Berlin is +01:00 in winter and +02:00 in summer; either way the bucket starts at a local midnight.
        assert!(
            (first.as_millis() - first_start).abs() <= 3_600_000,
            "{tz}: first bucket {first:?}"
        );
    }
    let (_, fine) = stack
        .get(&format!(
            "/v1/stats?since={}&until={}&interval=5m&group_by=label&label=car",
            midnight,
            midnight + 3_600_000
        ))
        .await?;
    assert_eq!(fine["source"], "raw", "{fine}");
    assert!(
        fine["buckets"]
            .as_array()
            .is_some_and(|b| !b.is_empty() && b.iter().all(|b| b["label"] == "car")),
        "{fine}"
    );
    let (status, body) = stack.get("/v1/stats?tz=Nowhere/Atlantis").await?;
    assert_eq!(
        (status, body["error"]["parameter"].as_str()),
        (400, Some("tz")),
        "{body}"
    );
    stack.stop().await
}
