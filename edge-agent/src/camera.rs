//! One camera's pipeline, on its own thread: frames from its source, motion gating, the
//! detector, the tracker, then an event (with an annotated snapshot) committed to the
//! buffer. A source that fails is reopened with capped backoff and reported in status and
//! metrics; it never takes the agent down.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;
use sightline_shared::backoff::Backoff;
use sightline_shared::snapshot::Owner;
use sightline_shared::zone;
use sightline_shared::{Detection, DetectionEvent, EventId, SCHEMA_VERSION, TrackRecord};
use tokio_util::sync::CancellationToken;

use crate::buffer::UploadRequest;
use crate::buffer::worker::{AppendError, BufferHandle, Commit};
use crate::capture::{self, CaptureError, Frame};
use crate::config::{CameraConfig, SnapshotConfig};
use crate::daylog::day_of;
use crate::detect::{Detector, Found};
use crate::metrics::{CameraLabel, Metrics};
use crate::motion::MotionGate;
use crate::outbox::Message;
use crate::snapshot::{self, BestFrame, BestFrames};
use crate::track::{self, TrackIds, Tracker};
use crate::uploader;

/// Undecodable frames in a row a camera skips before it takes its source for broken and
/// opens it again (a few seconds at camera rates).
const MAX_BAD_FRAMES: u32 = 30;

/// Appends a camera has handed to the buffer whose commits have not reported yet; past
/// this it waits for the oldest (the buffer is behind).
pub(crate) const MAX_UNCOMMITTED: usize = 256;

/// Inference times kept for the status quantiles.
const RECENT_INFERENCES: usize = 512;

/// What `/v1/status` shows of a camera.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CameraStatus {
    pub id: String,
    /// `synthetic`, `file`, `v4l2` or `pattern`.
    pub kind: &'static str,
    /// `starting`, `running`, `retrying` or `finished`.
    pub state: &'static str,
    /// The source as opened (`/dev/video0 1280x720 mjpeg`).
    pub source: Option<String>,
    pub last_error: Option<String>,
    /// Failed opens and reads so far.
    pub errors: u64,
    pub frames_captured: u64,
    pub frames_processed: u64,
    pub frames_skipped: u64,
    /// Share of captured frames the motion gate kept from the detector.
    pub skipped_fraction: f64,
    pub fps: f64,
    pub events_created: u64,
    pub events_suppressed: u64,
    /// Detector time per frame over the last frames, in milliseconds.
    pub inference_ms: Option<Quantiles>,
}

/// p50 / p95 / max of recent samples.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// A camera's status, shared between its thread and the status endpoint.
#[derive(Debug)]
pub struct CameraState {
    status: Mutex<CameraStatus>,
    inferences: Mutex<VecDeque<f64>>,
}

impl CameraState {
    pub fn new(config: &CameraConfig) -> Self {
        let kind = config.source.kind();
        Self {
            status: Mutex::new(CameraStatus {
                id: config.id.clone(),
                kind,
                state: if kind == "synthetic" {
                    "running"
                } else {
                    "starting"
                },
                source: None,
                last_error: None,
                errors: 0,
                frames_captured: 0,
                frames_processed: 0,
                frames_skipped: 0,
                skipped_fraction: 0.0,
                fps: 0.0,
                events_created: 0,
                events_suppressed: 0,
                inference_ms: None,
            }),
            inferences: Mutex::new(VecDeque::with_capacity(RECENT_INFERENCES)),
        }
    }

    /// A copy of the status, with the inference quantiles worked out.
    pub fn snapshot(&self) -> CameraStatus {
        let mut status = self.lock().clone();
        let mut samples: Vec<f64> = self
            .inferences
            .lock()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        if !samples.is_empty() {
            samples.sort_by(f64::total_cmp);
            let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
            status.inference_ms = Some(Quantiles {
                p50: at(0.5),
                p95: at(0.95),
                max: at(1.0),
            });
        }
        status
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CameraStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut CameraStatus)) {
        f(&mut self.lock());
    }

    /// Counts an event made without frames (the synthetic source).
    pub fn count_event(&self) {
        self.update(|s| s.events_created += 1);
    }

    /// Marks the camera finished (a source with an end reached it); its fps goes to 0 as
    /// [`Camera::run`] ends.
    pub fn finish(&self) {
        self.update(|s| s.state = "finished");
    }

    fn record_inference(&self, ms: f64) {
        let mut samples = self.inferences.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == RECENT_INFERENCES {
            samples.pop_front();
        }
        samples.push_back(ms);
    }
}

/// Everything one camera's thread needs.
#[derive(Debug)]
pub(crate) struct Camera {
    pub edge_id: String,
    pub config: CameraConfig,
    pub detector: Arc<Detector>,
    pub snapshots: SnapshotConfig,
    pub data_dir: PathBuf,
    pub buffer: BufferHandle,
    pub metrics: Metrics,
    pub state: Arc<CameraState>,
}

/// The per-frame state that survives a reopened source.
#[derive(Debug)]
struct Pipeline {
    motion: MotionGate,
    tracker: Tracker,
    /// Track records the tracker made on this frame, stored before the next one.
    records: Vec<TrackRecord>,
    /// Each track's best frame since its last record, by track id: its snapshot is
    /// rendered when the track's next record is made (at most one JPEG per track per
    /// `update_interval_secs` and one at its end, however often its score improves).
    best_frames: BestFrames,
    /// Tracks whose snapshot file was rendered since their last queued upload, with the
    /// capture time of the frame it shows: the next record of such a track queues it.
    unsent_track_snapshots: HashMap<u64, i64>,
    /// Class ids that make events (`None`: all).
    allowed: Option<HashSet<u32>>,
    min_score: f32,
    detect_interval: Option<Duration>,
    last_detect: Option<Instant>,
    fps_window: (Instant, u64),
    /// Appends handed to the buffer, oldest first, with what to do once each is committed
    /// (or refused): the camera never waits for a commit on its frame path, so appends of
    /// close frames share a transaction (group commit), and nothing is counted before its
    /// commit. Settled at every frame.
    uncommitted: VecDeque<Uncommitted>,
}

/// An append whose commit the camera has not heard of yet. The commit is awaited on the
/// runtime, so its time is taken when it happens, not when the camera looks.
#[derive(Debug)]
struct Uncommitted {
    commit: tokio::task::JoinHandle<(Result<u64, AppendError>, Instant)>,
    then: AfterCommit,
}

/// What depends on an append's outcome.
#[derive(Debug)]
enum AfterCommit {
    Event {
        event_id: EventId,
        /// Tracks this event reported the arrival of (noted in the tracker already).
        new_tracks: Vec<u64>,
        /// Its snapshot file, removed if the event is refused.
        saved: Option<PathBuf>,
        captured: Instant,
    },
    Track {
        track_id: u64,
        revision: u32,
        ended: bool,
        /// The picture of `at_ms` went with it (and was taken off the unsent list).
        queued: Option<i64>,
    },
}

impl Camera {
    /// Runs until `stop` fires or a non-repeating source has played everything. Blocking:
    /// call it on its own thread; `rt` is the runtime the buffer handle lives on.
    pub(crate) fn run(self, rt: &tokio::runtime::Handle, stop: &CancellationToken) {
        let label = CameraLabel {
            camera: self.config.id.clone(),
        };
        let m = &self.metrics.cameras;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let allowed = (!self.config.labels.is_empty()).then(|| {
            (0..self.detector.labels().len() as u32)
                .filter(|&c| self.config.labels.contains(&self.detector.label(c)))
                .collect()
        });
        let motion = &self.config.motion;
        let mut pipeline = Pipeline {
            motion: MotionGate::new(motion.clone()),
            tracker: Tracker::new(
                track::Settings::from(&self.config.tracker),
                &self.edge_id,
                &self.config.id,
                self.config.zones.clone(),
                track_ids(self.buffer.clone(), rt.clone(), self.config.id.clone()),
            ),
            records: Vec::new(),
            best_frames: BestFrames::default(),
            unsent_track_snapshots: HashMap::new(),
            allowed,
            min_score: self.config.min_score.unwrap_or(0.0),
            detect_interval: (motion.detect_interval_secs > 0.0)
                .then(|| Duration::from_secs_f64(motion.detect_interval_secs)),
            last_detect: None,
            fps_window: (Instant::now(), 0),
            uncommitted: VecDeque::new(),
        };
        // Frames are decoded no larger than detection and snapshots need.
        let size = capture::DecodeSize::for_camera(
            self.detector.input_size(),
            self.snapshots.enabled.then_some(self.snapshots.max_width),
        );
        // Undecodable frames skipped since the camera started.
        let mut bad_frames: u64 = 0;
        'open: while !stop.is_cancelled() {
            let Some(opened) = capture::open(&self.config.source, size) else {
                return;
            };
            let mut source = match opened {
                Ok(source) => source,
                Err(error) => {
                    self.failed(&label, &error);
                    // Nothing counted waits for the source to come back.
                    self.settle(&mut pipeline, &label, rt, 0);
                    if !pause(stop, backoff.next_delay(rand::random())) {
                        break;
                    }
                    continue;
                }
            };
            let described = source.describe();
            tracing::info!(camera = %self.config.id, source = %described, "camera running");
            self.state.update(|s| {
                s.state = "running";
                s.source = Some(described);
            });
            m.up.get_or_create(&label).set(1);
            // Undecodable frames in a row; past MAX_BAD_FRAMES the source is reopened.
            let mut bad_in_a_row = 0;
            // Damaged frames this source has decoded, as counted so far.
            let mut damaged = 0;
            while !stop.is_cancelled() {
                match source.next_frame() {
                    Ok(frame) => {
                        backoff.reset();
                        bad_in_a_row = 0;
                        let now_damaged = source.damaged();
                        if now_damaged > damaged {
                            m.frames_damaged
                                .get_or_create(&label)
                                .inc_by(now_damaged - damaged);
                            damaged = now_damaged;
                        }
                        self.process(&frame, &mut pipeline, &label, rt);
                    }
                    Err(error @ CaptureError::Frame { .. }) if bad_in_a_row < MAX_BAD_FRAMES => {
                        bad_in_a_row += 1;
                        bad_frames += 1;
                        self.bad_frame(&label, &error, bad_frames);
                    }
                    Err(CaptureError::Ended(source)) => {
                        tracing::info!(camera = %self.config.id, %source, "camera finished: no more frames");
                        self.state.finish();
                        break 'open;
                    }
                    Err(error) => {
                        self.failed(&label, &error);
                        self.settle(&mut pipeline, &label, rt, 0);
                        if !pause(stop, backoff.next_delay(rand::random())) {
                            break 'open;
                        }
                        continue 'open;
                    }
                }
            }
        }
        self.settle(&mut pipeline, &label, rt, 0);
        pipeline
            .tracker
            .close(sightline_runtime::now().as_millis(), &mut pipeline.records);
        self.store_tracks(&mut pipeline, &label, rt);
        self.settle(&mut pipeline, &label, rt, 0);
        m.up.get_or_create(&label).set(0);
        self.set_fps(&label, 0.0);
    }

    /// The frame rate, in the metric and in the status (kept together).
    fn set_fps(&self, label: &CameraLabel, fps: f64) {
        self.metrics.cameras.fps.get_or_create(label).set(fps);
        self.state.update(|s| s.fps = fps);
    }

    /// One frame could not be decoded: counted as an error and reported, but the camera is
    /// running and goes on to the next frame. Logged the 1st, 2nd, 4th, 8th... time.
    fn bad_frame(&self, label: &CameraLabel, error: &CaptureError, total: u64) {
        if total.is_power_of_two() {
            tracing::warn!(camera = %self.config.id, %error, skipped = total, "an undecodable frame, skipped");
        }
        self.count_error(label, error, false);
    }

    fn failed(&self, label: &CameraLabel, error: &CaptureError) {
        let m = &self.metrics.cameras;
        m.up.get_or_create(label).set(0);
        self.set_fps(label, 0.0);
        tracing::error!(camera = %self.config.id, %error, "camera failed; retrying");
        self.count_error(label, error, true);
    }

    /// An error in the metric and the status (which says `retrying` when the source is
    /// reopened).
    fn count_error(&self, label: &CameraLabel, error: &CaptureError, retrying: bool) {
        self.metrics.cameras.errors.get_or_create(label).inc();
        self.state.update(|s| {
            if retrying {
                s.state = "retrying";
            }
            s.errors += 1;
            s.last_error = Some(error.to_string());
        });
    }

    fn process(
        &self,
        frame: &Frame,
        p: &mut Pipeline,
        label: &CameraLabel,
        rt: &tokio::runtime::Handle,
    ) {
        self.settle(p, label, rt, MAX_UNCOMMITTED);
        // Each frame's number and capture time (what tracks and events are stamped with),
        // for `--log info,sightline_edge_agent::camera=debug`.
        tracing::debug!(camera = %self.config.id, frame = frame.seq, captured_ms = frame.captured_at.as_millis(), "frame");
        let m = &self.metrics.cameras;
        m.frames_captured.get_or_create(label).inc();
        p.fps_window.1 += 1;
        let window = p.fps_window.0.elapsed();
        if window >= Duration::from_secs(2) {
            let fps = p.fps_window.1 as f64 / window.as_secs_f64();
            self.set_fps(label, fps);
            p.fps_window = (Instant::now(), 0);
        }
        let score = p.motion.score(&frame.image);
        let due = match (p.detect_interval, p.last_detect) {
            (Some(interval), Some(last)) => last.elapsed() >= interval,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if !p.motion.is_motion(score) && !due {
            p.tracker
                .idle(frame.captured_at.as_millis(), true, &mut p.records);
            self.store_tracks(p, label, rt);
            m.frames_skipped.get_or_create(label).inc();
            self.state.update(|s| {
                s.frames_captured += 1;
                s.frames_skipped += 1;
                s.skipped_fraction = s.frames_skipped as f64 / s.frames_captured as f64;
            });
            return;
        }
        p.last_detect = Some(Instant::now());
        m.frames_processed.get_or_create(label).inc();
        self.state.update(|s| {
            s.frames_captured += 1;
            s.frames_processed += 1;
            s.skipped_fraction = s.frames_skipped as f64 / s.frames_captured as f64;
        });
        let started = Instant::now();
        let (found, _) = match self.detector.detect(&frame.image) {
            Ok(result) => result,
            Err(error) => {
                let errors = m.detect_errors.get_or_create(label);
                errors.inc();
                tracing::error!(camera = %self.config.id, frame = frame.seq, failures = errors.get(), %error, "detection failed on a frame; the frame is skipped");
                return;
            }
        };
        let spent = started.elapsed();
        m.inference_seconds
            .get_or_create(label)
            .observe(spent.as_secs_f64());
        self.state.record_inference(spent.as_secs_f64() * 1000.0);
        let found: Vec<Found> = found
            .into_iter()
            .filter(|f| {
                f.score >= p.min_score && p.allowed.as_ref().is_none_or(|a| a.contains(&f.class_id))
            })
            .collect();
        if found.is_empty() {
            p.tracker
                .idle(frame.captured_at.as_millis(), false, &mut p.records);
            self.store_tracks(p, label, rt);
            return;
        }
        let assignments = p.tracker.update(
            &found,
            |class| self.detector.label(class),
            frame.captured_at.as_millis(),
            &mut p.records,
        );
        // This frame's best frames first: a record made on this frame shows them.
        if self.snapshots.enabled {
            for (f, a) in found.iter().zip(&assignments).filter(|(_, a)| a.best) {
                p.best_frames
                    .hold(a.track_id, &frame.image, *f, frame.captured_at.as_millis());
            }
            // Held frames are bounded: past the limit, the longest-held is written now.
            while let Some((track_id, best)) = p.best_frames.overflow() {
                let started = p.tracker.started_ms(track_id).unwrap_or(best.at_ms);
                if let Some(path) = self.save_track_snapshot(&best, track_id, started, label) {
                    p.tracker.set_snapshot(track_id, path);
                    p.unsent_track_snapshots.insert(track_id, best.at_ms);
                }
            }
        }
        self.store_tracks(p, label, rt);
        if !assignments.iter().any(|a| a.new) {
            m.events_suppressed.get_or_create(label).inc();
            self.state.update(|s| s.events_suppressed += 1);
            return;
        }
        let detections = found
            .iter()
            .zip(&assignments)
            .map(|(f, a)| {
                let zones = zone::zones_of(&self.config.zones, &f.bbox);
                f.detection(
                    self.detector.label(f.class_id),
                    a.track_id,
                    zones.into_iter().map(str::to_owned).collect(),
                )
            })
            .collect();
        let mut event = DetectionEvent {
            event_id: EventId::new_v7(frame.captured_at),
            schema_version: SCHEMA_VERSION,
            edge_id: self.edge_id.clone(),
            camera_id: self.config.id.clone(),
            captured_at: frame.captured_at,
            frame_seq: frame.seq,
            motion_score: score,
            detections,
            model: self.detector.info().clone(),
            inference_ms: spent.as_secs_f32() * 1000.0,
            snapshot: None,
            description: None,
            attributes: BTreeMap::from([(
                "source".to_owned(),
                self.config.source.kind().to_owned(),
            )]),
        };
        let saved = self
            .snapshots
            .enabled
            .then(|| self.save_snapshot(frame, &event, label))
            .flatten();
        event.snapshot = saved.as_ref().map(|p| p.display().to_string());
        let event_id = event.event_id;
        let upload = match &event.snapshot {
            Some(path) if uploader::wants_event(&self.snapshots.upload, &event) => {
                Some(UploadRequest::of_event(
                    *EventId::new_v7(sightline_runtime::now()).as_uuid(),
                    &event,
                    path.clone(),
                ))
            }
            _ => None,
        };
        let new_tracks: Vec<u64> = assignments
            .iter()
            .filter(|a| a.new)
            .map(|a| a.track_id)
            .collect();
        // Noted now, so a record made before the commit reports names it; taken back if
        // the buffer refuses the event.
        for &track_id in &new_tracks {
            p.tracker.set_arrival(track_id, event_id);
        }
        let commit = self.buffer.submit(Message::Event(event), upload);
        self.hand_over(
            p,
            rt,
            commit,
            AfterCommit::Event {
                event_id,
                new_tracks,
                saved,
                captured: frame.captured,
            },
        );
    }

    /// Keeps an append's commit to settle later (the next frame's [`Self::settle`] waits
    /// for the oldest if more than [`MAX_UNCOMMITTED`] are outstanding).
    fn hand_over(
        &self,
        p: &mut Pipeline,
        rt: &tokio::runtime::Handle,
        commit: Commit,
        then: AfterCommit,
    ) {
        let commit = rt.spawn(async move {
            let result = commit.await;
            (result, Instant::now())
        });
        p.uncommitted.push_back(Uncommitted { commit, then });
    }

    /// Applies the outcome of every append whose commit has reported, oldest first, and
    /// waits for the oldest until at most `keep` are outstanding (0: all of them).
    fn settle(
        &self,
        p: &mut Pipeline,
        label: &CameraLabel,
        rt: &tokio::runtime::Handle,
        keep: usize,
    ) {
        while let Some(front) = p.uncommitted.front() {
            if !front.commit.is_finished() && p.uncommitted.len() <= keep {
                break;
            }
            let Uncommitted { commit, then } = p.uncommitted.pop_front().expect("a front");
            let (result, at) = rt.block_on(commit).unwrap_or_else(|_| {
                (
                    Err(AppendError::Failed("the commit task failed".into())),
                    Instant::now(),
                )
            });
            self.committed(p, label, result, at, then);
        }
    }

    /// What follows an append's commit (or its refusal): counts, and the state that
    /// depended on it.
    fn committed(
        &self,
        p: &mut Pipeline,
        label: &CameraLabel,
        result: Result<u64, AppendError>,
        at: Instant,
        then: AfterCommit,
    ) {
        let m = &self.metrics.cameras;
        match (then, result) {
            (AfterCommit::Event { captured, .. }, Ok(_)) => {
                self.metrics.events_created.inc();
                m.capture_to_buffer_seconds
                    .get_or_create(label)
                    .observe(at.saturating_duration_since(captured).as_secs_f64());
                self.state.update(|s| s.events_created += 1);
            }
            (
                AfterCommit::Event {
                    event_id,
                    new_tracks,
                    saved,
                    ..
                },
                Err(error),
            ) => {
                self.metrics.refused(error.drop_reason(), 1);
                tracing::error!(camera = %self.config.id, %event_id, %error, "the buffer refused a new event");
                for track_id in new_tracks {
                    p.tracker.clear_arrival(track_id, event_id);
                }
                if let Some(path) = saved {
                    let _ = std::fs::remove_file(self.data_dir.join(path));
                }
            }
            (AfterCommit::Track { .. }, Ok(_)) => {
                self.metrics.tracks_recorded.inc();
            }
            (
                AfterCommit::Track {
                    track_id,
                    revision,
                    ended,
                    queued,
                },
                Err(error),
            ) => {
                self.metrics.refused(error.drop_reason(), 1);
                tracing::error!(camera = %self.config.id, track_id, revision, %error, "the buffer refused a track record");
                // Its picture was not queued after all: a later record of the track (one
                // that still matches the rules) sends it, unless a newer one came since.
                if let Some(at_ms) = queued
                    && !ended
                {
                    p.unsent_track_snapshots.entry(track_id).or_insert(at_ms);
                }
            }
        }
    }

    /// Commits the track records the tracker made (ended tracks before updates, in the
    /// order made), each with its best frame's snapshot written first when a better frame
    /// came since its last record; one the buffer refuses is counted and logged like a
    /// refused event.
    fn store_tracks(&self, p: &mut Pipeline, label: &CameraLabel, rt: &tokio::runtime::Handle) {
        for mut record in std::mem::take(&mut p.records) {
            let (track_id, revision) = (record.track_id, record.revision);
            if let Some(best) = p.best_frames.take(track_id)
                && let Some(path) =
                    self.save_track_snapshot(&best, track_id, record.started_at.as_millis(), label)
            {
                p.tracker.set_snapshot(track_id, path.clone());
                p.unsent_track_snapshots.insert(track_id, best.at_ms);
                record.snapshot = Some(path);
            }
            // A picture rendered since the track's last upload goes with this record.
            let upload = match (&record.snapshot, p.unsent_track_snapshots.get(&track_id)) {
                (Some(path), Some(&at_ms))
                    if uploader::wants_track(&self.snapshots.upload, &record) =>
                {
                    Some(UploadRequest {
                        snapshot_id: *EventId::new_v7(sightline_runtime::now()).as_uuid(),
                        owner: Owner::Track(track_id),
                        camera_id: record.camera_id.clone(),
                        path: path.clone(),
                        captured_ms: at_ms,
                        day: day_of(record.started_at.as_millis()),
                    })
                }
                _ => None,
            };
            let ended = record.ended_by.is_some();
            let queued = upload.as_ref().map(|u| u.captured_ms);
            // Sent, or never to be (taken back if the buffer refuses the record): otherwise
            // a later record that matches the rules (the track entered a zone) still sends
            // the picture.
            if queued.is_some() || ended {
                p.unsent_track_snapshots.remove(&track_id);
            }
            let commit = self.buffer.submit(Message::Track(record), upload);
            self.hand_over(
                p,
                rt,
                commit,
                AfterCommit::Track {
                    track_id,
                    revision,
                    ended,
                    queued,
                },
            );
        }
    }

    /// Renders a track's best frame (the object alone, boxed) over its snapshot file, filed
    /// under the day the track `started_ms`; returns the file's path, or `None` on failure
    /// (logged; the track keeps the one before, if any).
    fn save_track_snapshot(
        &self,
        best: &BestFrame,
        track_id: u64,
        started_ms: i64,
        label: &CameraLabel,
    ) -> Option<String> {
        let relative = snapshot::track_path(track_id, started_ms);
        let object = [best.detection(track_id, |c| self.detector.label(c))];
        match self.write_snapshot(&best.image, &object, &relative, label) {
            Ok(()) => Some(relative.display().to_string()),
            Err(error) => {
                tracing::error!(camera = %self.config.id, track_id, %error, "cannot save the track's snapshot; it keeps the one before");
                None
            }
        }
    }

    /// Renders `detections` over `image` and saves it at `relative`, counted either way.
    fn write_snapshot(
        &self,
        image: &RgbImage,
        detections: &[Detection],
        relative: &std::path::Path,
        label: &CameraLabel,
    ) -> Result<(), String> {
        let m = &self.metrics.cameras;
        let result = snapshot::render(image, detections, &self.snapshots)
            .map_err(|e| e.to_string())
            .and_then(|jpeg| {
                snapshot::save(&self.data_dir, relative, &jpeg).map_err(|e| e.to_string())
            });
        match &result {
            Ok(_) => m.snapshots_written.get_or_create(label).inc(),
            Err(_) => m.snapshot_errors.get_or_create(label).inc(),
        };
        result.map(|_| ())
    }

    /// Renders and saves the event's snapshot; on failure the event goes without one.
    fn save_snapshot(
        &self,
        frame: &Frame,
        event: &DetectionEvent,
        label: &CameraLabel,
    ) -> Option<PathBuf> {
        let relative = snapshot::relative_path(event);
        match self.write_snapshot(&frame.image, &event.detections, &relative, label) {
            Ok(()) => Some(relative),
            Err(error) => {
                tracing::error!(camera = %self.config.id, event_id = %event.event_id, %error, "cannot save the snapshot; the event is kept without it");
                None
            }
        }
    }
}

/// How many track ids a camera reserves at once (one buffer commit per block).
const TRACK_ID_BLOCK: u64 = 256;

/// A camera's track ids: blocks reserved from the buffer's counter, so they are unique on
/// the edge across cameras and restarts. If the buffer cannot reserve (it is failing, and
/// refuses events too), an id is made from the clock in the top quarter of the range, far
/// from the counter's, and the failure is logged.
fn track_ids(buffer: BufferHandle, rt: tokio::runtime::Handle, camera: String) -> TrackIds {
    let mut block = 0..0;
    Box::new(move || {
        if block.is_empty() {
            match rt.block_on(buffer.reserve_track_ids(TRACK_ID_BLOCK)) {
                Ok(reserved) => block = reserved,
                Err(error) => {
                    tracing::error!(%camera, %error, "cannot reserve track ids in the buffer; this track's id comes from the clock");
                    return clock_track_id();
                }
            }
        }
        let id = block.start;
        block.start += 1;
        id
    })
}

/// A track id from the clock, for when the buffer cannot reserve any: microseconds since
/// the epoch in the top quarter of the range (far from the counter's), one more than the
/// last such id when the clock has not moved on, so two never repeat in one run.
fn clock_track_id() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    const TOP: u64 = 3 << 62;
    let micros = (sightline_runtime::now().as_millis().max(1) as u64 * 1000) & !TOP;
    let after = |last: u64| last.max(micros - 1) + 1;
    let previous = LAST
        .fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |last| Some(after(last)),
        )
        .unwrap_or_default();
    TOP | after(previous)
}

/// Sleeps for `delay` unless `stop` fires first; `false` if it did.
fn pause(stop: &CancellationToken, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    while !stop.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    false
}
