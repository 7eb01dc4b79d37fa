//! Answers edges' clock requests on `sightline.time` with ingest's clock
//! ([`sightline_shared::clock`]), so an edge can measure its offset from the cloud and report
//! it in heartbeats: a JetStream publish ack carries no time. A queue group: one replica
//! answers each request.

use async_nats::Client;
use futures::StreamExt as _;
use sightline_shared::clock::{TIME_SUBJECT, TimeReply};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The queue group the replicas answer in.
const QUEUE: &str = "sightline-ingest";

/// Answers until `cancel` fires; a lost subscription is made again (the client resubscribes
/// by itself after a reconnect; this covers the subscription ending).
pub(crate) async fn answer(nats: Client, metrics: Metrics, cancel: CancellationToken) {
    let mut backoff = sightline_runtime::retry::start_up_backoff();
    while !cancel.is_cancelled() {
        let mut requests = match nats.queue_subscribe(TIME_SUBJECT, QUEUE.into()).await {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to clock requests; retrying");
                sightline_runtime::retry::pause(&mut backoff, &cancel).await;
                continue;
            }
        };
        backoff.reset();
        loop {
            let request = tokio::select! {
                () = cancel.cancelled() => return,
                request = requests.next() => request,
            };
            let Some(request) = request else { break };
            let Some(reply) = request.reply else { continue };
            let answer = TimeReply {
                now_ms: sightline_runtime::now().as_millis(),
            };
            let body = serde_json::to_vec(&answer).unwrap_or_default();
            match nats.publish(reply, body.into()).await {
                Ok(()) => {
                    metrics.time_requests.inc();
                }
                Err(error) => tracing::debug!(%error, "a clock answer was not sent"),
            }
        }
    }
}
