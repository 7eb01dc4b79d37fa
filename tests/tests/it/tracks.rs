//! Track records from a third party, as JSON on the wire: stored in ClickHouse's `tracks`,
//! the latest revision replacing the earlier ones; bad ones dead-lettered with the reason.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use sightline_shared::codec::{self, CONTENT_TYPE_HEADER};
use sightline_shared::track::{BestFrame, EndedBy, PathPoint, TrackRecord, ZoneVisit};
use sightline_shared::{BoundingBox, ContentType, Encoding, EventId, Kind, Timestamp};
use sightline_tests::Stack;
use sightline_tests::stack::metric;

/// A track record of a person at the gate of `edge-t` that started at `start` (epoch ms;
/// every record of a track must name the same start).
pub(crate) fn record(
    start: i64,
    track_id: u64,
    revision: u32,
    last_seen_ms: i64,
    ended: Option<EndedBy>,
) -> TrackRecord {
    let at = |ms: i64| Timestamp::from_millis(start + ms);
    TrackRecord {
        record_id: EventId::new_v7(at(last_seen_ms)),
        schema_version: 1,
        edge_id: "edge-t".into(),
        camera_id: "gate".into(),
        track_id,
        revision,
        label: "person".into(),
        class_id: 0,
        started_at: at(0),
        last_seen_at: at(last_seen_ms),
        ended_by: ended,
        frames: 1 + last_seen_ms as u64 / 500,
        max_confidence: 0.9,
        mean_confidence: 0.75,
        best: BestFrame {
            captured_at: at(0),
            bbox: BoundingBox {
                x_min: 0.1,
                y_min: 0.2,
                x_max: 0.3,
                y_max: 0.9,
            },
            confidence: 0.9,
        },
        path: vec![
            PathPoint {
                at: at(0),
                x: 0.2,
                y: 0.9,
            },
            PathPoint {
                at: at(last_seen_ms),
                x: 0.6,
                y: 0.9,
            },
        ],
        zones: vec![ZoneVisit {
            zone: "gate".into(),
            entered_at: at(1_000),
            exited_at: ended.map(|_| at(last_seen_ms)),
        }],
        arrival_event_id: Some(EventId::new_v7(at(0))),
        snapshot: None,
        attributes: Default::default(),
    }
}

/// Publishes `records` as their edge does, each on its camera's track subject.
pub(crate) async fn publish_records<'a>(
    js: &async_nats::jetstream::Context,
    records: impl IntoIterator<Item = &'a TrackRecord>,
    encoding: Encoding,
) -> anyhow::Result<()> {
    for r in records {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE_HEADER,
            ContentType::current_of(Kind::Track, encoding)
                .to_string()
                .as_str(),
        );
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(codec::encode_track(r, encoding)?.into())
            .headers(headers);
        js.send_publish(
            sightline_shared::subjects::track_subject(&r.edge_id, &r.camera_id),
            message,
        )
        .await?
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_json_tracks_are_stored_latest_revision_first_and_bad_ones_dead_lettered()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let js = stack.jetstream().await?;
    let start = sightline_runtime::now().as_millis() - 120_000;
    let json = ContentType::current_of(Kind::Track, Encoding::Json).to_string();
    let headers = |ct: &str| {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE_HEADER, ct);
        h
    };
    let publish = |subject: &str, content_type: &str, payload: Vec<u8>| {
        let js = js.clone();
        let subject = subject.to_owned();
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(headers(content_type));
        async move { anyhow::Ok(js.send_publish(subject, message).await?.await?) }
    };
    // A track that lasts (two updates), then ends; the records arrive out of order.
    let updates = [
        record(start, 41, 0, 60_000, None),
        record(start, 41, 2, 90_000, Some(EndedBy::Lost)),
        record(start, 41, 1, 80_000, None),
    ];
    for r in &updates {
        publish(
            "sightline.tracks.edge-t.gate",
            &json,
            codec::encode_track(r, Encoding::Json)?,
        )
        .await?;
    }
    // Bad ones: a field the contract does not know, a rule broken, the wrong camera, an
    // event's content type.
    let mut unknown: serde_json::Value = serde_json::from_slice(&codec::encode_track(
        &record(start, 42, 0, 1_000, None),
        Encoding::Json,
    )?)?;
    unknown["colour"] = "red".into();
    let mut broken = record(start, 43, 0, 1_000, None);
    broken.mean_confidence = 0.95;
    let cases: Vec<(&str, String, Vec<u8>, &str, &str)> = vec![
        (
            "sightline.tracks.edge-t.gate",
            json.clone(),
            serde_json::to_vec(&unknown)?,
            "Decode",
            "colour",
        ),
        (
            "sightline.tracks.edge-t.gate",
            json.clone(),
            codec::encode_track(&broken, Encoding::Json)?,
            "Validation",
            "mean_confidence",
        ),
        (
            "sightline.tracks.edge-t.door",
            json.clone(),
            codec::encode_track(&record(start, 44, 0, 1_000, None), Encoding::Json)?,
            "Subject",
            "camera_id",
        ),
        (
            "sightline.tracks.edge-t.gate",
            ContentType::current(Encoding::Json).to_string(),
            codec::encode_track(&record(start, 45, 0, 1_000, None), Encoding::Json)?,
            "Decode",
            "track",
        ),
    ];
    for (subject, content_type, payload, _, _) in &cases {
        publish(subject, content_type, payload.clone()).await?;
    }

    // The latest revision is what a reader sees, whatever order the records came in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = stack
            .clickhouse
            .query("SELECT track_id, revision, ended_by, frames, last_seen_at_ms - started_at_ms, zones.zone, zones.exited_at_ms FROM sightline.tracks FINAL WHERE edge_id = 'edge-t' ORDER BY track_id FORMAT TabSeparated")
            .await?;
        let stored: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
        if let [row] = stored.as_slice()
            && row.get(1) == Some(&"2")
        {
            let last = &updates[1];
            let frames = last.frames.to_string();
            let exited = format!("[{}]", last.last_seen_at.as_millis());
            assert_eq!(
                row.as_slice(),
                ["41", "2", "lost", &frames, "90000", "['gate']", &exited],
                "{rows}"
            );
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "tracks: {rows}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let all = stack
        .clickhouse
        .query("SELECT count() FROM sightline.tracks WHERE edge_id = 'edge-t' FORMAT TabSeparated")
        .await?;
    assert!(
        matches!(all.trim(), "1" | "2" | "3"),
        "the three records, or fewer once merged: {all}"
    );

    let seen = stack.dead_letters(10).await?;
    assert_eq!(seen.len(), cases.len(), "{seen:?}");
    for ((subject, _, payload, reason, names), got) in cases.iter().zip(&seen) {
        assert_eq!(subject, &got.original_subject);
        assert_eq!(payload, &got.payload);
        assert!(got.reason.starts_with(reason), "{} / {reason}", got.reason);
        assert!(got.reason.contains(names), "{} names {names}", got.reason);
    }
    // All three records are stored, each counted once (the latest showing up first says
    // nothing about when the others are written).
    let metrics = stack
        .wait_for_ingest_metrics("three track records stored", Duration::from_secs(30), |m| {
            metric(m, "sightline_ingest_tracks_stored_total", "") >= 3.0
        })
        .await?;
    assert_eq!(
        metric(&metrics, "sightline_ingest_tracks_stored_total", ""),
        3.0
    );
    stack.stop().await
}

/// An outbox over rows in memory that records what was confirmed.
struct Rows {
    rows: std::collections::VecDeque<sightline_edge_agent::outbox::Outgoing>,
    confirmed: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl sightline_edge_agent::outbox::Outbox for Rows {
    async fn next(&mut self) -> Option<sightline_edge_agent::outbox::Outgoing> {
        self.rows.pop_front()
    }

    async fn confirm(&mut self, seq: u64) {
        self.confirmed.lock().expect("lock").push(seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_records_a_cloud_cannot_take_yet_do_not_hold_events_back() -> anyhow::Result<()> {
    use sightline_edge_agent::outbox::Stored as _;
    // A cloud from before tracks: the events stream, no tracks stream.
    let nats = sightline_tests::fixtures::NatsServer::start()?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: sightline_shared::subjects::EVENTS_STREAM.into(),
        subjects: vec![sightline_shared::subjects::EVENTS_SUBJECTS.into()],
        ..Default::default()
    })
    .await?;
    // Three track records first in the outbox, then a thousand events. Unhindered, they go
    // out in well under a second; each pause a failed track record caused (100 ms, the
    // events' acks resetting the backoff) would cost them more than ten.
    let start = sightline_runtime::now().as_millis() - 120_000;
    let mut rows = std::collections::VecDeque::new();
    for seq in 1..=3 {
        rows.push_back(record(start, seq, 0, 1_000, None).encode(seq)?);
    }
    for (seq, event) in (4..).zip(crate::known_events("edge-t", "gate", 1000)) {
        rows.push_back(event.encode(seq)?);
    }
    let confirmed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut outbox = Rows {
        rows,
        confirmed: confirmed.clone(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = sightline_edge_agent::publisher::Publisher::new(
        js,
        Encoding::Bincode,
        8,
        sightline_edge_agent::metrics::Metrics::default(),
    );
    let run = publisher.run(&mut outbox, &stop);
    tokio::pin!(run);
    // Every event goes out while the track records keep failing.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        tokio::select! {
            report = &mut run => anyhow::bail!("the publisher ended early: {report:?}"),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let done = confirmed.lock().expect("lock").clone();
        if done.len() == 1000 {
            assert_eq!(done.iter().copied().min(), Some(4), "only events");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "events held back by failing track records: {} confirmed",
            done.len()
        );
    }
    stop.cancel();
    let report = run.await;
    assert_eq!(report.unpublished, 3, "the track records wait: {report:?}");
    Ok(())
}
