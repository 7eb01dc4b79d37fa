//! Watching the durable consumer's position, every `consumer.info_interval_secs`: the
//! backlog gauges, the ack floor a re-declared durable resumes from, and events the stream
//! removed before any replica received them.
//!
//! The events stream has limits (`max_age_hours`, `max_bytes`, oldest discarded first), and
//! JetStream applies them whether or not ingest has consumed the messages. When ingest falls
//! that far behind (ClickHouse down for days, too few replicas), events are lost. They cannot
//! be got back, but they are shown and counted:
//!
//! - `unreachable` (a gauge): sequences below the stream's first sequence that the consumer
//!   has not reached yet. They are gone; the consumer passes over them when it moves on.
//! - `lost` (a counter): sequences the consumer passed over without delivering them. Between
//!   two readings of the consumer, its delivered stream sequence advanced by `ds` and its
//!   consumer sequence (one per delivery) by `dc`; with no redelivery in between, exactly
//!   `ds - dc` sequences were passed over. A redelivery in the same interval also takes a
//!   consumer sequence, so the count is then short by as many: it never counts a delivered
//!   event as lost. Only the leader counts, so replicas do not count the same loss twice.
//!
//! The stream is assumed to hold events only (its subjects are the consumer's filter), so a
//! sequence passed over is an event, whether the limits or an operator removed it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use sightline_shared::subjects;
use tokio_util::sync::CancellationToken;

use crate::leader::Leadership;
use crate::metrics::Metrics;

/// The durable's ack floor (stream sequence) as last read: everything at or below it is
/// stored. Shared with the re-declare path.
#[derive(Debug, Clone, Default)]
pub struct AckFloor(Arc<AtomicU64>);

impl AckFloor {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn raise(&self, floor: u64) {
        self.0.fetch_max(floor, Ordering::Relaxed);
    }
}

/// Counts the stream sequences the consumer passes over without delivering them.
#[derive(Debug, Default)]
pub struct LossTracker {
    /// The consumer's delivered (stream, consumer) sequences at the last reading.
    last: Option<(u64, u64)>,
}

impl LossTracker {
    /// Takes one reading of the consumer's delivered stream and consumer sequences and returns
    /// how many stream sequences it passed over since the last one. The first reading, and
    /// one of a durable declared anew (its sequences went back), only set the baseline.
    pub fn observe(&mut self, stream_seq: u64, consumer_seq: u64) -> u64 {
        let passed = match self.last {
            Some((s, c)) if stream_seq >= s && consumer_seq >= c => {
                (stream_seq - s).saturating_sub(consumer_seq - c)
            }
            _ => 0,
        };
        self.last = Some((stream_seq, consumer_seq));
        passed
    }
}

/// Sequences removed from the stream (below `first`) that the consumer, delivered up to
/// `delivered`, has not reached.
pub fn unreachable(first: u64, delivered: u64) -> u64 {
    first.saturating_sub(1).saturating_sub(delivered)
}

/// Reads the stream's and the consumer's state every `every` until `cancel` fires:
/// publishes the backlog gauges, raises `ack_floor`, and (on the leader only, so replicas
/// do not count the same loss) counts events the stream removed before delivery.
pub async fn watch(
    js: jetstream::Context,
    mut consumer: PullConsumer,
    every: Duration,
    ack_floor: AckFloor,
    leadership: Leadership,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut losses = LossTracker::default();
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let first = match js.get_stream(subjects::EVENTS_STREAM).await {
            Ok(stream) => stream.cached_info().state.first_sequence,
            Err(error) => {
                tracing::debug!(%error, "failed to read stream info");
                continue;
            }
        };
        let info = match consumer.info().await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "failed to read consumer info");
                continue;
            }
        };
        metrics.consumer_pending.set(info.num_pending as i64);
        metrics
            .consumer_ack_pending
            .set(info.num_ack_pending as i64);
        ack_floor.raise(info.ack_floor.stream_sequence);
        let delivered = &info.delivered;
        metrics
            .events_unreachable
            .set(unreachable(first, delivered.stream_sequence) as i64);
        let before = losses.last.map_or(0, |(s, _)| s);
        let lost = losses.observe(delivered.stream_sequence, delivered.consumer_sequence);
        if lost > 0 && leadership.is_leader() {
            metrics.events_lost.inc_by(lost);
            tracing::error!(
                count = lost,
                after_sequence = before,
                up_to_sequence = delivered.stream_sequence,
                stream = %info.stream_name,
                "events were removed from the stream by its limits (max_age_hours, max_bytes) or by hand before ingest received them; they are lost"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_sequences_passed_over_once() {
        let mut t = LossTracker::default();
        // The first reading is the baseline.
        assert_eq!(t.observe(100, 100), 0);
        // 200 delivered, none passed over.
        assert_eq!(t.observe(300, 300), 0);
        // Stuck: nothing moves, nothing is counted yet (the gap is `unreachable`).
        assert_eq!(unreachable(800, 300), 499);
        assert_eq!(t.observe(300, 300), 0);
        // Moving on: 10 delivered from 800, 499 passed over.
        assert_eq!(t.observe(809, 310), 499);
        assert_eq!(unreachable(800, 809), 0);
        assert_eq!(t.observe(809, 310), 0);
    }

    #[test]
    fn redeliveries_make_it_count_short_never_over() {
        let mut t = LossTracker::default();
        t.observe(100, 100);
        // 50 redeliveries and 20 new deliveries: nothing was passed over.
        assert_eq!(t.observe(120, 170), 0);
        // 30 passed over, 5 new and 40 redelivered in the same interval: counted short.
        assert_eq!(t.observe(155, 215), 0);
    }

    #[test]
    fn a_durable_declared_anew_only_sets_the_baseline() {
        let mut t = LossTracker::default();
        t.observe(500, 500);
        // Declared again from its ack floor: both sequences went back.
        assert_eq!(t.observe(450, 0), 0);
        assert_eq!(t.observe(460, 10), 0);
        assert_eq!(t.observe(600, 20), 130);
    }
}
