//! JPEG frames decoded straight to the size the camera's pipeline needs.
//!
//! A camera's JPEG (MJPEG frames, image files) is decoded by libjpeg-turbo, which can scale
//! in the inverse DCT: at 1/2, 1/4 or 1/8 it skips most of the transform's work and never
//! writes a full-size picture. The decoder picks the smallest of those scales whose picture
//! still has at least as many pixels as the model's input and is at least as wide as the
//! snapshots: the detector then resizes down to its input from a picture about twice its
//! size (720p decodes to 640x360 for a 416x416 model) instead of one six times its size, and
//! snapshots (640 wide by default) are scaled down from no less than they show. Motion
//! scoring, held best frames and snapshots all work on the smaller picture too.
//!
//! Entropy decoding cannot be scaled away: every coefficient is still read, so a 1/2-scale
//! decode costs about 80 % of a full one (docs/benchmarks.md, "Detect").

use image::RgbImage;
use turbojpeg::{Decompressor, Image, PixelFormat, ScalingFactor};

/// The most bytes one decoded frame may take (a 16k x 10k picture), so that a corrupt or
/// hostile header cannot make the agent allocate without bound.
pub const MAX_FRAME_BYTES: usize = 512 << 20;

/// How small a camera's frames may be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSize {
    /// No narrower than this many pixels.
    pub min_width: u32,
    /// At least this many pixels in all.
    pub min_pixels: u64,
}

impl DecodeSize {
    /// Always the full size.
    pub const FULL: Self = Self {
        min_width: u32::MAX,
        min_pixels: u64::MAX,
    };

    /// What a camera needs: `model` is the detector's input (width, height), `snapshot_width`
    /// the snapshots' largest width when the camera writes snapshots.
    pub fn for_camera(model: (u32, u32), snapshot_width: Option<u32>) -> Self {
        Self {
            min_width: model.0.max(snapshot_width.unwrap_or(0)),
            min_pixels: u64::from(model.0) * u64::from(model.1),
        }
    }

    /// The smallest scale libjpeg-turbo does fast (1/8, 1/4, 1/2, or none) that keeps a
    /// `width` x `height` picture at least this large. (Other eighths are done by slower,
    /// unvectorized code: 5/8 costs more than a full-size decode.)
    pub fn scale(self, width: usize, height: usize) -> ScalingFactor {
        [
            ScalingFactor::ONE_EIGHTH,
            ScalingFactor::ONE_QUARTER,
            ScalingFactor::ONE_HALF,
        ]
        .into_iter()
        .find(|f| {
            let (w, h) = (f.scale(width) as u64, f.scale(height) as u64);
            w >= u64::from(self.min_width) && w * h >= self.min_pixels
        })
        .unwrap_or(ScalingFactor::ONE)
    }
}

/// A JPEG decoder for one camera, kept across frames.
pub struct JpegDecoder {
    inner: Decompressor,
    size: DecodeSize,
}

impl std::fmt::Debug for JpegDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JpegDecoder")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl JpegDecoder {
    pub fn new(size: DecodeSize) -> Result<Self, String> {
        let inner =
            Decompressor::new().map_err(|e| format!("cannot start the JPEG decoder: {e}"))?;
        Ok(Self { inner, size })
    }

    /// Decodes `data` to RGB at the smallest scale [`DecodeSize`] allows. The error says
    /// what is wrong with the data (libjpeg-turbo's own words).
    pub fn decode(&mut self, data: &[u8]) -> Result<RgbImage, String> {
        let header = self
            .inner
            .read_header(data)
            .map_err(|e| format!("not a JPEG: {e}"))?;
        if header.width == 0 || header.height == 0 {
            return Err(format!("a JPEG of {}x{}", header.width, header.height));
        }
        let factor = self.size.scale(header.width, header.height);
        let scaled = header.scaled(factor);
        let bytes = scaled
            .width
            .checked_mul(scaled.height)
            .and_then(|p| p.checked_mul(3))
            .filter(|&b| b <= MAX_FRAME_BYTES)
            .ok_or_else(|| {
                format!(
                    "a JPEG of {}x{} is larger than the agent decodes ({} MiB of pixels at most)",
                    header.width,
                    header.height,
                    MAX_FRAME_BYTES >> 20
                )
            })?;
        self.inner
            .set_scaling_factor(factor)
            .map_err(|e| format!("cannot scale the decode by {factor:?}: {e}"))?;
        let mut pixels = vec![0u8; bytes];
        let image = Image {
            pixels: pixels.as_mut_slice(),
            width: scaled.width,
            pitch: scaled.width * 3,
            height: scaled.height,
            format: PixelFormat::RGB,
        };
        self.inner
            .decompress(data, image)
            .map_err(|e| format!("undecodable JPEG: {e}"))?;
        RgbImage::from_raw(scaled.width as u32, scaled.height as u32, pixels)
            .ok_or_else(|| format!("a JPEG of {}x{}", scaled.width, scaled.height))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let picture = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&picture)
            .unwrap();
        out
    }

    #[test]
    fn the_scale_keeps_the_model_input_and_the_snapshot_width() {
        let camera = DecodeSize::for_camera((416, 416), Some(640));
        // 720p: 640x360 has 230,400 pixels (>= 173,056) and is 640 wide.
        assert_eq!(camera.scale(1280, 720), ScalingFactor::ONE_HALF);
        // 1080p: 480x270 would be too few pixels; 960x540.
        assert_eq!(camera.scale(1920, 1080), ScalingFactor::ONE_HALF);
        // 4K: 960x540.
        assert_eq!(camera.scale(3840, 2160), ScalingFactor::ONE_QUARTER);
        // VGA: half would be too narrow for the snapshots.
        assert_eq!(camera.scale(640, 480), ScalingFactor::ONE);
        // Without snapshots VGA is still too small to halve (320x240 < 416x416 pixels).
        let no_snapshots = DecodeSize::for_camera((416, 416), None);
        assert_eq!(no_snapshots.scale(640, 480), ScalingFactor::ONE);
        assert_eq!(no_snapshots.scale(1280, 720), ScalingFactor::ONE_HALF);
        assert_eq!(DecodeSize::FULL.scale(3840, 2160), ScalingFactor::ONE);
    }

    #[test]
    fn frames_decode_at_the_chosen_scale_with_their_content() {
        let data = jpeg(1280, 720);
        let mut half = JpegDecoder::new(DecodeSize::for_camera((416, 416), Some(640))).unwrap();
        let small = half.decode(&data).unwrap();
        assert_eq!(small.dimensions(), (640, 360));
        let mut full = JpegDecoder::new(DecodeSize::FULL).unwrap();
        let large = full.decode(&data).unwrap();
        assert_eq!(large.dimensions(), (1280, 720));
        // The same picture: a pixel of the half-size decode matches the full one's 2x2 block.
        for (x, y) in [(10, 10), (300, 200), (600, 340)] {
            let p = small.get_pixel(x, y);
            let q = large.get_pixel(2 * x, 2 * y);
            for c in 0..3 {
                assert!(p[c].abs_diff(q[c]) <= 24, "({x}, {y}) {p:?} against {q:?}");
            }
        }
        // The decoder is reused from frame to frame, at any size.
        assert_eq!(half.decode(&jpeg(64, 48)).unwrap().dimensions(), (64, 48));
    }

    #[test]
    fn bad_data_is_an_error_that_says_so() {
        let mut decoder = JpegDecoder::new(DecodeSize::FULL).unwrap();
        let err = decoder.decode(b"not a picture").unwrap_err();
        assert!(err.starts_with("not a JPEG"), "{err}");
        let err = decoder.decode(&[]).unwrap_err();
        assert!(err.starts_with("not a JPEG"), "{err}");
        // A header without its picture.
        let data = jpeg(64, 48);
        let err = decoder.decode(&data[..data.len() / 8]).unwrap_err();
        assert!(!err.is_empty());
    }
}
