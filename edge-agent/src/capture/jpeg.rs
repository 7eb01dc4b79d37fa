//! JPEG frames decoded straight to the size the camera's pipeline needs.
//!
//! A camera's JPEG (MJPEG frames, image files) is decoded by libjpeg-turbo, which can scale
//! in the inverse DCT: at 1/2, 1/4 or 1/8 it skips most of the transform's work and never
//! writes a full-size picture. The decoder picks the smallest of those scales whose picture
//! still has at least as many pixels as the model's input and is at least as wide as the
//! snapshots: a 720p camera decodes to 640x360 for a 416x416 model (1.3 times its input's
//! pixels, where the full frame has 5.3; the detector stretches 360 rows to 416), and
//! snapshots (640 wide by default) are scaled down from no less than they show. Motion
//! scoring (its grey copy is at most as wide as the decoded frame), held best frames and
//! snapshots all work on the smaller picture too.
//!
//! Entropy decoding cannot be scaled away: every coefficient is still read, so a 1/2-scale
//! decode takes about 68 % of the full-size decode it replaced (docs/benchmarks.md,
//! "Detection"). libjpeg-turbo cannot turn CMYK JPEGs into RGB; cameras do not send them.

use image::RgbImage;
use turbojpeg::{Decompressor, Image, PixelFormat, ScalingFactor};

/// The largest picture the agent decodes, in pixels before scaling (64 Mpx: 8K by 8K). A
/// corrupt or hostile header cannot make the agent allocate beyond it, in its own buffer or
/// in libjpeg's (a progressive JPEG keeps every coefficient of the whole picture).
pub const MAX_PIXELS: u64 = 64 << 20;

/// Most scans of a progressive JPEG (libjpeg-turbo's own tools suggest 500): cameras send
/// baseline JPEGs, and a crafted one with thousands of scans would take the CPU for seconds.
const MAX_SCANS: u32 = 500;

/// The texts libjpeg gives its warnings (`JWRN_*` in libjpeg-turbo's jerror.h): the picture
/// was decoded whole (damaged parts grey or smeared) and TurboJPEG still reports an error.
/// Cheap cameras send such frames now and then (a few bytes lost over USB); they are kept.
const WARNINGS: &[&str] = &[
    "Corrupt JPEG data",
    "Premature end of JPEG file",
    "Unknown Adobe color transform code",
    "Inconsistent progression sequence",
    "Warning: unknown JFIF revision",
    "Invalid SOS parameters for sequential JPEG",
    "Application transferred too many scanlines",
];

/// Why a JPEG frame gave no picture.
#[derive(Debug, thiserror::Error)]
pub enum JpegError {
    #[error("cannot start libjpeg-turbo: {0}")]
    Start(String),
    #[error("not a JPEG ({0})")]
    NotJpeg(String),
    #[error("the JPEG says it is {width}x{height}, which has no pixels")]
    Empty { width: usize, height: usize },
    #[error(
        "the JPEG says it is {width}x{height}, more than the {} Mpx the agent decodes",
        MAX_PIXELS >> 20
    )]
    TooLarge { width: usize, height: usize },
    #[error("undecodable JPEG data ({0})")]
    Undecodable(String),
}

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
    /// Frames decoded despite a libjpeg warning.
    damaged: u64,
}

impl std::fmt::Debug for JpegDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JpegDecoder")
            .field("size", &self.size)
            .field("damaged", &self.damaged)
            .finish_non_exhaustive()
    }
}

impl JpegDecoder {
    /// A decoder that decodes no smaller than `size`.
    pub fn new(size: DecodeSize) -> Result<Self, JpegError> {
        Ok(Self {
            inner: start()?,
            size,
            damaged: 0,
        })
    }

    /// Frames decoded so far despite a libjpeg warning (damaged data, kept).
    pub fn damaged(&self) -> u64 {
        self.damaged
    }

    /// Decodes `data` to RGB at the smallest scale [`DecodeSize`] allows. A picture libjpeg
    /// decodes with a warning (damaged data) is kept, counted in [`Self::damaged`] and
    /// logged (the 1st, 2nd, 4th, 8th... time).
    pub fn decode(&mut self, data: &[u8]) -> Result<RgbImage, JpegError> {
        let decoded = self.try_decode(data);
        if decoded.is_err() {
            // libjpeg keeps some of a failed read's state (a marker it could not use) and
            // would fail the next frame with it: start afresh.
            self.inner = start()?;
        }
        decoded
    }

    fn try_decode(&mut self, data: &[u8]) -> Result<RgbImage, JpegError> {
        let header = self
            .inner
            .read_header(data)
            .map_err(|e| JpegError::NotJpeg(message(&e)))?;
        let (width, height) = (header.width, header.height);
        if width == 0 || height == 0 {
            return Err(JpegError::Empty { width, height });
        }
        if width as u64 * height as u64 > MAX_PIXELS {
            return Err(JpegError::TooLarge { width, height });
        }
        let factor = self.size.scale(width, height);
        let scaled = header.scaled(factor);
        self.inner
            .set_scaling_factor(factor)
            .map_err(|e| JpegError::Undecodable(message(&e)))?;
        let mut pixels = vec![0u8; scaled.width * scaled.height * 3];
        let image = Image {
            pixels: pixels.as_mut_slice(),
            width: scaled.width,
            pitch: scaled.width * 3,
            height: scaled.height,
            format: PixelFormat::RGB,
        };
        if let Err(e) = self.inner.decompress(data, image) {
            let problem = message(&e);
            if !WARNINGS.iter().any(|w| problem.starts_with(w)) {
                return Err(JpegError::Undecodable(problem));
            }
            self.damaged += 1;
            // The 1st, 2nd, 4th, 8th...: a camera that sends many does not flood the log.
            if self.damaged.is_power_of_two() {
                tracing::warn!(%problem, damaged = self.damaged, "a damaged JPEG frame, decoded and kept");
            }
        }
        Ok(
            RgbImage::from_raw(scaled.width as u32, scaled.height as u32, pixels)
                .expect("the buffer holds width x height RGB pixels"),
        )
    }
}

/// A decompressor with the agent's limits.
fn start() -> Result<Decompressor, JpegError> {
    let failed = |e: turbojpeg::Error| JpegError::Start(e.to_string());
    let mut inner = Decompressor::new().map_err(failed)?;
    inner.set_scan_limit(MAX_SCANS).map_err(failed)?;
    Ok(inner)
}

/// libjpeg-turbo's message, without the crate's "TurboJPEG error: " prefix.
fn message(error: &turbojpeg::Error) -> String {
    match error {
        turbojpeg::Error::TurboJpegError(message) => message.clone(),
        other => other.to_string(),
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
        for data in [&b"not a picture"[..], &[]] {
            let err = decoder.decode(data).unwrap_err();
            assert!(matches!(err, JpegError::NotJpeg(_)), "{err}");
            assert!(err.to_string().starts_with("not a JPEG ("), "{err}");
        }
        // A header that claims 20000x20000 (SOF0: length, precision, height, width).
        let mut huge = jpeg(64, 48);
        let sof = huge.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        huge[sof + 5..sof + 9].copy_from_slice(&[0x4E, 0x20, 0x4E, 0x20]);
        let err = decoder.decode(&huge).unwrap_err();
        assert!(
            matches!(
                err,
                JpegError::TooLarge {
                    width: 20000,
                    height: 20000
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("20000x20000"), "{err}");
        assert_eq!(decoder.damaged(), 0);
        // Garbage after a JPEG start leaves libjpeg mid-marker: the next frame still decodes.
        assert!(decoder.decode(b"\xFF\xD8\xFF\xE0garbage").is_err());
        assert_eq!(
            decoder.decode(&jpeg(64, 48)).unwrap().dimensions(),
            (64, 48)
        );
    }

    #[test]
    fn a_damaged_frame_is_decoded_whole_and_counted() {
        // A frame cut short, as a camera's USB transfer loses its end: libjpeg warns and
        // fills the rest; the picture is kept.
        let data = jpeg(320, 240);
        let mut decoder = JpegDecoder::new(DecodeSize::FULL).unwrap();
        let picture = decoder.decode(&data[..data.len() * 2 / 3]).unwrap();
        assert_eq!(picture.dimensions(), (320, 240));
        assert_eq!(decoder.damaged(), 1);
        // The top survived.
        let whole = decoder.decode(&data).unwrap();
        let (p, q) = (picture.get_pixel(100, 10), whole.get_pixel(100, 10));
        for c in 0..3 {
            assert!(p[c].abs_diff(q[c]) <= 2, "{p:?} against {q:?}");
        }
        assert_eq!(decoder.damaged(), 1);
    }
}
