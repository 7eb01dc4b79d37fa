//! Bad input on the subject: kept in the dead-letter stream with the reason, counted, and
//! ingest keeps going.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use sightline_shared::codec::{self, CONTENT_TYPE_HEADER};
use sightline_shared::{ContentType, Encoding};
use sightline_tests::Stack;
use sightline_tests::stack::metric;

use crate::known_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dead_lettered_and_ingest_keeps_running() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let js = stack.jetstream().await?;
    let json = ContentType::current(Encoding::Json).to_string();
    let bincode = ContentType::current(Encoding::Bincode).to_string();
    let mut invalid = known_events("edge-b", "cam", 1).remove(0);
    invalid.detections = known_events("edge-b", "cam", 2).remove(1).detections;
    invalid.motion_score = 3.5;
    let good = known_events("edge-b", "cam", 3);
    let headers = |ct: &str| {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE_HEADER, ct);
        h
    };
    let cases: Vec<(&str, Option<HeaderMap>, Vec<u8>, &str)> = vec![
        (
            "sightline.events.edge-b.cam",
            Some(headers(&bincode)),
            b"\xff\xfe garbage".to_vec(),
            "Decode",
        ),
        (
            "sightline.events.edge-b.cam",
            None,
            codec::encode(&good[0], Encoding::Json)?,
            "Decode",
        ),
        (
            "sightline.events.edge-b.cam",
            Some(headers("application/vnd.sightline.event.v9+json")),
            b"{}".to_vec(),
            "Decode",
        ),
        (
            "sightline.events.edge-b.cam",
            Some(headers(&json)),
            codec::encode(&invalid, Encoding::Json)?,
            "Validation",
        ),
        (
            "sightline.events.edge-b.other",
            Some(headers(&json)),
            codec::encode(&good[1], Encoding::Json)?,
            "Subject",
        ),
    ];
    for (subject, headers, payload, _) in &cases {
        let publish =
            async_nats::jetstream::message::PublishMessage::build().payload(payload.clone().into());
        let publish = match headers {
            Some(h) => publish.headers(h.clone()),
            None => publish,
        };
        js.send_publish(subject.to_string(), publish).await?.await?;
    }
    // Good events after the garbage still arrive.
    stack.publish(good.clone(), Encoding::Bincode).await?;
    let events = stack.wait_for_events("camera=cam", 3).await?;
    assert_eq!(events.len(), 3);

    // Every bad message is in the dead-letter stream, payload intact, reason attached.
    let seen = stack.dead_letters(10).await?;
    assert_eq!(seen.len(), cases.len(), "{seen:?}");
    for ((subject, _, payload, reason), got) in cases.iter().zip(&seen) {
        assert_eq!(subject, &got.original_subject);
        assert_eq!(payload, &got.payload);
        assert!(
            got.reason.starts_with(reason),
            "{} should start with {reason}",
            got.reason
        );
    }
    assert!(
        seen[3].reason.contains("motion_score"),
        "the reason names the field: {}",
        seen[3].reason
    );

    let metrics = stack.ingest_metrics().await?;
    assert_eq!(
        metric(
            &metrics,
            "sightline_ingest_dead_letters_total",
            "reason=\"Decode\""
        ),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "sightline_ingest_dead_letters_total",
            "reason=\"Validation\""
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "sightline_ingest_dead_letters_total",
            "reason=\"Subject\""
        ),
        1.0
    );
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_clickhouse_rejects_are_isolated_and_the_rest_stored() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // A column whose default expression fails (Code: 6) for one marked value stands in for
    // any data error the server finds that our validation cannot.
    stack
        .clickhouse
        .query(
            "ALTER TABLE sightline.events ADD COLUMN guard UInt8 \
             MATERIALIZED toUInt8(if(model_version = 'poison', 'x', '1'))",
        )
        .await?;
    let mut events = known_events("edge-p", "cam", 40);
    for i in [3, 17, 18, 39] {
        events[i].model.version = "poison".into();
    }
    let poisoned: Vec<_> = [3, 17, 18, 39]
        .iter()
        .map(|&i| events[i].event_id)
        .collect();
    stack.publish(events.clone(), Encoding::Bincode).await?;
    let stored = stack.wait_for_events("camera=cam&limit=100", 36).await?;
    assert_eq!(stored.len(), 36);
    assert!(stored.iter().all(|e| !poisoned.contains(&e.event_id)));

    // The last bisection may still be dead-lettering when the stored rows show up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut letters = stack.dead_letters(10).await?;
    while letters.len() < poisoned.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        letters = stack.dead_letters(10).await?;
    }
    let mut dead = Vec::new();
    for letter in letters {
        assert!(
            letter.reason.starts_with("Insert") && letter.reason.contains("code 6"),
            "{}",
            letter.reason
        );
        dead.push(
            codec::decode_as(ContentType::current(Encoding::Bincode), &letter.payload)?.event_id,
        );
    }
    dead.sort();
    let mut want = poisoned.clone();
    want.sort();
    assert_eq!(dead, want);
    let metrics = stack.ingest_metrics().await?;
    assert_eq!(
        metric(
            &metrics,
            "sightline_ingest_dead_letters_total",
            "reason=\"Insert\""
        ),
        4.0
    );
    stack.stop().await
}

/// A table changed under the service makes ClickHouse reject every row; that must not empty
/// the stream into the dead-letter stream. Ingest retries until the table is put back, then
/// everything lands and nothing was dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_changed_under_ingest_is_retried_not_dead_lettered() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack
        .clickhouse
        .query("ALTER TABLE sightline.events MODIFY COLUMN frame_seq String")
        .await?;
    let events = known_events("edge-d", "drift", 20);
    stack.publish(events, Encoding::Bincode).await?;
    // ClickHouse rejects the rows as bad data (the writer sees permanent errors), and the
    // writer retries them instead of bisecting...
    let metrics = stack
        .wait_for_ingest_metrics("rejected INSERTs retried", Duration::from_secs(30), |m| {
            metric(
                m,
                "sightline_ingest_inserts_total",
                "outcome=\"PermanentError\"",
            ) >= 2.0
                && metric(m, "sightline_ingest_insert_retries_total", "") >= 2.0
        })
        .await?;
    // ...and nothing is dead-lettered, because the table is not what ingest started with.
    assert_eq!(
        metric(&metrics, "sightline_ingest_dead_letters_total", ""),
        0.0,
        "{metrics}"
    );
    stack
        .clickhouse
        .query("ALTER TABLE sightline.events MODIFY COLUMN frame_seq UInt64")
        .await?;
    let stored = stack.wait_for_events("camera=drift", 20).await?;
    assert_eq!(stored.len(), 20);
    assert!(stack.dead_letters(10).await?.is_empty());
    stack.stop().await
}
