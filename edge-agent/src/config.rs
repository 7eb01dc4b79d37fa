//! The agent's one config file (TOML). It carries a `version` because devices lag the cloud:
//! an agent refuses a config written for a format it does not know.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sightline_shared::Encoding;
pub use sightline_shared::config::{ConfigError, Validate};
use sightline_shared::config::{NatsConfig, check_identifier};
use sightline_shared::validate::{MAX_LABEL_LEN, is_label};

/// The config format this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Config format version; must be 1.
    pub version: u32,
    /// This host's id: 1-64 characters of A-Z a-z 0-9 _ -; part of every subject.
    pub edge_id: String,
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsConfig,
    /// How events are published.
    #[serde(default)]
    pub publisher: PublisherConfig,
    /// The data directory and its budget.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The local status endpoint and the periodic status line.
    #[serde(default)]
    pub status: StatusConfig,
    /// Heartbeats to the cloud.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// The detector, for every camera with frames (file, v4l2, pattern).
    #[serde(default)]
    pub model: ModelConfig,
    /// Annotated snapshots of events.
    #[serde(default)]
    pub snapshots: SnapshotConfig,
    /// The cameras on this host.
    pub cameras: Vec<CameraConfig>,
}

/// The object detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The ONNX model file.
    pub path: PathBuf,
    /// Its labels file: one class name per line, in class order.
    pub labels: PathBuf,
    /// How to read its outputs: `nanodet` (the shipped model), `yolov5` or `yolov8` (also
    /// YOLOv11 exports).
    pub decoder: DecoderKind,
    /// Input size, when the model's input shape is dynamic.
    pub input_width: Option<u32>,
    pub input_height: Option<u32>,
    /// Lowest score a detection needs (0.35-0.4 suits NanoDet-m).
    pub score_threshold: f32,
    /// IoU above which NMS drops the weaker of two boxes of one class.
    pub nms_iou: f32,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// `shared`: one session for all cameras (default; least memory), or `per_camera`.
    pub sessions: SessionSharing,
    /// The ONNX Runtime library (`libonnxruntime.so`); unset: `ORT_DYLIB_PATH`, then the
    /// first of [`crate::detect::LIBRARY_PLACES`] that exists.
    pub onnxruntime_library: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/usr/share/sightline/models/nanodet_coco_416.onnx"),
            labels: PathBuf::from("/usr/share/sightline/models/coco.names"),
            decoder: DecoderKind::Nanodet,
            input_width: None,
            input_height: None,
            score_threshold: 0.35,
            nms_iou: 0.5,
            intra_threads: 2,
            sessions: SessionSharing::Shared,
            onnxruntime_library: None,
        }
    }
}

/// Output decoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderKind {
    Nanodet,
    Yolov5,
    Yolov8,
}

/// How cameras share ONNX Runtime sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionSharing {
    Shared,
    PerCamera,
}

/// Annotated snapshots (boxes and labels drawn), one JPEG per event in the day folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    pub enabled: bool,
    /// Wider frames are scaled down to this width.
    pub max_width: u32,
    /// JPEG quality, 1-100.
    pub quality: u8,
    /// Which snapshots go to the cloud, and how fast.
    pub upload: UploadConfig,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_width: 640,
            quality: 80,
            upload: UploadConfig::default(),
        }
    }
}

/// What snapshots are sent to the cloud (`[snapshots.upload]`): `send = "all"`, `"none"`,
/// or `"matching"` the rules (an event matches with a detection of one of `labels` (any
/// label if empty), at least `min_confidence` sure, standing in one of `zones` (anywhere if
/// empty): the same detection must match all three; a track by its label, best score and
/// the zones it stood in). Uploads follow the events they show, oldest first, at most
/// `max_bytes_per_sec` on average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    pub send: UploadSend,
    pub labels: Vec<String>,
    pub min_confidence: f32,
    pub zones: Vec<String>,
    /// The bandwidth cap: bytes per second, averaged (a burst of one snapshot may exceed it).
    pub max_bytes_per_sec: u64,
    /// Most uploads awaiting their JetStream ack at once.
    pub max_in_flight: usize,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            send: UploadSend::All,
            labels: Vec::new(),
            min_confidence: 0.0,
            zones: Vec::new(),
            max_bytes_per_sec: 256 * 1024,
            max_in_flight: 4,
        }
    }
}

/// Which snapshots [`UploadConfig`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadSend {
    All,
    None,
    Matching,
}

/// How events are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublisherConfig {
    /// Wire encoding: `bincode` (default, compact) or `json`.
    #[serde(with = "encoding_name")]
    pub encoding: Encoding,
    /// Most publishes awaiting their JetStream ack at once.
    pub max_in_flight: usize,
    /// How long to wait for one publish ack, in milliseconds.
    pub ack_timeout_ms: u64,
    /// On shutdown, how long to keep publishing the backlog, in seconds (what is left stays
    /// in the buffer for the next start).
    pub drain_timeout_secs: u64,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            encoding: Encoding::Bincode,
            max_in_flight: 256,
            ack_timeout_ms: 5_000,
            drain_timeout_secs: 10,
        }
    }
}

/// The data directory (buffer, daily logs, snapshots) and its one storage budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Where the buffer (`buffer.duckdb`) and the day folders (`events/YYYY-MM-DD/`) live.
    pub data_dir: PathBuf,
    /// The budget for everything under `data_dir`, in GB (10^9 bytes). WARNING at 80 %,
    /// rotation at 90 % down to 80 %.
    pub max_storage_gb: f64,
    /// Days never rotated away, counting today (today is always kept).
    pub min_retention_days: u32,
    /// When unpublished events alone fill the budget: `reject_new` (default), `drop_oldest`
    /// or `stop`.
    pub full_policy: crate::buffer::storage::FullPolicy,
    /// How often usage is measured, in seconds (also after every 1 % of growth).
    pub check_interval_secs: u64,
    /// Write `events.json` and `events.log` per day.
    pub daily_logs: bool,
    /// Group commit: how long, in milliseconds, an event waits for others to share its
    /// buffer transaction (0 to 100; 0 commits each as it comes). Longer saves CPU at a
    /// steady rate and adds at most this much to every event's latency, and events waiting
    /// in it when the power goes are lost before they were ever counted.
    pub group_commit_ms: u64,
    /// Bytes the filesystem holding `data_dir` keeps free whatever fills it: below this the
    /// agent rotates and then applies `full_policy`, as when the budget is used up (0: not
    /// checked).
    pub min_free_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/sightline"),
            max_storage_gb: 4.0,
            min_retention_days: 7,
            full_policy: crate::buffer::storage::FullPolicy::RejectNew,
            check_interval_secs: 10,
            daily_logs: true,
            group_commit_ms: 100,
            min_free_bytes: 256 * 1024 * 1024,
        }
    }
}

impl StorageConfig {
    /// The budget in bytes.
    pub fn limit_bytes(&self) -> u64 {
        (self.max_storage_gb * 1e9) as u64
    }

    /// The budget and its rules.
    pub fn budget(&self) -> crate::buffer::storage::Budget {
        crate::buffer::storage::Budget {
            limit_bytes: self.limit_bytes(),
            min_retention_days: self.min_retention_days,
            policy: self.full_policy,
            min_free_bytes: self.min_free_bytes,
            free_space: crate::buffer::storage::FreeSpace::Filesystem,
        }
    }

    /// How the buffer worker is set up.
    pub fn worker_settings(&self) -> crate::buffer::worker::Settings {
        crate::buffer::worker::Settings {
            data_dir: self.data_dir.clone(),
            budget: self.budget(),
            check_interval: std::time::Duration::from_secs(self.check_interval_secs),
            daily_logs: self.daily_logs,
            group_window: std::time::Duration::from_millis(self.group_commit_ms),
        }
    }
}

/// The local HTTP status endpoint and the status line in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    /// Serve the endpoint.
    pub enabled: bool,
    /// Address for `/healthz`, `/metrics`, `/v1/status`, `/v1/events/recent`,
    /// `POST /v1/rotate`. Loopback by default.
    pub listen: SocketAddr,
    /// Host names (or addresses) requests may name besides `localhost`, the loopback
    /// addresses and `listen`'s address: for example the name a Prometheus server scrapes
    /// this host by. Any other `Host` is refused (421), so a web page cannot reach the
    /// endpoint through DNS rebinding. Listening on `0.0.0.0`, list the names clients use.
    pub allowed_hosts: Vec<String>,
    /// A file whose first line is the bearer token `POST /v1/rotate` needs (none: the
    /// confirmation header alone).
    pub token_file: Option<String>,
    /// Seconds between status lines in the log (0: none).
    pub log_interval_secs: u64,
    /// Longest wait for a request's headers, in seconds, which is also how long a
    /// kept-alive connection may sit idle.
    pub header_read_timeout_secs: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9470)),
            allowed_hosts: Vec::new(),
            token_file: None,
            log_interval_secs: 60,
            header_read_timeout_secs: sightline_runtime::http::DEFAULT_HEADER_READ_TIMEOUT_SECS,
        }
    }
}

/// The agent's periodic status message to the cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Seconds between heartbeats (0: none).
    pub interval_secs: u64,
    /// Before each heartbeat the agent measures its clock against the cloud's; past this
    /// many seconds either way it logs a WARNING (ingest refuses events more than its
    /// `consumer.max_future_skew_secs`, 300 by default, ahead).
    pub max_clock_offset_secs: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval_secs: 30,
            max_clock_offset_secs: 30,
        }
    }
}

mod encoding_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use sightline_shared::Encoding;

    pub(super) fn serialize<S: Serializer>(e: &Encoding, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(e.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Encoding, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown encoding {name:?}, expected \"bincode\" or \"json\""
            ))
        })
    }
}

/// One camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera id, unique on this host: 1-64 characters of A-Z a-z 0-9 _ -.
    pub id: String,
    /// Where its frames (or, for `synthetic`, its events) come from.
    pub source: SourceConfig,
    /// Labels that make events on this camera (empty: every label of the model).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Lowest score for a detection to count on this camera (unset: the model's threshold).
    #[serde(default)]
    pub min_score: Option<f32>,
    /// Motion gating.
    #[serde(default)]
    pub motion: MotionConfig,
    /// Object tracking and event suppression.
    #[serde(default)]
    pub tracker: TrackerConfig,
    /// Named areas of the frame (`[[cameras.zones]]`): detections and tracks say which
    /// ones the object stands in.
    #[serde(default)]
    pub zones: Vec<sightline_shared::zone::Zone>,
}

impl CameraConfig {
    /// Whether this camera has frames (and so needs the detector).
    pub fn has_frames(&self) -> bool {
        !matches!(self.source, SourceConfig::Synthetic(_))
    }
}

/// A camera source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Made-up detection events at a steady rate, without frames or a model: load tests.
    Synthetic(SyntheticConfig),
    /// JPEG files or an MJPEG file, played at a set rate.
    File(FileSourceConfig),
    /// A V4L2 device (USB and CSI cameras).
    V4l2(V4l2Config),
    /// A generated moving square.
    Pattern(PatternConfig),
}

impl SourceConfig {
    /// The source's `kind` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Synthetic(_) => "synthetic",
            SourceConfig::File(_) => "file",
            SourceConfig::V4l2(_) => "v4l2",
            SourceConfig::Pattern(_) => "pattern",
        }
    }
}

/// A camera made of files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A directory of `.jpg` files (played in name order), one `.jpg`, or an `.mjpeg` file.
    pub path: PathBuf,
    /// Frames per second.
    pub fps: f64,
    /// Start over at the end (default); otherwise the camera finishes.
    pub repeat: bool,
    /// Slide a window (80 % of the picture) across each picture, so there is motion.
    pub pan: bool,
    /// Frames per picture when panning.
    pub pan_frames: u32,
}

impl Default for FileSourceConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            fps: 5.0,
            repeat: true,
            pan: false,
            pan_frames: 20,
        }
    }
}

/// A V4L2 camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct V4l2Config {
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// `mjpeg` (default; what most USB cameras offer at 720p) or `yuyv`.
    pub format: PixelFormat,
}

impl Default for V4l2Config {
    fn default() -> Self {
        Self {
            device: PathBuf::from("/dev/video0"),
            width: 1280,
            height: 720,
            fps: 10,
            format: PixelFormat::Mjpeg,
        }
    }
}

/// V4L2 pixel formats the agent decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
}

impl PixelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Yuyv => "yuyv",
        }
    }
}

/// The generated test pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatternConfig {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

impl Default for PatternConfig {
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            fps: 5.0,
        }
    }
}

/// Motion gating: detection runs on frames that differ enough from the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MotionConfig {
    /// Off: every frame goes to the detector.
    pub enabled: bool,
    /// Fraction of pixels that must change for a frame to have motion (0.0-1.0).
    pub threshold: f32,
    /// Grey-level change (0-255) for a pixel to count as changed.
    pub pixel_threshold: u8,
    /// Width of the grey copy frames are compared on.
    pub scale_width: u32,
    /// Areas ignored, as `[x_min, y_min, x_max, y_max]` fractions of the frame (a clock, a
    /// tree in the wind).
    pub masks: Vec<[f32; 4]>,
    /// Run the detector at least this often without motion, in seconds (0: never), so a
    /// still object is seen and its track kept alive.
    pub detect_interval_secs: f64,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.01,
            pixel_threshold: 25,
            scale_width: 160,
            masks: Vec::new(),
            detect_interval_secs: 5.0,
        }
    }
}

/// Tracking: an object that stays in view keeps its track id and makes one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Least IoU between a track's last box and a detection of the same class to match.
    pub iou_threshold: f32,
    /// A track not seen for this long has ended (seconds): its final record is sent, and
    /// an object seen again after that is a new track and a new event. Keep it above
    /// `motion.detect_interval_secs`.
    pub max_age_secs: f64,
    /// While a track lasts, a record of it is sent this often (seconds), so a car parked
    /// for hours shows before it leaves.
    pub update_interval_secs: f64,
    /// Most points kept of a track's path (where the object stood); a longer visit keeps
    /// evenly spread samples.
    pub path_points: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            iou_threshold: 0.3,
            max_age_secs: 15.0,
            update_interval_secs: 60.0,
            path_points: 32,
        }
    }
}

/// The synthetic source's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Events per second.
    pub events_per_second: f64,
    /// Labels to draw from.
    pub labels: Vec<String>,
    /// Most detections per event.
    pub max_detections: usize,
    /// Stop after this many events (unset: run until shutdown).
    pub max_events: Option<u64>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            events_per_second: 2.0,
            labels: ["person", "car", "bicycle", "dog", "truck"]
                .map(String::from)
                .to_vec(),
            max_detections: 3,
            max_events: None,
        }
    }
}

impl Validate for AgentConfig {
    /// Checks the values serde cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: &str| Err(ConfigError::invalid(field, problem));
        if self.version != CONFIG_VERSION {
            return invalid(
                "version",
                &format!("this agent reads config version {CONFIG_VERSION}"),
            );
        }
        check_identifier("edge_id", &self.edge_id)?;
        if self.status.header_read_timeout_secs == 0 {
            return invalid("status.header_read_timeout_secs", "must be at least 1");
        }
        let p = &self.publisher;
        if p.max_in_flight == 0 || p.max_in_flight > 65_536 {
            return invalid("publisher.max_in_flight", "must be 1 to 65536");
        }
        let st = &self.storage;
        if st.data_dir.as_os_str().is_empty() {
            return invalid("storage.data_dir", "must not be empty");
        }
        if !(st.max_storage_gb.is_finite() && st.max_storage_gb >= 0.001) {
            return invalid("storage.max_storage_gb", "must be at least 0.001 (1 MB)");
        }
        if st.check_interval_secs == 0 || st.check_interval_secs > 3600 {
            return invalid("storage.check_interval_secs", "must be 1 to 3600");
        }
        if st.group_commit_ms > 100 {
            return invalid("storage.group_commit_ms", "must be 0 to 100");
        }
        if st.min_retention_days > 3650 {
            return invalid("storage.min_retention_days", "must be at most 3650");
        }
        if p.ack_timeout_ms < 100 {
            return invalid("publisher.ack_timeout_ms", "must be at least 100");
        }
        if self.cameras.is_empty() {
            return invalid("cameras", "at least one camera is needed");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, camera) in self.cameras.iter().enumerate() {
            check_identifier(&format!("cameras[{i}].id"), &camera.id)?;
            if !seen.insert(&camera.id) {
                return invalid(
                    &format!("cameras[{i}].id"),
                    &format!("{:?} is used twice", camera.id),
                );
            }
            match &camera.source {
                SourceConfig::Synthetic(s) => {
                    if !(s.events_per_second > 0.0 && s.events_per_second <= 100_000.0) {
                        return invalid(
                            &format!("cameras[{i}].source.events_per_second"),
                            "must be above 0 and at most 100000",
                        );
                    }
                    if s.labels.is_empty() || !s.labels.iter().all(|l| is_label(l)) {
                        return invalid(
                            &format!("cameras[{i}].source.labels"),
                            &format!(
                                "must be 1 or more labels of 1-{MAX_LABEL_LEN} bytes without control characters"
                            ),
                        );
                    }
                    if s.max_detections > 64 {
                        return invalid(
                            &format!("cameras[{i}].source.max_detections"),
                            "must be at most 64",
                        );
                    }
                }
                SourceConfig::File(f) => {
                    if f.path.as_os_str().is_empty() {
                        return invalid(&format!("cameras[{i}].source.path"), "must be set");
                    }
                    check_fps(&format!("cameras[{i}].source.fps"), f.fps)?;
                    if f.pan_frames == 0 {
                        return invalid(
                            &format!("cameras[{i}].source.pan_frames"),
                            "must be at least 1",
                        );
                    }
                }
                SourceConfig::V4l2(v) => {
                    if v.width == 0 || v.height == 0 || v.width % 2 != 0 {
                        return invalid(
                            &format!("cameras[{i}].source.width"),
                            "width and height must be above 0 and the width even",
                        );
                    }
                    check_fps(&format!("cameras[{i}].source.fps"), f64::from(v.fps))?;
                }
                SourceConfig::Pattern(p) => {
                    if !(16..=8192).contains(&p.width) || !(16..=8192).contains(&p.height) {
                        return invalid(
                            &format!("cameras[{i}].source.width"),
                            "width and height must be 16 to 8192",
                        );
                    }
                    check_fps(&format!("cameras[{i}].source.fps"), p.fps)?;
                }
            }
            camera.validate_detection(i)?;
        }
        if self.cameras.iter().any(CameraConfig::has_frames) {
            self.model.validate()?;
        }
        let snap = &self.snapshots;
        if !(1..=100).contains(&snap.quality) {
            return invalid("snapshots.quality", "must be 1 to 100");
        }
        if snap.max_width < 32 {
            return invalid("snapshots.max_width", "must be at least 32");
        }
        let upload = &snap.upload;
        if !(0.0..=1.0).contains(&upload.min_confidence) {
            return invalid("snapshots.upload.min_confidence", "must be 0 to 1");
        }
        if upload.max_bytes_per_sec < 1024 {
            return invalid(
                "snapshots.upload.max_bytes_per_sec",
                "must be at least 1024",
            );
        }
        if !(1..=64).contains(&upload.max_in_flight) {
            return invalid("snapshots.upload.max_in_flight", "must be 1 to 64");
        }
        for (i, zone) in upload.zones.iter().enumerate() {
            if !sightline_shared::validate::is_identifier(zone) {
                return invalid(
                    &format!("snapshots.upload.zones[{i}]"),
                    "must be a zone name (1-64 of A-Z a-z 0-9 _ -)",
                );
            }
        }
        for (i, label) in upload.labels.iter().enumerate() {
            if label.is_empty() {
                return invalid(
                    &format!("snapshots.upload.labels[{i}]"),
                    "must not be empty",
                );
            }
        }
        if upload.send != UploadSend::Matching
            && (!upload.labels.is_empty()
                || !upload.zones.is_empty()
                || upload.min_confidence > 0.0)
        {
            return invalid(
                "snapshots.upload.send",
                "labels, min_confidence and zones apply only with send = \"matching\"",
            );
        }
        Ok(())
    }
}

fn check_fps(field: &str, fps: f64) -> Result<(), ConfigError> {
    match fps.is_finite() && fps > 0.0 && fps <= 240.0 {
        true => Ok(()),
        false => Err(ConfigError::invalid(
            field,
            "must be above 0 and at most 240",
        )),
    }
}

fn check_fraction(field: &str, value: f32) -> Result<(), ConfigError> {
    match (0.0..=1.0).contains(&value) {
        true => Ok(()),
        false => Err(ConfigError::invalid(field, "must be 0.0 to 1.0")),
    }
}

impl CameraConfig {
    fn validate_detection(&self, i: usize) -> Result<(), ConfigError> {
        let field = |name: &str| format!("cameras[{i}].{name}");
        if let Some(l) = self.labels.iter().find(|l| !is_label(l)) {
            return Err(ConfigError::invalid(
                field("labels"),
                format!(
                    "{l:?} is not a label of 1-{MAX_LABEL_LEN} bytes without control characters"
                ),
            ));
        }
        if let Some(score) = self.min_score {
            check_fraction(&field("min_score"), score)?;
        }
        let m = &self.motion;
        check_fraction(&field("motion.threshold"), m.threshold)?;
        if !(8..=1920).contains(&m.scale_width) {
            return Err(ConfigError::invalid(
                field("motion.scale_width"),
                "must be 8 to 1920",
            ));
        }
        for (k, mask) in m.masks.iter().enumerate() {
            let [x0, y0, x1, y1] = *mask;
            if !(mask.iter().all(|v| (0.0..=1.0).contains(v)) && x0 < x1 && y0 < y1) {
                return Err(ConfigError::invalid(
                    field(&format!("motion.masks[{k}]")),
                    "must be [x_min, y_min, x_max, y_max] fractions of the frame with min < max",
                ));
            }
        }
        if !(m.detect_interval_secs.is_finite() && m.detect_interval_secs >= 0.0) {
            return Err(ConfigError::invalid(
                field("motion.detect_interval_secs"),
                "must be 0 or more",
            ));
        }
        let t = &self.tracker;
        check_fraction(&field("tracker.iou_threshold"), t.iou_threshold)?;
        if !(t.max_age_secs.is_finite() && t.max_age_secs > 0.0) {
            return Err(ConfigError::invalid(
                field("tracker.max_age_secs"),
                "must be above 0",
            ));
        }
        if !(t.update_interval_secs.is_finite() && t.update_interval_secs >= 1.0) {
            return Err(ConfigError::invalid(
                field("tracker.update_interval_secs"),
                "must be 1 or more",
            ));
        }
        let most = sightline_shared::track::MAX_PATH_POINTS;
        if !(2..=most).contains(&t.path_points) {
            return Err(ConfigError::invalid(
                field("tracker.path_points"),
                format!("must be 2 to {most}"),
            ));
        }
        sightline_shared::zone::validate_zones(&field("zones"), &self.zones)?;
        Ok(())
    }
}

impl ModelConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: &str| Err(ConfigError::invalid(field, problem));
        if self.path.as_os_str().is_empty() {
            return invalid("model.path", "must be set when a camera has frames");
        }
        if self.labels.as_os_str().is_empty() {
            return invalid("model.labels", "must be set when a camera has frames");
        }
        check_fraction("model.score_threshold", self.score_threshold)?;
        check_fraction("model.nms_iou", self.nms_iou)?;
        if self.intra_threads == 0 || self.intra_threads > 64 {
            return invalid("model.intra_threads", "must be 1 to 64");
        }
        match (self.input_width, self.input_height) {
            (Some(w), Some(h)) if !(16..=4096).contains(&w) || !(16..=4096).contains(&h) => {
                invalid("model.input_width", "input size must be 16 to 4096")
            }
            (Some(_), None) | (None, Some(_)) => invalid(
                "model.input_width",
                "set both model.input_width and model.input_height, or neither",
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        version = 1
        edge_id = "edge-1"
        [[cameras]]
        id = "gate"
        source = { kind = "synthetic", events_per_second = 10.0 }
    "#;

    #[test]
    fn parses_a_minimal_config() {
        let c = sightline_shared::config::parse::<AgentConfig>(GOOD, "test").unwrap();
        assert_eq!(c.publisher, PublisherConfig::default());
        assert!(
            matches!(&c.cameras[0].source, SourceConfig::Synthetic(s) if s.events_per_second == 10.0)
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            (GOOD.replace("version = 1", "version = 2"), "version"),
            (GOOD.replace("edge-1", "edge 1"), "edge_id"),
            (
                GOOD.replace("10.0", "-1.0"),
                "cameras[0].source.events_per_second",
            ),
            (GOOD.replace("\"gate\"", "\"a.b\""), "cameras[0].id"),
            (GOOD.replace("synthetic\"", "v4l3\""), "v4l3"),
            (GOOD.replace("edge_id", "edgeid"), "edgeid"),
            (
                format!("{GOOD}\n[storage]\nmax_storage_gb = 0.0"),
                "storage.max_storage_gb",
            ),
            (
                format!("{GOOD}\n[storage]\nfull_policy = \"panic\""),
                "panic",
            ),
            (format!("{GOOD}\n[publisher]\nencoding = \"xml\""), "xml"),
            (
                GOOD.replace(
                    "{ kind = \"synthetic\", events_per_second = 10.0 }",
                    "{ kind = \"file\", path = \"x\", fps = 0.0 }",
                ),
                "cameras[0].source.fps",
            ),
            (
                GOOD.replace(
                    "{ kind = \"synthetic\", events_per_second = 10.0 }",
                    "{ kind = \"pattern\" }\nmotion = { masks = [[0.5, 0.0, 0.2, 1.0]] }",
                ),
                "cameras[0].motion.masks[0]",
            ),
            (
                GOOD.replace(
                    "{ kind = \"synthetic\", events_per_second = 10.0 }",
                    "{ kind = \"pattern\" }\nmin_score = 1.5",
                ),
                "cameras[0].min_score",
            ),
            (
                format!(
                    "{}\n[model]\nnms_iou = 2.0",
                    GOOD.replace("\"synthetic\", events_per_second = 10.0", "\"v4l2\"")
                ),
                "model.nms_iou",
            ),
            (format!("{GOOD}\n[model]\ndecoder = \"ssd\""), "ssd"),
            (
                format!("{GOOD}\n[snapshots]\nquality = 0"),
                "snapshots.quality",
            ),
            (
                format!("{GOOD}\n[publisher]\nmax_in_flight = 0"),
                "publisher.max_in_flight",
            ),
            (
                format!("{GOOD}\n[snapshots.upload]\nsend = \"some\""),
                "some",
            ),
            (
                format!("{GOOD}\n[snapshots.upload]\nlabels = [\"car\"]"),
                "snapshots.upload.send",
            ),
            (
                format!("{GOOD}\n[snapshots.upload]\nsend = \"matching\"\nzones = [\"a b\"]"),
                "snapshots.upload.zones[0]",
            ),
            (
                format!("{GOOD}\n[snapshots.upload]\nmax_bytes_per_sec = 10"),
                "snapshots.upload.max_bytes_per_sec",
            ),
            (
                format!("{GOOD}\n[snapshots.upload]\nsend = \"matching\"\nmin_confidence = 1.5"),
                "snapshots.upload.min_confidence",
            ),
            (
                format!("{GOOD}\n[[cameras]]\nid = \"gate\"\nsource = {{ kind = \"synthetic\" }}"),
                "cameras[1].id",
            ),
        ] {
            let err = sightline_shared::config::parse::<AgentConfig>(&text, "test")
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
