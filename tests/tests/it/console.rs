//! The web console in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (`console/tests/browser.mjs`), against a real query service over real ClickHouse and NATS
//! with seeded events, pictures, a track and heartbeats. And the same script against an API
//! broken on purpose (a cursor that repeats a page), which it must catch.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use sightline_runtime::objects::publish_upload;
use sightline_shared::snapshot::Owner;
use sightline_shared::track::{BestFrame, EndedBy, PathPoint, TrackRecord};
use sightline_shared::{DetectionEvent, Encoding, EventId, Timestamp};
use sightline_tests::Stack;
use sightline_tests::fixtures::poll_until;

use crate::api::fleet::seed_fleet;
use crate::api::newest_first;
use crate::snapshots::{header_for, picture};
use crate::{known_events, repo};

/// The token of the service with authentication on.
const TOKEN: &str = "console-test-token-0123456789";
/// A token of the same service whose client may export but not read.
const EXPORT_TOKEN: &str = "console-export-token-0123456789";

/// What was seeded, for the script to check the page against.
struct Seeded {
    expect: serde_json::Value,
}

/// 130 events of `fleet-a` (70 at `gate`, 60 at `yard`: three pages of the console's 50),
/// pictures of four of them, the tracks of the newest picture's tracked detections, and the
/// fleet of [`seed_fleet`]: one edge online, one offline.
async fn seed(stack: &Stack) -> anyhow::Result<Seeded> {
    let mut events = known_events("fleet-a", "gate", 70);
    // The yard's events half a second apart from the gate's, so the order is by time alone.
    for mut event in known_events("fleet-a", "yard", 60) {
        event.captured_at = Timestamp::from_millis(event.captured_at.as_millis() - 500);
        event.event_id = EventId::new_v7(event.captured_at);
        events.push(event);
    }
    newest_first(&mut events);
    // The four newest events with three detections (person, car, traffic light) have a
    // snapshot on the edge, which the edge uploads.
    for event in events
        .iter_mut()
        .filter(|e| e.detections.len() == 3)
        .take(4)
    {
        event.snapshot = Some(format!("{}/{}.jpg", event.camera_id, event.event_id));
    }
    stack.publish(events.clone(), Encoding::Bincode).await?;
    stack.wait_for_events("limit=1000", events.len()).await?;

    let with_three: Vec<&DetectionEvent> = events
        .iter()
        .filter(|e| e.detections.len() == 3)
        .take(4)
        .collect();
    let dog = picture("dog.jpg");
    let js = stack.jetstream().await?;
    for event in &with_three {
        let header = header_for(Owner::Event(event.event_id), event.captured_at, &dog);
        publish_upload(&js, &event.edge_id, &event.camera_id, &header, dog.clone()).await?;
    }
    let shown = with_three[0];
    // Its tracked detections' tracks: each seen for 15 s, five points along its path.
    let start = shown.captured_at.as_millis() - 12_000;
    let at = |ms: i64| Timestamp::from_millis(start + ms);
    let tracks: Vec<TrackRecord> = shown
        .detections
        .iter()
        .filter_map(|d| Some((d, d.track_id?)))
        .map(|(detection, track_id)| TrackRecord {
            record_id: EventId::new_v7(at(15_000)),
            schema_version: sightline_shared::track::TRACK_SCHEMA_VERSION,
            edge_id: shown.edge_id.clone(),
            camera_id: shown.camera_id.clone(),
            track_id,
            revision: 3,
            label: detection.label.clone(),
            class_id: detection.class_id,
            started_at: at(0),
            last_seen_at: at(15_000),
            ended_by: Some(EndedBy::Lost),
            frames: 31,
            max_confidence: detection.confidence,
            mean_confidence: detection.confidence - 0.1,
            best: BestFrame {
                captured_at: shown.captured_at,
                bbox: detection.bbox,
                confidence: detection.confidence,
            },
            path: (0..5)
                .map(|k| PathPoint {
                    at: at(k * 3_500),
                    x: detection.bbox.x_min + 0.03 * k as f32,
                    y: 0.9 - 0.05 * k as f32,
                })
                .collect(),
            zones: Vec::new(),
            arrival_event_id: None,
            snapshot: None,
            attributes: BTreeMap::new(),
        })
        .collect();
    anyhow::ensure!(
        tracks.len() == 2,
        "the person and the traffic light are tracked"
    );
    crate::tracks::publish_records(&js, &tracks, Encoding::Bincode).await?;
    seed_fleet(stack).await?;

    // Everything is there before the browser looks.
    for path in with_three
        .iter()
        .map(|e| format!("/v1/events/{}/snapshot", e.event_id))
        .chain(
            tracks
                .iter()
                .map(|t| format!("/v1/tracks/{}:{}", t.edge_id, t.track_id)),
        )
        .chain(["/v1/edges?status=offline".into()])
    {
        let answer = poll_until(
            Duration::from_secs(30),
            || async {
                Ok(stack
                    .http
                    .get(format!("{}{path}", stack.api))
                    .send()
                    .await?)
            },
            |response| response.status() == 200,
        )
        .await?;
        anyhow::ensure!(answer.is_ok(), "{path} never answered 200");
    }
    let (_, offline) = stack.get("/v1/edges?status=offline").await?;
    anyhow::ensure!(offline["count"] == 1, "{offline}");

    let original = image::load_from_memory(&dog)?;
    let mut detections: BTreeMap<&str, u64> = BTreeMap::new();
    for d in events.iter().flat_map(|e| &e.detections) {
        *detections.entry(d.label.as_str()).or_default() += 1;
    }
    let filtered = events
        .iter()
        .filter(|e| e.camera_id == "gate" && e.detections.iter().any(|d| d.label == "car"))
        .count();
    let expect = serde_json::json!({
        "total": events.len(),
        "newest": events[0].event_id.to_string(),
        "order": events.iter().map(|e| e.event_id.to_string()).collect::<Vec<_>>(),
        "picture": {
            "id": shown.event_id.to_string(),
            "camera": shown.camera_id,
            "width": original.width(),
            "height": original.height(),
            "detections": shown.detections,
            "track": {"id": format!("{}:{}", shown.edge_id, tracks[0].track_id), "duration": "15 s", "points": 5, "count": tracks.len()},
        },
        "filter": {"label": "car", "camera": "gate", "count": filtered},
        "times": events.iter().map(|e| e.captured_at.as_millis()).collect::<Vec<_>>(),
        "snapshots": events.iter().filter(|e| e.snapshot.is_some()).count(),
        "in_cloud": with_three.len(),
        "detections": detections,
        "online": "fleet-a",
        "offline": "fleet-b",
        "cameras": ["gate", "yard"],
    });
    Ok(Seeded { expect })
}

/// Runs `console/tests/browser.mjs` against `url` (and `auth_url`, with tokens on) for
/// `scenarios` (all when empty): its exit status and everything it printed.
async fn browser(
    url: &str,
    auth_url: Option<&str>,
    seeded: &Seeded,
    scenarios: &str,
    screenshots: &str,
) -> anyhow::Result<(bool, String)> {
    let mut command = sightline_tests::fixtures::console_script("tests/browser.mjs")?;
    command
        .env("CONSOLE_URL", url)
        .env("CONSOLE_EXPECT", seeded.expect.to_string())
        .env("CONSOLE_SCENARIOS", scenarios)
        .env(
            "SCREENSHOTS",
            repo().join("target/console-screenshots").join(screenshots),
        )
        .env("CONSOLE_TOKEN", TOKEN)
        .env("CONSOLE_EXPORT_TOKEN", EXPORT_TOKEN);
    if let Some(auth_url) = auth_url {
        command.env("CONSOLE_AUTH_URL", auth_url);
    }
    // Every step of the script has its own timeout; this one is for a browser that hangs.
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .context("the browser test ran over 5 minutes")??
    .context("running node (Node.js 20.19 or newer must be installed)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_events_pictures_the_fleet_and_activity_in_a_real_browser()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let seeded = seed(&stack).await?;
    let auth_url = stack
        .start_query(|c| {
            c.auth.clients = vec![
                sightline_query::ClientConfig {
                    name: "console".into(),
                    scopes: vec![sightline_query::Scope::Read, sightline_query::Scope::Export],
                    token: Some(TOKEN.into()),
                    token_file: None,
                },
                sightline_query::ClientConfig {
                    name: "nightly-export".into(),
                    scopes: vec![sightline_query::Scope::Export],
                    token: Some(EXPORT_TOKEN.into()),
                    token_file: None,
                },
            ];
        })
        .await?;
    let (passed, output) = browser(&stack.api, Some(&auth_url), &seeded, "", "").await?;
    println!("{output}");
    assert!(passed, "the browser tests failed:\n{output}");
    for scenario in [
        "events",
        "fleet",
        "activity",
        "phone",
        "keyboard",
        "unreachable",
        "auth",
    ] {
        assert!(
            output.contains(&format!("ok   {scenario} (")),
            "{scenario} did not run:\n{output}"
        );
    }
    assert!(output.contains("all 7 scenario(s) passed"), "{output}");
    assert!(!output.contains("skipped"), "{output}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_tests_catch_an_api_whose_cursor_repeats_a_page() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let seeded = seed(&stack).await?;
    // In front of the real service: every page asked for by cursor is the first page again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let broken = format!("http://{}", listener.local_addr()?);
    let proxy = axum::Router::new()
        .fallback(repeat_the_first_page)
        .with_state((stack.http.clone(), stack.api.clone()));
    let server = tokio::spawn(async move { axum::serve(listener, proxy).await });

    let (passed, output) = browser(&broken, None, &seeded, "events", "broken-api").await?;
    println!("{output}");
    assert!(
        !passed,
        "the browser tests passed against a broken API:\n{output}"
    );
    assert!(
        output.contains("FAIL events") && output.contains("repeated"),
        "the failure names the repeated page:\n{output}"
    );
    // The same scenario passes against the service itself.
    let (passed, output) = browser(&stack.api, None, &seeded, "events", "working-api").await?;
    assert!(passed && output.contains("ok   events ("), "{output}");
    server.abort();
    stack.stop().await
}

/// Forwards a request to the query service, dropping `cursor` from `/v1/events` requests.
async fn repeat_the_first_page(
    State((http, upstream)): State<(reqwest::Client, String)>,
    request: Request,
) -> Response {
    let uri = request.uri();
    let mut target = format!("{upstream}{}", uri.path());
    if let Some(query) = uri.query() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !(uri.path() == "/v1/events" && pair.starts_with("cursor=")))
            .collect();
        target = format!("{target}?{}", kept.join("&"));
    }
    let mut forwarded = http.request(request.method().clone(), target);
    if let Some(auth) = request.headers().get("authorization") {
        forwarded = forwarded.header("authorization", auth);
    }
    let answer = match forwarded.send().await {
        Ok(answer) => answer,
        Err(e) => {
            return Response::builder()
                .status(502)
                .body(Body::from(e.to_string()))
                .expect("a response");
        }
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != "transfer-encoding" && name != "content-length" {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(body)).expect("a response")
}
