//! Motion gating: frame differencing on a small grey copy of each frame, so the detector
//! only runs when something moved.

use image::RgbImage;

use crate::config::MotionConfig;

/// Compares each frame with the one before it.
#[derive(Debug)]
pub struct MotionGate {
    config: MotionConfig,
    previous: Option<Grey>,
}

#[derive(Debug)]
struct Grey {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
    /// `true` where a mask hides the pixel.
    masked: Vec<bool>,
}

impl MotionGate {
    pub fn new(config: MotionConfig) -> Self {
        Self {
            config,
            previous: None,
        }
    }

    /// The fraction of (unmasked) pixels that changed by more than `pixel_threshold` since
    /// the previous frame, `0.0..=1.0`. The first frame, and a frame whose size changed,
    /// count as all motion.
    pub fn score(&mut self, frame: &RgbImage) -> f32 {
        let grey = self.downscale(frame);
        let score = match &self.previous {
            Some(p) if p.width == grey.width && p.height == grey.height => {
                let threshold = self.config.pixel_threshold;
                let (mut changed, mut counted) = (0usize, 0usize);
                for i in 0..grey.pixels.len() {
                    if grey.masked[i] {
                        continue;
                    }
                    counted += 1;
                    if grey.pixels[i].abs_diff(p.pixels[i]) > threshold {
                        changed += 1;
                    }
                }
                if counted == 0 {
                    0.0
                } else {
                    changed as f32 / counted as f32
                }
            }
            _ => 1.0,
        };
        self.previous = Some(grey);
        score
    }

    /// Whether `score` is motion.
    pub fn is_motion(&self, score: f32) -> bool {
        !self.config.enabled || score >= self.config.threshold
    }

    /// Area-averaged grey copy, `scale_width` pixels wide.
    fn downscale(&self, frame: &RgbImage) -> Grey {
        let (fw, fh) = (frame.width() as usize, frame.height() as usize);
        let width = (self.config.scale_width as usize).clamp(1, fw.max(1));
        let height = ((fh * width).div_ceil(fw.max(1))).max(1);
        let raw = frame.as_raw();
        let mut pixels = vec![0u8; width * height];
        let mut masked = vec![false; width * height];
        for y in 0..height {
            let (sy0, sy1) = (
                y * fh / height,
                ((y + 1) * fh / height).max(y * fh / height + 1),
            );
            for x in 0..width {
                let (sx0, sx1) = (
                    x * fw / width,
                    ((x + 1) * fw / width).max(x * fw / width + 1),
                );
                let (mut sum, mut n) = (0u32, 0u32);
                for sy in sy0..sy1.min(fh) {
                    for sx in sx0..sx1.min(fw) {
                        let p = &raw[(sy * fw + sx) * 3..(sy * fw + sx) * 3 + 3];
                        sum +=
                            (77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2]))
                                >> 8;
                        n += 1;
                    }
                }
                pixels[y * width + x] = (sum / n.max(1)) as u8;
                let (cx, cy) = (
                    (x as f32 + 0.5) / width as f32,
                    (y as f32 + 0.5) / height as f32,
                );
                masked[y * width + x] = self
                    .config
                    .masks
                    .iter()
                    .any(|[x0, y0, x1, y1]| cx >= *x0 && cx < *x1 && cy >= *y0 && cy < *y1);
            }
        }
        Grey {
            width,
            height,
            pixels,
            masked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_with_square(at: u32) -> RgbImage {
        RgbImage::from_fn(320, 240, |x, y| {
            if (at..at + 60).contains(&x) && (90..150).contains(&y) {
                image::Rgb([250, 250, 250])
            } else {
                image::Rgb([40, 60, 80])
            }
        })
    }

    #[test]
    fn still_frames_are_not_motion_and_moving_ones_are() {
        let mut gate = MotionGate::new(MotionConfig::default());
        assert_eq!(gate.score(&frame_with_square(10)), 1.0, "the first frame");
        let still = gate.score(&frame_with_square(10));
        assert_eq!(still, 0.0);
        assert!(!gate.is_motion(still));
        let moved = gate.score(&frame_with_square(80));
        assert!(gate.is_motion(moved), "{moved}");
        // Sensor noise of a few grey levels is not motion.
        let moved = frame_with_square(80);
        let noisy = RgbImage::from_fn(320, 240, |x, y| {
            let p = *moved.get_pixel(x, y);
            image::Rgb(p.0.map(|c| c.saturating_add(((x + y) % 7) as u8)))
        });
        let score = gate.score(&noisy);
        assert!(!gate.is_motion(score), "{score}");
    }

    #[test]
    fn masked_areas_do_not_count() {
        let config = MotionConfig {
            masks: vec![[0.0, 0.0, 0.6, 1.0]],
            ..MotionConfig::default()
        };
        let mut gate = MotionGate::new(config);
        gate.score(&frame_with_square(10));
        // The square moves inside the masked left 60 %.
        assert_eq!(gate.score(&frame_with_square(60)), 0.0);
        // Now into the open right part.
        assert!(gate.score(&frame_with_square(240)) > 0.0);
    }
}
