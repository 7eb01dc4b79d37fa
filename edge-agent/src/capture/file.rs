//! A camera made of files: a directory of JPEG images, one JPEG, or an MJPEG file
//! (concatenated JPEGs, as `ffmpeg -f mjpeg` writes), played at a set rate, looping, and
//! optionally panning a window across each picture so that there is motion to detect.

use std::path::{Path, PathBuf};

use image::RgbImage;

use super::jpeg::{DecodeSize, JpegDecoder};
use super::{CaptureError, Frame, FrameSource, Pacer};
use crate::config::FileSourceConfig;

/// Frames from files.
#[derive(Debug)]
pub(crate) struct FileSource {
    config: FileSourceConfig,
    media: Media,
    pacer: Pacer,
    /// Which picture, and how far into its pan.
    picture: usize,
    step: u32,
    current: Option<RgbImage>,
    seq: u64,
    decoder: JpegDecoder,
}

#[derive(Debug)]
enum Media {
    /// Image files, read when shown (so a file deleted under a running camera is noticed).
    Images(Vec<PathBuf>),
    /// The frames of an MJPEG file, read at open.
    Mjpeg(Vec<Vec<u8>>),
}

impl Media {
    fn len(&self) -> usize {
        match self {
            Media::Images(paths) => paths.len(),
            Media::Mjpeg(frames) => frames.len(),
        }
    }
}

impl FileSource {
    pub(crate) fn open(config: &FileSourceConfig, size: DecodeSize) -> Result<Self, CaptureError> {
        let open_error = |problem: String| CaptureError::Open {
            source_name: config.path.display().to_string(),
            problem,
        };
        let path = &config.path;
        let media = if path.is_dir() {
            let mut images: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| open_error(e.to_string()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| is_jpeg_name(p))
                .collect();
            images.sort();
            Media::Images(images)
        } else if matches!(extension(path).as_deref(), Some("mjpeg" | "mjpg")) {
            let bytes = std::fs::read(path).map_err(|e| open_error(e.to_string()))?;
            Media::Mjpeg(split_mjpeg(&bytes))
        } else if is_jpeg_name(path) {
            std::fs::metadata(path).map_err(|e| open_error(e.to_string()))?;
            Media::Images(vec![path.clone()])
        } else if !path.exists() {
            return Err(open_error("no such file or directory".into()));
        } else {
            return Err(open_error(
                "expected a directory of .jpg files, a .jpg file or an .mjpeg file".into(),
            ));
        };
        if media.len() == 0 {
            return Err(open_error(
                "no frames (no .jpg files, or an empty MJPEG file)".into(),
            ));
        }
        Ok(Self {
            pacer: Pacer::new(config.fps),
            config: config.clone(),
            media,
            picture: 0,
            step: 0,
            current: None,
            seq: 0,
            decoder: JpegDecoder::new(size).map_err(|e| open_error(e.to_string()))?,
        })
    }

    fn read_error(&self, problem: String) -> CaptureError {
        CaptureError::Read {
            source_name: self.config.path.display().to_string(),
            problem,
        }
    }

    fn load(&mut self, index: usize) -> Result<RgbImage, CaptureError> {
        let (name, bytes) = match &self.media {
            Media::Images(paths) => {
                let path = &paths[index];
                let bytes = std::fs::read(path)
                    .map_err(|e| self.read_error(format!("{}: {e}", path.display())))?;
                (path.display().to_string(), bytes)
            }
            Media::Mjpeg(frames) => (format!("frame {index}"), frames[index].clone()),
        };
        self.decoder
            .decode(&bytes)
            .map_err(|e| CaptureError::Frame {
                source_name: self.config.path.display().to_string(),
                problem: format!("{name}: {e}"),
            })
    }
}

impl FrameSource for FileSource {
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        let steps = if self.config.pan {
            self.config.pan_frames.max(1)
        } else {
            1
        };
        if self.step >= steps {
            self.step = 0;
            self.picture += 1;
            self.current = None;
        }
        if self.picture >= self.media.len() {
            if !self.config.repeat {
                return Err(CaptureError::Ended(self.config.path.display().to_string()));
            }
            self.picture = 0;
        }
        if self.current.is_none() {
            match self.load(self.picture) {
                Ok(picture) => self.current = Some(picture),
                Err(error) => {
                    // The next frame comes from the next picture; the same pace either way.
                    self.step = steps;
                    self.pacer.wait();
                    return Err(error);
                }
            }
        }
        let picture = self
            .current
            .as_ref()
            .ok_or_else(|| self.read_error("no picture".into()))?;
        let image = if self.config.pan {
            pan_window(picture, self.step, steps)
        } else {
            picture.clone()
        };
        self.step += 1;
        self.pacer.wait();
        Ok(Frame::capture(image, &mut self.seq))
    }

    fn damaged(&self) -> u64 {
        self.decoder.damaged()
    }

    fn describe(&self) -> String {
        format!(
            "{} ({} frames at {} fps{})",
            self.config.path.display(),
            self.media.len(),
            self.config.fps,
            if self.config.pan { ", panning" } else { "" }
        )
    }
}

/// The window of a pan at `step` of `steps`: 80 % of the picture each way, sliding from the
/// left edge to the right edge.
pub fn pan_window(picture: &RgbImage, step: u32, steps: u32) -> RgbImage {
    let (w, h) = picture.dimensions();
    let (cw, ch) = ((w * 4 / 5).max(1), (h * 4 / 5).max(1));
    let x = if steps > 1 {
        (u64::from(w - cw) * u64::from(step) / u64::from(steps - 1)) as u32
    } else {
        0
    };
    image::imageops::crop_imm(picture, x, (h - ch) / 2, cw, ch).to_image()
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

fn is_jpeg_name(path: &Path) -> bool {
    matches!(extension(path).as_deref(), Some("jpg" | "jpeg"))
}

/// Splits concatenated JPEGs at their start-of-image markers (`FF D8 FF`). Entropy-coded
/// data escapes `FF` bytes, so the marker only appears at frame starts (and in embedded
/// thumbnails, which follow an APP1 marker and stay inside their frame).
pub(crate) fn split_mjpeg(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i + 2 < bytes.len() {
        if bytes[i] == 0xFF {
            match bytes[i + 1] {
                0xD8 if bytes[i + 2] == 0xFF => {
                    if depth == 0 {
                        starts.push(i);
                    }
                    depth += 1;
                    i += 2;
                    continue;
                }
                0xD9 => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    starts
        .iter()
        .enumerate()
        .map(|(n, &s)| bytes[s..starts.get(n + 1).copied().unwrap_or(bytes.len())].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(colour: u8, w: u32, h: u32) -> Vec<u8> {
        let image = RgbImage::from_pixel(w, h, image::Rgb([colour, colour, colour]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&image)
            .unwrap();
        out
    }

    fn config(path: &Path) -> FileSourceConfig {
        FileSourceConfig {
            path: path.to_owned(),
            fps: 1000.0,
            ..FileSourceConfig::default()
        }
    }

    #[test]
    fn an_mjpeg_file_plays_its_frames_in_order_and_loops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mjpeg");
        let bytes: Vec<u8> = [10u8, 120, 240]
            .iter()
            .flat_map(|&c| jpeg(c, 32, 16))
            .collect();
        std::fs::write(&path, bytes).unwrap();
        let mut source = FileSource::open(&config(&path), DecodeSize::FULL).unwrap();
        let greys: Vec<u8> = (0..4)
            .map(|_| source.next_frame().unwrap().image.get_pixel(5, 5)[0])
            .collect();
        for (got, want) in greys.iter().zip([10u8, 120, 240, 10]) {
            assert!(got.abs_diff(want) < 6, "{greys:?}");
        }
    }

    #[test]
    fn a_directory_plays_once_when_not_repeating_and_pans() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), jpeg(50, 100, 50)).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not a picture").unwrap();
        let mut source = FileSource::open(
            &FileSourceConfig {
                repeat: false,
                pan: true,
                pan_frames: 3,
                ..config(dir.path())
            },
            DecodeSize::FULL,
        )
        .unwrap();
        for seq in 0..3 {
            let frame = source.next_frame().unwrap();
            assert_eq!((frame.seq, frame.image.dimensions()), (seq, (80, 40)));
        }
        assert!(matches!(source.next_frame(), Err(CaptureError::Ended(_))));
    }

    #[test]
    fn bad_paths_and_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileSource::open(&config(&dir.path().join("none")), DecodeSize::FULL)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("none") && err.contains("no such file"),
            "{err}"
        );
        let err = FileSource::open(&config(dir.path()), DecodeSize::FULL)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no frames"), "{err}");
        std::fs::write(dir.path().join("broken.jpg"), b"\xFF\xD8\xFFgarbage").unwrap();
        std::fs::write(dir.path().join("c.jpg"), jpeg(200, 32, 16)).unwrap();
        let mut source = FileSource::open(
            &FileSourceConfig {
                repeat: false,
                ..config(dir.path())
            },
            DecodeSize::FULL,
        )
        .unwrap();
        // One bad frame, named; then the picture after it; then the end.
        let err = source.next_frame().unwrap_err();
        assert!(matches!(err, CaptureError::Frame { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("broken.jpg") && err.contains("not a JPEG"),
            "{err}"
        );
        let frame = source.next_frame().unwrap();
        assert!(frame.image.get_pixel(5, 5)[0].abs_diff(200) < 6);
        assert!(matches!(source.next_frame(), Err(CaptureError::Ended(_))));
    }
}
