//! The dead-letter path: what cannot be stored is kept, with the reason, never dropped.
//!
//! A dead letter carries the original payload and headers plus
//! `Sightline-Deadletter-Reason`, `Sightline-Original-Subject` and
//! `Sightline-Original-Sequence`, and is published with `Nats-Msg-Id = dlq-<sequence>` so a
//! retry does not store it twice. Only after JetStream acknowledged the dead letter is the
//! original message terminated (`AckKind::Term`).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, message::PublishMessage};
use sightline_runtime::retry::retry;
use sightline_shared::{Backoff, subjects};
use tokio_util::sync::CancellationToken;

use crate::metrics::{DeadLetterReason, Metrics};

/// Returned when shutdown interrupted a retry loop; the message stays unacknowledged and
/// JetStream redelivers it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cancelled;

/// Publishes dead letters.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetters {
    js: jetstream::Context,
    metrics: Metrics,
}

impl DeadLetters {
    pub(crate) fn new(js: jetstream::Context, metrics: Metrics) -> Self {
        Self { js, metrics }
    }

    /// Keeps `message` in the dead-letter stream with `reason`, then terminates it.
    /// Retries the publish until it is acknowledged or `cancel` fires.
    pub(crate) async fn send(
        &self,
        message: &jetstream::Message,
        reason: DeadLetterReason,
        detail: &str,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        // Without the stream sequence (never seen for JetStream deliveries) the dead letter
        // gets no Msg-Id: a possible duplicate dead letter beats a dropped one.
        let sequence = message.info().map(|i| i.stream_sequence).ok();
        // Keep the original headers (Content-Type and any of the producer's own) but not
        // JetStream's control headers (Nats-Expected-*, Nats-Rollup, Nats-Msg-Id, ...): they
        // were meant for the events stream and could make the dead-letter stream refuse it.
        let mut headers: HeaderMap = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter(|(name, _)| {
                !AsRef::<str>::as_ref(*name)
                    .to_ascii_lowercase()
                    .starts_with("nats-")
            })
            .flat_map(|(name, values)| values.iter().map(move |v| (name.clone(), v.clone())))
            .collect();
        headers.insert(
            subjects::DEADLETTER_REASON_HEADER,
            header_safe(&format!("{reason:?}: {detail}")).as_str(),
        );
        headers.insert(
            subjects::DEADLETTER_SUBJECT_HEADER,
            header_safe(&message.subject).as_str(),
        );
        if let Some(sequence) = sequence {
            headers.insert(
                subjects::DEADLETTER_SEQUENCE_HEADER,
                sequence.to_string().as_str(),
            );
        }
        // A message within the server's size limit may not fit beside the dead letter's
        // headers (a picture just under the limit): then the reason is kept without the
        // payload, said so in a header and logged, rather than retrying a publish that can
        // never go (which would stall everything behind it).
        let mut payload = message.payload.clone();
        let max = self.js.client().server_info().max_payload;
        let header_bytes: usize = headers
            .iter()
            .map(|(name, values)| {
                AsRef::<str>::as_ref(name).len()
                    + values.iter().map(|v| v.as_str().len() + 4).sum::<usize>()
            })
            .sum();
        if max > 0 && payload.len() + header_bytes + 1024 > max {
            tracing::error!(
                subject = %message.subject, bytes = payload.len(), max_payload = max,
                "a dead letter would be over the server's max_payload: keeping its reason and headers without the payload"
            );
            headers.insert(
                subjects::DEADLETTER_PAYLOAD_OMITTED_HEADER,
                format!(
                    "{} bytes, over the server's max_payload of {max} with the headers",
                    payload.len()
                )
                .as_str(),
            );
            payload = bytes::Bytes::new();
        }
        let subject = subjects::deadletter_subject(&message.subject);
        let published = retry(
            &format!("publish the dead letter of stream sequence {sequence:?}"),
            cancel,
            Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            |_| true,
            || self.publish(&subject, payload.clone(), headers.clone(), sequence),
        )
        .await;
        if !matches!(published, Ok(Some(()))) {
            return Err(Cancelled);
        }
        tracing::error!(
            subject = %message.subject, sequence, reason = ?reason, detail,
            "message could not be stored; kept in the dead-letter stream"
        );
        self.metrics.dead_letter(reason);
        // The dead letter is safe; a redelivery would only make a duplicate dead letter,
        // which the Nats-Msg-Id above suppresses. So shutdown does not wait for the ack
        // behind a NATS that is gone.
        let terminated = tokio::select! {
            terminated = message.ack_with(AckKind::Term) => terminated,
            () = cancel.cancelled() => return Err(Cancelled),
        };
        if let Err(error) = terminated {
            tracing::warn!(%error, sequence, "failed to terminate dead-lettered message");
            self.metrics.ack_errors.inc();
        }
        Ok(())
    }

    async fn publish(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        headers: HeaderMap,
        sequence: Option<u64>,
    ) -> Result<(), async_nats::Error> {
        let mut publish = PublishMessage::build().payload(payload).headers(headers);
        if let Some(sequence) = sequence {
            publish = publish.message_id(format!("dlq-{sequence}"));
        }
        self.js
            .send_publish(subject.to_owned(), publish)
            .await?
            .await?;
        Ok(())
    }
}

/// NATS header values cannot hold line breaks; keep them on one bounded line.
fn header_safe(s: &str) -> String {
    s.chars()
        .take(1000)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
