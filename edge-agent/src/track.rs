//! An IoU tracker: stable ids for objects across the frames of one camera, so one object
//! that stays in view is one event, not one per frame, and one track: its whole visit.
//!
//! Per track it keeps what a [`TrackRecord`] reports: first and last seen, frames, max and
//! mean confidence, the best frame, a sampled path of where the object stood, and the zones
//! it stood in. A record is made while the track lasts (every `update_interval_secs`), when
//! it ends (not seen for `max_age_secs`: [`EndedBy::Lost`]) and when the camera stops
//! ([`EndedBy::Shutdown`]).
//!
//! Time is the frames' capture time. A frame the motion gate skipped did not change, so the
//! objects in view are still there: [`Tracker::idle`] with `unchanged` keeps their tracks
//! alive (a parked car is one track for as long as it stays, not one per `max_age_secs`).

use std::collections::BTreeMap;

use sightline_shared::track::{
    BestFrame, EndedBy, MAX_ZONE_VISITS, PathPoint, TRACK_SCHEMA_VERSION, TrackRecord, ZoneVisit,
};
use sightline_shared::zone::{Zone, standing_point};
use sightline_shared::{BoundingBox, EventId, Timestamp};

use crate::config::TrackerConfig;
use crate::detect::decode::{Found, iou};

/// Where track ids come from: unique per edge, across its cameras and restarts.
pub type TrackIds = Box<dyn FnMut() -> u64 + Send>;

/// How the tracker matches and reports.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub iou_threshold: f32,
    pub max_age_ms: i64,
    pub update_interval_ms: i64,
    pub path_points: usize,
}

impl From<&TrackerConfig> for Settings {
    fn from(config: &TrackerConfig) -> Self {
        Self {
            iou_threshold: config.iou_threshold,
            max_age_ms: (config.max_age_secs * 1000.0) as i64,
            update_interval_ms: (config.update_interval_secs * 1000.0) as i64,
            path_points: config.path_points,
        }
    }
}

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    class_id: u32,
    label: String,
    bbox: BoundingBox,
    first_seen_ms: i64,
    last_seen_ms: i64,
    /// Found in the last frame the detector ran on: only such a track is still in view
    /// while the picture does not change.
    in_view: bool,
    frames: u64,
    score_sum: f64,
    best: BestFrame,
    /// Sampled every `stride` frames; halved (every other point dropped) when full.
    path: Vec<PathPoint>,
    stride: u64,
    /// Where it stood last, so a record ends its path there.
    last_point: PathPoint,
    zones: Vec<ZoneVisit>,
    arrival_event_id: Option<EventId>,
    /// The best frame's snapshot, once written.
    snapshot: Option<String>,
    /// The revision of the next record.
    revision: u32,
    last_record_ms: i64,
}

impl Track {
    /// Adds one sighting; `true` if it is the track's best frame so far.
    fn observe(&mut self, found: &Found, zones: &[Zone], now_ms: i64, path_points: usize) -> bool {
        let at = Timestamp::from_millis(now_ms);
        self.bbox = found.bbox;
        self.last_seen_ms = now_ms;
        self.in_view = true;
        self.frames += 1;
        self.score_sum += f64::from(found.score);
        let best = found.score > self.best.confidence;
        if best {
            self.best = BestFrame {
                captured_at: at,
                bbox: found.bbox,
                confidence: found.score,
            };
        }
        let (x, y) = standing_point(&found.bbox);
        self.last_point = PathPoint { at, x, y };
        if (self.frames - 1).is_multiple_of(self.stride) {
            if self.path.len() >= path_points {
                let mut i = 0;
                self.path.retain(|_| {
                    i += 1;
                    i % 2 == 1
                });
                self.stride *= 2;
            }
            if (self.frames - 1).is_multiple_of(self.stride) {
                self.path.push(self.last_point);
            }
        }
        for zone in zones {
            let inside = zone.contains(x, y);
            let open = self
                .zones
                .iter()
                .rposition(|v| v.zone == zone.name && v.exited_at.is_none());
            match (inside, open) {
                (true, None) if self.zones.len() < MAX_ZONE_VISITS => self.zones.push(ZoneVisit {
                    zone: zone.name.clone(),
                    entered_at: at,
                    exited_at: None,
                }),
                (false, Some(i)) => self.zones[i].exited_at = Some(at),
                _ => {}
            }
        }
        best
    }

    /// The record of the track as it is now; `ended` closes its open zone stays at the
    /// last sighting.
    fn record(
        &mut self,
        edge_id: &str,
        camera_id: &str,
        now_ms: i64,
        ended: Option<EndedBy>,
        path_points: usize,
    ) -> TrackRecord {
        let last_seen = Timestamp::from_millis(self.last_seen_ms);
        let mut path = self.path.clone();
        if path.last().is_none_or(|p| p.at < self.last_point.at) {
            if path.len() >= path_points {
                path.pop();
            }
            path.push(self.last_point);
        }
        let mut zones = self.zones.clone();
        if ended.is_some() {
            for visit in zones.iter_mut().filter(|v| v.exited_at.is_none()) {
                visit.exited_at = Some(last_seen);
            }
        }
        let revision = self.revision;
        self.revision += 1;
        self.last_record_ms = now_ms;
        TrackRecord {
            record_id: EventId::new_v7(Timestamp::from_millis(now_ms)),
            schema_version: TRACK_SCHEMA_VERSION,
            edge_id: edge_id.to_owned(),
            camera_id: camera_id.to_owned(),
            track_id: self.id,
            revision,
            label: self.label.clone(),
            class_id: self.class_id,
            started_at: Timestamp::from_millis(self.first_seen_ms),
            last_seen_at: last_seen,
            ended_by: ended,
            frames: self.frames,
            max_confidence: self.best.confidence,
            mean_confidence: (self.score_sum / self.frames as f64) as f32,
            best: self.best,
            path,
            zones,
            arrival_event_id: self.arrival_event_id,
            snapshot: self.snapshot.clone(),
            attributes: BTreeMap::new(),
        }
    }
}

/// What the tracker made of one detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub track_id: u64,
    /// The object was not tracked before this frame.
    pub new: bool,
    /// This frame is the track's best so far (its highest score): the frame its snapshot
    /// shows.
    pub best: bool,
}

/// Greedy IoU matching of detections to the live tracks of the same class.
pub struct Tracker {
    settings: Settings,
    edge_id: String,
    camera_id: String,
    zones: Vec<Zone>,
    ids: TrackIds,
    tracks: Vec<Track>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("camera_id", &self.camera_id)
            .field("live", &self.tracks.len())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    pub fn new(
        settings: Settings,
        edge_id: &str,
        camera_id: &str,
        zones: Vec<Zone>,
        ids: TrackIds,
    ) -> Self {
        Self {
            settings,
            edge_id: edge_id.to_owned(),
            camera_id: camera_id.to_owned(),
            zones,
            ids,
            tracks: Vec::new(),
        }
    }

    /// Matches one frame's detections (taken at `now_ms`; `label` names a class) and
    /// returns one assignment per detection, in order, with the records due: tracks that
    /// ended before this frame, then updates of those that last.
    pub fn update(
        &mut self,
        found: &[Found],
        label: impl Fn(u32) -> String,
        now_ms: i64,
        records: &mut Vec<TrackRecord>,
    ) -> Vec<Assignment> {
        self.end_lost(now_ms, records);
        for track in &mut self.tracks {
            track.in_view = false;
        }
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (d, det) in found.iter().enumerate() {
            for (t, track) in self.tracks.iter().enumerate() {
                if track.class_id == det.class_id {
                    let overlap = iou(&track.bbox, &det.bbox);
                    if overlap >= self.settings.iou_threshold {
                        pairs.push((overlap, d, t));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut assigned: Vec<Option<Assignment>> = vec![None; found.len()];
        let mut taken = vec![false; self.tracks.len()];
        for (_, d, t) in pairs {
            if assigned[d].is_none() && !taken[t] {
                taken[t] = true;
                let track = &mut self.tracks[t];
                let best = track.observe(&found[d], &self.zones, now_ms, self.settings.path_points);
                assigned[d] = Some(Assignment {
                    track_id: track.id,
                    new: false,
                    best,
                });
            }
        }
        let assignments = assigned
            .into_iter()
            .zip(found)
            .map(|(a, det)| {
                a.unwrap_or_else(|| {
                    let id = (self.ids)();
                    let at = Timestamp::from_millis(now_ms);
                    let (x, y) = standing_point(&det.bbox);
                    let mut track = Track {
                        id,
                        class_id: det.class_id,
                        label: label(det.class_id),
                        bbox: det.bbox,
                        first_seen_ms: now_ms,
                        last_seen_ms: now_ms,
                        in_view: true,
                        frames: 0,
                        score_sum: 0.0,
                        best: BestFrame {
                            captured_at: at,
                            bbox: det.bbox,
                            confidence: f32::NEG_INFINITY,
                        },
                        path: Vec::new(),
                        stride: 1,
                        last_point: PathPoint { at, x, y },
                        zones: Vec::new(),
                        arrival_event_id: None,
                        snapshot: None,
                        revision: 0,
                        last_record_ms: now_ms,
                    };
                    track.observe(det, &self.zones, now_ms, self.settings.path_points);
                    self.tracks.push(track);
                    Assignment {
                        track_id: id,
                        new: true,
                        best: true,
                    }
                })
            })
            .collect();
        self.updates_due(now_ms, records);
        assignments
    }

    /// A frame without detections at `now_ms`: tracks not seen for the max age end. When
    /// the frame is `unchanged` (the motion gate skipped it), the objects found in the last
    /// frame the detector ran on are still there: their tracks are seen now. A detector
    /// frame that found nothing (`unchanged` false) leaves nothing in view.
    pub fn idle(&mut self, now_ms: i64, unchanged: bool, records: &mut Vec<TrackRecord>) {
        for track in &mut self.tracks {
            if !unchanged {
                track.in_view = false;
            } else if track.in_view {
                track.last_seen_ms = track.last_seen_ms.max(now_ms);
            }
        }
        self.end_lost(now_ms, records);
        self.updates_due(now_ms, records);
    }

    /// Notes the event that reported a track's arrival.
    pub fn set_arrival(&mut self, track_id: u64, event_id: EventId) {
        if let Some(track) = self.tracks.iter_mut().find(|t| t.id == track_id) {
            track.arrival_event_id = Some(event_id);
        }
    }

    /// Forgets a track's arrival event if it is `event_id` (the buffer refused it).
    pub fn clear_arrival(&mut self, track_id: u64, event_id: EventId) {
        if let Some(track) = self.tracks.iter_mut().find(|t| t.id == track_id)
            && track.arrival_event_id == Some(event_id)
        {
            track.arrival_event_id = None;
        }
    }

    /// Notes where a track's best frame's snapshot was written.
    pub fn set_snapshot(&mut self, track_id: u64, path: String) {
        if let Some(track) = self.tracks.iter_mut().find(|t| t.id == track_id) {
            track.snapshot = Some(path);
        }
    }

    /// When a live track started (milliseconds), which files its snapshot under a day.
    pub fn started_ms(&self, track_id: u64) -> Option<i64> {
        self.tracks
            .iter()
            .find(|t| t.id == track_id)
            .map(|t| t.first_seen_ms)
    }

    /// The camera stops at `now_ms`: every live track ends with [`EndedBy::Shutdown`].
    pub fn close(&mut self, now_ms: i64, records: &mut Vec<TrackRecord>) {
        for mut track in std::mem::take(&mut self.tracks) {
            records.push(track.record(
                &self.edge_id,
                &self.camera_id,
                now_ms.max(track.last_seen_ms),
                Some(EndedBy::Shutdown),
                self.settings.path_points,
            ));
        }
    }

    fn end_lost(&mut self, now_ms: i64, records: &mut Vec<TrackRecord>) {
        let max_age = self.settings.max_age_ms;
        let mut i = 0;
        while i < self.tracks.len() {
            if now_ms - self.tracks[i].last_seen_ms > max_age {
                let mut track = self.tracks.swap_remove(i);
                records.push(track.record(
                    &self.edge_id,
                    &self.camera_id,
                    now_ms,
                    Some(EndedBy::Lost),
                    self.settings.path_points,
                ));
            } else {
                i += 1;
            }
        }
    }

    fn updates_due(&mut self, now_ms: i64, records: &mut Vec<TrackRecord>) {
        for track in &mut self.tracks {
            if now_ms - track.last_record_ms >= self.settings.update_interval_ms {
                records.push(track.record(
                    &self.edge_id,
                    &self.camera_id,
                    now_ms,
                    None,
                    self.settings.path_points,
                ));
            }
        }
    }

    /// Live tracks.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tracks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const T0: i64 = 1_795_000_000_000;

    fn settings() -> Settings {
        Settings {
            iou_threshold: 0.3,
            max_age_ms: 5_000,
            update_interval_ms: 60_000,
            path_points: 8,
        }
    }

    fn counter(first: u64) -> TrackIds {
        let next = Arc::new(AtomicU64::new(first));
        Box::new(move || next.fetch_add(1, Ordering::Relaxed))
    }

    fn tracker(zones: Vec<Zone>) -> Tracker {
        Tracker::new(settings(), "edge-1", "gate", zones, counter(100))
    }

    fn label(class_id: u32) -> String {
        ["person", "bicycle", "car"][class_id as usize].to_owned()
    }

    fn found(class_id: u32, x: f32) -> Found {
        found_scored(class_id, x, 0.8)
    }

    fn found_scored(class_id: u32, x: f32, score: f32) -> Found {
        Found {
            class_id,
            score,
            bbox: BoundingBox {
                x_min: x,
                y_min: 0.2,
                x_max: x + 0.2,
                y_max: 0.6,
            },
        }
    }

    fn update(t: &mut Tracker, found: &[Found], at: i64) -> (Vec<Assignment>, Vec<TrackRecord>) {
        let mut records = Vec::new();
        let a = t.update(found, label, T0 + at, &mut records);
        (a, records)
    }

    fn idle(t: &mut Tracker, at: i64, unchanged: bool) -> Vec<TrackRecord> {
        let mut records = Vec::new();
        t.idle(T0 + at, unchanged, &mut records);
        records
    }

    fn ms(at: i64) -> Timestamp {
        Timestamp::from_millis(T0 + at)
    }

    #[test]
    fn an_object_keeps_its_id_while_it_moves_and_a_new_one_gets_a_new_id() {
        let mut t = tracker(vec![]);
        let (a, _) = update(&mut t, &[found(0, 0.10)], 0);
        assert_eq!(
            a,
            [Assignment {
                track_id: 100,
                new: true,
                best: true
            }]
        );
        let (a, _) = update(&mut t, &[found(0, 0.12), found(2, 0.5)], 100);
        assert_eq!(
            a,
            [
                Assignment {
                    track_id: 100,
                    new: false,
                    best: false
                },
                Assignment {
                    track_id: 101,
                    new: true,
                    best: true
                }
            ]
        );
        // A different class at the same place is a different object.
        let (a, _) = update(&mut t, &[found(1, 0.12)], 200);
        assert!(a[0].new);
        // Two people side by side: each keeps their own id.
        let (a, _) = update(&mut t, &[found(0, 0.50), found(0, 0.13)], 300);
        assert_eq!(
            a[1],
            Assignment {
                track_id: 100,
                new: false,
                best: false
            }
        );
        assert!(a[0].new);
    }

    #[test]
    fn a_track_survives_gaps_shorter_than_the_max_age_and_ends_lost_after_it() {
        let mut t = tracker(vec![]);
        update(&mut t, &[found_scored(0, 0.1, 0.6)], 0);
        let a = update(&mut t, &[found_scored(0, 0.1, 0.9)], 4_000).0;
        assert!(
            !a[0].new && a[0].best,
            "a higher score is the new best frame"
        );
        let a = update(&mut t, &[found_scored(0, 0.1, 0.6)], 9_000).0;
        assert!(!a[0].new && !a[0].best);
        t.set_snapshot(100, "events/x/snapshots/track-100.jpg".into());
        assert!(
            idle(&mut t, 14_000, false).is_empty(),
            "5 s is not more than 5 s"
        );
        let (a, records) = update(&mut t, &[found(0, 0.1)], 14_001);
        assert!(a[0].new, "gone for more than 5 s");
        assert_eq!(t.len(), 1);
        // The first track's final record: worked out from the frames above.
        let [r] = records.as_slice() else {
            panic!("{records:?}")
        };
        assert_eq!(
            (r.track_id, r.revision, r.ended_by, r.frames),
            (100, 0, Some(EndedBy::Lost), 3)
        );
        assert_eq!((r.started_at, r.last_seen_at), (ms(0), ms(9_000)));
        assert_eq!((r.label.as_str(), r.class_id), ("person", 0));
        assert_eq!(r.max_confidence, 0.9);
        assert!(
            (r.mean_confidence - 0.7).abs() < 1e-6,
            "{}",
            r.mean_confidence
        );
        assert_eq!(r.best.captured_at, ms(4_000));
        assert_eq!(
            r.snapshot.as_deref(),
            Some("events/x/snapshots/track-100.jpg")
        );
        assert_eq!(r.best.confidence, 0.9);
        assert_eq!(r.duration_ms(), 9_000);
        r.validate(ms(20_000), 0).unwrap();
    }

    #[test]
    fn a_stationary_object_is_one_track_with_periodic_updates() {
        let mut t = tracker(vec![]);
        let mut records = update(&mut t, &[found(2, 0.5)], 0).1;
        // Detection every 2 s for 200 s (the car does not move); the motion gate skips the
        // frames between, which are unchanged.
        for second in (1..=200).filter(|s| s % 2 == 1) {
            records.extend(idle(&mut t, second * 1000, true));
            let (a, r) = update(&mut t, &[found(2, 0.5)], (second + 1) * 1000);
            assert!(!a[0].new, "one car, one track");
            records.extend(r);
        }
        let mut closed = Vec::new();
        t.close(T0 + 200_500, &mut closed);
        records.extend(closed);
        let seen: Vec<_> = records
            .iter()
            .map(|r| (r.revision, r.ended_by, r.last_seen_at, r.frames))
            .collect();
        assert_eq!(
            seen,
            [
                (0, None, ms(60_000), 31),
                (1, None, ms(120_000), 61),
                (2, None, ms(180_000), 91),
                (3, Some(EndedBy::Shutdown), ms(200_000), 101),
            ]
        );
        for r in &records {
            r.validate(ms(200_500), 0).unwrap();
        }
    }

    #[test]
    fn unchanged_frames_keep_a_track_alive_and_changed_empty_ones_do_not() {
        let mut t = tracker(vec![]);
        update(&mut t, &[found(0, 0.1)], 0);
        for at in (1..=30).map(|s| s * 1000) {
            assert!(idle(&mut t, at, true).is_empty());
        }
        assert_eq!(t.len(), 1);
        assert!(idle(&mut t, 35_000, false).is_empty());
        let ended = idle(&mut t, 35_001, false);
        assert_eq!(ended[0].last_seen_at, ms(30_000));
        assert_eq!(ended[0].frames, 1);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn an_object_that_left_before_the_picture_went_still_is_lost_on_time() {
        let mut t = tracker(vec![]);
        // A car parks (0.5) while a person walks past (0.1) and leaves; then nothing moves.
        update(&mut t, &[found(2, 0.5), found(0, 0.1)], 0);
        update(&mut t, &[found(2, 0.5)], 1_000);
        let mut ended = Vec::new();
        for at in (2..=20).map(|s| s * 1000) {
            ended.extend(idle(&mut t, at, true));
        }
        // The person was gone in the last detector frame: lost 5 s after the last
        // sighting; the car, still in view, goes on.
        let [r] = ended.as_slice() else {
            panic!("{ended:?}")
        };
        assert_eq!(
            (r.label.as_str(), r.ended_by),
            ("person", Some(EndedBy::Lost))
        );
        assert_eq!(r.last_seen_at, ms(0));
        assert_eq!(t.len(), 1);
        // A new person at the same place later is a new track, with an arrival event.
        let (a, _) = update(&mut t, &[found(2, 0.5), found(0, 0.1)], 21_000);
        assert!(!a[0].new && a[1].new);
    }

    #[test]
    fn zone_stays_follow_where_the_object_stands() {
        // The gate: the middle fifth of the frame, full height.
        let gate = Zone {
            name: "gate".into(),
            points: vec![[0.4, 0.0], [0.6, 0.0], [0.6, 1.0], [0.4, 1.0]],
        };
        let mut t = tracker(vec![gate]);
        // A person walks left to right (box 0.2 wide: it stands at x + 0.1), one frame a
        // second, then turns back into the gate and stays.
        let walk = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.4, 0.3, 0.2];
        let mut records = Vec::new();
        for (second, x) in walk.iter().enumerate() {
            records.extend(update(&mut t, &[found(0, *x)], second as i64 * 1000).1);
        }
        let mut closed = Vec::new();
        t.close(T0 + 9_000, &mut closed);
        let r = &closed[0];
        // It stood in the gate at x + 0.1 = 0.4 and 0.5 (seconds 3, 4), left at 0.6 (5),
        // was back at 0.5 and 0.4 (6, 7), and stood outside at 0.3 (8).
        assert_eq!(
            r.zones,
            [
                ZoneVisit {
                    zone: "gate".into(),
                    entered_at: ms(3_000),
                    exited_at: Some(ms(5_000))
                },
                ZoneVisit {
                    zone: "gate".into(),
                    entered_at: ms(6_000),
                    exited_at: Some(ms(8_000))
                },
            ]
        );
        // Still in the gate when the camera stops: the stay closes at the last sighting.
        let mut t = tracker(t.zones.clone());
        update(&mut t, &[found(0, 0.35)], 0);
        update(&mut t, &[found(0, 0.4)], 1_000);
        let mut closed = Vec::new();
        t.close(T0 + 3_000, &mut closed);
        assert_eq!(closed[0].zones[0].entered_at, ms(0));
        assert_eq!(closed[0].zones[0].exited_at, Some(ms(1_000)));
        assert_eq!(closed[0].ended_by, Some(EndedBy::Shutdown));
    }

    #[test]
    fn the_path_keeps_evenly_spread_samples_within_its_bound() {
        let mut t = tracker(vec![]);
        // 100 frames, moving 0.005 a frame; the path holds at most 8 points.
        for i in 0..100 {
            update(&mut t, &[found(0, i as f32 * 0.005)], i * 100);
        }
        let mut closed = Vec::new();
        t.close(T0 + 10_000, &mut closed);
        let path = &closed[0].path;
        assert!(path.len() <= 8, "{}", path.len());
        assert!(path.len() >= 4, "{}", path.len());
        assert_eq!(path[0].at, ms(0), "starts where it was first seen");
        assert_eq!(
            path.last().unwrap().at,
            ms(9_900),
            "ends where it was last seen"
        );
        assert!((path.last().unwrap().x - (0.495 + 0.1)).abs() < 1e-5);
        // Evenly spread: every step but the last is the same length.
        let steps: Vec<i64> = path
            .windows(2)
            .map(|w| w[1].at.as_millis() - w[0].at.as_millis())
            .collect();
        assert!(
            steps[..steps.len() - 1].windows(2).all(|w| w[0] == w[1]),
            "{steps:?}"
        );
        closed[0].validate(ms(10_000), 0).unwrap();
    }

    #[test]
    fn two_cameras_sharing_the_edge_ids_never_reuse_one_and_arrivals_are_named() {
        let next = Arc::new(AtomicU64::new(7));
        let source = |next: Arc<AtomicU64>| -> TrackIds {
            Box::new(move || next.fetch_add(1, Ordering::Relaxed))
        };
        let mut a = Tracker::new(settings(), "edge-1", "a", vec![], source(next.clone()));
        let mut b = Tracker::new(settings(), "edge-1", "b", vec![], source(next));
        let mut ids = Vec::new();
        for at in 0..5 {
            // Each frame a new object far from the last one on each camera.
            let x = if at % 2 == 0 { 0.0 } else { 0.7 };
            ids.extend(
                update(&mut a, &[found(0, x)], at * 10_000)
                    .0
                    .iter()
                    .map(|a| a.track_id),
            );
            ids.extend(
                update(&mut b, &[found(0, x)], at * 10_000)
                    .0
                    .iter()
                    .map(|a| a.track_id),
            );
        }
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        let event = EventId::new_v7(ms(0));
        a.set_arrival(ids[8], event);
        let mut closed = Vec::new();
        a.close(T0 + 50_000, &mut closed);
        assert_eq!(closed[0].arrival_event_id, Some(event));
    }
}
