//! The agent's Prometheus metrics.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Why an event was dropped. Every drop is also logged at ERROR.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum DropReason {
    /// The event broke the contract (a bug in a source) or could not be encoded.
    Invalid,
    /// Shutdown came while a new event could not be stored (the buffer had stopped).
    Shutdown,
    /// The storage budget (or the disk's reserve) was used up: refused by `reject_new` /
    /// `stop`, or deleted unsent by `drop_oldest`.
    StorageFull,
    /// The buffer could not commit it (a disk error).
    BufferError,
}

/// Why a queued snapshot upload was never sent. Every drop is also logged (superseded at
/// debug: nothing is lost, a newer best frame of the same track goes instead).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum UploadDrop {
    /// Rotation deleted its day (pictures and all) before it could be sent.
    Rotated,
    /// Its file was gone or unreadable when its turn came.
    Missing,
    /// Its file was over the upload size limit.
    TooLarge,
    /// The full-disk policy dropped its event unsent.
    EventDropped,
    /// A newer best frame of its track replaced it.
    Superseded,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UploadDropLabel {
    pub reason: UploadDrop,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    pub reason: DropReason,
}

/// The camera a per-camera metric is about.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabel {
    pub camera: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

type CameraHistograms = Family<CameraLabel, Histogram, fn() -> Histogram>;

/// Per-camera metrics (seed story 3.8): frames, motion, inference, events.
#[derive(Debug, Clone)]
pub struct CameraMetrics {
    pub frames_captured: Family<CameraLabel, Counter>,
    pub frames_processed: Family<CameraLabel, Counter>,
    pub frames_skipped: Family<CameraLabel, Counter>,
    pub frames_damaged: Family<CameraLabel, Counter>,
    pub fps: Family<CameraLabel, Gauge<f64, AtomicU64>>,
    pub up: Family<CameraLabel, Gauge>,
    pub errors: Family<CameraLabel, Counter>,
    pub detect_errors: Family<CameraLabel, Counter>,
    pub inference_seconds: CameraHistograms,
    pub capture_to_buffer_seconds: CameraHistograms,
    pub events_suppressed: Family<CameraLabel, Counter>,
    pub snapshots_written: Family<CameraLabel, Counter>,
    pub snapshot_errors: Family<CameraLabel, Counter>,
}

impl Default for CameraMetrics {
    fn default() -> Self {
        Self {
            frames_captured: Family::default(),
            frames_processed: Family::default(),
            frames_skipped: Family::default(),
            frames_damaged: Family::default(),
            fps: Family::default(),
            up: Family::default(),
            errors: Family::default(),
            detect_errors: Family::default(),
            inference_seconds: Family::new_with_constructor(latency_histogram),
            capture_to_buffer_seconds: Family::new_with_constructor(latency_histogram),
            events_suppressed: Family::default(),
            snapshots_written: Family::default(),
            snapshot_errors: Family::default(),
        }
    }
}

impl CameraMetrics {
    fn register(&self, r: &mut Registry) {
        let c = self.clone();
        r.register(
            "camera_frames_captured",
            "Frames read from the camera",
            c.frames_captured,
        );
        r.register(
            "camera_frames_processed",
            "Frames the detector ran on",
            c.frames_processed,
        );
        r.register(
            "camera_frames_skipped",
            "Frames not sent to the detector (no motion)",
            c.frames_skipped,
        );
        r.register(
            "camera_frames_damaged",
            "Frames decoded despite damaged JPEG data (kept; the damaged part grey or smeared)",
            c.frames_damaged,
        );
        r.register(
            "camera_fps",
            "Frames captured per second, last few seconds",
            c.fps,
        );
        r.register(
            "camera_up",
            "1 while the camera delivers frames, 0 while it is retried",
            c.up,
        );
        r.register(
            "camera_errors",
            "Camera open and read failures (each is retried) and undecodable frames (skipped)",
            c.errors,
        );
        r.register(
            "camera_detect_errors",
            "Frames the detector failed on",
            c.detect_errors,
        );
        r.register(
            "camera_inference_seconds",
            "Detector time per processed frame (preprocess, inference, decoding)",
            c.inference_seconds,
        );
        r.register(
            "camera_capture_to_buffer_seconds",
            "From frame capture to its event committed in the buffer",
            c.capture_to_buffer_seconds,
        );
        r.register(
            "camera_events_suppressed",
            "Frames with objects of interest that made no event (all already tracked)",
            c.events_suppressed,
        );
        r.register(
            "camera_snapshots_written",
            "Snapshots saved",
            c.snapshots_written,
        );
        r.register(
            "camera_snapshot_errors",
            "Snapshots that could not be saved (the event is kept without one)",
            c.snapshot_errors,
        );
    }
}

/// Every metric the agent exports.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub events_created: Counter,
    /// Track records committed to the buffer. The buffer's counters (published, dropped,
    /// backlog) count its rows of both kinds.
    pub tracks_recorded: Counter,
    pub events_published: Counter,
    pub events_duplicate: Counter,
    pub publish_errors: Counter,
    pub events_dropped: Family<DropLabel, Counter>,
    pub events_refused: Family<DropLabel, Counter>,
    pub backlog_at_start: Gauge,
    pub in_flight: Gauge,
    pub buffer_rows: Gauge,
    pub buffer_unsent: Gauge,
    pub backlog_age_seconds: Gauge<f64, AtomicU64>,
    pub buffer_recovered: Counter,
    /// Buffer transactions that committed appends (group commit: appends per commit is
    /// `(events_created + tracks_recorded) / buffer_commits`).
    pub buffer_commits: Counter,
    /// Unsent rows the publisher's pages read from the buffer file: the backlog after an
    /// outage or a restart (live rows come from memory while it holds them).
    pub buffer_rows_read_from_file: Counter,
    pub events_recovered: Counter,
    pub events_unrecoverable: Counter,
    pub events_quarantined: Counter,
    pub storage_used_bytes: Gauge,
    pub storage_limit_bytes: Gauge,
    pub storage_fs_free_bytes: Gauge,
    pub rotations: Counter,
    pub storage_warnings: Counter,
    pub rotated_bytes: Counter,
    pub log_write_errors: Counter,
    pub heartbeats_sent: Counter,
    pub clock_offset_seconds: Gauge<f64, AtomicU64>,
    pub heartbeat_errors: Counter,
    pub snapshot_uploads_queued: Counter,
    pub snapshot_uploads_pending: Gauge,
    pub snapshot_uploads_pending_at_start: Gauge,
    pub snapshot_uploads: Counter,
    pub snapshot_upload_bytes: Counter,
    pub snapshot_upload_errors: Counter,
    pub snapshot_uploads_dropped: Family<UploadDropLabel, Counter>,
    pub cameras: CameraMetrics,
    /// All drops, whatever the reason (not exported: the family sums to it).
    dropped_sum: Counter,
    /// All refusals, whatever the reason (likewise).
    refused_sum: Counter,
    /// All dropped uploads but superseded ones, whatever the reason (likewise).
    uploads_dropped_sum: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under the `sightline_edge` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("sightline_edge");
        r.register(
            "events_created",
            "Events created by the cameras",
            metrics.events_created.clone(),
        );
        r.register(
            "tracks_recorded",
            "Track records committed to the buffer (published, dropped and backlog count them with events)",
            metrics.tracks_recorded.clone(),
        );
        r.register(
            "events_published",
            "Events acknowledged by JetStream",
            metrics.events_published.clone(),
        );
        r.register(
            "events_duplicate",
            "Publishes JetStream reported as duplicates (already stored)",
            metrics.events_duplicate.clone(),
        );
        r.register(
            "publish_errors",
            "Failed publish attempts (each is retried)",
            metrics.publish_errors.clone(),
        );
        r.register(
            "events_dropped",
            "Events created (committed to the buffer) and then lost unsent, by reason",
            metrics.events_dropped.clone(),
        );
        r.register(
            "events_refused",
            "New events the buffer refused to store (never created), by reason",
            metrics.events_refused.clone(),
        );
        r.register(
            "backlog_at_start",
            "Unsent rows (events and track records) in the buffer when the agent started, after any recovery (backlog_at_start + created + tracks_recorded = published + dropped + quarantined + buffer_unsent)",
            metrics.backlog_at_start.clone(),
        );
        r.register(
            "publish_in_flight",
            "Publishes awaiting their ack",
            metrics.in_flight.clone(),
        );
        r.register(
            "buffer_rows",
            "Events in the DuckDB buffer, sent or not",
            metrics.buffer_rows.clone(),
        );
        r.register(
            "buffer_unsent",
            "Events in the buffer not yet acknowledged by JetStream (the backlog)",
            metrics.buffer_unsent.clone(),
        );
        r.register(
            "backlog_age_seconds",
            "Age of the oldest unsent event (0 when none)",
            metrics.backlog_age_seconds.clone(),
        );
        r.register(
            "buffer_commits",
            "Buffer transactions that committed new events or track records (appends close together share one: see storage.group_commit_ms)",
            metrics.buffer_commits.clone(),
        );
        r.register(
            "buffer_rows_read_from_file",
            "Unsent rows the publisher read from the buffer file (a backlog: after an outage, a restart, or a burst bigger than the in-memory cache) rather than from memory",
            metrics.buffer_rows_read_from_file.clone(),
        );
        r.register(
            "buffer_recovered",
            "Times a damaged buffer (its WAL, or the file itself) was set aside and recovered",
            metrics.buffer_recovered.clone(),
        );
        r.register(
            "events_recovered",
            "Unsent events stored again when a damaged buffer was recovered (from what could be read of it, and from the day logs)",
            metrics.events_recovered.clone(),
        );
        r.register(
            "events_unrecoverable",
            "Unsent events of a damaged buffer that neither it nor the day logs gave back (an estimate: see docs/edge.md)",
            metrics.events_unrecoverable.clone(),
        );
        r.register(
            "events_quarantined",
            "Unsent buffer rows that could not be read, moved to the buffer's quarantine table",
            metrics.events_quarantined.clone(),
        );
        r.register(
            "storage_used_bytes",
            "Bytes used in the data directory (buffer, logs, snapshots)",
            metrics.storage_used_bytes.clone(),
        );
        r.register(
            "storage_limit_bytes",
            "The storage budget (max_storage_gb)",
            metrics.storage_limit_bytes.clone(),
        );
        r.register(
            "storage_fs_free_bytes",
            "Free bytes on the filesystem holding the data directory (below storage.min_free_bytes the agent rotates, then applies full_policy)",
            metrics.storage_fs_free_bytes.clone(),
        );
        r.register(
            "storage_warnings",
            "Times usage crossed 80 % of the budget",
            metrics.storage_warnings.clone(),
        );
        r.register(
            "rotations",
            "Rotations that deleted at least one day",
            metrics.rotations.clone(),
        );
        r.register(
            "rotated_bytes",
            "Bytes given back to the disk by rotation",
            metrics.rotated_bytes.clone(),
        );
        r.register(
            "log_write_errors",
            "Failed writes to the daily log files (the events are still in the buffer)",
            metrics.log_write_errors.clone(),
        );
        r.register(
            "clock_offset_seconds",
            "The edge clock minus the cloud's (ingest's), measured before each heartbeat",
            metrics.clock_offset_seconds.clone(),
        );
        r.register(
            "heartbeats_sent",
            "Heartbeats published",
            metrics.heartbeats_sent.clone(),
        );
        r.register(
            "heartbeat_errors",
            "Heartbeats that could not be published",
            metrics.heartbeat_errors.clone(),
        );
        r.register(
            "snapshot_uploads_queued",
            "Snapshots queued for the cloud (the upload rules chose them)",
            metrics.snapshot_uploads_queued.clone(),
        );
        r.register(
            "snapshot_uploads_pending",
            "Queued snapshots not yet acknowledged by JetStream",
            metrics.snapshot_uploads_pending.clone(),
        );
        r.register(
            "snapshot_uploads_pending_at_start",
            "Queued snapshots pending when the agent started (pending_at_start + queued = uploads + dropped + pending)",
            metrics.snapshot_uploads_pending_at_start.clone(),
        );
        r.register(
            "snapshot_uploads",
            "Snapshots acknowledged by JetStream",
            metrics.snapshot_uploads.clone(),
        );
        r.register(
            "snapshot_upload_bytes",
            "Bytes of the snapshots acknowledged by JetStream",
            metrics.snapshot_upload_bytes.clone(),
        );
        r.register(
            "snapshot_upload_errors",
            "Failed snapshot publishes (each is retried)",
            metrics.snapshot_upload_errors.clone(),
        );
        r.register(
            "snapshot_uploads_dropped",
            "Queued snapshots that will never be sent, by reason (pending_at_start + queued = uploads + dropped + pending)",
            metrics.snapshot_uploads_dropped.clone(),
        );
        metrics.cameras.register(r);
        metrics
    }

    /// Counts queued uploads that will never be sent.
    pub fn uploads_dropped(&self, reason: UploadDrop, count: u64) {
        if count > 0 {
            self.snapshot_uploads_dropped
                .get_or_create(&UploadDropLabel { reason })
                .inc_by(count);
            if reason != UploadDrop::Superseded {
                self.uploads_dropped_sum.inc_by(count);
            }
        }
    }

    /// Queued uploads lost so far (superseded ones, replaced by a newer picture, apart).
    pub fn uploads_dropped_total(&self) -> u64 {
        self.uploads_dropped_sum.get()
    }

    /// Counts one dropped event.
    pub fn dropped(&self, reason: DropReason, count: u64) {
        self.events_dropped
            .get_or_create(&DropLabel { reason })
            .inc_by(count);
        self.dropped_sum.inc_by(count);
    }

    /// Events dropped so far, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_sum.get()
    }

    /// Counts one new event the buffer refused (it was never created).
    pub fn refused(&self, reason: DropReason, count: u64) {
        self.events_refused
            .get_or_create(&DropLabel { reason })
            .inc_by(count);
        self.refused_sum.inc_by(count);
    }

    /// New events refused so far, for any reason.
    pub fn refused_total(&self) -> u64 {
        self.refused_sum.get()
    }
}
