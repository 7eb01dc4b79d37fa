//! The small streams beside events: edge heartbeats and track records. Each has its own
//! durable consumer that fetches what is there (up to a second), checks every message,
//! writes the valid ones as rows of one table and acknowledges them only after the insert;
//! a message that fails its check goes to the dead-letter stream with the reason. They are
//! few next to events (a heartbeat per edge every few seconds, a record per object per
//! minute), so the loop is simple: an insert that fails is retried after a backoff by
//! acknowledging negatively (the messages come back).
//!
//! Heartbeats of schema v1 and v2 are read (see `sightline_shared::heartbeat`); track
//! records of schema v1 (see `sightline_shared::track`), from the camera their subject names.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use sightline_runtime::retry::{pause, start_up_backoff};
use sightline_shared::heartbeat::Heartbeat;
use sightline_shared::{codec, subjects};
use sightline_store::insert::insert_rows;
use sightline_store::{HeartbeatRow, TrackRow, tables};
use tokio_util::sync::CancellationToken;

use crate::deadletter::DeadLetters;
use crate::metrics::{DeadLetterReason, Metrics};

/// Most messages per fetch (and per INSERT).
const FETCH: usize = 1000;

/// Why a message cannot be stored, for its dead letter.
type Refusal = (DeadLetterReason, String);
/// How a message becomes a row, or why it cannot.
type Check<R> = Box<dyn Fn(&jetstream::Message) -> Result<R, Refusal> + Send + Sync>;

/// One side stream: where it is, what its rows are and how a message becomes one.
pub(crate) struct Side<R> {
    pub stream: &'static str,
    pub durable: &'static str,
    pub description: &'static str,
    /// What one message is, for logs: `heartbeat`, `track record`.
    pub what: &'static str,
    pub table: &'static str,
    pub check: Check<R>,
    pub stored: Counter,
    pub insert_errors: Counter,
    pub ack_errors: Counter,
}

/// Edge heartbeats into `edge_heartbeats`.
pub(crate) fn heartbeats(metrics: &Metrics) -> Side<HeartbeatRow> {
    Side {
        stream: subjects::HEARTBEATS_STREAM,
        durable: "sightline-ingest-heartbeats",
        description: "Sightline ingest of edge heartbeats into ClickHouse",
        what: "heartbeat",
        table: tables::EDGE_HEARTBEATS,
        check: Box::new(check_heartbeat),
        stored: metrics.heartbeats_stored.clone(),
        insert_errors: metrics.heartbeat_insert_errors.clone(),
        ack_errors: metrics.ack_errors.clone(),
    }
}

/// Track records into `tracks`; times may be up to `max_future_skew_ms` ahead of ingest's
/// clock, like events'.
pub(crate) fn tracks(metrics: &Metrics, max_future_skew_ms: i64) -> Side<TrackRow> {
    Side {
        stream: subjects::TRACKS_STREAM,
        durable: "sightline-ingest-tracks",
        description: "Sightline ingest of track records into ClickHouse",
        what: "track record",
        table: tables::TRACKS,
        check: Box::new(move |message| check_track(message, max_future_skew_ms)),
        stored: metrics.tracks_stored.clone(),
        insert_errors: metrics.track_insert_errors.clone(),
        ack_errors: metrics.ack_errors.clone(),
    }
}

fn content_type(message: &jetstream::Message) -> Option<&str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(codec::CONTENT_TYPE_HEADER))
        .map(|v| v.as_str())
}

/// A v1 or v2 heartbeat from the edge its subject names.
fn check_heartbeat(message: &jetstream::Message) -> Result<HeartbeatRow, Refusal> {
    let heartbeat = Heartbeat::decode(content_type(message), &message.payload)
        .map_err(|e| (DeadLetterReason::Decode, e.to_string()))?;
    let expected = subjects::heartbeat_subject(&heartbeat.edge_id);
    if message.subject.as_str() != expected {
        return Err((
            DeadLetterReason::Subject,
            format!(
                "edge_id {:?} does not match the subject {}",
                heartbeat.edge_id, message.subject
            ),
        ));
    }
    Ok(HeartbeatRow::from(heartbeat))
}

/// A valid v1 track record from the edge and camera its subject names.
fn check_track(message: &jetstream::Message, max_future_skew_ms: i64) -> Result<TrackRow, Refusal> {
    let record = codec::decode_track(content_type(message), &message.payload)
        .map_err(|e| (DeadLetterReason::Decode, e.to_string()))?;
    record
        .validate(sightline_runtime::now(), max_future_skew_ms)
        .map_err(|e| (DeadLetterReason::Validation, e.to_string()))?;
    if subjects::parse_track_subject(&message.subject)
        != Some((record.edge_id.as_str(), record.camera_id.as_str()))
    {
        return Err((
            DeadLetterReason::Subject,
            format!(
                "edge_id {:?} and camera_id {:?} do not match the subject {}",
                record.edge_id, record.camera_id, message.subject
            ),
        ));
    }
    Ok(TrackRow::from(record))
}

/// A durable consumer of one side stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Durable {
    pub stream: &'static str,
    pub name: &'static str,
    pub description: &'static str,
}

impl<R> Side<R> {
    pub(crate) fn durable(&self) -> Durable {
        Durable {
            stream: self.stream,
            name: self.durable,
            description: self.description,
        }
    }
}

/// Declares a side stream's consumer, retrying until it works or `cancel` fires (`None`).
pub(crate) async fn declare_with_retry(
    js: &jetstream::Context,
    durable: Durable,
    ack_wait: Duration,
    cancel: &CancellationToken,
) -> Option<consumer::PullConsumer> {
    let what = format!("declare the consumer {}", durable.name);
    sightline_runtime::retry::retry(
        &what,
        cancel,
        start_up_backoff(),
        |_| true,
        || declare(js, durable, ack_wait),
    )
    .await
    .ok()
    .flatten()
}

/// What a side stream's loop writes with.
#[derive(Clone)]
pub(crate) struct Writing {
    pub client: clickhouse::Client,
    pub dead_letters: DeadLetters,
    /// Bounds each insert.
    pub timeout: Duration,
    pub cancel: CancellationToken,
}

/// Creates (or updates) a side stream's durable consumer.
async fn declare(
    js: &jetstream::Context,
    durable: Durable,
    ack_wait: Duration,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = js.get_stream(durable.stream).await?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.name.into()),
            description: Some(durable.description.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("failed to create or update consumer {}", durable.name))
}

/// Consumes the side stream until `cancel` fires.
pub(crate) async fn run<R>(consumer: consumer::PullConsumer, side: Side<R>, writing: Writing)
where
    R: clickhouse::RowWrite + for<'a> clickhouse::Row<Value<'a> = R> + Send + Sync + 'static,
{
    let Writing {
        client,
        dead_letters,
        timeout,
        cancel,
    } = writing;
    let what = side.what;
    let mut backoff = start_up_backoff();
    while !cancel.is_cancelled() {
        let fetched = tokio::select! {
            () = cancel.cancelled() => return,
            fetched = fetch(&consumer, FETCH) => fetched,
        };
        let messages = match fetched {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, what, "fetching from a side stream failed");
                pause(&mut backoff, &cancel).await;
                continue;
            }
        };
        let mut rows = Vec::new();
        let mut stored = Vec::new();
        for message in messages {
            match (side.check)(&message) {
                Ok(row) => {
                    rows.push(row);
                    stored.push(message);
                }
                Err((reason, detail)) => {
                    tracing::error!(subject = %message.subject, detail, what, "a message cannot be stored; dead-lettering it");
                    if dead_letters
                        .send(&message, reason, &detail, &cancel)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if rows.is_empty() {
            continue;
        }
        match insert_rows(&client, side.table, &rows, timeout, None).await {
            Ok(()) => {
                backoff.reset();
                side.stored.inc_by(rows.len() as u64);
                for message in stored {
                    if let Err(error) = message.ack().await {
                        side.ack_errors.inc();
                        tracing::warn!(%error, what, "an ack failed (the message will be stored again; the copies collapse)");
                    }
                }
            }
            Err(error) => {
                side.insert_errors.inc();
                tracing::warn!(%error, what, rows = rows.len(), "an insert failed; the messages will be redelivered");
                for message in stored {
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
                pause(&mut backoff, &cancel).await;
            }
        }
    }
}

/// What is there, up to `max` messages, waiting at most a second.
pub(crate) async fn fetch(
    consumer: &consumer::PullConsumer,
    max: usize,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = consumer
        .fetch()
        .max_messages(max)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        out.push(message.map_err(|e| anyhow::anyhow!(e))?);
    }
    Ok(out)
}
