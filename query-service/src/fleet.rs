//! The fleet, as `GET /v1/edges` shows it: every edge from its latest heartbeat, online or
//! offline, with its backlog, storage, cameras and snapshot uploads.
//!
//! An edge is **offline** when no heartbeat arrived for three of its own intervals
//! ([`MISSED_INTERVALS`]), judged by when the cloud received the last one (ClickHouse's
//! clock, so an edge clock that runs wrong cannot make it look alive); an agent from before
//! heartbeat v2 states no interval and is judged by [`DEFAULT_INTERVAL_SECS`].

use serde::Serialize;
use sightline_shared::Timestamp;

use crate::params::EdgeSort;
use crate::store::EdgeRow;

/// Heartbeats an edge may miss before it counts as offline.
pub const MISSED_INTERVALS: i64 = 3;
/// The interval assumed for a heartbeat that states none (schema v1): the agent's default.
pub const DEFAULT_INTERVAL_SECS: i64 = 30;

/// One edge as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub edge_id: String,
    /// `online` or `offline`.
    pub status: &'static str,
    /// When the edge sent its latest heartbeat (its clock).
    pub last_heartbeat_at: String,
    /// Seconds since the cloud received it.
    pub seconds_since_heartbeat: i64,
    /// The edge's heartbeat interval (0: not stated, a v1 agent).
    pub interval_secs: u32,
    pub agent_version: String,
    pub uptime_secs: u64,
    pub backlog: Backlog,
    pub storage: Storage,
    /// The edge clock minus the cloud's, if measured.
    pub clock_offset_ms: Option<i64>,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub events: Events,
    pub uploads: Uploads,
    pub cameras: Vec<Camera>,
}

/// What the edge had not sent yet, at its latest heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backlog {
    pub events: u64,
    pub oldest_unsent_at: Option<String>,
    /// How old the oldest unsent event is now: its age at the heartbeat (the edge's own
    /// clock on both ends) plus the time since.
    pub oldest_unsent_age_secs: Option<f64>,
}

/// The edge's data directory against its budget, and the filesystem's free space.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Storage {
    pub used_bytes: u64,
    pub limit_bytes: u64,
    pub free_bytes: Option<u64>,
    pub used_percent: f64,
}

/// Events since the agent started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Events {
    pub created: u64,
    pub sent: u64,
    pub dropped: u64,
    pub quarantined: u64,
    pub refused: u64,
}

/// Snapshot uploads: the queue, and since the agent started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uploads {
    pub pending: u64,
    pub sent: u64,
    pub dropped: u64,
    pub errors: u64,
    pub bytes: u64,
}

/// One camera of an edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Camera {
    pub camera_id: String,
    pub state: String,
    pub fps: f64,
    pub events_created: u64,
    pub errors: u64,
}

impl From<EdgeRow> for Edge {
    fn from(r: EdgeRow) -> Self {
        let interval = if r.interval_secs > 0 {
            i64::from(r.interval_secs)
        } else {
            DEFAULT_INTERVAL_SECS
        };
        let online = r.seconds_since <= MISSED_INTERVALS * interval;
        let cameras = r
            .camera_ids
            .iter()
            .enumerate()
            .map(|(i, id)| Camera {
                camera_id: id.clone(),
                state: r.camera_states.get(i).cloned().unwrap_or_default(),
                fps: r.camera_fps.get(i).copied().unwrap_or_default(),
                events_created: r.camera_events_created.get(i).copied().unwrap_or_default(),
                errors: r.camera_errors.get(i).copied().unwrap_or_default(),
            })
            .collect();
        let since = r.seconds_since.max(0);
        Self {
            status: if online { "online" } else { "offline" },
            last_heartbeat_at: Timestamp::from_millis(r.sent_at_ms).to_rfc3339(),
            seconds_since_heartbeat: since,
            interval_secs: r.interval_secs,
            agent_version: r.agent_version,
            uptime_secs: r.uptime_secs,
            backlog: Backlog {
                events: r.backlog,
                oldest_unsent_at: r
                    .oldest_unsent_at_ms
                    .map(|ms| Timestamp::from_millis(ms).to_rfc3339()),
                oldest_unsent_age_secs: r
                    .oldest_unsent_at_ms
                    .map(|ms| (r.sent_at_ms - ms).max(0) as f64 / 1000.0 + since as f64),
            },
            storage: Storage {
                used_bytes: r.storage_used_bytes,
                limit_bytes: r.storage_limit_bytes,
                free_bytes: r.storage_free_bytes,
                used_percent: if r.storage_limit_bytes > 0 {
                    (r.storage_used_bytes as f64 * 1000.0 / r.storage_limit_bytes as f64).round()
                        / 10.0
                } else {
                    0.0
                },
            },
            clock_offset_ms: r.clock_offset_ms,
            cpu_percent: r.cpu_percent,
            rss_bytes: r.rss_bytes,
            events: Events {
                created: r.events_created,
                sent: r.events_sent,
                dropped: r.events_dropped,
                quarantined: r.events_quarantined,
                refused: r.events_refused,
            },
            uploads: Uploads {
                pending: r.uploads_pending,
                sent: r.uploads_sent,
                dropped: r.uploads_dropped,
                errors: r.upload_errors,
                bytes: r.upload_bytes,
            },
            cameras,
            edge_id: r.edge_id,
        }
    }
}

/// `edges` filtered to `online` (if given) and in `sort` order.
pub fn arrange(edges: Vec<EdgeRow>, online: Option<bool>, sort: EdgeSort) -> Vec<Edge> {
    let mut edges: Vec<Edge> = edges
        .into_iter()
        .map(Edge::from)
        .filter(|e| online.is_none_or(|want| (e.status == "online") == want))
        .collect();
    match sort {
        EdgeSort::Status => edges.sort_by(|a, b| {
            (a.status == "online", &a.edge_id).cmp(&(b.status == "online", &b.edge_id))
        }),
        EdgeSort::Edge => edges.sort_by(|a, b| a.edge_id.cmp(&b.edge_id)),
        EdgeSort::Backlog => edges.sort_by(|a, b| {
            b.backlog
                .events
                .cmp(&a.backlog.events)
                .then_with(|| a.edge_id.cmp(&b.edge_id))
        }),
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(edge: &str, seconds_since: i64, interval: u32, backlog: u64) -> EdgeRow {
        EdgeRow {
            edge_id: edge.into(),
            sent_at_ms: 1_795_000_000_000,
            seconds_since,
            agent_version: "0.1.0".into(),
            uptime_secs: 60,
            interval_secs: interval,
            backlog,
            oldest_unsent_at_ms: (backlog > 0).then_some(1_795_000_000_000 - 4_000),
            storage_used_bytes: 250,
            storage_limit_bytes: 1000,
            storage_free_bytes: Some(5000),
            clock_offset_ms: Some(-12),
            cpu_percent: 3.5,
            rss_bytes: 1 << 20,
            events_created: 10,
            events_sent: 9,
            events_dropped: 0,
            events_quarantined: 0,
            events_refused: 0,
            uploads_pending: 1,
            uploads_sent: 2,
            uploads_dropped: 0,
            upload_errors: 0,
            upload_bytes: 1234,
            camera_ids: vec!["gate".into(), "yard".into()],
            camera_states: vec!["running".into()],
            camera_fps: vec![5.0, 4.0],
            camera_events_created: vec![7, 3],
            camera_errors: vec![0, 1],
        }
    }

    #[test]
    fn an_edge_is_offline_after_three_of_its_own_intervals() {
        assert_eq!(Edge::from(row("a", 30, 10, 0)).status, "online");
        assert_eq!(Edge::from(row("a", 31, 10, 0)).status, "offline");
        // A v1 agent states no interval: 30 s is assumed.
        assert_eq!(Edge::from(row("a", 90, 0, 0)).status, "online");
        assert_eq!(Edge::from(row("a", 91, 0, 0)).status, "offline");
    }

    #[test]
    fn the_view_reads_the_heartbeat() {
        let edge = Edge::from(row("a", 2, 5, 7));
        assert_eq!(edge.backlog.oldest_unsent_age_secs, Some(6.0));
        assert_eq!(edge.storage.used_percent, 25.0);
        assert_eq!(edge.cameras.len(), 2);
        assert_eq!(
            edge.cameras[1].state, "",
            "a missing parallel value reads empty"
        );
        assert_eq!((edge.cameras[1].fps, edge.cameras[1].errors), (4.0, 1));
        assert_eq!(edge.uploads.bytes, 1234);
    }

    #[test]
    fn offline_edges_come_first_and_filters_apply() {
        let rows = || {
            vec![
                row("c", 1, 5, 3),
                row("a", 500, 5, 1),
                row("b", 1, 5, 9),
                row("d", 999, 5, 0),
            ]
        };
        let ids = |edges: Vec<Edge>| edges.into_iter().map(|e| e.edge_id).collect::<Vec<_>>();
        assert_eq!(
            ids(arrange(rows(), None, EdgeSort::Status)),
            ["a", "d", "b", "c"]
        );
        assert_eq!(
            ids(arrange(rows(), None, EdgeSort::Edge)),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            ids(arrange(rows(), None, EdgeSort::Backlog)),
            ["b", "c", "a", "d"]
        );
        assert_eq!(
            ids(arrange(rows(), Some(true), EdgeSort::Status)),
            ["b", "c"]
        );
        assert_eq!(
            ids(arrange(rows(), Some(false), EdgeSort::Edge)),
            ["a", "d"]
        );
    }
}
