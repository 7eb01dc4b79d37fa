//! The query API against real ClickHouse (read as the read-only user) and real NATS: every
//! filter against a reference, pagination under concurrent inserts, cameras and stats (rollup
//! against raw), streamed export at flat memory, replay into a real subject, auth, the
//! OpenAPI document, and hostile parameters that must never cause a 5xx.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use rand::Rng as _;
use sightline_query::openapi::{ENDPOINTS, document};
use sightline_query::params::Kind;
use sightline_shared::{Detection, DetectionEvent, Encoding, EventId, Timestamp, codec};
use sightline_tests::Stack;
use sightline_tests::stack::metric;

use crate::{known_events, now};

/// Events of three cameras on two edges, plus one whose car is unsure and whose dog is sure.
fn dataset() -> Vec<DetectionEvent> {
    let mut events = known_events("edge-a", "porch", 60);
    events.extend(known_events("edge-a", "garage", 40));
    events.extend(known_events("edge-b", "yard", 50));
    let mut mixed = known_events("edge-b", "yard", 1).remove(0);
    mixed.captured_at = Timestamp::from_millis(mixed.captured_at.as_millis() - 500);
    mixed.event_id = EventId::new_v7(mixed.captured_at);
    mixed.detections = vec![
        Detection {
            label: "car".into(),
            confidence: 0.3,
            ..known_events("x", "x", 4)[3].detections[1].clone()
        },
        Detection {
            label: "dog".into(),
            confidence: 0.9,
            ..known_events("x", "x", 4)[3].detections[2].clone()
        },
    ];
    events.push(mixed);
    events
}

/// The API's order key: capture time, then event id as ClickHouse orders UUIDs (by their
/// second half first).
fn order_key(e: &DetectionEvent) -> (Timestamp, u64, u64) {
    let (high, low) = e.event_id.as_uuid().as_u64_pair();
    (e.captured_at, low, high)
}

/// Newest first: the order key, descending.
fn newest_first(events: &mut [DetectionEvent]) {
    events.sort_by_key(|e| std::cmp::Reverse(order_key(e)));
}

fn ids(events: &[DetectionEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.event_id).collect()
}

fn has(e: &DetectionEvent, labels: &[&str], min: f32, max: f32) -> bool {
    e.detections.iter().any(|d| {
        (labels.is_empty() || labels.contains(&d.label.as_str()))
            && d.confidence >= min
            && d.confidence <= max
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_matches_a_reference() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut all = dataset();
    let mixed = all.last().context("dataset")?.event_id;
    stack.publish(all.clone(), Encoding::Json).await?;
    stack.wait_for_events("limit=1000", all.len()).await?;
    newest_first(&mut all);
    let porch = all
        .iter()
        .filter(|e| e.camera_id == "porch")
        .cloned()
        .collect::<Vec<_>>();
    let (since, until) = (porch[40].captured_at, porch[10].captured_at);

    type Check = Box<dyn Fn(&DetectionEvent) -> bool>;
    let cases: Vec<(String, Check)> = vec![
        (String::new(), Box::new(|_| true)),
        ("camera=porch".into(), Box::new(|e| e.camera_id == "porch")),
        (
            "camera=porch,yard".into(),
            Box::new(|e| e.camera_id != "garage"),
        ),
        (
            "camera=porch&camera=yard".into(),
            Box::new(|e| e.camera_id != "garage"),
        ),
        ("edge=edge-b".into(), Box::new(|e| e.edge_id == "edge-b")),
        ("label=dog".into(), Box::new(|e| has(e, &["dog"], 0.0, 1.0))),
        (
            "label=car,dog".into(),
            Box::new(|e| has(e, &["car", "dog"], 0.0, 1.0)),
        ),
        (
            "label=traffic%20light".into(),
            Box::new(|e| has(e, &["traffic light"], 0.0, 1.0)),
        ),
        // 0.7 is stored as the Float32 nearest 0.7: the bound must include it.
        (
            "min_confidence=0.7".into(),
            Box::new(|e| has(e, &[], 0.7, 1.0)),
        ),
        (
            "max_confidence=0.3".into(),
            Box::new(|e| has(e, &[], 0.0, 0.3)),
        ),
        // One detection must satisfy label and confidence together.
        (
            "label=car&min_confidence=0.8".into(),
            Box::new(|e| has(e, &["car"], 0.8, 1.0)),
        ),
        (
            "has_snapshot=true".into(),
            Box::new(|e| e.snapshot.is_some()),
        ),
        (
            "has_snapshot=false".into(),
            Box::new(|e| e.snapshot.is_none()),
        ),
        (
            format!("since={}&until={}", since.to_rfc3339(), until.as_millis()),
            Box::new(move |e| e.captured_at >= since && e.captured_at < until),
        ),
        (
            "camera=porch,garage&label=person&has_snapshot=false&max_confidence=0.5".into(),
            Box::new(|e| {
                e.camera_id != "yard" && e.snapshot.is_none() && has(e, &["person"], 0.0, 0.5)
            }),
        ),
    ];
    for (query, check) in &cases {
        let want: Vec<_> = all.iter().filter(|e| check(e)).cloned().collect();
        assert!(!want.is_empty(), "{query}: empty reference");
        for sort in ["newest", "oldest"] {
            let (status, body) = stack
                .get(&format!("/v1/events?{query}&sort={sort}&limit=1000"))
                .await?;
            assert_eq!(status, 200, "{query}: {body}");
            let got: Vec<DetectionEvent> = serde_json::from_value(body["events"].clone())?;
            let mut want = ids(&want);
            if sort == "oldest" {
                want.reverse();
            }
            assert_eq!(ids(&got), want, "{query}&sort={sort}");
            assert_eq!(body["next_cursor"], serde_json::Value::Null, "{query}");
        }
    }
    // The mixed event proves "together": its car is 0.3 and its dog is 0.9.
    let (_, body) = stack.get("/v1/events?label=car&min_confidence=0.8").await?;
    let found: Vec<DetectionEvent> = serde_json::from_value(body["events"].clone())?;
    assert!(!found.is_empty(), "{body}");
    assert!(found.iter().all(|e| e.event_id != mixed), "{body}");
    let (_, body) = stack.get("/v1/events?label=dog&min_confidence=0.8").await?;
    let found: Vec<DetectionEvent> = serde_json::from_value(body["events"].clone())?;
    assert!(found.iter().any(|e| e.event_id == mixed), "{body}");

    // Every key of a real event is in the OpenAPI schema, and every required one is there.
    let doc = document();
    let schema = &doc["components"]["schemas"]["Event"];
    let event = &body["events"][0];
    let keys: HashSet<&str> = event
        .as_object()
        .context("event")?
        .keys()
        .map(String::as_str)
        .collect();
    let props: HashSet<&str> = schema["properties"]
        .as_object()
        .context("props")?
        .keys()
        .map(String::as_str)
        .collect();
    assert!(keys.is_subset(&props), "{keys:?} vs {props:?}");
    for required in schema["required"].as_array().context("required")? {
        assert!(
            keys.contains(required.as_str().unwrap_or_default()),
            "{required}"
        );
    }
    stack.stop().await
}

/// `n` events of `camera`, four per millisecond (ties broken by id), one second apart,
/// ending `end_ago_ms` before now.
fn tied_events(camera: &str, n: usize, end_ago_ms: i64) -> Vec<DetectionEvent> {
    let template = known_events("edge-p", camera, 4);
    let start = now().as_millis() - end_ago_ms - (n as i64 / 4) * 1000;
    (0..n)
        .map(|i| {
            let mut e = template[i % 4].clone();
            e.captured_at = Timestamp::from_millis(start + (i as i64 / 4) * 1000);
            e.event_id = EventId::new_v7(e.captured_at);
            e
        })
        .collect()
}

async fn page_through(
    stack: &Stack,
    query: &str,
    during: impl AsyncFn(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<DetectionEvent>> {
    let mut out: Vec<DetectionEvent> = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let path = match &cursor {
            Some(c) => format!("/v1/events?{query}&cursor={c}"),
            None => format!("/v1/events?{query}"),
        };
        let (status, body) = stack.get(&path).await?;
        assert_eq!(status, 200, "{body}");
        out.extend(serde_json::from_value::<Vec<DetectionEvent>>(
            body["events"].clone(),
        )?);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        during(page).await?;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_has_no_gaps_or_repeats_while_inserts_continue() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut original = tied_events("pager", 1000, 600_000);
    stack.insert_direct(&original).await?;
    newest_first(&mut original);

    // While paging: newer events arrive, and copies of stored ones (a redelivery) land too.
    let during = async |page: usize| {
        let newer = tied_events("pager", 8, -5_000 - page as i64 * 10_000);
        stack.insert_direct(&newer).await?;
        let copies: Vec<_> = original.iter().skip(page * 29).take(5).cloned().collect();
        stack.insert_direct(&copies).await
    };
    let newest = page_through(&stack, "camera=pager&limit=37", during).await?;
    assert_eq!(
        ids(&newest),
        ids(&original),
        "newest first: every original once, in order"
    );

    // Label filters page through the per-object table's keys: same guarantees.
    let cars = page_through(&stack, "camera=pager&label=car&limit=13", async |_| Ok(())).await?;
    let everything = stack.text("/v1/events/export?camera=pager").await?;
    let want: Vec<DetectionEvent> = ndjson(&everything)?
        .into_iter()
        .filter(|e| has(e, &["car"], 0.0, 1.0))
        .collect();
    assert!(want.len() > 500, "{}", want.len());
    assert_eq!(ids(&cars), ids(&want), "label pages");

    let oldest = page_through(&stack, "camera=pager&limit=41&sort=oldest", during).await?;
    let mut seen = HashSet::new();
    assert!(oldest.iter().all(|e| seen.insert(e.event_id)), "a repeat");
    let mut want = ids(&original);
    want.reverse();
    assert_eq!(
        ids(&oldest)[..1000],
        want[..],
        "oldest first: originals first, in order"
    );
    assert!(oldest.len() > 1000, "newer events show up at the end");
    assert!(
        oldest
            .windows(2)
            .all(|w| order_key(&w[0]) < order_key(&w[1])),
        "oldest first is strictly ascending"
    );
    stack.stop().await
}

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

/// Events of an NDJSON export.
fn ndjson(text: &str) -> anyhow::Result<Vec<DetectionEvent>> {
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// The peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    Ok(kb * 1024)
}

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
    let config = dir.path().join("query.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"{}\"\nuser = \"{}\"\n[replay]\nenabled = false\n",
            stack.clickhouse.url(),
            sightline_tests::stack::READER
        ),
    )?;
    let port = sightline_tests::fixtures::free_port();
    let mut child =
        std::process::Command::new(sightline_tests::fixtures::workspace_binary("query-service"))
            .args([
                "--config",
                config.to_str().context("utf-8")?,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("SIGHTLINE_LOG", "warn")
            .spawn()?;
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    sightline_tests::stack::wait_ready(&http, &api).await?;

    let (lines, _) = drain_export(
        &http,
        &format!("{api}/v1/events/export?camera=bulk&limit=1000"),
    )
    .await?;
    assert_eq!(lines, 1000);
    let before = peak_rss(child.id())?;
    let (lines, bytes) =
        drain_export(&http, &format!("{api}/v1/events/export?camera=bulk")).await?;
    let after = peak_rss(child.id())?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_the_api_but_not_probes() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    const TOKEN: &str = "s3cret-token-0123456789";
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# team\n{TOKEN}\n"))?;
    let guarded = stack
        .start_query(|c| {
            c.auth.token_file = Some(file.display().to_string());
        })
        .await?;
    let no_replay = stack.start_query(|c| c.replay.enabled = false).await?;
    let http = &stack.http;
    for path in [
        "/v1/events",
        "/v1/cameras",
        "/v1/stats",
        "/v1/events/export",
        "/v1/replay",
    ] {
        let response = http.get(format!("{guarded}{path}")).send().await?;
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let wrong = http
            .get(format!("{guarded}{path}"))
            .bearer_auth("s3cret-token-0123456788")
            .send()
            .await?;
        assert_eq!(wrong.status(), 401, "{path}");
        let right = http
            .get(format!("{guarded}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await?;
        assert_eq!(right.status(), 200, "{path}");
        // Auth off: the same route answers without a token.
        assert_eq!(
            http.get(format!("{}{path}", stack.api))
                .send()
                .await?
                .status(),
            200,
            "{path}"
        );
    }
    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(
            http.get(format!("{guarded}{open}")).send().await?.status(),
            200,
            "{open}"
        );
    }
    // Replay switched off: 403, with the JSON error body like every error; so is a 405.
    let response = http
        .post(format!(
            "{no_replay}/v1/replay?subject=replay.x&since=0&until=1"
        ))
        .send()
        .await?;
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let response = http
        .delete(format!("{}/v1/events", stack.api))
        .send()
        .await?;
    assert_eq!(response.status(), 405);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");

    // The query service's ClickHouse user really is read-only.
    let denied = stack
        .clickhouse
        .query_as(
            sightline_tests::stack::READER,
            "sightline",
            "INSERT INTO events (event_id) VALUES (generateUUIDv4())",
        )
        .await;
    let error = denied.expect_err("the reader inserted a row");
    assert!(error.to_string().contains("readonly"), "{error:#}");
    stack.stop().await
}

/// Values nobody should send.
const HOSTILE: &[&str] = &[
    "",
    "0",
    "-1",
    "1e400",
    "NaN",
    "inf",
    "-0",
    "99999999999999999999999999",
    "18446744073709551616",
    "4294967296000",
    "' OR 1=1 --",
    "x'); DROP TABLE events; --",
    "%00",
    "\u{0}",
    "../../etc/passwd",
    "😀😀😀",
    "ü",
    "a,b,,c",
    ",",
    "true",
    "oldest",
    "csv",
    "1d",
    "camera,label",
    "replay.",
    "replay.x",
    "replay.x.>",
    "replay.*",
    "2026-13-45T99:99:99Z",
    "2026-11-22T00:00:00Z",
    "1795000000000",
    "Europe/Berlin",
    "Nowhere/Atlantis",
    "UTC",
    "0190b1d2-0000-7000-8000-000000000000",
];

fn random_value(rng: &mut impl rand::Rng) -> String {
    match rng.random_range(0..4) {
        0 => HOSTILE[rng.random_range(0..HOSTILE.len())].to_owned(),
        1 => (0..rng.random_range(0..300))
            .map(|_| rng.random::<char>())
            .collect(),
        2 => rng.random::<i128>().to_string(),
        _ => "x".repeat(rng.random_range(0..20_000)),
    }
}

/// Percent-encodes every byte but the unreserved ones.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_parameters_never_cause_a_server_error() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack
        .insert_direct(&known_events("edge-f", "fuzz", 50))
        .await?;
    let mut rng = rand::rng();
    let mut requests = 0;
    let send = async |method: &str, path: String| -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", stack.api);
        let request = if method == "post" {
            stack.http.post(url)
        } else if method == "delete" {
            stack.http.delete(url)
        } else {
            stack.http.get(url)
        };
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Ok((status, text))
    };
    for e in ENDPOINTS {
        let path = e
            .path
            .replace("{id}", "0190b1d2-0000-7000-8000-000000000000");
        // The route exists with its method: no "no such route", no 405.
        let (status, body) = send(e.method, path.clone()).await?;
        assert!(
            status != 405 && !body.contains("no such route"),
            "{} {}: {status} {body}",
            e.method,
            e.path
        );
        let params: Vec<_> = e.query.iter().flat_map(|g| g.iter()).collect();
        for p in &params {
            for value in HOSTILE {
                let (status, body) =
                    send(e.method, format!("{path}?{}={}", p.name, encode(value))).await?;
                requests += 1;
                assert!(
                    status < 500,
                    "{} {path}?{}={value:?}: {status} {body}",
                    e.method,
                    p.name
                );
                if status == 400 && !body.contains("\"parameter\"") {
                    panic!(
                        "{} {path}?{}={value:?}: 400 without a parameter: {body}",
                        e.method, p.name
                    );
                }
            }
        }
        // Random combinations of the endpoint's own parameters.
        for _ in 0..40 {
            let query: Vec<String> = (0..rng.random_range(1..5))
                .filter(|_| !params.is_empty())
                .map(|_| {
                    let p = params[rng.random_range(0..params.len())];
                    let value = if rng.random_bool(0.5) && matches!(p.kind, Kind::Choice(_)) {
                        match p.kind {
                            Kind::Choice(c) => c[rng.random_range(0..c.len())].to_owned(),
                            _ => String::new(),
                        }
                    } else {
                        random_value(&mut rng)
                    };
                    format!("{}={}", p.name, encode(&value))
                })
                .collect();
            let (status, body) = send(e.method, format!("{path}?{}", query.join("&"))).await?;
            requests += 1;
            assert!(
                status < 500,
                "{} {path}?{}: {status} {body}",
                e.method,
                query.join("&")
            );
        }
        // Hostile path ids.
        if e.path.contains("{id}") {
            for value in HOSTILE.iter().filter(|v| !v.is_empty()) {
                let (status, body) = send(e.method, e.path.replace("{id}", &encode(value))).await?;
                requests += 1;
                assert!(status < 500, "{} {}: {status} {body}", e.method, e.path);
            }
        }
    }
    println!("{requests} hostile requests, no 5xx");
    // Still healthy afterwards.
    let (status, body) = stack.get("/v1/events?camera=fuzz&limit=100").await?;
    assert_eq!((status, body["count"].as_u64()), (200, Some(50)));
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_examples_in_the_docs_run_as_the_reader() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack
        .insert_direct(&known_events("edge-s", "lobby", 200))
        .await?;
    // A heartbeat from that edge, the way the agent sends it (through ingest).
    let heartbeat = sightline_shared::heartbeat::Heartbeat {
        edge_id: "edge-s".into(),
        sent_at: sightline_shared::Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        agent_version: "0.1.0".into(),
        uptime_secs: 5,
        cameras: 1,
        fps: 0.0,
        events_created: 200,
        events_sent: 200,
        events_dropped: 0,
        backlog: 0,
        oldest_unsent_at: None,
        storage_used_bytes: 1_000_000,
        storage_limit_bytes: 4_000_000_000,
        cpu_percent: 0.5,
        rss_bytes: 30_000_000,
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        sightline_shared::codec::CONTENT_TYPE_HEADER,
        sightline_shared::heartbeat::CONTENT_TYPE,
    );
    stack
        .jetstream()
        .await?
        .publish_with_headers(
            "sightline.heartbeats.edge-s",
            headers,
            heartbeat.encode().into(),
        )
        .await?
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stack
        .clickhouse
        .query("SELECT count() FROM sightline.edge_heartbeats")
        .await?
        == "0"
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the heartbeat was not stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/sql.md"))?;
    let examples: Vec<&str> = guide
        .split("```sql\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .collect();
    assert!(
        examples.len() >= 4,
        "docs/sql.md has {} SQL examples",
        examples.len()
    );
    let (_, body) = stack.get("/v1/events?camera=lobby&limit=1").await?;
    let stored = body["events"][0]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await; // views
    for sql in examples {
        let sql = sql.replace("{event_id}", &stored);
        let text = stack
            .clickhouse
            .query_as(sightline_tests::stack::READER, "sightline", &sql)
            .await
            .with_context(|| sql.clone())?;
        assert!(!text.is_empty(), "{sql}\n-> no rows");
    }
    stack.stop().await
}
