//! Edge heartbeats: a second durable consumer reads `SIGHTLINE_HEARTBEATS` and writes each
//! heartbeat as a row of `edge_heartbeats`, acknowledging only after the insert. Heartbeats of
//! schema v1 and v2 are read (see `sightline_shared::heartbeat`); a message that is neither
//! goes to the dead-letter stream with the reason. Heartbeats
//! are few (one per edge every few seconds), so batches are small and the loop is simple:
//! fetch what is there (up to a second), insert it, ack it; an insert that fails is retried
//! after a backoff by leaving the messages unacknowledged.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use sightline_runtime::retry::{pause, start_up_backoff};
use sightline_shared::heartbeat::Heartbeat;
use sightline_shared::{codec, subjects};
use sightline_store::insert::insert_rows;
use sightline_store::{HeartbeatRow, tables};
use tokio_util::sync::CancellationToken;

use crate::deadletter::DeadLetters;
use crate::metrics::{DeadLetterReason, Metrics};

/// The durable consumer's name.
pub(crate) const DURABLE: &str = "sightline-ingest-heartbeats";
/// Most heartbeats per fetch (and per INSERT).
const FETCH: usize = 1000;

/// Creates (or updates) the heartbeats consumer.
pub(crate) async fn declare(
    js: &jetstream::Context,
    ack_wait: Duration,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = js.get_stream(subjects::HEARTBEATS_STREAM).await?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(DURABLE.into()),
            description: Some("Sightline ingest of edge heartbeats into ClickHouse".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("failed to create or update consumer {DURABLE}"))
}

/// Checks one message: a v1 or v2 heartbeat from the edge its subject names.
fn check(message: &jetstream::Message) -> Result<HeartbeatRow, (DeadLetterReason, String)> {
    let content_type = message
        .headers
        .as_ref()
        .and_then(|h| h.get(codec::CONTENT_TYPE_HEADER))
        .map(|v| v.as_str());
    let heartbeat = Heartbeat::decode(content_type, &message.payload)
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

/// Consumes heartbeats until `cancel` fires.
pub(crate) async fn run(
    consumer: consumer::PullConsumer,
    client: clickhouse::Client,
    dead_letters: DeadLetters,
    metrics: Metrics,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut backoff = start_up_backoff();
    while !cancel.is_cancelled() {
        let fetched = tokio::select! {
            () = cancel.cancelled() => return,
            fetched = fetch(&consumer) => fetched,
        };
        let messages = match fetched {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "fetching heartbeats failed");
                pause(&mut backoff, &cancel).await;
                continue;
            }
        };
        let mut rows = Vec::new();
        let mut stored = Vec::new();
        for message in messages {
            match check(&message) {
                Ok(row) => {
                    rows.push(row);
                    stored.push(message);
                }
                Err((reason, detail)) => {
                    tracing::error!(subject = %message.subject, detail, "a heartbeat cannot be stored; dead-lettering it");
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
        match insert_rows(&client, tables::EDGE_HEARTBEATS, &rows, timeout, None).await {
            Ok(()) => {
                backoff.reset();
                metrics.heartbeats_stored.inc_by(rows.len() as u64);
                for message in stored {
                    if let Err(error) = message.ack().await {
                        metrics.ack_errors.inc();
                        tracing::warn!(%error, "acking a heartbeat failed (it will be stored again; the copies collapse)");
                    }
                }
            }
            Err(error) => {
                metrics.heartbeat_insert_errors.inc();
                tracing::warn!(%error, heartbeats = rows.len(), "inserting heartbeats failed; they will be redelivered");
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

async fn fetch(consumer: &consumer::PullConsumer) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = consumer
        .fetch()
        .max_messages(FETCH)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        out.push(message.map_err(|e| anyhow::anyhow!(e))?);
    }
    Ok(out)
}
