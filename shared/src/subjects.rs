//! NATS subject and JetStream stream names.
//!
//! Events travel on `sightline.events.<edge_id>.<camera_id>`, stored by the stream
//! [`EVENTS_STREAM`]; track records on `sightline.tracks.<edge_id>.<camera_id>`, stored by
//! [`TRACKS_STREAM`]; snapshot uploads on `sightline.snapshots.<edge_id>.<camera_id>`,
//! carried by [`SNAPSHOTS_STREAM`] and kept in the bucket [`SNAPSHOTS_BUCKET`]. Messages that ingest cannot store go, with their original payload and
//! the reason, to `sightline.deadletter.<events|tracks>.<edge_id>.<camera_id>` (or
//! `sightline.deadletter.events._unknown` when the original subject was neither),
//! stored by [`DEADLETTER_STREAM`]. Edge and camera ids are restricted to
//! `[A-Za-z0-9_-]` (see [`crate::validate::is_identifier`]) so they are always single,
//! wildcard-free subject tokens.

use crate::validate::is_identifier;

/// The prefix shared by every Sightline subject.
pub const ROOT: &str = "sightline";
/// The JetStream stream that stores detection events.
pub const EVENTS_STREAM: &str = "SIGHTLINE_EVENTS";
/// The subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "sightline.events.>";
/// The JetStream stream that keeps what ingest could not store.
pub const DEADLETTER_STREAM: &str = "SIGHTLINE_DEADLETTER";
/// The subjects of [`DEADLETTER_STREAM`].
pub const DEADLETTER_SUBJECTS: &str = "sightline.deadletter.>";
/// Header on a dead letter: why it was rejected.
pub const DEADLETTER_REASON_HEADER: &str = "Sightline-Deadletter-Reason";
/// Header on a dead letter: the subject the message was originally published on.
pub const DEADLETTER_SUBJECT_HEADER: &str = "Sightline-Original-Subject";
/// Header on a dead letter kept without its payload (it would not fit beside the headers
/// under the server's `max_payload`): the payload's size.
pub const DEADLETTER_PAYLOAD_OMITTED_HEADER: &str = "Sightline-Deadletter-Payload-Omitted";
/// Header on a dead letter: the stream sequence of the original message.
pub const DEADLETTER_SEQUENCE_HEADER: &str = "Sightline-Original-Sequence";

/// The JetStream stream that keeps edge heartbeats (short retention: they are status, not
/// history; ingest copies them into ClickHouse's `edge_heartbeats`).
pub const HEARTBEATS_STREAM: &str = "SIGHTLINE_HEARTBEATS";
/// The subjects of [`HEARTBEATS_STREAM`].
pub const HEARTBEATS_SUBJECTS: &str = "sightline.heartbeats.>";

/// The JetStream stream that stores track records (a sibling of [`EVENTS_STREAM`], so each
/// stream holds one kind: nats-server 2.9 has no multi-subject consumer filters, and the
/// events stream's loss accounting counts every message in it as an event).
pub const TRACKS_STREAM: &str = "SIGHTLINE_TRACKS";
/// The subjects of [`TRACKS_STREAM`].
pub const TRACKS_SUBJECTS: &str = "sightline.tracks.>";

/// The JetStream stream that carries snapshot uploads from the edges to ingest's snapshot
/// writer (one JPEG per message; see [`crate::snapshot`]). What the writer stored lives in
/// the object store bucket [`SNAPSHOTS_BUCKET`], not here.
pub const SNAPSHOTS_STREAM: &str = "SIGHTLINE_SNAPSHOTS";
/// The subjects of [`SNAPSHOTS_STREAM`].
pub const SNAPSHOTS_SUBJECTS: &str = "sightline.snapshots.>";
/// The JetStream object store bucket that keeps the checked snapshots, one object per
/// snapshot id (its stream is `OBJ_SIGHTLINE_SNAPSHOTS`).
pub const SNAPSHOTS_BUCKET: &str = "SIGHTLINE_SNAPSHOTS";

/// The subject an edge publishes its heartbeats on.
pub fn heartbeat_subject(edge_id: &str) -> String {
    debug_assert!(is_identifier(edge_id));
    format!("{ROOT}.heartbeats.{edge_id}")
}

/// Longest subject Sightline publishes to or accepts from a caller.
pub const MAX_SUBJECT_LEN: usize = 255;

/// Whether `subject` is one or more dot-separated tokens of `A-Z a-z 0-9 _ -`: a literal
/// subject, no wildcards, at most [`MAX_SUBJECT_LEN`] bytes.
pub fn is_literal_subject(subject: &str) -> bool {
    subject.len() <= MAX_SUBJECT_LEN
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// The subject for events of one camera.
///
/// The ids must be valid identifiers; events that passed validation always are.
pub fn event_subject(edge_id: &str, camera_id: &str) -> String {
    debug_assert!(is_identifier(edge_id) && is_identifier(camera_id));
    format!("{ROOT}.events.{edge_id}.{camera_id}")
}

/// Splits an event subject into `(edge_id, camera_id)`; `None` if it is not one.
pub fn parse_event_subject(subject: &str) -> Option<(&str, &str)> {
    parse_camera_subject(subject, ".events.")
}

/// The subject for track records of one camera.
pub fn track_subject(edge_id: &str, camera_id: &str) -> String {
    debug_assert!(is_identifier(edge_id) && is_identifier(camera_id));
    format!("{ROOT}.tracks.{edge_id}.{camera_id}")
}

/// Splits a track subject into `(edge_id, camera_id)`; `None` if it is not one.
pub fn parse_track_subject(subject: &str) -> Option<(&str, &str)> {
    parse_camera_subject(subject, ".tracks.")
}

/// The subject for snapshot uploads of one camera.
pub fn snapshot_subject(edge_id: &str, camera_id: &str) -> String {
    debug_assert!(is_identifier(edge_id) && is_identifier(camera_id));
    format!("{ROOT}.snapshots.{edge_id}.{camera_id}")
}

/// Splits a snapshot subject into `(edge_id, camera_id)`; `None` if it is not one.
pub fn parse_snapshot_subject(subject: &str) -> Option<(&str, &str)> {
    parse_camera_subject(subject, ".snapshots.")
}

/// The subject a message of `kind` from one camera is published on.
pub fn subject_for(kind: crate::codec::Kind, edge_id: &str, camera_id: &str) -> String {
    match kind {
        crate::codec::Kind::Event => event_subject(edge_id, camera_id),
        crate::codec::Kind::Track => track_subject(edge_id, camera_id),
    }
}

fn parse_camera_subject<'a>(subject: &'a str, segment: &str) -> Option<(&'a str, &'a str)> {
    let rest = subject.strip_prefix(ROOT)?.strip_prefix(segment)?;
    let (edge, camera) = rest.split_once('.')?;
    (is_identifier(edge) && is_identifier(camera)).then_some((edge, camera))
}

/// The dead-letter subject for a message originally published on `original`: events and
/// tracks and snapshots each keep their kind and camera.
pub fn deadletter_subject(original: &str) -> String {
    if let Some((edge, camera)) = parse_event_subject(original) {
        format!("{ROOT}.deadletter.events.{edge}.{camera}")
    } else if let Some((edge, camera)) = parse_track_subject(original) {
        format!("{ROOT}.deadletter.tracks.{edge}.{camera}")
    } else if let Some((edge, camera)) = parse_snapshot_subject(original) {
        format!("{ROOT}.deadletter.snapshots.{edge}.{camera}")
    } else {
        format!("{ROOT}.deadletter.events._unknown")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_subjects() {
        assert!(is_literal_subject("replay.lab-1.cam_2"));
        for bad in [
            "",
            "a..b",
            "a.",
            ".a",
            "a.*",
            "a.>",
            "a b",
            &"x".repeat(256),
        ] {
            assert!(!is_literal_subject(bad), "{bad}");
        }
    }

    #[test]
    fn subjects_round_trip() {
        let s = event_subject("edge-1", "cam_2");
        assert_eq!(s, "sightline.events.edge-1.cam_2");
        assert_eq!(parse_event_subject(&s), Some(("edge-1", "cam_2")));
        assert_eq!(parse_track_subject(&s), None);
        let t = track_subject("edge-1", "cam_2");
        assert_eq!(t, "sightline.tracks.edge-1.cam_2");
        assert_eq!(parse_track_subject(&t), Some(("edge-1", "cam_2")));
        assert_eq!(parse_event_subject(&t), None);
        assert_eq!(subject_for(crate::codec::Kind::Track, "edge-1", "cam_2"), t);
        let p = snapshot_subject("edge-1", "cam_2");
        assert_eq!(p, "sightline.snapshots.edge-1.cam_2");
        assert_eq!(parse_snapshot_subject(&p), Some(("edge-1", "cam_2")));
        assert_eq!(parse_track_subject(&p), None);
        assert_eq!(
            deadletter_subject(&p),
            "sightline.deadletter.snapshots.edge-1.cam_2"
        );
        assert_eq!(
            deadletter_subject(&t),
            "sightline.deadletter.tracks.edge-1.cam_2"
        );
    }

    #[test]
    fn rejects_foreign_subjects() {
        for s in [
            "sightline.events.a",
            "sightline.events.a.b.c",
            "other.events.a.b",
            "sightline.events.*.b",
            "",
        ] {
            assert_eq!(parse_event_subject(s), None, "{s}");
        }
        assert_eq!(
            deadletter_subject("sightline.events.a.b.c"),
            "sightline.deadletter.events._unknown"
        );
        assert_eq!(
            deadletter_subject("sightline.events.a.b"),
            "sightline.deadletter.events.a.b"
        );
    }
}
