//! Turning a model's raw outputs into boxes: NanoDet's distribution heads, YOLOv5's and
//! YOLOv8's dense outputs, and per-class non-maximum suppression.
//!
//! Everything here works on plain slices so it can be tested with hand-made tensors.

use sightline_shared::{BoundingBox, Detection};

/// One box the model found, before tracking: class index, score, and where, normalized to
/// the frame (the whole frame is resized into the model's input, so input-relative and
/// frame-relative coordinates are the same).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    pub class_id: u32,
    pub score: f32,
    pub bbox: BoundingBox,
}

impl Found {
    /// The object as an event names it: its class named by `label`, the track it belongs
    /// to and the zones it stands in.
    pub fn detection(&self, label: String, track_id: u64, zones: Vec<String>) -> Detection {
        Detection {
            label,
            class_id: self.class_id,
            confidence: self.score,
            bbox: self.bbox,
            track_id: Some(track_id),
            zones,
        }
    }
}

/// A decoder input: one output tensor's shape and data.
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    pub name: &'a str,
    pub shape: &'a [i64],
    pub data: &'a [f32],
}

/// Builds a normalized box from input-pixel corners, clamped to the frame.
fn normalized(x0: f32, y0: f32, x1: f32, y1: f32, width: f32, height: f32) -> Option<BoundingBox> {
    let clamp = |v: f32| {
        if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let b = BoundingBox {
        x_min: clamp(x0 / width),
        y_min: clamp(y0 / height),
        x_max: clamp(x1 / width),
        y_max: clamp(y1 / height),
    };
    (b.x_max > b.x_min && b.y_max > b.y_min).then_some(b)
}

/// NanoDet (legacy "GFL" head, as exported for TensorFlow.js): for each stride a score
/// tensor `[1, cells, classes]` (already probabilities) and a box tensor
/// `[1, cells, 4 * bins]` (a distribution over `bins` distances per side). Outputs are
/// matched by cell count and last dimension, not by name.
pub fn nanodet(
    outputs: &[Output<'_>],
    classes: usize,
    width: u32,
    height: u32,
    threshold: f32,
) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    let mut strides = 0;
    for scores in outputs.iter().filter(|o| last_dim(o) == Some(classes)) {
        let cells = cells_of(scores)?;
        let boxes = outputs
            .iter()
            .find(|o| {
                o.name != scores.name
                    && cells_of(o).ok() == Some(cells)
                    && last_dim(o).is_some_and(|d| d % 4 == 0 && d != classes)
            })
            .ok_or_else(|| {
                format!(
                    "no box output with {cells} cells to go with score output {}",
                    scores.name
                )
            })?;
        let bins = last_dim(boxes).unwrap_or(4) / 4;
        // cells = (width / stride) * (height / stride)
        let stride = ((f64::from(width) * f64::from(height) / cells as f64).sqrt()).round() as u32;
        if stride == 0 || (width / stride) * (height / stride) != cells as u32 {
            return Err(format!(
                "output {} has {cells} cells, which is no stride of a {width}x{height} input",
                scores.name
            ));
        }
        strides += 1;
        let columns = (width / stride) as usize;
        for cell in 0..cells {
            let row = &scores.data[cell * classes..(cell + 1) * classes];
            let mut sides: Option<[f32; 4]> = None;
            for (class, &score) in row.iter().enumerate() {
                if score < threshold || !score.is_finite() {
                    continue;
                }
                let [l, t, r, b] = *sides.get_or_insert_with(|| {
                    let dist = &boxes.data[cell * 4 * bins..(cell + 1) * 4 * bins];
                    std::array::from_fn(|side| {
                        expected_bin(&dist[side * bins..(side + 1) * bins]) * stride as f32
                    })
                });
                let (ax, ay) = (
                    ((cell % columns) as u32 * stride) as f32,
                    ((cell / columns) as u32 * stride) as f32,
                );
                if let Some(bbox) =
                    normalized(ax - l, ay - t, ax + r, ay + b, width as f32, height as f32)
                {
                    found.push(Found {
                        class_id: class as u32,
                        score,
                        bbox,
                    });
                }
            }
        }
    }
    if strides == 0 {
        return Err(format!(
            "no output has {classes} scores per cell (the labels file's length); outputs: {}",
            describe(outputs)
        ));
    }
    Ok(found)
}

/// The expected bin index of a distribution given as logits (softmax, then the mean).
fn expected_bin(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut weighted) = (0.0f32, 0.0f32);
    for (i, &logit) in logits.iter().enumerate() {
        let p = (logit - max).exp();
        sum += p;
        weighted += p * i as f32;
    }
    if sum > 0.0 { weighted / sum } else { 0.0 }
}

/// The YOLO output layouts users bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YoloLayout {
    /// YOLOv5: `[1, boxes, 5 + classes]` = cx, cy, w, h, objectness, class scores.
    V5,
    /// YOLOv8 / v11: `[1, 4 + classes, boxes]` = cx, cy, w, h, class scores (no objectness).
    V8,
}

/// Decodes a YOLO export's single output (boxes in input pixels, scores already sigmoided,
/// as Ultralytics exports them).
pub fn yolo(
    layout: YoloLayout,
    outputs: &[Output<'_>],
    classes: usize,
    width: u32,
    height: u32,
    threshold: f32,
) -> Result<Vec<Found>, String> {
    let (extra, name) = match layout {
        YoloLayout::V5 => (5, "yolov5"),
        YoloLayout::V8 => (4, "yolov8"),
    };
    let output = outputs.first().ok_or("the model has no output")?;
    let dims: Vec<usize> = output.shape.iter().map(|&d| d.max(0) as usize).collect();
    let (boxes, attrs) = match (layout, dims.as_slice()) {
        (YoloLayout::V5, [1, n, a]) => (*n, *a),
        (YoloLayout::V8, [1, a, n]) => (*n, *a),
        _ => (0, 0),
    };
    if attrs != extra + classes || boxes * attrs != output.data.len() {
        let expected = match layout {
            YoloLayout::V5 => format!("[1, boxes, {}]", 5 + classes),
            YoloLayout::V8 => format!("[1, {}, boxes]", 4 + classes),
        };
        return Err(format!(
            "decoder {name} expects output {} shaped {expected} for {classes} labels, got {:?}",
            output.name, output.shape
        ));
    }
    // Element `a` of box `i`.
    let at = |i: usize, a: usize| match layout {
        YoloLayout::V5 => output.data[i * attrs + a],
        YoloLayout::V8 => output.data[a * boxes + i],
    };
    let mut found = Vec::new();
    for i in 0..boxes {
        let objectness = if layout == YoloLayout::V5 {
            at(i, 4)
        } else {
            1.0
        };
        if objectness < threshold {
            continue;
        }
        let (mut best, mut best_score) = (0, f32::NEG_INFINITY);
        for class in 0..classes {
            let s = at(i, extra + class);
            if s > best_score {
                (best, best_score) = (class, s);
            }
        }
        let score = best_score * objectness;
        if score < threshold || !score.is_finite() {
            continue;
        }
        let (cx, cy, w, h) = (at(i, 0), at(i, 1), at(i, 2), at(i, 3));
        if let Some(bbox) = normalized(
            cx - w / 2.0,
            cy - h / 2.0,
            cx + w / 2.0,
            cy + h / 2.0,
            width as f32,
            height as f32,
        ) {
            found.push(Found {
                class_id: best as u32,
                score,
                bbox,
            });
        }
    }
    Ok(found)
}

fn last_dim(o: &Output<'_>) -> Option<usize> {
    o.shape.last().map(|&d| d.max(0) as usize)
}

fn cells_of(o: &Output<'_>) -> Result<usize, String> {
    match o.shape {
        [1, cells, k] if (*cells * *k) as usize == o.data.len() => Ok(*cells as usize),
        _ => Err(format!(
            "output {} has shape {:?}, expected [1, cells, n]",
            o.name, o.shape
        )),
    }
}

fn describe(outputs: &[Output<'_>]) -> String {
    outputs
        .iter()
        .map(|o| format!("{} {:?}", o.name, o.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Intersection over union of two boxes.
pub fn iou(a: &BoundingBox, b: &BoundingBox) -> f32 {
    let w = (a.x_max.min(b.x_max) - a.x_min.max(b.x_min)).max(0.0);
    let h = (a.y_max.min(b.y_max) - a.y_min.max(b.y_min)).max(0.0);
    let inter = w * h;
    let area = |r: &BoundingBox| (r.x_max - r.x_min) * (r.y_max - r.y_min);
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Per-class greedy non-maximum suppression: the best box of each cluster survives, best
/// first, at most `limit` in all.
pub fn nms(mut found: Vec<Found>, iou_threshold: f32, limit: usize) -> Vec<Found> {
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Found> = Vec::new();
    for f in found {
        if kept.len() >= limit {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class_id != f.class_id || iou(&k.bbox, &f.bbox) <= iou_threshold)
        {
            kept.push(f);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(x0: f32, y0: f32, x1: f32, y1: f32) -> BoundingBox {
        BoundingBox {
            x_min: x0,
            y_min: y0,
            x_max: x1,
            y_max: y1,
        }
    }

    #[test]
    fn nms_keeps_the_best_of_each_class_cluster() {
        let f = |class_id, score, x0| Found {
            class_id,
            score,
            bbox: bbox(x0, 0.1, x0 + 0.2, 0.3),
        };
        let kept = nms(
            vec![
                f(0, 0.5, 0.1),
                f(0, 0.9, 0.11),
                f(1, 0.6, 0.1),
                f(0, 0.7, 0.6),
            ],
            0.5,
            10,
        );
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        assert_eq!(scores, [0.9, 0.7, 0.6]);
        assert_eq!(nms(vec![f(0, 0.5, 0.1), f(0, 0.7, 0.6)], 0.5, 1).len(), 1);
    }

    #[test]
    fn nanodet_decodes_a_known_cell() {
        // A 16x16 input with stride 8 (2x2 cells) and stride 16 (1 cell), 2 classes, 3 bins.
        let bins = 3;
        let mut scores8 = vec![0.0f32; 4 * 2];
        scores8[3 * 2 + 1] = 0.8; // cell 3 = (col 1, row 1): anchor (8, 8), class 1
        let mut boxes8 = vec![-10.0f32; 4 * 4 * bins];
        for side in 0..4 {
            boxes8[3 * 4 * bins + side * bins + 1] = 10.0; // every side: bin 1 -> 1 * 8 px
        }
        let (scores16, boxes16) = (vec![0.1f32; 2], vec![0.0f32; 4 * bins]);
        let outputs = [
            Output {
                name: "s8",
                shape: &[1, 4, 2],
                data: &scores8,
            },
            Output {
                name: "b8",
                shape: &[1, 4, 12],
                data: &boxes8,
            },
            Output {
                name: "s16",
                shape: &[1, 1, 2],
                data: &scores16,
            },
            Output {
                name: "b16",
                shape: &[1, 1, 12],
                data: &boxes16,
            },
        ];
        let found = nanodet(&outputs, 2, 16, 16, 0.5).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].class_id, 1);
        let b = found[0].bbox;
        for (got, want) in [
            (b.x_min, 0.0),
            (b.y_min, 0.0),
            (b.x_max, 1.0),
            (b.y_max, 1.0),
        ] {
            assert!((got - want).abs() < 0.01, "{b:?}");
        }
        let err = nanodet(&outputs, 5, 16, 16, 0.5).unwrap_err();
        assert!(err.contains("5 scores per cell"), "{err}");
    }

    #[test]
    fn yolo_layouts_decode_the_same_box() {
        // Two boxes, two classes; box 0 is class 1 at (32, 16) 16x8 in a 64x32 input.
        let v5 = [
            32.0, 16.0, 16.0, 8.0, 0.9, 0.1, 0.8, 1.0, 1.0, 1.0, 1.0, 0.1, 0.9, 0.1,
        ];
        let mut v8 = [0.0f32; 12];
        for i in 0..2 {
            for a in 0..4 {
                v8[a * 2 + i] = v5[i * 7 + a];
            }
            for c in 0..2 {
                v8[(4 + c) * 2 + i] = v5[i * 7 + 5 + c] * v5[i * 7 + 4];
            }
        }
        let a = yolo(
            YoloLayout::V5,
            &[Output {
                name: "o",
                shape: &[1, 2, 7],
                data: &v5,
            }],
            2,
            64,
            32,
            0.5,
        )
        .unwrap();
        let b = yolo(
            YoloLayout::V8,
            &[Output {
                name: "o",
                shape: &[1, 6, 2],
                data: &v8,
            }],
            2,
            64,
            32,
            0.5,
        )
        .unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        assert_eq!((a[0].class_id, b[0].class_id), (1, 1));
        assert_eq!(a[0].bbox, bbox(0.375, 0.375, 0.625, 0.625));
        assert_eq!(a[0].bbox, b[0].bbox);
        let err = yolo(
            YoloLayout::V8,
            &[Output {
                name: "o",
                shape: &[1, 6, 2],
                data: &v8,
            }],
            80,
            64,
            32,
            0.5,
        )
        .unwrap_err();
        assert!(err.contains("[1, 84, boxes]"), "{err}");
    }
}
