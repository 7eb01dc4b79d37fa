//! The query service's Prometheus metrics: requests by route and status, latency by route,
//! events returned by route, events replayed. Routes are the matched path templates, so the label set stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub route: String,
}

/// Every metric the service exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub requests: Family<RouteStatus, Counter>,
    pub latency: Family<Route, Histogram>,
    pub events_returned: Family<Route, Counter>,
    pub replay_published: Counter,
    pub snapshots_served: Counter,
    pub snapshot_damaged: Counter,
    pub snapshots_missing: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under the `sightline_query` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            events_returned: Family::default(),
            replay_published: Counter::default(),
            snapshots_served: Counter::default(),
            snapshot_damaged: Counter::default(),
            snapshots_missing: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("sightline_query");
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            metrics.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            metrics.latency.clone(),
        );
        r.register(
            "events_returned",
            "Events returned to clients, by route",
            metrics.events_returned.clone(),
        );
        r.register(
            "replay_published",
            "Events republished to NATS by replays",
            metrics.replay_published.clone(),
        );
        r.register(
            "snapshots_served",
            "Snapshots and thumbnails served",
            metrics.snapshots_served.clone(),
        );
        r.register(
            "snapshots_damaged",
            "Snapshots not served because the store's object does not match its SHA-256",
            metrics.snapshot_damaged.clone(),
        );
        r.register(
            "snapshots_missing",
            "Snapshots recorded whose object the store does not have: briefly, pictures being expired (object first, then row); otherwise lost objects",
            metrics.snapshots_missing.clone(),
        );
        metrics
    }

    /// The counter of events returned by `route`.
    pub fn returned(&self, route: &str) -> Counter {
        self.events_returned
            .get_or_create(&Route {
                route: route.to_owned(),
            })
            .clone()
    }
}
