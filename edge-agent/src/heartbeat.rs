//! Publishes a [`Heartbeat`] every interval on `sightline.heartbeats.<edge_id>` through
//! JetStream. Offline, a heartbeat is counted as failed and skipped: it is a snapshot, and
//! the next one supersedes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use sightline_shared::clock::{MAX_ROUND_TRIP_MS, TIME_SUBJECT, TimeReply, offset_ms};
use sightline_shared::heartbeat::{CONTENT_TYPE, CameraHeartbeat, Heartbeat};
use sightline_shared::{Timestamp, codec, subjects};
use tokio_util::sync::CancellationToken;

use crate::status::{StatusState, StatusTicker};

/// CPU time and resident memory of this process, from `/proc/self` (Linux).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessUsage {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

impl ProcessUsage {
    /// Reads the current figures; zeros where `/proc` is unavailable.
    pub fn read() -> Self {
        // Fields 14 and 15 of /proc/self/stat (after the parenthesised command name) are
        // utime and stime in clock ticks, which are 1/100 s on Linux.
        let cpu_secs = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / 100.0)
            })
            .unwrap_or(0.0);
        let rss_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            })
            .unwrap_or(0);
        Self {
            cpu_secs,
            rss_bytes,
        }
    }
}

/// Asks the cloud for its clock (ingest answers on [`TIME_SUBJECT`]) and returns the edge
/// clock minus the cloud's in ms; `None` if no answer came in time or it came too slowly to
/// say.
pub async fn measure_clock(nats: &async_nats::Client) -> Option<i64> {
    let asked = sightline_runtime::now().as_millis();
    // The round trip on the monotonic clock: a time-sync step meanwhile cannot distort it.
    let started = Instant::now();
    let request = nats.request(TIME_SUBJECT, bytes::Bytes::new());
    let longest = Duration::from_millis(MAX_ROUND_TRIP_MS.unsigned_abs());
    let answer = tokio::time::timeout(longest, request).await.ok()?.ok()?;
    let round_trip = i64::try_from(started.elapsed().as_millis()).ok()?;
    let reply: TimeReply = serde_json::from_slice(&answer.payload).ok()?;
    offset_ms(asked, asked + round_trip, reply.now_ms)
}

/// Measures the clock offset, keeps it for status and metrics, and warns once per crossing
/// of `max_offset`.
async fn check_clock(state: &StatusState, max_offset: Duration, warned: &mut bool) {
    let Some(offset) = measure_clock(&state.nats).await else {
        // Unknown now: an old figure reported as current would mislead.
        state.clock_offset.clear();
        return;
    };
    state.clock_offset.set(offset);
    state
        .metrics
        .clock_offset_seconds
        .set(offset as f64 / 1000.0);
    let over = offset.unsigned_abs() > max_offset.as_millis() as u64;
    if over && !*warned {
        tracing::warn!(
            offset_ms = offset,
            "this host's clock is {:.1}s {} the cloud's: fix its time sync (ingest refuses events too far ahead, and old capture times expire early)",
            offset.unsigned_abs() as f64 / 1000.0,
            if offset > 0 { "ahead of" } else { "behind" }
        );
    }
    *warned = over;
}

/// Sends heartbeats until `stop` fires, measuring the clock offset before each.
pub async fn run(
    state: Arc<StatusState>,
    js: jetstream::Context,
    every: Duration,
    max_clock_offset: Duration,
    stop: CancellationToken,
) {
    let subject = subjects::heartbeat_subject(&state.edge_id);
    let mut last = (Instant::now(), ProcessUsage::read());
    let mut warned = false;
    let mut ticker = StatusTicker::new(every, stop);
    while let Some(mut status) = ticker.next(&state).await {
        check_clock(&state, max_clock_offset, &mut warned).await;
        status.clock_offset_ms = state.clock_offset.get();
        let usage = ProcessUsage::read();
        let elapsed = last.0.elapsed().as_secs_f64().max(1e-3);
        let cpu_percent = ((usage.cpu_secs - last.1.cpu_secs) / elapsed * 100.0).max(0.0);
        last = (Instant::now(), usage);
        let heartbeat = Heartbeat {
            edge_id: status.edge_id.clone(),
            sent_at: sightline_runtime::now(),
            agent_version: status.version.to_owned(),
            uptime_secs: status.uptime_secs,
            cameras: status.cameras.len() as u32,
            fps: status.cameras.iter().map(|c| c.fps).sum(),
            events_created: status.events_created,
            events_sent: status.events_published,
            events_dropped: status.events_dropped,
            backlog: status.buffer.stats.unsent,
            oldest_unsent_at: status
                .buffer
                .stats
                .oldest_unsent_ms
                .map(Timestamp::from_millis),
            storage_used_bytes: status.buffer.storage.used_bytes,
            storage_limit_bytes: status.buffer.storage.limit_bytes,
            cpu_percent,
            rss_bytes: usage.rss_bytes,
            schema_version: sightline_shared::heartbeat::SCHEMA_VERSION,
            interval_secs: u32::try_from(every.as_secs()).unwrap_or(u32::MAX),
            storage_free_bytes: status.buffer.storage.fs_free_bytes,
            clock_offset_ms: status.clock_offset_ms,
            events_quarantined: status.buffer.stats.quarantined,
            events_refused: status.events_refused,
            camera_states: status
                .cameras
                .iter()
                .map(|c| CameraHeartbeat {
                    camera_id: c.id.clone(),
                    state: c.state.to_owned(),
                    fps: c.fps,
                    events_created: c.events_created,
                    errors: c.errors,
                })
                .collect(),
            uploads_pending: status.buffer.uploads.pending,
            uploads_sent: status.uploads.sent,
            uploads_dropped: status.uploads.dropped,
            upload_errors: status.uploads.errors,
            upload_bytes: status.uploads.bytes,
        };
        let message = PublishMessage::build()
            .payload(heartbeat.encode().into())
            .header(codec::CONTENT_TYPE_HEADER, CONTENT_TYPE);
        let sent = match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match sent {
            Ok(()) => {
                state.metrics.heartbeats_sent.inc();
            }
            Err(error) => {
                state.metrics.heartbeat_errors.inc();
                tracing::debug!(%error, "heartbeat not sent");
            }
        }
    }
}
