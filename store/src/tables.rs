//! The name of every ClickHouse table and view the migrations make. Outside this crate,
//! SQL names a table only through these constants (a test in `store/tests/` holds every
//! other crate to that), so a renamed table is one edit and a typo a compile error.

/// One row per event (the fact table): `schema::EventRow`.
pub const EVENTS: &str = "events";
/// Event id -> camera and capture time, for lookups by id (filled by [`EVENTS_BY_ID_MV`]).
pub const EVENTS_BY_ID: &str = "events_by_id";
/// The view that fills [`EVENTS_BY_ID`] from each insert into [`EVENTS`].
pub const EVENTS_BY_ID_MV: &str = "events_by_id_mv";
/// One row per detected object (filled by [`DETECTIONS_MV`]).
pub const DETECTIONS: &str = "detections";
/// The view that fills [`DETECTIONS`] from each insert into [`EVENTS`].
pub const DETECTIONS_MV: &str = "detections_mv";
/// Hourly counts per camera and label (filled by [`DETECTIONS_HOURLY_MV`]).
pub const DETECTIONS_HOURLY: &str = "detections_hourly";
/// The view that fills [`DETECTIONS_HOURLY`] from each insert into [`EVENTS`].
pub const DETECTIONS_HOURLY_MV: &str = "detections_hourly_mv";
/// One row per edge heartbeat: `schema::HeartbeatRow`.
pub const EDGE_HEARTBEATS: &str = "edge_heartbeats";
/// One row per track record (the latest revision of a track replaces the others):
/// `schema::TrackRow`.
pub const TRACKS: &str = "tracks";
/// (edge, track id) -> camera and start time, for lookups by id (filled by
/// [`TRACKS_BY_ID_MV`]).
pub const TRACKS_BY_ID: &str = "tracks_by_id";
/// The view that fills [`TRACKS_BY_ID`] from each insert into [`TRACKS`].
pub const TRACKS_BY_ID_MV: &str = "tracks_by_id_mv";
/// One row per snapshot stored in the object store bucket: `schema::SnapshotRow`.
pub const SNAPSHOTS: &str = "snapshots";
/// The applied migrations (version, name, checksum).
pub const SCHEMA_MIGRATIONS: &str = "schema_migrations";

/// Every table and view above: what the ownership test looks for in other crates' SQL.
pub const ALL: [&str; 13] = [
    EVENTS,
    EVENTS_BY_ID,
    EVENTS_BY_ID_MV,
    DETECTIONS,
    DETECTIONS_MV,
    DETECTIONS_HOURLY,
    DETECTIONS_HOURLY_MV,
    EDGE_HEARTBEATS,
    TRACKS,
    TRACKS_BY_ID,
    TRACKS_BY_ID_MV,
    SNAPSHOTS,
    SCHEMA_MIGRATIONS,
];

/// The tables one INSERT of events writes to: [`EVENTS`] and the views' tables.
pub const WRITTEN_WITH_EVENTS: [&str; 4] = [EVENTS, EVENTS_BY_ID, DETECTIONS, DETECTIONS_HOURLY];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_the_migrations_make_has_a_constant() {
        let made: std::collections::BTreeSet<String> = crate::migrations::MIGRATIONS
            .iter()
            .flat_map(|m| m.statements("db"))
            .chain(crate::migrations::bootstrap("db"))
            .filter_map(|s| {
                let rest = s.split("IF NOT EXISTS `db`.").nth(1)?;
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // A rebuild's new table lives only until it replaces the old one.
                (!name.ends_with("_rebuild")).then_some(name)
            })
            .collect();
        let named: std::collections::BTreeSet<String> =
            ALL.iter().map(|t| (*t).to_owned()).collect();
        assert_eq!(made, named);
    }
}
