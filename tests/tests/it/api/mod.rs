//! The query API against real ClickHouse (read as the read-only user) and real NATS, one
//! file per feature: filters, pagination, cameras and stats, the fleet, export, replay, auth, hostile
//! parameters, and the docs' SQL. Handler-level tests (routing, the error mapping) are
//! `query-service/src/api.rs`'s own.

mod auth;
mod export;
mod filters;
pub(crate) mod fleet;
mod hostile;
mod limits;
mod pagination;
mod replay;
mod sql;
mod stats;
mod tracks;

use sightline_shared::{Detection, DetectionEvent, EventId, Timestamp};

use crate::known_events;

/// Events of three cameras on two edges, plus one whose car is unsure and whose dog is sure.
pub(super) fn dataset() -> Vec<DetectionEvent> {
    let mut events = known_events("edge-a", "porch", 60);
    events.extend(known_events("edge-a", "garage", 40));
    events.extend(known_events("edge-b", "yard", 50));
    let mut mixed = known_events("edge-b", "yard", 1).remove(0);
    mixed.captured_at = Timestamp::from_millis(mixed.captured_at.as_millis() - 500);
    mixed.event_id = EventId::new_v7(mixed.captured_at);
    mixed.detections = vec![
        Detection {
            label: "car".into(),
            confidence: 0.3,
            ..known_events("x", "x", 4)[3].detections[1].clone()
        },
        Detection {
            label: "dog".into(),
            confidence: 0.9,
            ..known_events("x", "x", 4)[3].detections[2].clone()
        },
    ];
    events.push(mixed);
    events
}

/// The API's order key: capture time, then event id as ClickHouse orders UUIDs (by their
/// second half first).
pub(crate) fn order_key(e: &DetectionEvent) -> (Timestamp, u64, u64) {
    let (high, low) = e.event_id.as_uuid().as_u64_pair();
    (e.captured_at, low, high)
}

/// Newest first: the order key, descending.
pub(crate) fn newest_first(events: &mut [DetectionEvent]) {
    events.sort_by_key(|e| std::cmp::Reverse(order_key(e)));
}

pub(super) fn ids(events: &[DetectionEvent]) -> Vec<EventId> {
    events.iter().map(|e| e.event_id).collect()
}

pub(super) fn has(e: &DetectionEvent, labels: &[&str], min: f32, max: f32) -> bool {
    e.detections.iter().any(|d| {
        (labels.is_empty() || labels.contains(&d.label.as_str()))
            && d.confidence >= min
            && d.confidence <= max
    })
}

/// Events of an NDJSON export.
pub(super) fn ndjson(text: &str) -> anyhow::Result<Vec<DetectionEvent>> {
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

/// Every key of `value` is a property of the OpenAPI `schema` (by name) of the running
/// service's document `doc`, and every property it requires is there.
pub(super) fn conforms(
    doc: &serde_json::Value,
    schema: &str,
    value: &serde_json::Value,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let schema = &doc["components"]["schemas"][schema];
    let keys: std::collections::HashSet<&str> = value
        .as_object()
        .context("an object")?
        .keys()
        .map(String::as_str)
        .collect();
    let props: std::collections::HashSet<&str> = schema["properties"]
        .as_object()
        .context("the schema's properties")?
        .keys()
        .map(String::as_str)
        .collect();
    anyhow::ensure!(keys.is_subset(&props), "{keys:?} vs {props:?}");
    for required in schema["required"].as_array().context("required")? {
        anyhow::ensure!(
            keys.contains(required.as_str().unwrap_or_default()),
            "{required} is missing from {value}"
        );
    }
    Ok(())
}
