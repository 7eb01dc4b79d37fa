//! Zones: named polygons over a camera's frame, in normalized coordinates.
//!
//! An object is in a zone when the point it stands on, the bottom-centre of its box
//! ([`standing_point`]), is inside the polygon: a person whose head crosses into the
//! driveway's picture area while they walk on the pavement is not in the driveway. This is
//! the rule Frigate uses too.
//!
//! Inside is decided by the even-odd rule (a ray from the point crosses the outline an odd
//! number of times). A point exactly on an edge at the smaller x or y (left, top) counts as
//! inside and one at the larger (right, bottom) as outside, so two zones that share an edge
//! never both hold a point on it. The standing point is kept just inside the frame, so an
//! object cut off by the frame's bottom edge (its box ends at `y = 1.0`) stands in a zone
//! drawn down to that edge.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::event::BoundingBox;
pub use crate::validate::MAX_ZONES;
use crate::validate::{ValidationError, is_identifier};

/// Fewest points of a zone's outline.
pub const MIN_ZONE_POINTS: usize = 3;
/// Most points of a zone's outline.
pub const MAX_ZONE_POINTS: usize = 64;

/// A named polygon over a camera's frame. Its points are `[x, y]` in `0.0..=1.0`, `0.0`
/// being the left or top edge of the frame; the outline closes from the last point back to
/// the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub name: String,
    pub points: Vec<[f32; 2]>,
}

impl Zone {
    /// Whether the point `(x, y)` is inside the outline (even-odd rule, half-open edges).
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let mut inside = false;
        let n = self.points.len();
        for i in 0..n {
            let [xi, yi] = self.points[i];
            let [xj, yj] = self.points[(i + n - 1) % n];
            // The edge straddles the horizontal line through the point (half-open in y)...
            if (yi > y) != (yj > y) {
                // ...and crosses it right of the point.
                let cross_x = xi + (y - yi) * (xj - xi) / (yj - yi);
                if x < cross_x {
                    inside = !inside;
                }
            }
        }
        inside
    }

    /// Twice the signed area of the outline (shoelace formula); zero for a degenerate one.
    fn doubled_area(&self) -> f64 {
        let n = self.points.len();
        (0..n)
            .map(|i| {
                let [x0, y0] = self.points[i].map(f64::from);
                let [x1, y1] = self.points[(i + 1) % n].map(f64::from);
                x0 * y1 - x1 * y0
            })
            .sum()
    }
}

/// Where an object stands: the bottom-centre of its box, kept just inside the frame.
pub fn standing_point(bbox: &BoundingBox) -> (f32, f32) {
    let inside = |v: f32| v.clamp(0.0, 1.0 - f32::EPSILON);
    (inside((bbox.x_min + bbox.x_max) / 2.0), inside(bbox.y_max))
}

/// The names of the zones that hold the object in `bbox`, in the order of `zones`.
pub fn zones_of<'a>(zones: &'a [Zone], bbox: &BoundingBox) -> Vec<&'a str> {
    let (x, y) = standing_point(bbox);
    zones
        .iter()
        .filter(|z| z.contains(x, y))
        .map(|z| z.name.as_str())
        .collect()
}

/// Checks one camera's zones: at most [`MAX_ZONES`]; each name an identifier (like camera
/// ids: safe in metric labels and URLs) and unique; [`MIN_ZONE_POINTS`] to
/// [`MAX_ZONE_POINTS`] points, each inside the frame; an outline that encloses some area.
/// `field` is where the zones are, such as `cameras[0].zones`; an error names the zone and
/// point.
pub fn validate_zones(field: &str, zones: &[Zone]) -> Result<(), ValidationError> {
    if zones.len() > MAX_ZONES {
        return Err(ValidationError::TooMany {
            field: field.to_owned(),
            count: zones.len(),
            max: MAX_ZONES,
        });
    }
    let mut names = BTreeSet::new();
    for (i, zone) in zones.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if !is_identifier(&zone.name) {
            return Err(ValidationError::BadIdentifier {
                field: format!("{at}.name"),
                value: zone.name.chars().take(80).collect(),
                max: crate::validate::MAX_ID_LEN,
            });
        }
        if !names.insert(zone.name.as_str()) {
            return Err(ValidationError::Duplicate {
                field: format!("{at}.name"),
                value: zone.name.clone(),
            });
        }
        let n = zone.points.len();
        if !(MIN_ZONE_POINTS..=MAX_ZONE_POINTS).contains(&n) {
            return Err(ValidationError::OutOfRange {
                field: format!("{at}.points (count)"),
                value: n as f64,
                min: MIN_ZONE_POINTS as f64,
                max: MAX_ZONE_POINTS as f64,
            });
        }
        for (p, point) in zone.points.iter().enumerate() {
            for (axis, value) in ["x", "y"].iter().zip(point) {
                // NaN fails both comparisons.
                if !(*value >= 0.0 && *value <= 1.0) {
                    return Err(ValidationError::OutOfRange {
                        field: format!("{at}.points[{p}].{axis}"),
                        value: f64::from(*value),
                        min: 0.0,
                        max: 1.0,
                    });
                }
            }
        }
        if zone.doubled_area().abs() < 1e-9 {
            return Err(ValidationError::Degenerate {
                field: format!("{at}.points"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn zone(name: &str, points: &[[f32; 2]]) -> Zone {
        Zone {
            name: name.into(),
            points: points.to_vec(),
        }
    }

    fn square(x0: f32, y0: f32, x1: f32, y1: f32) -> Zone {
        zone("square", &[[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    }

    #[test]
    fn a_concave_zone_holds_its_arms_and_not_its_notch() {
        // An L: the bottom-left arm and the left arm, the top-right notch left out.
        let l = zone(
            "l",
            &[
                [0.1, 0.1],
                [0.4, 0.1],
                [0.4, 0.6],
                [0.9, 0.6],
                [0.9, 0.9],
                [0.1, 0.9],
            ],
        );
        assert!(l.contains(0.2, 0.2));
        assert!(l.contains(0.8, 0.8));
        assert!(!l.contains(0.8, 0.3), "the notch");
        assert!(!l.contains(0.05, 0.5));
        assert!(!l.contains(0.5, 0.95));
    }

    #[test]
    fn two_zones_sharing_an_edge_never_both_hold_a_point_on_it() {
        let left = square(0.0, 0.0, 0.5, 1.0);
        let right = square(0.5, 0.0, 1.0, 1.0);
        for y in [0.1, 0.5, 0.9] {
            assert!(right.contains(0.5, y) != left.contains(0.5, y), "y {y}");
        }
    }

    #[test]
    fn an_object_is_where_it_stands() {
        let driveway = square(0.0, 0.5, 1.0, 1.0);
        let zones = [driveway, zone("sky", &[[0.0, 0.0], [1.0, 0.0], [0.5, 0.4]])];
        // Its head is in the sky's picture area, its feet on the driveway.
        let person = BoundingBox {
            x_min: 0.4,
            y_min: 0.1,
            x_max: 0.6,
            y_max: 0.7,
        };
        assert_eq!(standing_point(&person), (0.5, 0.7));
        assert_eq!(zones_of(&zones, &person), ["square"]);
        // Cut off by the frame's bottom edge: it stands in a zone drawn down to that edge.
        let cut_off = BoundingBox {
            y_max: 1.0,
            ..person
        };
        assert_eq!(zones_of(&zones, &cut_off), ["square"]);
    }

    #[test]
    fn validation_names_the_zone_and_the_point() {
        let ok = square(0.1, 0.1, 0.9, 0.9);
        validate_zones("cameras[0].zones", std::slice::from_ref(&ok)).unwrap();
        let err = |zones: &[Zone]| {
            validate_zones("cameras[0].zones", zones)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[
                ok.clone(),
                zone("gate", &[[0.1, 0.1], [1.2, 0.1], [0.5, 0.5]])
            ]),
            "cameras[0].zones[1].points[1].x: 1.2000000476837158 is outside 0..=1"
        );
        assert!(
            err(&[zone("gate", &[[0.1, f32::NAN], [0.9, 0.1], [0.5, 0.5]])])
                .starts_with("cameras[0].zones[0].points[0].y: NaN")
        );
        assert_eq!(
            err(&[ok.clone(), ok.clone()]),
            "cameras[0].zones[1].name: \"square\" appears twice"
        );
        assert!(err(&[zone("front door", &ok.points)]).starts_with("cameras[0].zones[0].name:"));
        assert_eq!(
            err(&[zone("gate", &[[0.1, 0.1], [0.9, 0.9]])]),
            "cameras[0].zones[0].points (count): 2 is outside 3..=64"
        );
        assert_eq!(
            err(&[zone("line", &[[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])]),
            "cameras[0].zones[0].points: the outline encloses no area"
        );
        let too_many: Vec<Zone> = (0..=MAX_ZONES)
            .map(|i| zone(&format!("z{i}"), &ok.points))
            .collect();
        assert_eq!(
            err(&too_many),
            "cameras[0].zones: 65 entries is more than the limit of 64"
        );
    }

    proptest! {
        /// A rectangle holds exactly the points of its half-open box, in either winding.
        #[test]
        fn a_rectangle_holds_its_half_open_box(
            a in 0.0f32..1.0, b in 0.0f32..1.0, c in 0.0f32..1.0, d in 0.0f32..1.0,
            x in 0.0f32..=1.0, y in 0.0f32..=1.0, reversed in any::<bool>(),
        ) {
            let (x0, x1, y0, y1) = (a.min(b), a.max(b), c.min(d), c.max(d));
            let mut z = square(x0, y0, x1, y1);
            if reversed {
                z.points.reverse();
            }
            let expected = x >= x0 && x < x1 && y >= y0 && y < y1;
            prop_assert_eq!(z.contains(x, y), expected);
        }

        /// A convex polygon holds the centroid of its points, and no point outside their
        /// bounding box.
        #[test]
        fn a_convex_polygon_holds_its_centre_and_nothing_beyond_its_bounds(
            cx in 0.3f32..0.7, cy in 0.3f32..0.7, r in 0.05f32..0.25, n in 3usize..12,
            x in 0.0f32..=1.0, y in 0.0f32..=1.0,
        ) {
            let points: Vec<[f32; 2]> = (0..n)
                .map(|i| {
                    let t = i as f32 / n as f32 * std::f32::consts::TAU;
                    [cx + r * t.cos(), cy + r * t.sin()]
                })
                .collect();
            let z = zone("round", &points);
            prop_assert!(z.contains(cx, cy));
            let (min_x, max_x) = points.iter().fold((1f32, 0f32), |(lo, hi), p| (lo.min(p[0]), hi.max(p[0])));
            let (min_y, max_y) = points.iter().fold((1f32, 0f32), |(lo, hi), p| (lo.min(p[1]), hi.max(p[1])));
            if x < min_x || x > max_x || y < min_y || y > max_y {
                prop_assert!(!z.contains(x, y));
            }
        }
    }
}
