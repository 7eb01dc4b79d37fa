//! Annotated snapshots: the frame of an event with its boxes and labels drawn, saved as a
//! JPEG in the event's day folder (`events/YYYY-MM-DD/snapshots/<event_id>.jpg`), so
//! rotation deletes them with their day and they count in the storage budget.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use sightline_shared::{Detection, DetectionEvent};

use crate::config::SnapshotConfig;
use crate::daylog;
use crate::detect::Found;

/// The folder in a day folder that holds its snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// Colours for boxes, by class id.
const PALETTE: [[u8; 3]; 8] = [
    [255, 56, 56],
    [72, 249, 10],
    [0, 194, 255],
    [255, 178, 29],
    [207, 210, 49],
    [146, 204, 23],
    [255, 55, 199],
    [132, 56, 255],
];

/// Why a snapshot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("a {0}x{1} picture is too large for a JPEG (at most 65535 on a side)")]
    TooLarge(u32, u32),
    #[error("JPEG encoding failed: {0}")]
    Encode(#[from] jpeg_encoder::EncodingError),
}

/// Draws the event's detections on `frame`, scales it to at most `max_width` and encodes it.
/// The scaling averages each output pixel's area of the frame and the encoder is
/// `jpeg-encoder`'s: a 1280x720 frame becomes a 640x360 snapshot in about 3 ms on the
/// machine CI runs on, where the `image` crate's triangle filter and encoder took 21 ms.
pub fn render(
    frame: &RgbImage,
    detections: &[Detection],
    config: &SnapshotConfig,
) -> Result<Vec<u8>, RenderError> {
    let mut image = if frame.width() > config.max_width {
        let height = (u64::from(frame.height()) * u64::from(config.max_width)
            / u64::from(frame.width()))
        .max(1) as u32;
        downscale(frame, config.max_width, height)
    } else {
        frame.clone()
    };
    let (w, h) = (image.width() as f32, image.height() as f32);
    let thickness = (image.width() / 320).max(1);
    let scale = (image.width() / 480).max(1);
    for d in detections {
        let colour = Rgb(PALETTE[d.class_id as usize % PALETTE.len()]);
        let x0 = (d.bbox.x_min * w) as u32;
        let y0 = (d.bbox.y_min * h) as u32;
        let x1 = ((d.bbox.x_max * w) as u32).min(image.width().saturating_sub(1));
        let y1 = ((d.bbox.y_max * h) as u32).min(image.height().saturating_sub(1));
        draw_rect(&mut image, x0, y0, x1, y1, thickness, colour);
        let text = format!("{} {:.2}", d.label, d.confidence);
        let text_h = 8 * scale + 2;
        let ty = if y0 >= text_h { y0 - text_h } else { y0 };
        fill_rect(
            &mut image,
            x0,
            ty,
            x0 + text.chars().count() as u32 * 8 * scale + 2,
            ty + text_h,
            colour,
        );
        draw_text(&mut image, x0 + 1, ty + 1, &text, scale, Rgb([0, 0, 0]));
    }
    let (width, height) = image.dimensions();
    let too_large = || RenderError::TooLarge(width, height);
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, config.quality.clamp(1, 100)).encode(
        image.as_raw(),
        u16::try_from(width).map_err(|_| too_large())?,
        u16::try_from(height).map_err(|_| too_large())?,
        jpeg_encoder::ColorType::Rgb,
    )?;
    Ok(jpeg)
}

/// `frame` scaled down to `width` x `height` (each at most the frame's): every output pixel
/// is the mean of the frame's pixels in its area (rounded), so no detail aliases away; each
/// pixel of the frame is read once.
pub fn downscale(frame: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let (out_w, out_h) = (
        (width as usize).clamp(1, w.max(1)),
        (height as usize).clamp(1, h.max(1)),
    );
    // The frame's columns and rows each output column and row covers: [start, end).
    let spans = |n: usize, out: usize| -> Vec<(usize, usize)> {
        (0..out)
            .map(|i| {
                let start = i * n / out;
                (start, ((i + 1) * n / out).max(start + 1))
            })
            .collect()
    };
    let mut out = Vec::with_capacity(out_w * out_h * 3);
    if w == 2 * out_w && h == 2 * out_h {
        // Half size (1280x720 to 640, the default): each output pixel is a 2x2 block.
        for pair in frame.as_raw().chunks_exact(w * 6) {
            let (upper, lower) = pair.split_at(w * 3);
            for (a, b) in upper.chunks_exact(6).zip(lower.chunks_exact(6)) {
                for c in 0..3 {
                    let sum = u16::from(a[c])
                        + u16::from(a[c + 3])
                        + u16::from(b[c])
                        + u16::from(b[c + 3]);
                    out.push(((sum + 2) / 4) as u8);
                }
            }
        }
    } else {
        let (columns, rows) = (spans(w, out_w), spans(h, out_h));
        average_areas(frame.as_raw(), w, &rows, &columns, &mut out);
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, out).unwrap_or_default()
}

/// The snapshot's path relative to the data directory, as the event records it.
pub fn relative_path(event: &DetectionEvent) -> PathBuf {
    daylog::day_dir(Path::new(""), daylog::day_of(event.captured_at.as_millis()))
        .join(SNAPSHOTS_DIR)
        .join(format!("{}.jpg", event.event_id))
}

/// The path of a track's best-frame snapshot relative to the data directory: in the day
/// the track started, one file per track, rewritten by each record that has a better frame.
pub fn track_path(track_id: u64, started_ms: i64) -> PathBuf {
    daylog::day_dir(Path::new(""), daylog::day_of(started_ms))
        .join(SNAPSHOTS_DIR)
        .join(format!("track-{track_id}.jpg"))
}

/// A track's best frame since its last record, waiting to be rendered as its snapshot.
#[derive(Debug, Clone)]
pub struct BestFrame {
    pub image: Arc<RgbImage>,
    pub found: Found,
    /// When the frame was captured (milliseconds).
    pub at_ms: i64,
}

impl BestFrame {
    /// The object as its snapshot labels it; `label` names a class.
    pub fn detection(&self, track_id: u64, label: impl Fn(u32) -> String) -> Detection {
        self.found
            .detection(label(self.found.class_id), track_id, Vec::new())
    }
}

/// Most best frames one camera holds for its tracks (each up to a frame's size, shared when
/// tracks have their best in the same frame): past it, the longest-held is rendered early.
/// 16 frames of 1280x720 are 44 MB.
pub const MAX_HELD_BEST_FRAMES: usize = 16;

/// The best frames of a camera's tracks, held (shared, not copied) until each track's next
/// record renders its snapshot: one JPEG per track per record however often its score
/// improves, instead of one per improvement (22 % of a frame's CPU on a panning camera,
/// measured by the detect bench).
#[derive(Debug, Default)]
pub struct BestFrames(BTreeMap<u64, BestFrame>);

impl BestFrames {
    /// `image` is now the best frame of `track_id`, where it `found` the object.
    pub fn hold(&mut self, track_id: u64, image: &Arc<RgbImage>, found: Found, at_ms: i64) {
        self.0.insert(
            track_id,
            BestFrame {
                image: Arc::clone(image),
                found,
                at_ms,
            },
        );
    }

    /// The best frame held for `track_id`, if a better one came since its last record.
    pub fn take(&mut self, track_id: u64) -> Option<BestFrame> {
        self.0.remove(&track_id)
    }

    /// Past [`MAX_HELD_BEST_FRAMES`], the longest-held frame and its track, to render now.
    pub fn overflow(&mut self) -> Option<(u64, BestFrame)> {
        if self.0.len() <= MAX_HELD_BEST_FRAMES {
            return None;
        }
        let (&track_id, _) = self.0.iter().min_by_key(|(_, b)| b.at_ms)?;
        self.0.remove(&track_id).map(|best| (track_id, best))
    }

    /// How many tracks have a frame held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The mean of each (row span x column span) area of the RGB pixels `src` (rows of `w`),
/// appended to `out`. Per output row, the frame's rows it covers are summed column by
/// column (a plain loop the compiler vectorizes), then each output pixel's columns of that
/// sum.
fn average_areas(
    src: &[u8],
    w: usize,
    rows: &[(usize, usize)],
    columns: &[(usize, usize)],
    out: &mut Vec<u8>,
) {
    let mut column_sums = vec![0u32; w * 3];
    for &(top, bottom) in rows {
        column_sums.fill(0);
        for row in src[top * w * 3..bottom * w * 3].chunks_exact(w * 3) {
            for (sum, &byte) in column_sums.iter_mut().zip(row) {
                *sum += u32::from(byte);
            }
        }
        for &(left, right) in columns {
            let area = ((right - left) * (bottom - top)) as u32;
            let mut pixel = [0u32; 3];
            for sum in column_sums[left * 3..right * 3].chunks_exact(3) {
                pixel[0] += sum[0];
                pixel[1] += sum[1];
                pixel[2] += sum[2];
            }
            out.extend(pixel.map(|s| ((s + area / 2) / area) as u8));
        }
    }
}

/// Writes a snapshot under `data_dir` atomically (temporary file, then rename), mode 0644.
/// Returns the bytes written.
pub fn save(data_dir: &Path, relative: &Path, jpeg: &[u8]) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(relative);
    let dir = path.parent().unwrap_or(data_dir);
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("jpg.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    file.write_all(jpeg)?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    Ok(jpeg.len() as u64)
}

fn fill_rect(image: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, colour: Rgb<u8>) {
    for y in y0..y1.min(image.height()) {
        for x in x0..x1.min(image.width()) {
            image.put_pixel(x, y, colour);
        }
    }
}

fn draw_rect(image: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, t: u32, c: Rgb<u8>) {
    fill_rect(image, x0, y0, x1 + 1, y0 + t, c);
    fill_rect(image, x0, (y1 + 1).saturating_sub(t), x1 + 1, y1 + 1, c);
    fill_rect(image, x0, y0, x0 + t, y1 + 1, c);
    fill_rect(image, (x1 + 1).saturating_sub(t), y0, x1 + 1, y1 + 1, c);
}

/// ASCII text in the public-domain 8x8 font, `scale` pixels per font pixel.
fn draw_text(image: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, colour: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY
            .get(ch as usize)
            .copied()
            .unwrap_or(font8x8::legacy::BASIC_LEGACY[usize::from(b'?')]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 1 {
                    let px = x + (i as u32 * 8 + col) * scale;
                    let py = y + row as u32 * scale;
                    fill_rect(image, px, py, px + scale, py + scale, colour);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_shared::BoundingBox;

    #[test]
    fn downscaling_averages_each_area() {
        // A 4x2 frame: two 2x2 blocks, one of 0/100/200/40 red, one of 255s.
        let mut frame = RgbImage::new(4, 2);
        for (x, y, red) in [(0, 0, 0), (1, 0, 100), (0, 1, 200), (1, 1, 40)] {
            frame.put_pixel(x, y, Rgb([red, 7, 9]));
        }
        for (x, y) in [(2, 0), (3, 0), (2, 1), (3, 1)] {
            frame.put_pixel(x, y, Rgb([255, 255, 255]));
        }
        let small = downscale(&frame, 2, 1);
        assert_eq!(small.dimensions(), (2, 1));
        assert_eq!(small.get_pixel(0, 0), &Rgb([85, 7, 9]));
        assert_eq!(small.get_pixel(1, 0), &Rgb([255, 255, 255]));
        // A ratio that is not whole: 5 columns into 2 (2 and 3 columns), and no larger
        // than the frame however asked.
        let wide = RgbImage::from_fn(5, 1, |x, _| Rgb([(x * 10) as u8, 0, 0]));
        let small = downscale(&wide, 2, 9);
        assert_eq!(small.dimensions(), (2, 1));
        assert_eq!(
            (small.get_pixel(0, 0)[0], small.get_pixel(1, 0)[0]),
            (5, 30)
        );
    }

    #[test]
    fn halving_is_the_mean_of_each_two_by_two_block() {
        let frame = RgbImage::from_fn(8, 6, |x, y| {
            Rgb([(x * 31 + y * 7) as u8, (x * y) as u8, 255])
        });
        let small = downscale(&frame, 4, 3);
        for (x, y, pixel) in small.enumerate_pixels() {
            for c in 0..3 {
                let sum: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                    .iter()
                    .map(|(dx, dy)| u32::from(frame.get_pixel(2 * x + dx, 2 * y + dy)[c]))
                    .sum();
                assert_eq!(u32::from(pixel[c]), (sum + 2) / 4, "({x}, {y}) channel {c}");
            }
        }
    }

    #[test]
    fn best_frames_are_shared_replaced_and_bounded() {
        let frame = Arc::new(RgbImage::new(64, 36));
        let found = |score: f32| Found {
            class_id: 0,
            score,
            bbox: BoundingBox {
                x_min: 0.1,
                y_min: 0.1,
                x_max: 0.5,
                y_max: 0.5,
            },
        };
        let mut held = BestFrames::default();
        // Every track holds the same picture: shared, never copied.
        for track in 1..=MAX_HELD_BEST_FRAMES as u64 {
            held.hold(track, &frame, found(0.5), 1_000 + track as i64);
        }
        assert_eq!(Arc::strong_count(&frame), 1 + MAX_HELD_BEST_FRAMES);
        assert!(
            held.overflow().is_none(),
            "at the limit, nothing is written early"
        );
        // A better frame replaces a track's earlier one.
        held.hold(1, &frame, found(0.9), 5_000);
        assert_eq!(held.len(), MAX_HELD_BEST_FRAMES);
        // One more track: the longest-held frame (track 2's, from 1,002 ms) is written now.
        held.hold(99, &frame, found(0.7), 6_000);
        let (track, best) = held.overflow().expect("over the limit");
        assert_eq!((track, best.at_ms), (2, 1_002));
        assert!(held.overflow().is_none());
        // A record takes its track's frame once.
        let taken = held.take(1).expect("track 1 holds a frame");
        assert_eq!((taken.found.score, taken.at_ms), (0.9, 5_000));
        assert!(held.take(1).is_none());
        assert_eq!(
            taken.detection(1, |_| "person".into()).label,
            "person".to_owned()
        );
        drop((taken, best, held));
        assert_eq!(Arc::strong_count(&frame), 1, "nothing held after");
    }

    #[test]
    fn snapshots_show_the_boxes_and_shrink_to_the_max_width() {
        let frame = RgbImage::from_pixel(1280, 720, Rgb([20, 20, 20]));
        let detection = Detection {
            label: "dog".into(),
            class_id: 16,
            confidence: 0.5,
            bbox: BoundingBox {
                x_min: 0.25,
                y_min: 0.25,
                x_max: 0.75,
                y_max: 0.75,
            },
            track_id: Some(1),
            zones: Vec::new(),
        };
        let config = SnapshotConfig {
            max_width: 640,
            ..SnapshotConfig::default()
        };
        let jpeg = render(&frame, &[detection], &config).unwrap();
        assert_eq!(&jpeg[..2], [0xFF, 0xD8], "a JPEG");
        let image = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!((image.width(), image.height()), (640, 360));
        // The box's left edge is drawn in the class colour, the middle is untouched.
        let edge = image.get_pixel(160, 180);
        let middle = image.get_pixel(320, 180);
        assert!(edge[0] > 150, "{edge:?}");
        assert!(middle[0] < 60, "{middle:?}");
    }
}
