//! A generated camera: a bright square crossing a dark gradient, for demos and tests of
//! the frame path without any files or devices.

use image::{Rgb, RgbImage};

use super::{CaptureError, Frame, FrameSource, Pacer};
use crate::config::PatternConfig;

#[derive(Debug)]
pub(crate) struct PatternSource {
    config: PatternConfig,
    pacer: Pacer,
    seq: u64,
}

impl PatternSource {
    pub(crate) fn new(config: &PatternConfig) -> Self {
        Self {
            config: config.clone(),
            pacer: Pacer::new(config.fps),
            seq: 0,
        }
    }
}

impl FrameSource for PatternSource {
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        let (w, h) = (self.config.width, self.config.height);
        let side = (h / 4).max(1);
        let travel = (w - side.min(w)).max(1);
        let x0 = ((self.seq * 8) % u64::from(travel)) as u32;
        let y0 = (h - side.min(h)) / 2;
        let image = RgbImage::from_fn(w, h, |x, y| {
            if (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y) {
                Rgb([240, 240, 240])
            } else {
                Rgb([(x * 64 / w.max(1)) as u8, (y * 64 / h.max(1)) as u8, 48])
            }
        });
        self.pacer.wait();
        Ok(Frame::capture(image, &mut self.seq))
    }

    fn describe(&self) -> String {
        format!(
            "test pattern {}x{} at {} fps",
            self.config.width, self.config.height, self.config.fps
        )
    }
}
