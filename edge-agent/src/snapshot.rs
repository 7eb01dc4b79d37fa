//! Annotated snapshots: the frame of an event with its boxes and labels drawn, saved as a
//! JPEG in the event's day folder (`events/YYYY-MM-DD/snapshots/<event_id>.jpg`), so
//! rotation deletes them with their day and they count in the storage budget.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{Rgb, RgbImage};
use sightline_runtime::picture::{EncodeError, downscale, encode};
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
    #[error(transparent)]
    Encode(#[from] EncodeError),
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
    Ok(encode(&image, config.quality)?)
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
/// 16 frames of 1280x720 would be 44 MB; a 720p camera's frames are decoded at 640x360
/// (capture/jpeg.rs): 11 MB.
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
