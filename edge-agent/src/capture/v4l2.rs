//! V4L2 cameras through the `v4l` crate: MJPEG (decoded here) or YUYV (converted here),
//! with the device, resolution and rate from the config. Whatever the driver settles on is
//! logged, since drivers round resolutions and rates to what the camera offers.

use std::time::Duration;

use image::RgbImage;
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::jpeg::{DecodeSize, JpegDecoder};
use super::{CaptureError, Frame, FrameSource};
use crate::config::{PixelFormat, V4l2Config};

/// How long a read waits for the driver before the camera counts as gone.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct V4l2Source {
    name: String,
    // The stream holds its own reference to the device's handle.
    stream: Stream<'static>,
    width: u32,
    height: u32,
    format: PixelFormat,
    seq: u64,
    decoder: JpegDecoder,
}

impl std::fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Source")
            .field("name", &self.name)
            .finish()
    }
}

impl V4l2Source {
    pub(crate) fn open(config: &V4l2Config, size: DecodeSize) -> Result<Self, CaptureError> {
        let name = config.device.display().to_string();
        let open_error = |problem: String| CaptureError::Open {
            source_name: name.clone(),
            problem,
        };
        let device = Device::with_path(&config.device).map_err(|e| open_error(e.to_string()))?;
        let fourcc = match config.format {
            PixelFormat::Mjpeg => FourCC::new(b"MJPG"),
            PixelFormat::Yuyv => FourCC::new(b"YUYV"),
        };
        let mut format = device
            .format()
            .map_err(|e| open_error(format!("not a capture device: {e}")))?;
        format.width = config.width;
        format.height = config.height;
        format.fourcc = fourcc;
        let format = device
            .set_format(&format)
            .map_err(|e| open_error(format!("cannot set the format: {e}")))?;
        if format.fourcc != fourcc {
            return Err(open_error(format!(
                "the camera does not offer {} (it offered {}); try the other source.format",
                config.format.as_str(),
                format.fourcc
            )));
        }
        let params = device
            .set_params(&v4l::video::capture::Parameters::with_fps(config.fps))
            .map_err(|e| open_error(format!("cannot set {} fps: {e}", config.fps)))?;
        let mut stream = Stream::with_buffers(&device, Type::VideoCapture, 4)
            .map_err(|e| open_error(format!("cannot map capture buffers: {e}")))?;
        stream.set_timeout(READ_TIMEOUT);
        tracing::info!(
            device = %name,
            width = format.width,
            height = format.height,
            format = %format.fourcc,
            interval = %format!("{}/{}", params.interval.numerator, params.interval.denominator),
            "camera opened"
        );
        let decoder = JpegDecoder::new(size).map_err(|e| open_error(e.to_string()))?;
        Ok(Self {
            name,
            stream,
            width: format.width,
            height: format.height,
            format: config.format,
            seq: 0,
            decoder,
        })
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        let read_error = |problem: String| CaptureError::Read {
            source_name: self.name.clone(),
            problem,
        };
        let (data, meta) = self
            .stream
            .next()
            .map_err(|e| read_error(format!("no frame: {e}")))?;
        let used = (meta.bytesused as usize).min(data.len());
        let data = &data[..used];
        let image = match self.format {
            PixelFormat::Mjpeg => self.decoder.decode(data).map_err(|e| CaptureError::Frame {
                source_name: self.name.clone(),
                problem: format!("MJPEG frame: {e}"),
            })?,
            PixelFormat::Yuyv => yuyv_to_rgb(data, self.width, self.height)
                .ok_or_else(|| read_error(format!("short YUYV frame: {used} bytes")))?,
        };
        Ok(Frame::capture(image, &mut self.seq))
    }

    fn damaged(&self) -> u64 {
        self.decoder.damaged()
    }

    fn describe(&self) -> String {
        format!(
            "{} {}x{} {}",
            self.name,
            self.width,
            self.height,
            self.format.as_str()
        )
    }
}

/// Converts packed YUYV 4:2:2 (BT.601, limited range) to RGB.
pub(crate) fn yuyv_to_rgb(data: &[u8], width: u32, height: u32) -> Option<RgbImage> {
    let pixels = width as usize * height as usize;
    if data.len() < pixels * 2 || !width.is_multiple_of(2) {
        return None;
    }
    let mut rgb = Vec::with_capacity(pixels * 3);
    for chunk in data[..pixels * 2].chunks_exact(4) {
        let (y0, u, y1, v) = (chunk[0], chunk[1], chunk[2], chunk[3]);
        for y in [y0, y1] {
            let c = 298 * (i32::from(y) - 16);
            let (d, e) = (i32::from(u) - 128, i32::from(v) - 128);
            let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
            rgb.extend_from_slice(&[
                clamp(c + 409 * e),
                clamp(c - 100 * d - 208 * e),
                clamp(c + 516 * d),
            ]);
        }
    }
    RgbImage::from_raw(width, height, rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_converts_known_colours() {
        // White, black; then pure-ish red (Y=81, U=90, V=240).
        let data = [235, 128, 16, 128, 81, 90, 81, 240];
        let image = yuyv_to_rgb(&data, 2, 2).unwrap();
        assert_eq!(image.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(image.get_pixel(1, 0).0, [0, 0, 0]);
        let red = image.get_pixel(0, 1).0;
        assert!(red[0] > 240 && red[1] < 10 && red[2] < 10, "{red:?}");
        assert!(yuyv_to_rgb(&data[..6], 2, 2).is_none());
    }

    #[test]
    fn a_missing_device_is_an_open_error() {
        let config = V4l2Config {
            device: "/dev/video-sightline-none".into(),
            ..V4l2Config::default()
        };
        let err = V4l2Source::open(&config, DecodeSize::FULL).unwrap_err();
        assert!(matches!(err, CaptureError::Open { .. }), "{err}");
        assert!(err.to_string().contains("/dev/video-sightline-none"));
    }
}
