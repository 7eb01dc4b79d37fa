//! Snapshots in the cloud: uploads as an edge sends them, checked by ingest's snapshot
//! writer, kept in JetStream's object store and served by the query API byte for byte;
//! bad uploads dead-lettered with their reason; a crash of ingest mid-write leaves no
//! orphan object.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use sightline_runtime::objects::{JetStreamSnapshots, SnapshotStore, publish_upload};
use sightline_shared::jpeg::sha256_hex;
use sightline_shared::snapshot::{Owner, SnapshotHeader};
use sightline_shared::subjects::SNAPSHOTS_BUCKET;
use sightline_shared::{DetectionEvent, Encoding, EventId, Timestamp};
use sightline_tests::Stack;
use sightline_tests::fixtures::poll_until;
use sightline_tests::stack::metric;
use uuid::Uuid;

use crate::{known_events, repo};

/// A test picture's bytes.
pub(crate) fn picture(name: &str) -> Bytes {
    let path = repo().join("tests/fixtures/images").join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The upload header an edge would send for `payload`, showing `owner`, captured at `at`.
pub(crate) fn header_for(owner: Owner, at: Timestamp, payload: &[u8]) -> SnapshotHeader {
    SnapshotHeader {
        id: *EventId::new_v7(at).as_uuid(),
        owner,
        captured_at: at,
        sha256: sha256_hex(payload),
        size: payload.len() as u64,
    }
}

/// The header of `event`'s snapshot.
fn header_of(event: &DetectionEvent, payload: &[u8]) -> SnapshotHeader {
    header_for(Owner::Event(event.event_id), event.captured_at, payload)
}

/// `GET {path}` until it answers 200 (30 s at most): the picture's bytes and headers.
async fn fetch_picture(
    stack: &Stack,
    path: &str,
) -> anyhow::Result<(Bytes, reqwest::header::HeaderMap)> {
    let url = format!("{}{path}", stack.api);
    let answer = poll_until(
        Duration::from_secs(30),
        || async { Ok(stack.http.get(&url).send().await?) },
        |response| response.status() == 200,
    )
    .await?;
    let response = match answer {
        Ok(response) => response,
        Err(response) => anyhow::bail!(
            "GET {path} never answered 200: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        ),
    };
    let headers = response.headers().clone();
    Ok((response.bytes().await?, headers))
}

/// Ids in the bucket and distinct snapshot ids in `snapshots`.
pub(crate) async fn objects_and_rows(
    stack: &Stack,
) -> anyhow::Result<(BTreeSet<Uuid>, BTreeSet<Uuid>)> {
    let store = JetStreamSnapshots::new(stack.jetstream().await?, SNAPSHOTS_BUCKET);
    let objects: BTreeSet<Uuid> = store.list().await?.into_iter().collect();
    let client = sightline_store::client(&stack.clickhouse.config())?
        .with_database(&stack.ingest_config.clickhouse.database);
    let rows: Vec<String> = client
        .query(&format!(
            "SELECT DISTINCT toString(snapshot_id) FROM {}",
            sightline_store::tables::SNAPSHOTS
        ))
        .fetch_all()
        .await?;
    let rows = rows.iter().map(|id| id.parse()).collect::<Result<_, _>>()?;
    Ok((objects, rows))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_snapshot_is_served_byte_identical_with_thumbnails_and_filters()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let events = known_events("edge-s", "porch", 6);
    stack.publish(events.clone(), Encoding::Bincode).await?;
    // Events 0 and 3 have a snapshot on the edge (known_events); 0 is uploaded, 3 is not.
    let event = &events[0];
    assert!(event.snapshot.is_some() && events[3].snapshot.is_some());
    let dog = picture("dog.jpg");
    let header = header_of(event, &dog);
    let js = stack.jetstream().await?;
    publish_upload(&js, "edge-s", "porch", &header, dog.clone()).await?;

    let path = format!("/v1/events/{}/snapshot", event.event_id);
    let (served, headers) = fetch_picture(&stack, &path).await?;
    assert_eq!(sha256_hex(&served), header.sha256, "byte-identical");
    assert_eq!(served, dog);
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["etag"], format!("\"{}\"", header.sha256).as_str());
    assert_eq!(headers["cache-control"], "private, max-age=86400");

    // The ETag answers a revalidation without the picture.
    let revalidated = stack
        .http
        .get(format!("{}{path}", stack.api))
        .header("If-None-Match", format!("\"{}\"", header.sha256))
        .send()
        .await?;
    assert_eq!(revalidated.status(), 304);
    assert!(revalidated.bytes().await?.is_empty());

    // A thumbnail keeps the aspect; one wider than the picture is the picture.
    let (thumbnail, headers) = fetch_picture(&stack, &format!("{path}?max_width=160")).await?;
    let original = image::load_from_memory(&dog)?;
    let small = image::load_from_memory(&thumbnail)?;
    assert_eq!(small.width(), 160);
    let expected_height = (u64::from(original.height()) * 160 / u64::from(original.width())) as u32;
    assert_eq!(small.height(), expected_height.max(1));
    assert_eq!(
        headers["etag"],
        format!("\"{}-w160\"", header.sha256).as_str()
    );
    let (same, _) = fetch_picture(&stack, &format!("{path}?max_width=1920")).await?;
    assert_eq!(same, dog);

    // The event says where its picture is; the filter finds exactly the uploaded one.
    let body = stack.get_event(event.event_id).await?;
    assert_eq!(body["snapshot_url"], path.as_str());
    let body = stack.get_event(events[3].event_id).await?;
    assert!(body.get("snapshot_url").is_none(), "{body}");
    let (_, page) = stack.get("/v1/events?camera=porch&in_cloud=true").await?;
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [event.event_id.to_string()]);
    assert_eq!(page["events"][0]["snapshot_url"], path.as_str());
    let (_, page) = stack.get("/v1/events?camera=porch&in_cloud=false").await?;
    assert_eq!(page["count"], 5);

    // Errors: an unknown id, an id without a picture, a bad id, a bad width.
    for (path, status) in [
        (format!("/v1/events/{}/snapshot", Uuid::now_v7()), 404),
        (format!("/v1/events/{}/snapshot", events[3].event_id), 404),
        ("/v1/events/not-a-uuid/snapshot".to_owned(), 400),
        (format!("{path}?max_width=0"), 400),
        (format!("{path}?width=10"), 400),
        ("/v1/tracks/edge-s:0/snapshot".to_owned(), 400),
        ("/v1/tracks/edge-s:999/snapshot".to_owned(), 404),
    ] {
        let (got, body) = stack.get(&path).await?;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }

    // A re-sent upload (the edge did not see the ack) changes nothing.
    publish_upload(&js, "edge-s", "porch", &header, dog.clone()).await?;
    let metrics = stack
        .wait_for_ingest_metrics("the snapshot stored", Duration::from_secs(30), |m| {
            metric(m, "sightline_ingest_snapshots_stored_total", "") >= 1.0
        })
        .await?;
    assert!(
        metric(&metrics, "sightline_ingest_snapshot_bytes_stored_total", "") >= dog.len() as f64
    );
    let (objects, rows) = objects_and_rows(&stack).await?;
    assert_eq!(objects, BTreeSet::from([header.id]));
    assert_eq!(rows, objects);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracks_snapshot_is_its_newest_best_frame() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let start = sightline_runtime::now().as_millis() - 60_000;
    let record = crate::tracks::record(start, 7, 0, 5_000, None);
    let js = stack.jetstream().await?;
    crate::tracks::publish_records(&js, [&record], Encoding::Bincode).await?;
    let first = picture("person.jpg");
    let better = picture("horses.jpg");
    let at = Timestamp::from_millis(start);
    let first_header = header_for(Owner::Track(7), at, &first);
    publish_upload(&js, "edge-t", "gate", &first_header, first.clone()).await?;
    let path = "/v1/tracks/edge-t:7/snapshot";
    let (served, headers) = fetch_picture(&stack, path).await?;
    assert_eq!(served, first);
    assert_eq!(headers["cache-control"], "private, no-cache");
    // A later best frame replaces it.
    let later = Timestamp::from_millis(start + 2_000);
    let better_header = header_for(Owner::Track(7), later, &better);
    publish_upload(&js, "edge-t", "gate", &better_header, better.clone()).await?;
    let served = poll_until(
        Duration::from_secs(30),
        || async { Ok(fetch_picture(&stack, path).await?.0) },
        |bytes| *bytes == better,
    )
    .await?;
    assert!(served.is_ok(), "the newer best frame was never served");
    // The same track id on another edge is another track.
    let (status, _) = stack.get("/v1/tracks/edge-u:7/snapshot").await?;
    assert_eq!(status, 404);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_dead_lettered_with_a_reason_and_counted() -> anyhow::Result<()> {
    let stack = Stack::start_with(|config| {
        config.snapshots.max_bytes = 150_000;
        config.snapshots.owner_wait_secs = 2;
    })
    .await?;
    let events = known_events("edge-b", "yard", 1);
    stack.publish(events.clone(), Encoding::Bincode).await?;
    stack.wait_for_events("camera=yard", 1).await?;
    let event = &events[0];
    let js = stack.jetstream().await?;
    let person = picture("person.jpg");
    let giraffe = picture("giraffe.jpg");
    assert!(person.len() < 150_000 && giraffe.len() > 150_000);

    // Not a JPEG (hash and size right for what was sent).
    let text = Bytes::from_static(b"GIF89a this is not a jpeg at all");
    publish_upload(
        &js,
        "edge-b",
        "yard",
        &header_of(event, &text),
        text.clone(),
    )
    .await?;
    // Over the size limit.
    publish_upload(&js, "edge-b", "yard", &header_of(event, &giraffe), giraffe).await?;
    // A SHA-256 that is not the payload's.
    let mut wrong = header_of(event, &person);
    wrong.sha256 = sha256_hex(b"something else");
    publish_upload(&js, "edge-b", "yard", &wrong, person.clone()).await?;
    // A JPEG cut short (its size header honest): no end marker.
    let cut = person.slice(..person.len() / 2);
    publish_upload(&js, "edge-b", "yard", &header_of(event, &cut), cut).await?;
    // Another edge's event: the subject names edge-x.
    publish_upload(
        &js,
        "edge-x",
        "yard",
        &header_of(event, &person),
        person.clone(),
    )
    .await?;
    // An event that never arrives.
    let ghost = Owner::Event(EventId::new_v7(sightline_runtime::now()));
    let ghost_header = header_for(ghost, sightline_runtime::now(), &person);
    publish_upload(&js, "edge-b", "yard", &ghost_header, person.clone()).await?;
    // A capture time that is not its event's.
    let mut misdated = header_of(event, &person);
    misdated.captured_at = Timestamp::from_millis(event.captured_at.as_millis() - 60_000);
    publish_upload(&js, "edge-b", "yard", &misdated, person.clone()).await?;
    // Headers missing: published raw.
    js.publish("sightline.snapshots.edge-b.yard", person.clone())
        .await?
        .await?;

    let metrics = stack
        .wait_for_ingest_metrics("eight dead letters", Duration::from_secs(60), |m| {
            metric(
                m,
                "sightline_ingest_dead_letters_total",
                "reason=\"Snapshot\"",
            ) >= 4.0
                && metric(
                    m,
                    "sightline_ingest_dead_letters_total",
                    "reason=\"Subject\"",
                ) >= 1.0
                && metric(m, "sightline_ingest_dead_letters_total", "reason=\"Owner\"") >= 1.0
                && metric(
                    m,
                    "sightline_ingest_dead_letters_total",
                    "reason=\"Decode\"",
                ) >= 1.0
        })
        .await?;
    assert!(metric(&metrics, "sightline_ingest_snapshots_waiting_total", "") >= 1.0);
    let letters = stack.dead_letters(100).await?;
    assert_eq!(letters.len(), 8, "{letters:#?}");
    let reason_of = |needle: &str| {
        letters
            .iter()
            .find(|l| l.reason.contains(needle))
            .unwrap_or_else(|| panic!("no dead letter says {needle:?}: {letters:#?}"))
    };
    reason_of("does not start with the SOI marker");
    reason_of("over the limit of 150000");
    reason_of("SHA-256 mismatch");
    reason_of("does not end with the EOI marker");
    reason_of(&format!(
        "the picture says it was captured at {} ms, its event at {} ms",
        misdated.captured_at.as_millis(),
        event.captured_at.as_millis()
    ));
    let foreign = reason_of(
        "of edge \"edge-b\" camera \"yard\", but came on sightline.snapshots.edge-x.yard",
    );
    assert_eq!(foreign.original_subject, "sightline.snapshots.edge-x.yard");
    assert!(
        foreign.reason.starts_with("Subject: "),
        "{}",
        foreign.reason
    );
    reason_of(&format!(
        "the {ghost} it shows did not reach the cloud from edge \"edge-b\" while the writer waited 2 s"
    ));
    reason_of("header Content-Type is missing");
    // The payloads are kept, byte for byte, for a replay after a fix.
    assert!(letters.iter().any(|l| l.payload == person));
    assert!(
        letters
            .iter()
            .all(|l| l.original_subject.starts_with("sightline.snapshots."))
    );
    // Nothing was stored.
    let (objects, rows) = objects_and_rows(&stack).await?;
    assert!(
        objects.is_empty() && rows.is_empty(),
        "{objects:?} {rows:?}"
    );
    let (status, _) = stack
        .get(&format!("/v1/events/{}/snapshot", event.event_id))
        .await?;
    assert_eq!(status, 404);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_of_ingest_mid_write_loses_nothing_and_leaves_no_orphan() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let events = known_events("edge-k", "drive", 60);
    stack.publish(events.clone(), Encoding::Bincode).await?;
    stack.wait_for_events("camera=drive&limit=1000", 60).await?;
    let js = stack.jetstream().await?;
    let pictures = ["dog.jpg", "eagle.jpg", "horses.jpg", "person.jpg"].map(picture);
    let mut headers = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let payload = pictures[i % pictures.len()].clone();
        let header = header_of(event, &payload);
        publish_upload(&js, "edge-k", "drive", &header, payload).await?;
        headers.push(header);
    }
    // Crash as soon as the writer is part-way through, then start again.
    stack
        .wait_for_ingest_metrics("a few snapshots stored", Duration::from_secs(60), |m| {
            metric(m, "sightline_ingest_snapshots_stored_total", "") >= 5.0
        })
        .await?;
    stack.crash_ingest().await;
    stack.start_ingest().await?;
    for header in &headers {
        let Owner::Event(id) = header.owner else {
            unreachable!()
        };
        let (served, _) = fetch_picture(&stack, &format!("/v1/events/{id}/snapshot")).await?;
        assert_eq!(sha256_hex(&served), header.sha256);
    }
    let expected: BTreeSet<Uuid> = headers.iter().map(|h| h.id).collect();
    let (objects, rows) = objects_and_rows(&stack).await?;
    assert_eq!(
        objects, expected,
        "every object has its row and no other is there"
    );
    assert_eq!(rows, expected);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_expired_pictures_object_and_row_by_their_capture_time()
-> anyhow::Result<()> {
    let stack = Stack::start_with(|config| {
        config.retention.events_days = 1;
        config.retention.sweep_interval_secs = 10;
    })
    .await?;
    let mut events = known_events("edge-r", "gate", 2);
    // The first was captured three days ago and arrives now (an edge that was offline):
    // past its day of retention plus the picture's day, counted from its arrival it is not.
    let old = Timestamp::from_millis(events[0].captured_at.as_millis() - 3 * 86_400_000);
    events[0].captured_at = old;
    events[0].event_id = EventId::new_v7(old);
    stack.publish(events.clone(), Encoding::Bincode).await?;
    stack.wait_for_events("camera=gate&since=0", 2).await?;
    let js = stack.jetstream().await?;
    let dog = picture("dog.jpg");
    let headers: Vec<SnapshotHeader> = events.iter().map(|e| header_of(e, &dog)).collect();
    for header in &headers {
        publish_upload(&js, "edge-r", "gate", header, dog.clone()).await?;
    }
    stack
        .wait_for_ingest_metrics("both stored", Duration::from_secs(30), |m| {
            metric(m, "sightline_ingest_snapshots_stored_total", "") >= 2.0
        })
        .await?;
    // The old one arrived now, so neither is due yet: the sweeps (every 10 s) keep both.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (objects, rows) = objects_and_rows(&stack).await?;
    let both: BTreeSet<Uuid> = headers.iter().map(|h| h.id).collect();
    assert_eq!((&objects, &rows), (&both, &both));
    // A third, of an event captured and stored three days ago (as the writer would have
    // then: object, then row): due.
    let mut stale = known_events("edge-r", "gate", 1).remove(0);
    stale.captured_at = Timestamp::from_millis(old.as_millis() - 1000);
    stale.event_id = EventId::new_v7(stale.captured_at);
    let stale_header = header_of(&stale, &dog);
    JetStreamSnapshots::new(stack.jetstream().await?, SNAPSHOTS_BUCKET)
        .put(stale_header.id, dog.clone(), &[])
        .await?;
    let client = sightline_store::client(&stack.clickhouse.config())?
        .with_database(&stack.ingest_config.clickhouse.database);
    let (event_id, track_id) = sightline_store::SnapshotRow::owner_columns(stale_header.owner);
    sightline_store::insert::insert_rows(
        &client,
        sightline_store::tables::SNAPSHOTS,
        &[sightline_store::SnapshotRow {
            schema_version: sightline_store::SnapshotRow::SCHEMA_VERSION,
            snapshot_id: stale_header.id,
            event_id,
            track_id,
            edge_id: "edge-r".into(),
            camera_id: "gate".into(),
            captured_at: stale.captured_at.as_secs() as u32,
            captured_at_ms: stale.captured_at.as_millis(),
            width: 1,
            height: 1,
            size: dog.len() as u32,
            sha256: stale_header.sha256.clone(),
            stored_at_ms: stale.captured_at.as_millis(),
        }],
        Duration::from_secs(10),
        None,
    )
    .await?;
    stack
        .wait_for_ingest_metrics("the stale one expired", Duration::from_secs(60), |m| {
            metric(m, "sightline_ingest_snapshots_expired_total", "") >= 1.0
        })
        .await?;
    let swept = poll_until(
        Duration::from_secs(60),
        || objects_and_rows(&stack),
        |(objects, rows)| *objects == both && *rows == both,
    )
    .await?;
    assert!(swept.is_ok(), "{swept:?}");
    let metrics = stack.ingest_metrics().await?;
    assert_eq!(
        metric(&metrics, "sightline_ingest_snapshots_expired_total", ""),
        1.0
    );
    for event in &events {
        let (served, _) =
            fetch_picture(&stack, &format!("/v1/events/{}/snapshot", event.event_id)).await?;
        assert_eq!(served, dog);
    }
    stack.stop().await
}

/// NATS users as docs/operations.md ("NATS users") gives them: ingest may do everything;
/// the query service may read the snapshot bucket (and publish replays); an edge may
/// publish only on its own subjects.
pub(crate) const NATS_USERS: &str = r#"
authorization {
  users = [
    { user: ingest, password: ingest-secret }
    { user: query, password: query-secret, permissions: {
        publish: { allow: [
          "replay.>",
          "$JS.API.STREAM.INFO.OBJ_SIGHTLINE_SNAPSHOTS",
          "$JS.API.STREAM.MSG.GET.OBJ_SIGHTLINE_SNAPSHOTS",
          "$JS.API.DIRECT.GET.OBJ_SIGHTLINE_SNAPSHOTS.>",
          "$JS.API.CONSUMER.CREATE.OBJ_SIGHTLINE_SNAPSHOTS",
          "$JS.API.CONSUMER.CREATE.OBJ_SIGHTLINE_SNAPSHOTS.>",
          "$JS.API.CONSUMER.DELETE.OBJ_SIGHTLINE_SNAPSHOTS.>",
          "$JS.FC.OBJ_SIGHTLINE_SNAPSHOTS.>"
        ] }
        subscribe: { allow: ["_INBOX.>"] }
    } }
    { user: edge-a, password: edge-secret, permissions: {
        publish: { allow: [
          "sightline.events.edge-a.>",
          "sightline.tracks.edge-a.>",
          "sightline.snapshots.edge-a.>",
          "sightline.heartbeats.edge-a",
          "sightline.time"
        ] }
        subscribe: { allow: ["_INBOX.>"] }
    } }
  ]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_users_an_edge_uploads_only_as_itself_and_the_api_only_reads()
-> anyhow::Result<()> {
    let nats = sightline_tests::fixtures::NatsServer::start_with_config(Some(NATS_USERS))?;
    let (ingest_url, query_url) = (
        nats.url_as("ingest", "ingest-secret"),
        nats.url_as("query", "query-secret"),
    );
    let plain = nats.url();
    let connect_as = |user: &str, password: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(plain.clone())
    };
    let stack = Stack::start_on(
        nats,
        |ingest| ingest.nats.url = ingest_url,
        |query| query.nats.url = query_url.clone(),
    )
    .await?;
    let edge = async_nats::jetstream::new(connect_as("edge-a", "edge-secret").await?);
    let events = known_events("edge-a", "porch", 1);
    let report =
        sightline_tests::stack::publish_via(edge.clone(), events.clone(), Encoding::Bincode, 8)
            .await;
    assert_eq!(report.published, 1, "{report:?}");
    stack.wait_for_events("camera=porch", 1).await?;
    let dog = picture("dog.jpg");
    let header = header_of(&events[0], &dog);
    publish_upload(&edge, "edge-a", "porch", &header, dog.clone()).await?;
    let (served, _) = fetch_picture(
        &stack,
        &format!("/v1/events/{}/snapshot", events[0].event_id),
    )
    .await?;
    assert_eq!(served, dog, "the query user reads the bucket");
    // Thumbnails too (a second read of the same object).
    fetch_picture(
        &stack,
        &format!("/v1/events/{}/snapshot?max_width=64", events[0].event_id),
    )
    .await?;

    // An edge cannot upload as another edge: the server refuses the publish.
    let other = header_for(header.owner, header.captured_at, &dog);
    let refused = publish_upload(&edge, "edge-b", "porch", &other, dog.clone()).await;
    assert!(refused.is_err(), "{refused:?}");
    // Nor write the bucket itself.
    let bucket = JetStreamSnapshots::new(edge.clone(), SNAPSHOTS_BUCKET);
    assert!(bucket.put(other.id, dog.clone(), &[]).await.is_err());
    // The query user can neither write the bucket nor publish into the live streams.
    let query = async_nats::jetstream::new(connect_as("query", "query-secret").await?);
    let bucket = JetStreamSnapshots::new(query.clone(), SNAPSHOTS_BUCKET);
    assert!(bucket.delete(header.id).await.is_err());
    assert!(bucket.put(other.id, dog.clone(), &[]).await.is_err());
    assert!(
        publish_upload(&query, "edge-a", "porch", &other, dog.clone())
            .await
            .is_err()
    );
    // And the picture is still there.
    let (served, _) = fetch_picture(
        &stack,
        &format!("/v1/events/{}/snapshot", events[0].event_id),
    )
    .await?;
    assert_eq!(served, dog);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_waited_out_an_ingest_outage_still_wait_for_their_events() -> anyhow::Result<()>
{
    let mut stack = Stack::start_with(|config| config.snapshots.owner_wait_secs = 6).await?;
    // Ingest is down; a picture is uploaded and sits in the stream longer than the owner
    // wait, its event not even sent yet (an edge whose events came through another path,
    // or a backlog of events ahead of it).
    stack.crash_ingest().await;
    let events = known_events("edge-w", "lane", 1);
    let dog = picture("dog.jpg");
    let header = header_of(&events[0], &dog);
    let js = stack.jetstream().await?;
    publish_upload(&js, "edge-w", "lane", &header, dog.clone()).await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Ingest comes back: the writer sees the picture before its event and puts it back
    // (its own wait starts now, not at the upload); then the event arrives, and the picture
    // is stored.
    stack.start_ingest().await?;
    stack
        .wait_for_ingest_metrics("the picture put back", Duration::from_secs(30), |m| {
            metric(m, "sightline_ingest_snapshots_waiting_total", "") >= 1.0
        })
        .await?;
    stack.publish(events.clone(), Encoding::Bincode).await?;
    let (served, _) = fetch_picture(
        &stack,
        &format!("/v1/events/{}/snapshot", events[0].event_id),
    )
    .await?;
    assert_eq!(served, dog);
    assert!(stack.dead_letters(10).await?.is_empty());
    stack.stop().await
}

/// The agent's shutdown writes the publisher's last acks back to the buffer, then tells the
/// uploader to finish. An uploader whose read of the queue was answered before those acks
/// (nothing sendable: the events were unsent) must read it again, not stop and leave the
/// pictures those acks released for the next start.
#[tokio::test] // one thread: the uploader runs only when this test lets it
async fn an_uploader_told_to_finish_sends_what_the_last_acks_released() -> anyhow::Result<()> {
    use prometheus_client::registry::Registry;
    use sightline_edge_agent::buffer::worker::BUFFER_FILE;
    use sightline_edge_agent::buffer::{Buffer, UploadRequest};
    use sightline_edge_agent::config::{UploadConfig, UploadSend};
    use sightline_edge_agent::metrics::Metrics;
    use sightline_edge_agent::outbox::Outbox;
    use sightline_edge_agent::uploader::Uploader;
    use tokio_util::sync::CancellationToken;

    let (_nats, _client, js) = sightline_tests::stack::bench_nats().await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("dog.jpg"), picture("dog.jpg"))?;
    // One event with its picture queued, the event not yet sent.
    let event = known_events("edge-f", "gate", 1).remove(0);
    let upload = UploadRequest::of_event(Uuid::now_v7(), &event, "dog.jpg".into());
    let (mut buffer, _) = Buffer::open(&dir.path().join(BUFFER_FILE))?;
    buffer.append_with_uploads(
        &[event],
        &[Some(upload)],
        sightline_runtime::now().as_millis(),
    )?;
    drop(buffer);
    let metrics = Metrics::new(&mut Registry::default());
    let (handle, thread) = sightline_tests::data::bench_buffer(dir.path(), &metrics)?;

    // The publisher sends the event and holds its ack (acks are written back in groups).
    let mut outbox = handle.outbox(16, CancellationToken::new());
    let row = outbox.next().await.expect("the unsent event");
    outbox.confirm(row.seq).await;

    let finish = CancellationToken::new();
    let uploading = tokio::spawn(
        Uploader {
            buffer: handle.clone(),
            js,
            edge_id: "edge-f".into(),
            data_dir: dir.path().to_owned(),
            config: UploadConfig {
                send: UploadSend::All,
                ..UploadConfig::default()
            },
            metrics: metrics.clone(),
        }
        .run(CancellationToken::new(), finish.clone()),
    );
    // The uploader asks for the queue ...
    tokio::task::yield_now().await;
    // ... and the buffer thread answers (with no append waiting it answers in order: once
    // a later question is answered, so is the uploader's), while this thread keeps the
    // uploader from reading the answer.
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .map(|rt| rt.block_on(handle.status()))
        })
        .join()
    })
    .expect("the status thread")?
    .map_err(anyhow::Error::msg)?;
    // The ack is still held: the uploader's answer had the event unsent.
    assert_eq!(status.stats.unsent, 1, "the staged order");
    // Shutdown: the last acks, then finish.
    outbox.flush();
    finish.cancel();
    tokio::time::timeout(Duration::from_secs(30), uploading).await??;
    let pending = handle
        .status()
        .await
        .map_err(anyhow::Error::msg)?
        .uploads
        .pending;
    handle.close().await;
    let _ = thread.join();
    assert_eq!(pending, 0, "every picture whose event was sent is uploaded");
    assert_eq!(metrics.snapshot_uploads.get(), 1);
    Ok(())
}
