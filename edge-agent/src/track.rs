//! An IoU tracker: stable ids for objects across the frames of one camera, so one object
//! that stays in view is one event, not one per frame.

use sightline_shared::BoundingBox;

use crate::detect::decode::{Found, iou};

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    class_id: u32,
    bbox: BoundingBox,
    last_seen_ms: i64,
}

/// What the tracker made of one detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub track_id: u64,
    /// The object was not tracked before this frame.
    pub new: bool,
}

/// Greedy IoU matching of detections to the live tracks of the same class.
#[derive(Debug)]
pub(crate) struct Tracker {
    iou_threshold: f32,
    max_age_ms: i64,
    next_id: u64,
    tracks: Vec<Track>,
}

impl Tracker {
    /// `first_id` should differ between runs (the agent uses the start time) so track ids
    /// stay unique on a camera across restarts.
    pub(crate) fn new(iou_threshold: f32, max_age_ms: i64, first_id: u64) -> Self {
        Self {
            iou_threshold,
            max_age_ms,
            next_id: first_id.max(1),
            tracks: Vec::new(),
        }
    }

    /// Matches one frame's detections (taken at `now_ms`) and returns one assignment per
    /// detection, in order. Tracks not seen for longer than the max age are forgotten first.
    pub(crate) fn update(&mut self, found: &[Found], now_ms: i64) -> Vec<Assignment> {
        self.tracks
            .retain(|t| now_ms - t.last_seen_ms <= self.max_age_ms);
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (d, det) in found.iter().enumerate() {
            for (t, track) in self.tracks.iter().enumerate() {
                if track.class_id == det.class_id {
                    let overlap = iou(&track.bbox, &det.bbox);
                    if overlap >= self.iou_threshold {
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
                track.bbox = found[d].bbox;
                track.last_seen_ms = now_ms;
                assigned[d] = Some(Assignment {
                    track_id: track.id,
                    new: false,
                });
            }
        }
        assigned
            .into_iter()
            .zip(found)
            .map(|(a, det)| {
                a.unwrap_or_else(|| {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.tracks.push(Track {
                        id,
                        class_id: det.class_id,
                        bbox: det.bbox,
                        last_seen_ms: now_ms,
                    });
                    Assignment {
                        track_id: id,
                        new: true,
                    }
                })
            })
            .collect()
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

    fn found(class_id: u32, x: f32) -> Found {
        Found {
            class_id,
            score: 0.8,
            bbox: BoundingBox {
                x_min: x,
                y_min: 0.2,
                x_max: x + 0.2,
                y_max: 0.6,
            },
        }
    }

    #[test]
    fn an_object_keeps_its_id_while_it_moves_and_a_new_one_gets_a_new_id() {
        let mut t = Tracker::new(0.3, 5_000, 100);
        let a = t.update(&[found(0, 0.10)], 0);
        assert_eq!(
            a,
            [Assignment {
                track_id: 100,
                new: true
            }]
        );
        let a = t.update(&[found(0, 0.12), found(2, 0.5)], 100);
        assert_eq!(
            a[0],
            Assignment {
                track_id: 100,
                new: false
            }
        );
        assert_eq!(
            a[1],
            Assignment {
                track_id: 101,
                new: true
            }
        );
        // A different class at the same place is a different object.
        let a = t.update(&[found(1, 0.12)], 200);
        assert!(a[0].new);
        // Two people side by side: each keeps their own id.
        let a = t.update(&[found(0, 0.50), found(0, 0.13)], 300);
        assert_eq!(
            a[1],
            Assignment {
                track_id: 100,
                new: false
            }
        );
        assert!(a[0].new);
    }

    #[test]
    fn a_track_survives_gaps_shorter_than_the_max_age() {
        let mut t = Tracker::new(0.3, 5_000, 1);
        t.update(&[found(0, 0.1)], 0);
        assert!(!t.update(&[found(0, 0.1)], 4_000)[0].new);
        assert!(!t.update(&[found(0, 0.1)], 9_000)[0].new);
        assert!(
            t.update(&[found(0, 0.1)], 14_001)[0].new,
            "gone for more than 5 s"
        );
        assert_eq!(t.len(), 1);
    }
}
