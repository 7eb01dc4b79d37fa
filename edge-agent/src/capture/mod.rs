//! Frame sources behind one trait: V4L2 cameras ([`v4l2`]), image files and MJPEG files
//! ([`file`]) and a generated test pattern ([`pattern`]). Everything after the source
//! (motion, detection, tracking, events) is the same code path for all of them.
//!
//! Sources are blocking: each camera reads its source on its own thread.

pub(crate) mod file;
pub mod jpeg;
pub(crate) mod pattern;
pub(crate) mod v4l2;

use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use sightline_shared::Timestamp;

use crate::config::SourceConfig;
pub use jpeg::DecodeSize;

/// One captured frame. The picture is shared: a track holds on to its best frame until its
/// next record writes the snapshot, without copying it.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub image: Arc<RgbImage>,
    /// Wall-clock capture time (the event's `captured_at`).
    pub captured_at: Timestamp,
    /// Monotonic capture time, for latency measurements.
    pub captured: Instant,
    /// Position of the frame in the source's stream since it was opened.
    pub seq: u64,
}

impl Frame {
    /// A frame captured now, numbered from the source's counter (which it advances).
    pub(crate) fn capture(image: RgbImage, counter: &mut u64) -> Self {
        let seq = *counter;
        *counter += 1;
        Self {
            image: Arc::new(image),
            captured_at: sightline_runtime::now(),
            captured: Instant::now(),
            seq,
        }
    }
}

/// Why a source gave no frame.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaptureError {
    /// The source could not be opened (no such device or file, unsupported format).
    #[error("cannot open {source_name}: {problem}")]
    Open {
        source_name: String,
        problem: String,
    },
    /// No frame could be read; the camera reopens the source.
    #[error("{source_name}: {problem}")]
    Read {
        source_name: String,
        problem: String,
    },
    /// One frame was read but cannot be decoded; the source is fine and the camera goes on
    /// to the next frame (the source moves past this one).
    #[error("{source_name}: {problem}")]
    Frame {
        source_name: String,
        problem: String,
    },
    /// A source that does not loop has played everything.
    #[error("{0}: no more frames")]
    Ended(String),
}

/// A camera: frames, one at a time, paced at the source's rate.
pub(crate) trait FrameSource: Send {
    /// Blocks until the next frame.
    fn next_frame(&mut self) -> Result<Frame, CaptureError>;
    /// A short description for logs and status (`/dev/video0 1280x720 MJPG`).
    fn describe(&self) -> String;
    /// Frames decoded so far despite damaged JPEG data (kept).
    fn damaged(&self) -> u64 {
        0
    }
}

/// Opens the source a camera config names, decoding JPEG frames no smaller than `size`.
/// `None` for the synthetic source, which makes events rather than frames.
pub(crate) fn open(
    config: &SourceConfig,
    size: DecodeSize,
) -> Option<Result<Box<dyn FrameSource>, CaptureError>> {
    Some(match config {
        SourceConfig::Synthetic(_) => return None,
        SourceConfig::File(c) => file::FileSource::open(c, size).map(|s| Box::new(s) as _),
        SourceConfig::V4l2(c) => v4l2::V4l2Source::open(c, size).map(|s| Box::new(s) as _),
        SourceConfig::Pattern(c) => Ok(Box::new(pattern::PatternSource::new(c)) as _),
    })
}

/// Paces a source at a frame rate. A source that falls behind skips the missed slots, as a
/// camera drops frames nobody read, rather than bursting to catch up.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Duration,
    next: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(fps: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / fps.max(0.001)),
            next: None,
        }
    }

    /// Sleeps until the next frame is due.
    pub(crate) fn wait(&mut self) {
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if due > now {
            std::thread::sleep(due - now);
        }
        let after = due + self.interval;
        self.next = Some(if after < Instant::now() {
            Instant::now() + self.interval
        } else {
            after
        });
    }
}
