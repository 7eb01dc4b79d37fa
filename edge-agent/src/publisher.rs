//! Store-and-forward publishing to JetStream.
//!
//! Each event goes out on `sightline.events.<edge>.<camera>` with `Nats-Msg-Id = event_id`
//! and the versioned `Content-Type`; each track record on `sightline.tracks.<edge>.<camera>`
//! with `Nats-Msg-Id = record_id`. Up to `max_in_flight` publishes await their acks at once;
//! when the window is full the publisher stops taking events from the outbox, so memory stays
//! bounded and the backpressure reaches the cameras. An event is confirmed to the outbox only
//! after JetStream acknowledged it. A failed publish (timeout, no responders, disconnected)
//! is retried after a capped, jittered backoff (a failed track record apart, without pausing
//! events: see `Publisher::failed`); a retried event may land after newer ones, and
//! a re-publish of one that did land is dropped by JetStream's duplicate window or, later, by
//! ClickHouse's deduplication.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sightline_shared::{Backoff, ContentType, Encoding, Kind, codec, subjects};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{DropReason, Metrics};
use crate::outbox::{Outbox, Outgoing};

type AckFuture = Pin<
    Box<dyn Future<Output = (Outgoing, Result<jetstream::publish::PublishAck, String>)> + Send>,
>;

/// What a publisher run ended with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Events JetStream acknowledged.
    pub published: u64,
    /// Events still unacknowledged when the run was stopped.
    pub unpublished: u64,
}

/// Publishes events from an outbox.
#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
    encoding: Encoding,
    max_in_flight: usize,
    metrics: Metrics,
}

impl Publisher {
    pub fn new(
        js: jetstream::Context,
        encoding: Encoding,
        max_in_flight: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            js,
            encoding,
            max_in_flight,
            metrics,
        }
    }

    /// Publishes until the outbox is closed and every event is acknowledged, or until `stop`
    /// fires (then whatever is unacknowledged is reported, and stays in a durable outbox).
    pub async fn run<O: Outbox>(&self, outbox: &mut O, stop: &CancellationToken) -> PublishReport {
        let mut in_flight: FuturesUnordered<AckFuture> = FuturesUnordered::new();
        let mut retry: VecDeque<Outgoing> = VecDeque::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut paused_until: Option<Instant> = None;
        let mut parked = Parked::default();
        let mut outbox_open = true;
        let mut report = PublishReport::default();
        loop {
            if !outbox_open && in_flight.is_empty() && retry.is_empty() && parked.rows.is_empty() {
                break;
            }
            let window_open = in_flight.len() < self.max_in_flight && paused_until.is_none();
            let resume_at = paused_until.unwrap_or_else(Instant::now);
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    report.unpublished = (in_flight.len() + retry.len() + parked.rows.len()) as u64;
                    break;
                }
                Some((outgoing, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.metrics.in_flight.set(in_flight.len() as i64);
                    match result {
                        Ok(ack) => {
                            if ack.duplicate {
                                self.metrics.events_duplicate.inc();
                            }
                            match outgoing.content_type.kind {
                                Kind::Event => backoff.reset(),
                                Kind::Track => parked.backoff.reset(),
                            }
                            outbox.confirm(outgoing.seq).await;
                            self.metrics.events_published.inc();
                            report.published += 1;
                        }
                        Err(error) => self.failed(outgoing, &error, &mut retry, &mut backoff, &mut paused_until, &mut parked),
                    }
                }
                () = tokio::time::sleep_until(resume_at), if paused_until.is_some() => paused_until = None,
                () = tokio::time::sleep_until(parked.until.unwrap_or_else(Instant::now)), if parked.until.is_some() => {
                    parked.until = None;
                    retry.extend(parked.rows.drain(..));
                }
                next = next_event(&mut retry, outbox), if window_open && (outbox_open || !retry.is_empty()) => {
                    let Some(outgoing) = next else {
                        outbox_open = false;
                        continue;
                    };
                    let Some((content_type, payload)) = self.payload(&outgoing) else {
                        // Never publishable: confirm it so a durable outbox does not offer
                        // it again (it was counted and logged as dropped).
                        outbox.confirm(outgoing.seq).await;
                        continue;
                    };
                    let subject = subjects::subject_for(outgoing.content_type.kind, &outgoing.head.edge_id, &outgoing.head.camera_id);
                    let message = PublishMessage::build()
                        .payload(payload)
                        .message_id(outgoing.head.event_id.to_string())
                        .header(codec::CONTENT_TYPE_HEADER, content_type.to_string().as_str());
                    match self.js.send_publish(subject, message).await {
                        Ok(ack) => {
                            in_flight.push(Box::pin(async move {
                                let result = ack.await.map_err(|e| e.to_string());
                                (outgoing, result)
                            }));
                            self.metrics.in_flight.set(in_flight.len() as i64);
                        }
                        Err(error) => {
                            self.failed(outgoing, &error.to_string(), &mut retry, &mut backoff, &mut paused_until, &mut parked);
                        }
                    }
                }
            }
        }
        report
    }

    /// A publish failed: an event waits for its retry and pauses the publisher (the link or
    /// JetStream is in trouble); a track record is parked apart and pauses only the parked
    /// ones, so a cloud without the tracks stream (not upgraded yet) never holds events
    /// back. Past [`MAX_PARKED`] parked records a track record waits like an event.
    fn failed(
        &self,
        outgoing: Outgoing,
        error: &str,
        retry: &mut VecDeque<Outgoing>,
        backoff: &mut Backoff,
        paused_until: &mut Option<Instant>,
        parked: &mut Parked,
    ) {
        self.metrics.publish_errors.inc();
        if outgoing.content_type.kind == Kind::Track && parked.rows.len() < MAX_PARKED {
            let delay = parked.backoff.next_delay(rand::random());
            tracing::warn!(record_id = %outgoing.head.event_id, error, retry_in_ms = delay.as_millis() as u64, "publishing a track record failed, will retry (events go on)");
            parked.rows.push_back(outgoing);
            parked.until.get_or_insert(Instant::now() + delay);
            return;
        }
        let delay = backoff.next_delay(rand::random());
        tracing::warn!(event_id = %outgoing.head.event_id, error, retry_in_ms = delay.as_millis() as u64, "publish failed, will retry");
        retry.push_back(outgoing);
        *paused_until = Some(Instant::now() + delay);
    }

    /// The payload and its content type: the stored payload as it is, or, with the JSON
    /// encoding configured, re-encoded as JSON. Rows of another schema version (buffered by an
    /// earlier agent) always go as they are, under their own content type: this build may
    /// not read them whole, and ingest reads every version it supports. One that cannot be
    /// re-encoded (a damaged stored payload) is dropped, counted and logged, because
    /// retrying can never fix it.
    fn payload(&self, outgoing: &Outgoing) -> Option<(ContentType, Bytes)> {
        if self.encoding == outgoing.content_type.encoding || !outgoing.is_current() {
            return Some((outgoing.content_type, outgoing.payload.clone()));
        }
        let kind = outgoing.content_type.kind;
        let encoded = match kind {
            Kind::Event => outgoing
                .event()
                .and_then(|event| codec::encode(&event, self.encoding)),
            Kind::Track => codec::decode_track_as(outgoing.content_type, &outgoing.payload)
                .and_then(|record| codec::encode_track(&record, self.encoding)),
        };
        match encoded {
            Ok(payload) => Some((ContentType::current_of(kind, self.encoding), payload.into())),
            Err(error) => {
                tracing::error!(event_id = %outgoing.head.event_id, camera = %outgoing.head.camera_id, %error, "dropping an event that cannot be encoded");
                self.metrics.dropped(DropReason::Invalid, 1);
                None
            }
        }
    }
}

/// Retries first, then new events. Cancel-safe as long as the outbox's `next` is.
/// Most track records parked after failed publishes (they are in the buffer too; this bounds
/// the memory a cloud without the tracks stream can cost).
const MAX_PARKED: usize = 10_000;

/// Track records whose publish failed, retried together when `until` comes.
struct Parked {
    rows: VecDeque<Outgoing>,
    backoff: Backoff,
    until: Option<Instant>,
}

impl Default for Parked {
    fn default() -> Self {
        Self {
            rows: VecDeque::new(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            until: None,
        }
    }
}

async fn next_event<O: Outbox>(retry: &mut VecDeque<Outgoing>, outbox: &mut O) -> Option<Outgoing> {
    match retry.pop_front() {
        Some(event) => Some(event),
        None => outbox.next().await,
    }
}
