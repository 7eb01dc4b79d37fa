//! `/v1/tracks`, `/v1/tracks/{id}`, an event naming its tracks, and `/v1/stats` counting
//! objects and their dwell time, over a week of synthetic tracks published through NATS and
//! ingest like an edge's: every answer is checked against a reference computed here, in
//! Rust, from the same records.

use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sightline_shared::track::{BestFrame, EndedBy, PathPoint, TrackRecord, ZoneVisit};
use sightline_shared::{BoundingBox, Encoding, EventId, Timestamp};
use sightline_tests::Stack;

const HOUR: i64 = 3_600_000;
const EDGES: [&str; 2] = ["edge-s1", "edge-s2"];
const CAMERAS: [&str; 2] = ["gate", "drive"];
const LABELS: [&str; 3] = ["person", "car", "dog"];
const ZONES: [&str; 2] = ["gate", "driveway"];

/// Every record of one synthetic track, oldest revision first.
struct Track {
    records: Vec<TrackRecord>,
}

impl Track {
    fn latest(&self) -> &TrackRecord {
        self.records.last().expect("a track has records")
    }
}

/// A week of tracks before `end` (an hour boundary): each has one to three revisions, the
/// last of which ended unless the track still lasts; zone stays grow with the revisions.
fn week_of_tracks(end: i64, rng: &mut StdRng) -> Vec<Track> {
    let mut tracks = Vec::new();
    for n in 0..160u64 {
        let edge = EDGES[rng.random_range(0..EDGES.len())];
        let camera = CAMERAS[rng.random_range(0..CAMERAS.len())];
        let label = LABELS[rng.random_range(0..LABELS.len())];
        // Several tracks share an hour, some share a start (the edge and id then order them).
        let start = end - 7 * 24 * HOUR + rng.random_range(0..7 * 24 * 4) * HOUR / 4;
        let length = rng.random_range(1..600) * 1_000 + rng.random_range(0..1_000);
        let revisions = rng.random_range(1..=3u32);
        let lasting = rng.random_bool(0.15);
        // The zone stays of the whole track; each revision knows those begun by its time.
        let mut stays: Vec<(String, i64, i64)> = Vec::new();
        let mut at = rng.random_range(0..length / 2 + 1);
        while at < length && stays.len() < 4 && rng.random_bool(0.7) {
            let zone = ZONES[rng.random_range(0..ZONES.len())];
            let out = (at + rng.random_range(1..=length - at)).min(length);
            stays.push((zone.to_owned(), at, out));
            at = out + rng.random_range(0..30_000);
        }
        let mut records = Vec::new();
        for revision in 0..revisions {
            let last = if revision + 1 == revisions {
                length
            } else {
                length * i64::from(revision + 1) / i64::from(revisions)
            };
            let ended = (revision + 1 == revisions && !lasting).then(|| {
                if rng.random_bool(0.2) {
                    EndedBy::Shutdown
                } else {
                    EndedBy::Lost
                }
            });
            let ms = |offset: i64| Timestamp::from_millis(start + offset);
            let max_confidence = 0.5 + 0.4 * (f32::from(revision as u8 + 1) / 3.0);
            records.push(TrackRecord {
                record_id: EventId::new_v7(ms(last)),
                schema_version: 1,
                edge_id: edge.into(),
                camera_id: camera.into(),
                track_id: 1_000 + n,
                revision,
                label: label.into(),
                class_id: LABELS.iter().position(|l| *l == label).unwrap_or(0) as u32,
                started_at: ms(0),
                last_seen_at: ms(last),
                ended_by: ended,
                frames: 1 + last as u64 / 200,
                max_confidence,
                mean_confidence: max_confidence - 0.1,
                best: BestFrame {
                    captured_at: ms(last / 2),
                    bbox: BoundingBox {
                        x_min: 0.1,
                        y_min: 0.2,
                        x_max: 0.4,
                        y_max: 0.8,
                    },
                    confidence: max_confidence,
                },
                path: vec![
                    PathPoint {
                        at: ms(0),
                        x: 0.25,
                        y: 0.8,
                    },
                    PathPoint {
                        at: ms(last),
                        x: 0.5,
                        y: 0.9,
                    },
                ],
                zones: stays
                    .iter()
                    .filter(|(_, entered, _)| *entered <= last)
                    .map(|(zone, entered, exited)| ZoneVisit {
                        zone: zone.clone(),
                        entered_at: ms(*entered),
                        // Still inside at this record's time, or, on a lasting track's
                        // latest record, still inside for good.
                        exited_at: (*exited <= last && (ended.is_some() || *exited < length))
                            .then(|| ms(*exited)),
                    })
                    .collect(),
                arrival_event_id: Some(EventId::new_v7(ms(0))),
                snapshot: None,
                attributes: Default::default(),
            });
        }
        tracks.push(Track { records });
    }
    tracks
}

/// The API's order: start, then edge, then track id (newest first: all descending).
fn newest_first(mut latest: Vec<&TrackRecord>) -> Vec<String> {
    latest.sort_by(|a, b| {
        (b.started_at, &b.edge_id, b.track_id).cmp(&(a.started_at, &a.edge_id, a.track_id))
    });
    latest.iter().map(|r| r.key().to_string()).collect()
}

/// ClickHouse's `quantileExact(q)`: the value at position floor(q x n) of the sorted values.
fn quantile_exact(sorted: &[i64], q: f64) -> i64 {
    let at = ((q * sorted.len() as f64) as usize).min(sorted.len() - 1);
    sorted[at]
}

/// Objects and dwell (ms) per hour for the final records of `tracks` that started in
/// `[since, until)` and pass `keep`; `dwell` gives a record's dwell, `None` to skip it.
fn reference_stats(
    tracks: &[Track],
    since: i64,
    until: i64,
    bucket: impl Fn(i64) -> i64,
    keep: impl Fn(&TrackRecord) -> bool,
    dwell: impl Fn(&TrackRecord) -> Option<i64>,
) -> Vec<(i64, u64, i64, i64)> {
    let mut by_bucket: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for track in tracks {
        let r = track.latest();
        let start = r.started_at.as_millis();
        if r.ended_by.is_none() || start < since || start >= until || !keep(r) {
            continue;
        }
        if let Some(d) = dwell(r) {
            by_bucket.entry(bucket(start)).or_default().push(d);
        }
    }
    by_bucket
        .into_iter()
        .map(|(start, mut dwells)| {
            dwells.sort_unstable();
            (
                start,
                dwells.len() as u64,
                quantile_exact(&dwells, 0.5),
                quantile_exact(&dwells, 0.95),
            )
        })
        .collect()
}

/// Time spent in `zones` over a record's stays, `None` if it never stood in one.
fn zone_dwell(r: &TrackRecord, zones: &[&str]) -> Option<i64> {
    let stays: Vec<i64> = r
        .zones
        .iter()
        .filter(|v| zones.contains(&v.zone.as_str()))
        .map(|v| v.exited_at.unwrap_or(r.last_seen_at).as_millis() - v.entered_at.as_millis())
        .collect();
    (!stays.is_empty()).then(|| stays.iter().sum())
}

/// The buckets of a stats answer as (start ms, objects, p50 ms, p95 ms).
fn buckets(body: &serde_json::Value) -> anyhow::Result<Vec<(i64, u64, i64, i64)>> {
    body["buckets"]
        .as_array()
        .context("buckets")?
        .iter()
        .map(|b| {
            let start = Timestamp::parse_rfc3339(b["start"].as_str().context("start")?)?;
            let secs = |key: &str| b[key].as_f64().map(|s| (s * 1000.0).round() as i64);
            Ok((
                start.as_millis(),
                b["objects"].as_u64().context("objects")?,
                secs("dwell_p50_secs").context("p50")?,
                secs("dwell_p95_secs").context("p95")?,
            ))
        })
        .collect()
}

async fn publish_tracks(stack: &Stack, tracks: &[Track]) -> anyhow::Result<()> {
    let js = stack.jetstream().await?;
    // Revisions newest first for every other track: the order records arrive in is not
    // the order they were made in. Every third track as JSON, as a third party sends it.
    for (i, track) in tracks.iter().enumerate() {
        let encoding = if i % 3 == 0 {
            Encoding::Json
        } else {
            Encoding::Bincode
        };
        let mut records: Vec<&TrackRecord> = track.records.iter().collect();
        if i % 2 == 1 {
            records.reverse();
        }
        crate::tracks::publish_records(&js, records, encoding).await?;
    }
    Ok(())
}

/// `GET /v1/tracks?{query}`, every page of `limit`, as track ids.
async fn all_pages(stack: &Stack, query: &str, limit: u32) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/v1/tracks?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = stack.get(&path).await?;
        anyhow::ensure!(status == 200, "{path}: {status} {body}");
        let page = body["tracks"].as_array().context("tracks")?;
        anyhow::ensure!(
            page.len() <= limit as usize,
            "{path}: a page over its limit"
        );
        anyhow::ensure!(body["count"] == page.len(), "{path}: count");
        ids.extend(
            page.iter()
                .filter_map(|t| t["id"].as_str().map(str::to_owned)),
        );
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(ids),
        }
    }
    anyhow::bail!("{query}: more than 1000 pages")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_are_listed_found_linked_and_counted_as_a_rust_reference_says() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let now = sightline_runtime::now().as_millis();
    let end = now - now % HOUR;
    let week = end - 7 * 24 * HOUR;
    let mut rng = StdRng::seed_from_u64(16);
    let tracks = week_of_tracks(end, &mut rng);
    publish_tracks(&stack, &tracks).await?;
    let records: usize = tracks.iter().map(|t| t.records.len()).sum();
    stack
        .wait_for_ingest_metrics("every track record stored", Duration::from_secs(60), |m| {
            sightline_tests::stack::metric(m, "sightline_ingest_tracks_stored_total", "")
                >= records as f64
        })
        .await?;
    let latest: Vec<&TrackRecord> = tracks.iter().map(Track::latest).collect();

    // Every track, once, at its latest revision, newest first; the same through pages.
    let (status, body) = stack.get("/v1/tracks?limit=1000").await?;
    assert_eq!(status, 200, "{body}");
    let listed = body["tracks"].as_array().context("tracks")?;
    let ids: Vec<&str> = listed.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, newest_first(latest.clone()), "every track");
    for t in listed {
        let want = latest
            .iter()
            .find(|r| r.key().to_string() == t["id"])
            .context("a listed track")?;
        let got: TrackRecord = {
            let mut record = t.clone();
            let object = record.as_object_mut().context("object")?;
            object.remove("id");
            let duration = object.remove("duration_secs").context("duration_secs")?;
            assert_eq!(
                duration.as_f64(),
                Some(want.duration_ms() as f64 / 1000.0),
                "{t}"
            );
            serde_json::from_value(record)?
        };
        assert_eq!(&&got, want, "the latest record, whole");
    }
    assert_eq!(
        all_pages(&stack, "sort=newest", 7).await?,
        newest_first(latest.clone()),
        "pages of 7"
    );
    let mut oldest = newest_first(latest.clone());
    oldest.reverse();
    assert_eq!(all_pages(&stack, "sort=oldest", 13).await?, oldest);

    // Filters, each against the reference.
    let mid = week + 3 * 24 * HOUR;
    let until = mid + 24 * HOUR;
    type Keep = Box<dyn Fn(&TrackRecord) -> bool>;
    let in_zone = |zone: &'static str| -> Keep {
        Box::new(move |r: &TrackRecord| r.zones.iter().any(|v| v.zone == zone))
    };
    let cases: Vec<(String, Keep)> = vec![
        ("camera=gate".into(), Box::new(|r| r.camera_id == "gate")),
        (
            "edge=edge-s2&label=car,dog".into(),
            Box::new(|r| r.edge_id == "edge-s2" && r.label != "person"),
        ),
        ("zone=driveway".into(), in_zone("driveway")),
        (
            format!("since={mid}&until={until}"),
            Box::new(move |r| {
                r.last_seen_at.as_millis() >= mid && r.started_at.as_millis() < until
            }),
        ),
        (
            "min_duration=120&max_duration=300.5".into(),
            Box::new(|r| (120_000..=300_500).contains(&r.duration_ms())),
        ),
        (
            "min_confidence=0.8".into(),
            Box::new(|r| r.max_confidence >= 0.8),
        ),
        ("ended=false".into(), Box::new(|r| r.ended_by.is_none())),
        (
            "ended=true&label=person&zone=gate".into(),
            Box::new(|r| {
                r.ended_by.is_some()
                    && r.label == "person"
                    && r.zones.iter().any(|v| v.zone == "gate")
            }),
        ),
    ];
    for (query, keep) in &cases {
        let want = newest_first(latest.iter().copied().filter(|r| keep(r)).collect());
        assert!(!want.is_empty(), "{query}: the data set has matches");
        assert_eq!(all_pages(&stack, query, 5).await?, want, "{query}");
    }

    // One track by id; unknown and malformed ids.
    let some = latest[17];
    let (status, body) = stack.get(&format!("/v1/tracks/{}", some.key())).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revision"], some.revision, "{body}");
    assert_eq!(body["id"], some.key().to_string());
    let (status, _) = stack.get("/v1/tracks/edge-s1:999999").await?;
    assert_eq!(status, 404);
    for bad in ["edge-s1", "edge-s1:0", "edge%20s1:4", "edge-s1:-4"] {
        let (status, body) = stack.get(&format!("/v1/tracks/{bad}")).await?;
        assert_eq!(
            (status, &body["error"]["parameter"]),
            (400, &"id".into()),
            "{bad}: {body}"
        );
    }

    // An event names the tracks of its detections, and the link leads to the track.
    // (The fourth known event has three detections.)
    let mut event = crate::known_events(&some.edge_id, &some.camera_id, 4).remove(3);
    for d in &mut event.detections {
        d.track_id = Some(some.track_id);
    }
    event.detections[0].track_id = None;
    stack
        .publish(vec![event.clone()], Encoding::Bincode)
        .await?;
    stack
        .wait_for_events(
            &format!("camera={}&edge={}", some.camera_id, some.edge_id),
            1,
        )
        .await?;
    let body = stack.get_event(event.event_id).await?;
    let links = body["tracks"].as_array().context("tracks")?;
    assert_eq!(links.len(), 1, "one track, named once: {body}");
    assert_eq!(links[0]["id"], some.key().to_string());
    let (status, linked) = stack
        .get(links[0]["href"].as_str().context("href")?)
        .await?;
    assert_eq!((status, &linked["track_id"]), (200, &some.track_id.into()));

    // "Distinct people per hour at the gate zone this week", in one call.
    let hourly = reference_stats(
        &tracks,
        week,
        end,
        |start| start - start.rem_euclid(HOUR),
        |r| r.label == "person",
        |r| zone_dwell(r, &["gate"]),
    );
    assert!(hourly.len() > 3, "the data set has people at the gate");
    let (status, body) = stack
        .get(&format!(
            "/v1/stats?measure=objects&label=person&zone=gate&interval=1h&group_by=none&since={week}&until={end}"
        ))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["measure"].as_str(), body["source"].as_str()),
        (Some("objects"), Some("tracks"))
    );
    assert_eq!(buckets(&body)?, hourly, "people per hour at the gate");

    // "Median time a car stays in the driveway", in one call.
    let cars = reference_stats(
        &tracks,
        week,
        end,
        |_| week,
        |r| r.label == "car",
        |r| zone_dwell(r, &["driveway"]),
    );
    let (status, body) = stack
        .get(&format!(
            "/v1/stats?measure=objects&label=car&zone=driveway&interval=all&group_by=none&since={week}&until={end}"
        ))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(buckets(&body)?, cars, "cars in the driveway");
    assert_eq!(cars.len(), 1);

    // Per day and camera, time in view (no zones): an update never counts, a lasting
    // track neither.
    for camera in CAMERAS {
        let daily = reference_stats(
            &tracks,
            week,
            end,
            |start| start - start.rem_euclid(24 * HOUR),
            |r| r.camera_id == camera,
            |r| Some(r.duration_ms()),
        );
        let (status, body) = stack
            .get(&format!(
                "/v1/stats?measure=objects&camera={camera}&interval=1d&group_by=camera&since={week}&until={end}"
            ))
            .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(buckets(&body)?, daily, "{camera} per day");
        assert!(
            body["buckets"]
                .as_array()
                .context("buckets")?
                .iter()
                .all(|b| b["camera_id"] == camera),
            "{body}"
        );
    }
    // By zone: a track counts in each zone it stood in.
    let (status, body) = stack
        .get(&format!(
            "/v1/stats?measure=objects&interval=all&group_by=zone&since={week}&until={end}"
        ))
        .await?;
    assert_eq!(status, 200, "{body}");
    let zones: Vec<(String, u64)> = body["buckets"]
        .as_array()
        .context("buckets")?
        .iter()
        .map(|b| {
            (
                b["zone"].as_str().unwrap_or_default().to_owned(),
                b["objects"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut want: Vec<(String, u64)> = ZONES
        .iter()
        .map(|zone| {
            let n = latest
                .iter()
                .filter(|r| r.ended_by.is_some() && r.zones.iter().any(|v| v.zone == *zone))
                .count() as u64;
            ((*zone).to_owned(), n)
        })
        .collect();
    want.sort();
    assert_eq!(zones, want);

    // The answers' keys are the documented ones.
    let (_, doc) = stack.get("/openapi.json").await?;
    let (_, page) = stack.get("/v1/tracks?limit=1").await?;
    let (_, event) = stack.get(&format!("/v1/events/{}", event.event_id)).await?;
    super::conforms(&doc, "Track", &page["tracks"][0])?;
    super::conforms(&doc, "EventDetail", &event)?;
    stack.stop().await
}
