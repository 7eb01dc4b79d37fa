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
//!   event as lost. Only a replica that led at both readings counts, so replicas do not
//!   count the same loss twice (with the election off, every replica counts: run one).
//!   A durable declared anew (its `created` time changes) starts a new baseline.
//!
//! Not counted: an event delivered to a replica whose stream copy is then removed is stored
//! by that replica; it is lost, uncounted, only if the replica also dies before its insert.
//!
//! The stream is assumed to hold events only (its subjects are the consumer's filter), so a
//! sequence passed over is an event, whether the limits or an operator removed it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use sightline_shared::subjects;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::leader::Leadership;
use crate::metrics::Metrics;

/// The durable's ack floor as last read, with the stream it belongs to. Shared with the
/// re-declare path ([`crate::nats::declare`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct AckFloor(Arc<Mutex<Option<Floor>>>);

/// Everything up to `sequence` in the stream created at `stream_created` is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    pub stream_created: OffsetDateTime,
    pub sequence: u64,
}

impl AckFloor {
    pub(crate) fn get(&self) -> Option<Floor> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest reading, not the highest: a durable re-created by an operator to replay
    /// from an earlier point has a lower floor, and that is the one to resume from.
    fn set(&self, floor: Floor) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(floor);
    }
}

/// One reading of the durable's delivered sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// When the durable was created: another value is another durable.
    durable: OffsetDateTime,
    stream_seq: u64,
    consumer_seq: u64,
    /// Whether this replica led when it took the reading.
    leader: bool,
}

/// Counts the stream sequences the consumer passes over without delivering them.
#[derive(Debug, Default)]
struct LossTracker {
    last: Option<Reading>,
}

impl LossTracker {
    /// Takes one reading and returns how many stream sequences the consumer passed over since
    /// the last one. Nothing is counted across a change of durable, or unless this replica
    /// led at both readings (a new leader's first interval overlaps its predecessor's last).
    fn observe(&mut self, now: Reading) -> u64 {
        let passed = match self.last {
            Some(prev)
                if prev.durable == now.durable
                    && prev.leader
                    && now.leader
                    && now.stream_seq >= prev.stream_seq
                    && now.consumer_seq >= prev.consumer_seq =>
            {
                (now.stream_seq - prev.stream_seq)
                    .saturating_sub(now.consumer_seq - prev.consumer_seq)
            }
            _ => 0,
        };
        self.last = Some(now);
        passed
    }
}

/// Sequences removed from the stream (below `first`) that the consumer, delivered up to
/// `delivered`, has not reached.
fn unreachable(first: u64, delivered: u64) -> u64 {
    first.saturating_sub(1).saturating_sub(delivered)
}

/// Reads the stream's and the consumer's state every `every` until `cancel` fires:
/// publishes the backlog gauges, records the latest `ack_floor`, and (on the leader only, so replicas
/// do not count the same loss) counts events the stream removed before delivery.
pub(crate) async fn watch(
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
        let (first, stream_created) = match js.get_stream(subjects::EVENTS_STREAM).await {
            Ok(stream) => {
                let info = stream.cached_info();
                (info.state.first_sequence, info.created)
            }
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
        metrics
            .consumer_ack_floor
            .set(info.ack_floor.stream_sequence as i64);
        ack_floor.set(Floor {
            stream_created,
            sequence: info.ack_floor.stream_sequence,
        });
        let delivered = &info.delivered;
        metrics
            .events_unreachable
            .set(unreachable(first, delivered.stream_sequence) as i64);
        let before = losses.last.map_or(0, |r| r.stream_seq);
        let lost = losses.observe(Reading {
            durable: info.created,
            stream_seq: delivered.stream_sequence,
            consumer_seq: delivered.consumer_sequence,
            leader: leadership.is_leader(),
        });
        if lost > 0 {
            metrics.events_lost.inc_by(lost);
            tracing::error!(
                count = lost,
                after_sequence = before,
                up_to_sequence = delivered.stream_sequence,
                stream = %info.stream_name,
                "the consumer passed over events the stream had removed (its limits max_age_hours, max_bytes, or by hand) before ingest received them; they are lost"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream_seq: u64, consumer_seq: u64) -> Reading {
        Reading {
            durable: OffsetDateTime::UNIX_EPOCH,
            stream_seq,
            consumer_seq,
            leader: true,
        }
    }

    #[test]
    fn counts_the_sequences_passed_over_once() {
        let mut t = LossTracker::default();
        // The first reading is the baseline.
        assert_eq!(t.observe(at(100, 100)), 0);
        // 200 delivered, none passed over.
        assert_eq!(t.observe(at(300, 300)), 0);
        // Stuck: nothing moves, nothing is counted yet (the gap is `unreachable`).
        assert_eq!(unreachable(800, 300), 499);
        assert_eq!(t.observe(at(300, 300)), 0);
        // Moving on: 10 delivered from 800, 499 passed over.
        assert_eq!(t.observe(at(809, 310)), 499);
        assert_eq!(unreachable(800, 809), 0);
        assert_eq!(t.observe(at(809, 310)), 0);
    }

    #[test]
    fn redeliveries_make_it_count_short_never_over() {
        let mut t = LossTracker::default();
        t.observe(at(100, 100));
        // 50 redeliveries and 20 new deliveries: nothing was passed over.
        assert_eq!(t.observe(at(120, 170)), 0);
        // 30 passed over, 5 new and 40 redelivered in the same interval: counted short.
        assert_eq!(t.observe(at(155, 215)), 0);
    }

    #[test]
    fn another_durable_only_sets_the_baseline() {
        let mut t = LossTracker::default();
        t.observe(at(10, 10));
        // Declared again from its ack floor (10) and already past the old one's consumer
        // sequence: without the created time this would count 10 stored events as lost.
        let anew = |s, c| Reading {
            durable: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(60),
            ..at(s, c)
        };
        assert_eq!(t.observe(anew(20, 10)), 0);
        assert_eq!(t.observe(anew(30, 20)), 0);
        assert_eq!(t.observe(anew(600, 30)), 560);
    }

    #[test]
    fn only_a_replica_that_led_at_both_readings_counts() {
        let mut t = LossTracker::default();
        let follower = |s, c| Reading {
            leader: false,
            ..at(s, c)
        };
        t.observe(follower(100, 100));
        assert_eq!(t.observe(follower(600, 110)), 0);
        // Just became leader: its first interval may overlap the old leader's last.
        assert_eq!(t.observe(at(1_100, 120)), 0);
        assert_eq!(t.observe(at(1_600, 130)), 490);
    }
}
