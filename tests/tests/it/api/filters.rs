//! Filters: every filter of the event list against a reference computed in the test, and
//! clear 400s for bad parameters.

use anyhow::Context as _;
use sightline_shared::{DetectionEvent, Encoding};
use sightline_tests::Stack;

use super::{dataset, has, ids, newest_first};
use crate::known_events;

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
        // Schema v2: where the objects stood, with label and confidence on one detection.
        (
            "zone=driveway".into(),
            Box::new(|e| in_zone(e, &["driveway"], &[], 0.0)),
        ),
        (
            "zone=porch-step,street".into(),
            Box::new(|e| in_zone(e, &["porch-step", "street"], &[], 0.0)),
        ),
        (
            "label=person&zone=porch-step&min_confidence=0.5".into(),
            Box::new(|e| in_zone(e, &["porch-step"], &["person"], 0.5)),
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
    // A person never stands in the street here: zone and label are one detection's.
    let (_, body) = stack.get("/v1/events?label=person&zone=street").await?;
    assert_eq!(body["count"], 0, "{body}");
    // The mixed event proves "together": its car is 0.3 and its dog is 0.9.
    let (_, body) = stack.get("/v1/events?label=car&min_confidence=0.8").await?;
    let found: Vec<DetectionEvent> = serde_json::from_value(body["events"].clone())?;
    assert!(!found.is_empty(), "{body}");
    assert!(found.iter().all(|e| e.event_id != mixed), "{body}");
    let (_, body) = stack.get("/v1/events?label=dog&min_confidence=0.8").await?;
    let found: Vec<DetectionEvent> = serde_json::from_value(body["events"].clone())?;
    assert!(found.iter().any(|e| e.event_id == mixed), "{body}");

    // Every key of a real event is in the running service's OpenAPI schema, and every
    // required one is there.
    let (_, doc) = stack.get("/openapi.json").await?;
    super::conforms(&doc, "Event", &body["events"][0])?;
    stack.stop().await
}

/// Whether a detection of `e` stands in one of `zones`, has one of `labels` (any if empty)
/// and is at least `min` confident.
fn in_zone(e: &DetectionEvent, zones: &[&str], labels: &[&str], min: f32) -> bool {
    e.detections.iter().any(|d| {
        d.zones.iter().any(|z| zones.contains(&z.as_str()))
            && (labels.is_empty() || labels.contains(&d.label.as_str()))
            && d.confidence >= min
    })
}

/// Events of schema version 1 (an agent from before zones, or one that buffered them while
/// offline) are stored and served as they were: version 1, no zones, never matching a zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_events_are_kept_as_version_1_beside_version_2() -> anyhow::Result<()> {
    use sightline_shared::codec::CONTENT_TYPE_HEADER;
    use sightline_shared::event::v1;
    let stack = Stack::start().await?;
    let current = known_events("edge-v", "porch", 8);
    let old: Vec<DetectionEvent> = known_events("edge-v", "porch", 8)
        .into_iter()
        .map(|mut e| {
            e.schema_version = 1;
            e.captured_at =
                sightline_shared::Timestamp::from_millis(e.captured_at.as_millis() - 500);
            e.event_id = sightline_shared::EventId::new_v7(e.captured_at);
            for d in &mut e.detections {
                d.zones.clear();
            }
            e
        })
        .collect();
    stack.publish(current.clone(), Encoding::Bincode).await?;
    let js = stack.jetstream().await?;
    for (i, e) in old.iter().enumerate() {
        let encoding = if i % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::Bincode
        };
        let wire = v1::DetectionEvent::from_current(e).context("no zones")?;
        let payload = match encoding {
            Encoding::Json => serde_json::to_vec(&wire)?,
            Encoding::Bincode => sightline_shared::codec::encode(e, Encoding::Bincode)?,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            CONTENT_TYPE_HEADER,
            format!("application/vnd.sightline.event.v1+{encoding}").as_str(),
        );
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        js.send_publish("sightline.events.edge-v.porch", message)
            .await?
            .await?;
    }
    stack.wait_for_events("edge=edge-v&limit=100", 16).await?;
    for e in &old {
        let mut body = stack.get_event(e.event_id).await?;
        if let Some(event) = body.as_object_mut() {
            event.remove("tracks");
        }
        assert_eq!(&serde_json::from_value::<DetectionEvent>(body)?, e);
    }
    // Only version 2 events name zones.
    let (_, body) = stack
        .get("/v1/events?edge=edge-v&zone=porch-step,driveway&limit=100")
        .await?;
    let found: Vec<DetectionEvent> = serde_json::from_value(body["events"].clone())?;
    let want = current
        .iter()
        .filter(|e| in_zone(e, &["porch-step", "driveway"], &[], 0.0))
        .count();
    assert_eq!(found.len(), want, "{body}");
    assert!(found.iter().all(|e| e.schema_version == 2), "{body}");
    stack.stop().await
}

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
