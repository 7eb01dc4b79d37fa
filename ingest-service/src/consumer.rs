//! The consume loop: fetch, decode and validate, batch by rows, bytes and time, insert,
//! then acknowledge.
//!
//! Ordering of effects per batch: INSERT succeeds -> ack every message of the batch. A crash
//! between the two redelivers the batch, and the `ReplacingMergeTree` plus `LIMIT 1 BY
//! event_id` on reads make the second copy invisible. While a transient failure is retried the
//! messages are kept alive with in-progress acks so JetStream does not hand them to another
//! replica. A permanent failure bisects the batch until the bad rows are alone, and those go
//! to the dead-letter stream.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use sightline_shared::{Backoff, DetectionEvent, Timestamp, codec, subjects};
use tokio_util::sync::CancellationToken;

use crate::config::{BatchSettings, ConsumerSettings};
use crate::deadletter::{Cancelled, DeadLetters};
use crate::metrics::{DeadLetterReason, Metrics};
use crate::schema::EventRow;
use crate::sink::{InsertError, Sink};

/// How long the flush at shutdown may take before the batch is left to redelivery.
const LAST_FLUSH: Duration = Duration::from_secs(5);

/// Checks one message: content type, payload, contract, and that the event came on its own
/// camera's subject. The error is the dead-letter reason and a readable detail.
pub fn check_message(
    subject: &str,
    content_type: Option<&str>,
    payload: &[u8],
    now: Timestamp,
) -> Result<DetectionEvent, (DeadLetterReason, String)> {
    let event = codec::decode(content_type, payload)
        .map_err(|e| (DeadLetterReason::Decode, e.to_string()))?;
    event
        .validate(now)
        .map_err(|e| (DeadLetterReason::Validation, e.to_string()))?;
    match subjects::parse_event_subject(subject) {
        Some((edge, camera)) if edge == event.edge_id && camera == event.camera_id => Ok(event),
        _ => Err((
            DeadLetterReason::Subject,
            format!(
                "event of edge {:?} camera {:?} arrived on subject {subject:?}",
                event.edge_id, event.camera_id
            ),
        )),
    }
}

/// The `Content-Type` header of a message, matched case-insensitively.
fn content_type(message: &jetstream::Message) -> Option<&str> {
    let headers = message.headers.as_ref()?;
    if let Some(value) = headers.get(codec::CONTENT_TYPE_HEADER) {
        return Some(value.as_str());
    }
    headers
        .iter()
        .find(|(name, _): &(&async_nats::HeaderName, _)| {
            AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(codec::CONTENT_TYPE_HEADER)
        })
        .and_then(|(_, values)| values.first())
        .map(|value| value.as_str())
}

fn now() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

/// Messages waiting for their batch's INSERT, and their rows, index for index.
#[derive(Default)]
struct Batch {
    messages: Vec<jetstream::Message>,
    rows: Vec<EventRow>,
    bytes: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The consume loop's state.
pub struct Consumer {
    consumer: PullConsumer,
    settings: ConsumerSettings,
    batch: BatchSettings,
    sink: Sink,
    dead_letters: DeadLetters,
    metrics: Metrics,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub fn new(
        consumer: PullConsumer,
        settings: ConsumerSettings,
        batch: BatchSettings,
        sink: Sink,
        dead_letters: DeadLetters,
        metrics: Metrics,
    ) -> Self {
        Self {
            consumer,
            settings,
            batch,
            sink,
            dead_letters,
            metrics,
        }
    }

    /// Runs until `cancel` fires, then flushes what it holds (if ClickHouse takes it) and
    /// returns. Unflushed messages are simply not acknowledged: JetStream redelivers them.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut batch = Batch::default();
        let mut deadline = Instant::now();
        let mut reconnect = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        'connect: while !cancel.is_cancelled() {
            let messages = self
                .consumer
                .stream()
                .max_messages_per_batch(self.settings.fetch_batch)
                .expires(Duration::from_secs(5))
                .heartbeat(Duration::from_secs(2))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "failed to start pulling messages, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(reconnect.next_delay(rand::random())) => continue 'connect,
                        () = cancel.cancelled() => break 'connect,
                    }
                }
            };
            loop {
                let flush_at = tokio::time::Instant::from_std(deadline);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break 'connect,
                    () = tokio::time::sleep_until(flush_at), if !batch.is_empty() => {
                        if self.flush(&mut batch, &cancel).await.is_err() { break 'connect; }
                    }
                    next = messages.next() => match next {
                        Some(Ok(message)) => {
                            reconnect.reset();
                            self.metrics.messages_received.inc();
                            match check_message(&message.subject, content_type(&message), &message.payload, now()) {
                                Ok(event) => {
                                    if batch.is_empty() {
                                        deadline = Instant::now() + self.batch.max_wait();
                                    }
                                    batch.bytes += message.payload.len();
                                    batch.rows.push(EventRow::from(&event));
                                    batch.messages.push(message);
                                    self.metrics.pending_rows.set(batch.len() as i64);
                                    if batch.len() >= self.batch.max_rows || batch.bytes >= self.batch.max_bytes {
                                        if self.flush(&mut batch, &cancel).await.is_err() { break 'connect; }
                                    }
                                }
                                Err((reason, detail)) => {
                                    if self.dead_letters.send(&message, reason, &detail, &cancel).await.is_err() {
                                        break 'connect;
                                    }
                                }
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "error while pulling messages");
                        }
                        None => {
                            tracing::warn!("message stream ended, pulling again");
                            continue 'connect;
                        }
                    }
                }
            }
        }
        if !batch.is_empty() {
            // One last attempt with a short budget for the whole flush (insert and acks):
            // shutdown must not hang on a dead ClickHouse or NATS. Whatever is not stored
            // stays unacknowledged and is redelivered.
            let rows = batch.len();
            let last_try = CancellationToken::new();
            match tokio::time::timeout(LAST_FLUSH, self.flush(&mut batch, &last_try)).await {
                Ok(Ok(())) => tracing::info!(rows, "flushed the last batch on shutdown"),
                _ => tracing::warn!(
                    rows,
                    "could not flush on shutdown; JetStream will redeliver"
                ),
            }
        }
        Ok(())
    }

    /// Stores and acknowledges every message of `batch` (emptying it), bisecting around rows
    /// ClickHouse rejects and retrying transient failures until `cancel` fires.
    async fn flush(&self, batch: &mut Batch, cancel: &CancellationToken) -> Result<(), Cancelled> {
        let Batch { messages, rows, .. } = std::mem::take(batch);
        self.metrics.pending_rows.set(0);
        let mut ranges = vec![(0, rows.len())];
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let progress_every = Duration::from_secs(self.settings.ack_wait_secs) / 3;
        let mut last_progress = Instant::now();
        while let Some((lo, hi)) = ranges.pop() {
            match self.sink.insert(&rows[lo..hi]).await {
                Ok(()) => {
                    backoff.reset();
                    self.ack(&messages[lo..hi]).await;
                }
                Err(InsertError::Permanent { code, source }) if hi - lo > 1 => {
                    let mid = lo + (hi - lo) / 2;
                    tracing::warn!(code, error = %source, rows = hi - lo, "ClickHouse rejected a batch, bisecting");
                    ranges.push((mid, hi));
                    ranges.push((lo, mid));
                }
                Err(error @ InsertError::Permanent { .. }) => {
                    let detail = error.to_string();
                    self.dead_letters
                        .send(&messages[lo], DeadLetterReason::Insert, &detail, cancel)
                        .await?;
                }
                Err(error @ InsertError::Transient(_)) => {
                    self.metrics.insert_retries.inc();
                    ranges.push((lo, hi));
                    let delay = backoff.next_delay(rand::random());
                    tracing::warn!(%error, rows = hi - lo, retry_in_ms = delay.as_millis() as u64, "insert failed, retrying");
                    if last_progress.elapsed() >= progress_every {
                        self.keep_alive(&messages).await;
                        last_progress = Instant::now();
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = cancel.cancelled() => return Err(Cancelled),
                    }
                }
            }
        }
        Ok(())
    }

    async fn ack(&self, messages: &[jetstream::Message]) {
        for message in messages {
            match message.ack().await {
                Ok(()) => {
                    self.metrics.messages_acked.inc();
                }
                Err(error) => {
                    // Stored already; a redelivery is deduplicated downstream.
                    tracing::warn!(%error, "failed to ack a stored message");
                    self.metrics.ack_errors.inc();
                }
            }
        }
    }

    /// Tells JetStream the batch is still being worked on, so it is not redelivered.
    async fn keep_alive(&self, messages: &[jetstream::Message]) {
        for message in messages {
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "failed to send an in-progress ack");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_shared::{ContentType, Encoding, EventId, ModelInfo, SCHEMA_VERSION};

    fn event() -> DetectionEvent {
        let at = now();
        DetectionEvent {
            event_id: EventId::new_v7(at),
            schema_version: SCHEMA_VERSION,
            edge_id: "e1".into(),
            camera_id: "c1".into(),
            captured_at: at,
            frame_seq: 1,
            motion_score: 0.1,
            detections: vec![],
            model: ModelInfo {
                name: "m".into(),
                version: "1".into(),
            },
            inference_ms: 1.0,
            snapshot: None,
            description: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn sorts_bad_messages_by_reason() {
        let ct = ContentType::current(Encoding::Json).to_string();
        let good = codec::encode(&event(), Encoding::Json).unwrap();
        assert!(check_message("sightline.events.e1.c1", Some(&ct), &good, now()).is_ok());
        let (reason, detail) =
            check_message("sightline.events.e1.c2", Some(&ct), &good, now()).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Subject, "{detail}");
        let (reason, _) = check_message("sightline.events.e1.c1", None, &good, now()).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Decode);
        let (reason, _) =
            check_message("sightline.events.e1.c1", Some(&ct), b"\x00garbage", now()).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Decode);
        let mut bad = event();
        bad.motion_score = 7.0;
        let bytes = codec::encode(&bad, Encoding::Json).unwrap();
        let (reason, detail) =
            check_message("sightline.events.e1.c1", Some(&ct), &bytes, now()).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Validation);
        assert!(detail.contains("motion_score"), "{detail}");
    }
}
