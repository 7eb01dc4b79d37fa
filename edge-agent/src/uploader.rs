//! Snapshots to the cloud: which ones go ([`wants_event`], [`wants_track`], from
//! `[snapshots.upload]`), and the [`Uploader`] that sends the buffer's upload queue.
//!
//! The uploader takes pending uploads oldest first, but only those whose event or track
//! record JetStream has acknowledged already (the cloud checks every picture against the
//! record it shows), and none while the buffer holds a backlog of unsent events: events
//! go first. Each upload is one JetStream message on `sightline.snapshots.<edge>.<camera>`
//! ([`sightline_runtime::objects::publish_upload`]), released by a token bucket that holds
//! the average to `max_bytes_per_sec`, at most `max_in_flight` awaiting their acks. An upload
//! is marked done only after its ack; one that fails stays pending and is tried again after
//! a backoff, so an edge offline for a while sends its queue, oldest first, when the uplink
//! returns. A file that is gone or too large is dropped, counted and logged.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::future::join_all;
use sightline_shared::snapshot::SnapshotHeader;
use sightline_shared::{Backoff, DetectionEvent, Timestamp, TrackRecord};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buffer::worker::BufferHandle;
use crate::buffer::{PendingUpload, UploadOutcome};
use crate::config::{UploadConfig, UploadSend};
use crate::metrics::{Metrics, UploadDrop};

/// Whether `event`'s snapshot goes to the cloud under `rules`: with `matching`, one
/// detection must be of one of the labels (any if none are named), at least
/// `min_confidence` sure, and stand in one of the zones (anywhere if none are named).
pub fn wants_event(rules: &UploadConfig, event: &DetectionEvent) -> bool {
    match rules.send {
        UploadSend::All => true,
        UploadSend::None => false,
        UploadSend::Matching => event.detections.iter().any(|d| {
            label_matches(rules, &d.label)
                && d.confidence >= rules.min_confidence
                && zones_match(rules, d.zones.iter().map(String::as_str))
        }),
    }
}

/// Whether a track's best frame goes to the cloud: its label, its best score and the zones
/// it stood in, as for events.
pub fn wants_track(rules: &UploadConfig, record: &TrackRecord) -> bool {
    match rules.send {
        UploadSend::All => true,
        UploadSend::None => false,
        UploadSend::Matching => {
            label_matches(rules, &record.label)
                && record.max_confidence >= rules.min_confidence
                && zones_match(rules, record.zones.iter().map(|z| z.zone.as_str()))
        }
    }
}

fn label_matches(rules: &UploadConfig, label: &str) -> bool {
    rules.labels.is_empty() || rules.labels.iter().any(|l| l == label)
}

fn zones_match<'a>(rules: &UploadConfig, mut zones: impl Iterator<Item = &'a str>) -> bool {
    rules.zones.is_empty() || zones.any(|z| rules.zones.iter().any(|r| r == z))
}

/// Releases bytes at an average of `rate` per second, in bursts of at most a second's
/// worth: [`TokenBucket::take`] returns once its bytes are covered, borrowing against the
/// future for one larger than a burst (the wait after it pays it back). Runs on tokio's
/// clock, so a paused clock shows exactly when each release happens.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` bytes per second.
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        Self {
            rate,
            capacity: rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Waits until `bytes` may go.
    pub async fn take(&mut self, bytes: u64) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            let wait = Duration::from_secs_f64(-self.tokens / self.rate);
            tokio::time::sleep(wait).await;
            self.last += wait;
            self.tokens = 0.0;
        }
    }
}

/// The uploader's own JetStream context: its own window (`max_in_flight`), never taking the
/// event publisher's, and an ack timeout that allows for a picture at the cap, so a picture
/// on a slow uplink is not given up and sent again while it is still on its way.
pub fn context(client: &async_nats::Client, config: &crate::AgentConfig) -> jetstream::Context {
    let upload = &config.snapshots.upload;
    let transfer = sightline_shared::snapshot::MAX_BYTES as u64
        * u64::from(upload.max_in_flight as u32)
        / upload.max_bytes_per_sec.max(1);
    jetstream::context::ContextBuilder::new()
        .timeout(
            Duration::from_millis(config.publisher.ack_timeout_ms)
                + Duration::from_secs(transfer.min(600)),
        )
        .max_ack_inflight(upload.max_in_flight)
        .build(client.clone())
}

/// While the buffer holds more unsent events than this, no snapshot goes: events first.
const EVENTS_FIRST: u64 = 1000;
/// How long the uploader rests with nothing to send.
const IDLE: Duration = Duration::from_secs(1);

/// Sends the buffer's snapshot upload queue.
#[derive(Debug)]
pub struct Uploader {
    pub buffer: BufferHandle,
    pub js: jetstream::Context,
    pub edge_id: String,
    pub data_dir: PathBuf,
    pub config: UploadConfig,
    pub metrics: Metrics,
}

impl Uploader {
    /// Sends until `stop` fires, or, once `finish` fired, until nothing sendable is left
    /// (what is pending then stays queued for the next start).
    pub async fn run(self, stop: CancellationToken, finish: CancellationToken) {
        let mut bucket = TokenBucket::new(self.config.max_bytes_per_sec);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        while !stop.is_cancelled() {
            // Read before the round asks for the queue: shutdown writes the publisher's last
            // acks back before it fires `finish`, and with no append waiting (the cameras
            // have stopped by then) the buffer answers in order, so only a round that
            // started after `finish` sees every event that will be sent.
            let finishing = finish.is_cancelled();
            let round = tokio::select! {
                () = stop.cancelled() => return,
                round = self.round(&mut bucket) => round,
            };
            let rested = match round {
                Round::Sent => {
                    backoff.reset();
                    continue;
                }
                Round::Idle if finishing => return,
                Round::Idle => {
                    // Until the next second, or at once when shutdown asks to finish.
                    tokio::select! {
                        () = finish.cancelled() => true,
                        rested = sightline_runtime::retry::sleep_unless_cancelled(IDLE, &stop) => rested,
                    }
                }
                Round::Failed => sightline_runtime::retry::pause(&mut backoff, &stop).await,
            };
            if !rested {
                return;
            }
        }
    }

    /// One batch: the oldest sendable uploads, at most `max_in_flight`.
    async fn round(&self, bucket: &mut TokenBucket) -> Round {
        let batch = match self
            .buffer
            .pending_uploads(self.config.max_in_flight, EVENTS_FIRST)
            .await
        {
            Ok((batch, _unsent)) => batch,
            Err(error) => {
                tracing::error!(%error, "reading the snapshot upload queue failed");
                return Round::Failed;
            }
        };
        if batch.is_empty() {
            return Round::Idle;
        }
        let mut sends = Vec::new();
        let mut outcomes = Vec::new();
        for upload in batch {
            match self.read(&upload) {
                Ok(payload) => {
                    bucket.take(payload.len() as u64).await;
                    sends.push(self.send(upload, payload));
                }
                Err((why, detail)) => {
                    tracing::error!(snapshot = %upload.snapshot_id, of = %upload.owner, path = %upload.path, detail, "a queued snapshot cannot be uploaded; dropping it");
                    outcomes.push((
                        upload.snapshot_id,
                        UploadOutcome::Dropped {
                            why,
                            reason: detail,
                        },
                    ));
                }
            }
        }
        let mut failed = false;
        for (id, sent) in join_all(sends).await {
            match sent {
                Ok(bytes) => outcomes.push((id, UploadOutcome::Uploaded { bytes })),
                Err(error) => {
                    self.metrics.snapshot_upload_errors.inc();
                    tracing::warn!(snapshot = %id, %error, "a snapshot upload failed; it stays queued");
                    failed = true;
                }
            }
        }
        if !outcomes.is_empty() {
            self.buffer.finish_uploads(outcomes);
        }
        if failed { Round::Failed } else { Round::Sent }
    }

    /// The upload's file, checked against the size the cloud takes.
    fn read(&self, upload: &PendingUpload) -> Result<Bytes, (UploadDrop, String)> {
        let path = self.data_dir.join(&upload.path);
        let bytes = std::fs::read(&path).map_err(|e| {
            (
                UploadDrop::Missing,
                format!("its file {} cannot be read: {e}", path.display()),
            )
        })?;
        if bytes.len() > sightline_shared::snapshot::MAX_BYTES {
            return Err((
                UploadDrop::TooLarge,
                format!(
                    "its file is {} bytes, over the upload limit of {}",
                    bytes.len(),
                    sightline_shared::snapshot::MAX_BYTES
                ),
            ));
        }
        Ok(Bytes::from(bytes))
    }

    /// Publishes one upload and waits for its ack; the bytes sent.
    async fn send(
        &self,
        upload: PendingUpload,
        payload: Bytes,
    ) -> (uuid::Uuid, Result<u64, String>) {
        let header = SnapshotHeader {
            id: upload.snapshot_id,
            owner: upload.owner,
            captured_at: Timestamp::from_millis(upload.captured_ms),
            sha256: sightline_shared::jpeg::sha256_hex(&payload),
            size: payload.len() as u64,
        };
        let bytes = payload.len() as u64;
        let sent = sightline_runtime::objects::publish_upload(
            &self.js,
            &self.edge_id,
            &upload.camera_id,
            &header,
            payload,
        )
        .await
        .map(|()| bytes)
        .map_err(|e| e.to_string());
        (upload.snapshot_id, sent)
    }
}

/// How a round went.
enum Round {
    Sent,
    Idle,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_shared::track::ZoneVisit;
    use sightline_shared::{BoundingBox, Detection};

    #[tokio::test(start_paused = true)]
    async fn the_bucket_releases_bytes_at_the_cap_per_tick() {
        // 1000 bytes a second: a second's burst at once, then 500 bytes every half second.
        let mut bucket = TokenBucket::new(1000);
        let start = Instant::now();
        let mut released = Vec::new();
        for _ in 0..8 {
            bucket.take(500).await;
            released.push(start.elapsed().as_millis());
        }
        assert_eq!(released, [0, 0, 500, 1000, 1500, 2000, 2500, 3000]);
        // Bytes released per whole second after the burst: exactly the cap.
        let mut bucket = TokenBucket::new(1000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(10) {
            bucket.take(250).await;
            sent += 250;
        }
        // The burst (1000) plus ten seconds at the cap: the last take ends on the edge.
        assert_eq!(sent, 1000 + 10 * 1000);
        // One larger than the burst goes at once and is paid back by waiting after it.
        let mut bucket = TokenBucket::new(1000);
        let start = Instant::now();
        bucket.take(3000).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        bucket.take(1).await;
        assert_eq!(start.elapsed().as_millis(), 2001);
    }

    const AT: Timestamp = Timestamp::from_millis(1_795_000_000_000);

    fn event(detections: &[(&str, f32, &[&str])]) -> DetectionEvent {
        let mut e = crate::synthetic::make_event(
            "edge-1",
            "cam",
            &crate::config::SyntheticConfig::default(),
            1,
            &mut 1,
            &mut rand::rng(),
        );
        e.detections = detections
            .iter()
            .map(|(label, confidence, zones)| Detection {
                label: (*label).to_owned(),
                class_id: 0,
                confidence: *confidence,
                bbox: BoundingBox {
                    x_min: 0.1,
                    y_min: 0.1,
                    x_max: 0.2,
                    y_max: 0.2,
                },
                track_id: None,
                zones: zones.iter().map(|z| (*z).to_owned()).collect(),
            })
            .collect();
        e
    }

    #[test]
    fn the_rules_select_exactly_what_they_say() {
        let matching = |labels: &[&str], min: f32, zones: &[&str]| UploadConfig {
            send: UploadSend::Matching,
            labels: labels.iter().map(|s| (*s).to_owned()).collect(),
            min_confidence: min,
            zones: zones.iter().map(|s| (*s).to_owned()).collect(),
            ..UploadConfig::default()
        };
        let car_in_drive = event(&[("car", 0.9, &["driveway"]), ("person", 0.4, &[])]);
        let all = UploadConfig::default();
        let none = UploadConfig {
            send: UploadSend::None,
            ..UploadConfig::default()
        };
        assert!(wants_event(&all, &car_in_drive));
        assert!(!wants_event(&none, &car_in_drive));
        assert!(wants_event(&matching(&[], 0.0, &[]), &car_in_drive));
        assert!(wants_event(&matching(&["person"], 0.0, &[]), &car_in_drive));
        assert!(!wants_event(&matching(&["dog"], 0.0, &[]), &car_in_drive));
        // The same detection must match label and confidence together.
        assert!(!wants_event(
            &matching(&["person"], 0.5, &[]),
            &car_in_drive
        ));
        assert!(wants_event(&matching(&["car"], 0.5, &[]), &car_in_drive));
        // And the zone.
        assert!(wants_event(
            &matching(&["car"], 0.0, &["driveway"]),
            &car_in_drive
        ));
        assert!(!wants_event(
            &matching(&["person"], 0.0, &["driveway"]),
            &car_in_drive
        ));
        assert!(!wants_event(
            &matching(&[], 0.0, &["street"]),
            &car_in_drive
        ));
        assert!(!wants_event(&matching(&[], 0.0, &[]), &event(&[])));

        let bbox = BoundingBox {
            x_min: 0.1,
            y_min: 0.1,
            x_max: 0.2,
            y_max: 0.2,
        };
        let track = TrackRecord {
            record_id: sightline_shared::EventId::new_v7(AT),
            schema_version: 1,
            edge_id: "edge-1".into(),
            camera_id: "cam".into(),
            track_id: 3,
            revision: 0,
            label: "car".into(),
            class_id: 2,
            started_at: AT,
            last_seen_at: AT,
            ended_by: None,
            frames: 1,
            max_confidence: 0.7,
            mean_confidence: 0.7,
            best: sightline_shared::track::BestFrame {
                captured_at: AT,
                bbox,
                confidence: 0.7,
            },
            path: Vec::new(),
            zones: vec![ZoneVisit {
                zone: "driveway".into(),
                entered_at: AT,
                exited_at: None,
            }],
            arrival_event_id: None,
            snapshot: None,
            attributes: Default::default(),
        };
        assert!(wants_track(&all, &track));
        assert!(!wants_track(&none, &track));
        assert!(wants_track(&matching(&["car"], 0.7, &["driveway"]), &track));
        assert!(!wants_track(&matching(&["car"], 0.71, &[]), &track));
        assert!(!wants_track(&matching(&["person"], 0.0, &[]), &track));
        assert!(!wants_track(&matching(&[], 0.0, &["street"]), &track));
    }
}
