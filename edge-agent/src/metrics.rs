//! The agent's Prometheus metrics.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why an event was dropped. Every drop is also logged at ERROR.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DropReason {
    /// The event broke the contract (a bug in a source) or could not be encoded.
    Invalid,
    /// Shutdown's drain timeout passed before JetStream acknowledged it.
    Shutdown,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    pub reason: DropReason,
}

/// Every metric the agent exports.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub events_created: Counter,
    pub events_published: Counter,
    pub events_duplicate: Counter,
    pub publish_errors: Counter,
    pub events_dropped: Family<DropLabel, Counter>,
    pub in_flight: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under the `sightline_edge` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("sightline_edge");
        r.register(
            "events_created",
            "Events created by the cameras",
            metrics.events_created.clone(),
        );
        r.register(
            "events_published",
            "Events acknowledged by JetStream",
            metrics.events_published.clone(),
        );
        r.register(
            "events_duplicate",
            "Publishes JetStream reported as duplicates (already stored)",
            metrics.events_duplicate.clone(),
        );
        r.register(
            "publish_errors",
            "Failed publish attempts (each is retried)",
            metrics.publish_errors.clone(),
        );
        r.register(
            "events_dropped",
            "Events dropped, by reason",
            metrics.events_dropped.clone(),
        );
        r.register(
            "publish_in_flight",
            "Publishes awaiting their ack",
            metrics.in_flight.clone(),
        );
        metrics
    }

    /// Counts one dropped event.
    pub fn dropped(&self, reason: DropReason, count: u64) {
        self.events_dropped
            .get_or_create(&DropLabel { reason })
            .inc_by(count);
    }
}
