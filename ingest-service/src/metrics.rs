//! The ingest service's Prometheus metrics. Label sets are bounded: outcomes and reasons
//! are fixed enums, never ids.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a message went to the dead-letter stream.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DeadLetterReason {
    /// The payload or its content type could not be decoded.
    Decode,
    /// The event decoded but broke the contract (ranges, ids, clock).
    Validation,
    /// The event's edge or camera does not match the subject it came on.
    Subject,
    /// ClickHouse rejected the row itself (a data error, isolated by bisecting the batch).
    Insert,
    /// A snapshot's payload is not an acceptable picture: not a whole JPEG, over the size
    /// limit, or not the SHA-256 or size its headers name.
    Snapshot,
    /// A snapshot names an event or track that did not reach the cloud within
    /// `[snapshots] owner_wait_secs`.
    Owner,
}

/// How an INSERT ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum InsertOutcome {
    Ok,
    TransientError,
    PermanentError,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: DeadLetterReason,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: InsertOutcome,
}

/// Every metric the service exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub messages_received: Counter,
    pub rows_inserted: Counter,
    pub messages_acked: Counter,
    pub ack_errors: Counter,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub inserts: Family<OutcomeLabel, Counter>,
    pub insert_seconds: Histogram,
    pub batch_rows: Histogram,
    pub pending_rows: Gauge,
    pub insert_retries: Counter,
    pub keep_alives: Counter,
    pub consumer_redeclared: Counter,
    pub events_expired_on_arrival: Counter,
    pub time_requests: Counter,
    pub pulls_restarted: Counter,
    pub events_lost: Counter,
    pub events_unreachable: Gauge,
    pub consumer_pending: Gauge,
    pub consumer_ack_pending: Gauge,
    pub consumer_ack_floor: Gauge,
    pub retention_partitions_dropped: Counter,
    pub retention_errors: Counter,
    pub heartbeats_stored: Counter,
    pub heartbeat_insert_errors: Counter,
    pub tracks_stored: Counter,
    pub track_insert_errors: Counter,
    pub snapshots_stored: Counter,
    pub snapshot_bytes_stored: Counter,
    pub snapshots_waiting: Counter,
    pub snapshot_errors: Counter,
    pub snapshot_bucket_bytes: Gauge,
    pub snapshots_expired: Counter,
}

/// The seed's target for one INSERT at 1,000 events/s (p95 under 50 ms): a bucket bound of
/// [`Metrics::insert_seconds`], so the share of INSERTs within it is exact, not read between
/// two bounds.
pub const INSERT_TARGET_SECS: f64 = 0.05;

/// 1 ms to 46 s, each bound 1.41x the last, and [`INSERT_TARGET_SECS`] (between 45 and 64 ms).
fn insert_buckets() -> impl Iterator<Item = f64> {
    let mut bounds: Vec<f64> = exponential_buckets(0.001, std::f64::consts::SQRT_2, 32).collect();
    bounds.push(INSERT_TARGET_SECS);
    bounds.sort_by(f64::total_cmp);
    bounds.into_iter()
}

impl Metrics {
    /// Creates the metrics and registers them under the `sightline_ingest` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            messages_received: Counter::default(),
            rows_inserted: Counter::default(),
            messages_acked: Counter::default(),
            ack_errors: Counter::default(),
            dead_letters: Family::default(),
            inserts: Family::default(),
            insert_seconds: Histogram::new(insert_buckets()),
            batch_rows: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            pending_rows: Gauge::default(),
            insert_retries: Counter::default(),
            keep_alives: Counter::default(),
            consumer_redeclared: Counter::default(),
            events_expired_on_arrival: Counter::default(),
            time_requests: Counter::default(),
            pulls_restarted: Counter::default(),
            events_lost: Counter::default(),
            events_unreachable: Gauge::default(),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
            consumer_ack_floor: Gauge::default(),
            retention_partitions_dropped: Counter::default(),
            retention_errors: Counter::default(),
            heartbeats_stored: Counter::default(),
            heartbeat_insert_errors: Counter::default(),
            tracks_stored: Counter::default(),
            track_insert_errors: Counter::default(),
            snapshots_stored: Counter::default(),
            snapshot_bytes_stored: Counter::default(),
            snapshots_waiting: Counter::default(),
            snapshot_errors: Counter::default(),
            snapshot_bucket_bytes: Gauge::default(),
            snapshots_expired: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("sightline_ingest");
        r.register(
            "messages_received",
            "Messages fetched from JetStream",
            metrics.messages_received.clone(),
        );
        r.register(
            "rows_inserted",
            "Rows written to ClickHouse",
            metrics.rows_inserted.clone(),
        );
        r.register(
            "messages_acked",
            "Messages acknowledged after their insert",
            metrics.messages_acked.clone(),
        );
        r.register(
            "ack_errors",
            "Acks that could not be sent (the message will be redelivered)",
            metrics.ack_errors.clone(),
        );
        r.register(
            "dead_letters",
            "Messages sent to the dead-letter stream, by reason",
            metrics.dead_letters.clone(),
        );
        r.register(
            "inserts",
            "INSERT attempts by outcome",
            metrics.inserts.clone(),
        );
        r.register(
            "insert_duration_seconds",
            "Time of one INSERT attempt",
            metrics.insert_seconds.clone(),
        );
        r.register("batch_rows", "Rows per INSERT", metrics.batch_rows.clone());
        r.register(
            "pending_rows",
            "Rows fetched and waiting for their INSERT",
            metrics.pending_rows.clone(),
        );
        r.register(
            "insert_retries",
            "INSERTs retried after a transient failure",
            metrics.insert_retries.clone(),
        );
        r.register(
            "batch_keep_alives",
            "Rounds of in-progress acks sent for a batch waiting for or in its INSERT",
            metrics.keep_alives.clone(),
        );
        r.register(
            "consumer_redeclared",
            "Times the durable consumer was found deleted and declared again",
            metrics.consumer_redeclared.clone(),
        );
        r.register(
            "events_expired_on_arrival",
            "Events stored though captured longer ago than retention.events_days: retention deletes them soon after (an edge offline that long, or its clock set back)",
            metrics.events_expired_on_arrival.clone(),
        );
        r.register(
            "time_requests",
            "Clock requests from edges answered (sightline.time)",
            metrics.time_requests.clone(),
        );
        r.register(
            "pulls_restarted",
            "Pulls dropped and started again because messages pulled ahead may have waited unread for a quarter of the ack wait (they are delivered again after it)",
            metrics.pulls_restarted.clone(),
        );
        r.register(
            "events_lost",
            "Events the consumer passed over because the stream had removed them (its limits, or by hand) before any replica received them",
            metrics.events_lost.clone(),
        );
        r.register(
            "events_unreachable",
            "Events removed from the stream that the consumer has not reached yet: lost once it moves on",
            metrics.events_unreachable.clone(),
        );
        r.register(
            "consumer_pending",
            "Messages in the stream not yet delivered to the consumer (all replicas)",
            metrics.consumer_pending.clone(),
        );
        r.register(
            "consumer_ack_pending",
            "Messages delivered and not yet acknowledged (all replicas)",
            metrics.consumer_ack_pending.clone(),
        );
        r.register(
            "consumer_ack_floor",
            "Stream sequence up to which every message is acknowledged (stored or dead-lettered)",
            metrics.consumer_ack_floor.clone(),
        );
        r.register(
            "retention_partitions_dropped",
            "Expired partitions dropped by the retention sweep (servers without TTL)",
            metrics.retention_partitions_dropped.clone(),
        );
        r.register(
            "retention_errors",
            "Retention sweeps that failed",
            metrics.retention_errors.clone(),
        );
        r.register(
            "heartbeats_stored",
            "Edge heartbeats written to edge_heartbeats",
            metrics.heartbeats_stored.clone(),
        );
        r.register(
            "heartbeat_insert_errors",
            "Failed heartbeat inserts (the heartbeats are redelivered)",
            metrics.heartbeat_insert_errors.clone(),
        );
        r.register(
            "tracks_stored",
            "Track records written to tracks",
            metrics.tracks_stored.clone(),
        );
        r.register(
            "track_insert_errors",
            "Failed track record inserts (the records are redelivered)",
            metrics.track_insert_errors.clone(),
        );
        r.register(
            "snapshots_stored",
            "Snapshots checked, put in the object store and recorded in snapshots",
            metrics.snapshots_stored.clone(),
        );
        r.register(
            "snapshot_bytes_stored",
            "Bytes of the snapshots stored",
            metrics.snapshot_bytes_stored.clone(),
        );
        r.register(
            "snapshots_waiting",
            "Times a snapshot was put back because the event or track it shows has not arrived yet",
            metrics.snapshots_waiting.clone(),
        );
        r.register(
            "snapshot_errors",
            "Failed puts or inserts of snapshots (the uploads are redelivered)",
            metrics.snapshot_errors.clone(),
        );
        r.register(
            "snapshot_bucket_bytes",
            "Bytes the snapshot object store bucket uses",
            metrics.snapshot_bucket_bytes.clone(),
        );
        r.register(
            "snapshots_expired",
            "Snapshots removed by retention (object and row)",
            metrics.snapshots_expired.clone(),
        );
        metrics
    }

    /// Counts one dead letter.
    pub fn dead_letter(&self, reason: DeadLetterReason) {
        self.dead_letters
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one INSERT attempt.
    pub fn insert(&self, outcome: InsertOutcome) {
        self.inserts.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_insert_target_is_a_bucket_bound_of_its_own() {
        let bounds: Vec<f64> = insert_buckets().collect();
        assert_eq!(bounds.len(), 33);
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        let at = bounds
            .iter()
            .position(|&b| b == INSERT_TARGET_SECS)
            .unwrap();
        assert!(
            bounds[at - 1] < 0.046 && bounds[at + 1] > 0.063,
            "{bounds:?}"
        );
    }
}
