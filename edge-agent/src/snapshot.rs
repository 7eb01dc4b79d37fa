//! Annotated snapshots: the frame of an event with its boxes and labels drawn, saved as a
//! JPEG in the event's day folder (`events/YYYY-MM-DD/snapshots/<event_id>.jpg`), so
//! rotation deletes them with their day and they count in the storage budget.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use sightline_shared::{Detection, DetectionEvent};

use crate::config::SnapshotConfig;
use crate::daylog;

/// The folder in a day folder that holds its snapshots.
pub(crate) const SNAPSHOTS_DIR: &str = "snapshots";

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

/// Draws the event's detections on `frame`, scales it to at most `max_width` and encodes it.
pub(crate) fn render(
    frame: &RgbImage,
    detections: &[Detection],
    config: &SnapshotConfig,
) -> Result<Vec<u8>, image::ImageError> {
    let mut image = if frame.width() > config.max_width {
        let height = (u64::from(frame.height()) * u64::from(config.max_width)
            / u64::from(frame.width()))
        .max(1) as u32;
        image::imageops::resize(
            frame,
            config.max_width,
            height,
            image::imageops::FilterType::Triangle,
        )
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
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, config.quality)
        .encode_image(&image)?;
    Ok(jpeg)
}

/// The snapshot's path relative to the data directory, as the event records it.
pub(crate) fn relative_path(event: &DetectionEvent) -> PathBuf {
    daylog::day_dir(Path::new(""), daylog::day_of(event.captured_at.as_millis()))
        .join(SNAPSHOTS_DIR)
        .join(format!("{}.jpg", event.event_id))
}

/// The path of a track's best-frame snapshot relative to the data directory: in the day
/// the track started, one file per track, rewritten while a better frame comes.
pub(crate) fn track_path(track_id: u64, started_ms: i64) -> PathBuf {
    daylog::day_dir(Path::new(""), daylog::day_of(started_ms))
        .join(SNAPSHOTS_DIR)
        .join(format!("track-{track_id}.jpg"))
}

/// Writes a snapshot under `data_dir` atomically (temporary file, then rename), mode 0644.
/// Returns the bytes written.
pub(crate) fn save(data_dir: &Path, relative: &Path, jpeg: &[u8]) -> std::io::Result<u64> {
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
        };
        let config = SnapshotConfig {
            max_width: 640,
            ..SnapshotConfig::default()
        };
        let jpeg = render(&frame, &[detection], &config).unwrap();
        let image = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!((image.width(), image.height()), (640, 360));
        // The box's left edge is drawn in the class colour, the middle is untouched.
        let edge = image.get_pixel(160, 180);
        let middle = image.get_pixel(320, 180);
        assert!(edge[0] > 150, "{edge:?}");
        assert!(middle[0] < 60, "{middle:?}");
    }
}
