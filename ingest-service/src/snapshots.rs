//! The snapshot writer: takes the edges' snapshot uploads from [`SNAPSHOTS_STREAM`], checks
//! each, puts the valid ones in the [`SnapshotStore`] under their snapshot id, records them
//! in `snapshots`, and only then acknowledges them.
//!
//! The checks, in order (the first that fails dead-letters the upload with its reason):
//! 1. the subject is `sightline.snapshots.<edge>.<camera>` (`Subject`) and the headers name
//!    a snapshot id, what it shows, its capture time, size and SHA-256 ([`SnapshotHeader`]):
//!    `Decode`;
//! 2. the payload is a whole JPEG within `[snapshots] max_bytes` and [`MAX_PIXELS`], of the
//!    size and SHA-256 named ([`jpeg::check`]), captured no later than `max_future_skew`
//!    ahead of ingest's clock: `Snapshot`;
//! 3. the event or track it shows is in ClickHouse and came from the subject's edge and
//!    camera (`Subject` if it came from another), and the picture's capture time is its
//!    event's, or within its track's visit (`Snapshot`); `Owner` if it has not arrived
//!    while the writer waited `owner_wait_secs` for it (until then the upload is put back
//!    every few seconds: uploads follow their events but may overtake them in a backlog).
//!
//! Order of writes: object, then row, then ack. A writer killed after the put and before the
//! row leaves an object the redelivery overwrites (same key) before writing its row; after
//! the row and before the ack, the redelivery writes the same object and row again (the
//! copies collapse). Every row therefore names a stored object, and every object a row or
//! an upload still in the stream. A put is one chunk, so a kill inside it leaves at most
//! that chunk without its metadata (bytes, never an object).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use sightline_runtime::objects::SnapshotStore;
use sightline_runtime::retry::{pause, start_up_backoff};
use sightline_shared::jpeg::{self, JpegInfo};
use sightline_shared::snapshot::{Owner, SnapshotHeader};
use sightline_shared::subjects::{self, SNAPSHOTS_STREAM};
use sightline_store::SnapshotRow;
use sightline_store::insert::insert_rows;
use sightline_store::tables::{EVENTS, EVENTS_BY_ID, SNAPSHOTS, TRACKS_BY_ID};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::SnapshotSettings;
use crate::deadletter::DeadLetters;
use crate::metrics::{DeadLetterReason, Metrics};
use crate::side;

/// Most uploads per fetch: up to `max_bytes` each, so this bounds the writer's memory.
const FETCH: usize = 16;
/// How long an upload whose event or track has not arrived waits before it is tried again.
const OWNER_RETRY: Duration = Duration::from_secs(5);

/// The writer's durable consumer.
pub(crate) fn durable() -> side::Durable {
    side::Durable {
        stream: SNAPSHOTS_STREAM,
        name: "sightline-ingest-snapshots",
        description: "Sightline ingest of snapshots into the object store",
    }
}

/// Reads how many bytes the bucket uses every `interval`, for its gauge.
pub(crate) async fn watch_usage(
    store: Arc<dyn SnapshotStore>,
    interval: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.usage().await {
            Ok(usage) => {
                metrics
                    .snapshot_bucket_bytes
                    .set(i64::try_from(usage.bytes).unwrap_or(i64::MAX));
            }
            Err(error) => tracing::debug!(%error, "reading the snapshot bucket's size failed"),
        }
    }
}

/// Everything the writer needs.
pub(crate) struct SnapshotWriter {
    pub client: clickhouse::Client,
    pub store: Arc<dyn SnapshotStore>,
    pub dead_letters: DeadLetters,
    pub metrics: Metrics,
    pub settings: SnapshotSettings,
    /// How far ahead of ingest's clock a capture time may be, as for events.
    pub max_future_skew_ms: i64,
    /// Bounds each ClickHouse query and insert.
    pub timeout: Duration,
}

/// An upload that passed the checks that need nothing but the message.
struct Checked {
    message: jetstream::Message,
    edge_id: String,
    camera_id: String,
    header: SnapshotHeader,
    info: JpegInfo,
}

/// Why an upload cannot be stored.
type Refusal = (DeadLetterReason, String);

/// The most pixels a picture may have (8192 x 8192): a thumbnail decodes the whole of it,
/// so a header that claims a gigapixel frame is refused here, not in the query service.
pub(crate) const MAX_PIXELS: u64 = 8192 * 8192;

/// Checks 1 and 2 of the module's list; `latest_ms` is the latest capture time accepted.
fn check(
    message: &jetstream::Message,
    max_bytes: usize,
    latest_ms: i64,
) -> Result<Checked, Refusal> {
    let (edge_id, camera_id) =
        subjects::parse_snapshot_subject(&message.subject).ok_or_else(|| {
            (
                DeadLetterReason::Subject,
                format!(
                    "{} is not sightline.snapshots.<edge_id>.<camera_id>",
                    message.subject
                ),
            )
        })?;
    let header = SnapshotHeader::parse(|name| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    })
    .map_err(|e| (DeadLetterReason::Decode, e.to_string()))?;
    let info = jpeg::check(&message.payload, max_bytes, &header.sha256)
        .map_err(|e| (DeadLetterReason::Snapshot, e.to_string()))?;
    if u64::from(info.width) * u64::from(info.height) > MAX_PIXELS {
        return Err((
            DeadLetterReason::Snapshot,
            format!(
                "a {}x{} picture is over the limit of {MAX_PIXELS} pixels",
                info.width, info.height
            ),
        ));
    }
    if header.captured_at.as_millis() > latest_ms {
        return Err((
            DeadLetterReason::Snapshot,
            format!(
                "it says it was captured at {} ms, ahead of ingest's clock by more than the allowed skew",
                header.captured_at.as_millis()
            ),
        ));
    }
    if header.size != info.len as u64 {
        return Err((
            DeadLetterReason::Snapshot,
            format!(
                "the header {} says {} bytes, the payload has {}",
                sightline_shared::snapshot::SIZE_HEADER,
                header.size,
                info.len
            ),
        ));
    }
    Ok(Checked {
        edge_id: edge_id.to_owned(),
        camera_id: camera_id.to_owned(),
        header,
        info,
        message: message.clone(),
    })
}

/// Where an owner came from, and when: its edge, camera and the capture time its picture
/// must have.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    edge: String,
    camera: String,
    captured: Captured,
}

/// The capture time an owner's picture must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Captured {
    /// An event's picture is of its frame: this capture time exactly.
    Exactly(i64),
    /// A track's best frame is from its visit: at or after its start.
    From(i64),
}

impl Source {
    /// What is wrong with a picture captured at `at_ms`, if anything.
    fn capture_mismatch(&self, at_ms: i64) -> Option<String> {
        match self.captured {
            Captured::Exactly(ms) if ms != at_ms => Some(format!(
                "the picture says it was captured at {at_ms} ms, its event at {ms} ms"
            )),
            Captured::From(ms) if at_ms < ms => Some(format!(
                "the picture says it was captured at {at_ms} ms, before its track started ({ms} ms)"
            )),
            _ => None,
        }
    }
}

impl SnapshotWriter {
    /// Consumes the snapshot uploads until `cancel` fires.
    pub(crate) async fn run(
        self,
        consumer: jetstream::consumer::PullConsumer,
        cancel: CancellationToken,
    ) {
        let mut backoff = start_up_backoff();
        while !cancel.is_cancelled() {
            let fetched = tokio::select! {
                () = cancel.cancelled() => return,
                fetched = side::fetch(&consumer, FETCH) => fetched,
            };
            let messages = match fetched {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "fetching snapshot uploads failed");
                    pause(&mut backoff, &cancel).await;
                    continue;
                }
            };
            match self.write(messages, &cancel).await {
                Ok(()) => backoff.reset(),
                Err(Stop::Cancelled) => return,
                Err(Stop::Failed) => {
                    pause(&mut backoff, &cancel).await;
                }
            }
        }
    }

    /// Checks, stores and acknowledges one fetch of uploads.
    async fn write(
        &self,
        messages: Vec<jetstream::Message>,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let mut checked = Vec::new();
        let latest = sightline_runtime::now()
            .as_millis()
            .saturating_add(self.max_future_skew_ms);
        for message in messages {
            match check(&message, self.settings.max_bytes, latest) {
                Ok(c) => checked.push(c),
                Err(refusal) => self.refuse(&message, refusal, cancel).await?,
            }
        }
        if checked.is_empty() {
            return Ok(());
        }
        let owners = match self.sources(&checked).await {
            Ok(owners) => owners,
            Err(error) => {
                tracing::warn!(%error, "looking up the events and tracks of snapshots failed; they will be redelivered");
                self.metrics.snapshot_errors.inc();
                put_back(messages_of(&checked), Duration::from_secs(1)).await;
                return Err(Stop::Failed);
            }
        };
        let mut ready = Vec::new();
        for c in checked {
            match owners.get(&(c.edge_id.clone(), c.header.owner)) {
                Some(source) if source.edge == c.edge_id && source.camera == c.camera_id => {
                    match source.capture_mismatch(c.header.captured_at.as_millis()) {
                        None => ready.push(c),
                        Some(detail) => {
                            let detail = format!("{}: {detail}", c.header.owner);
                            self.refuse(&c.message, (DeadLetterReason::Snapshot, detail), cancel)
                                .await?;
                        }
                    }
                }
                Some(source) => {
                    let detail = format!(
                        "it shows {} of edge {:?} camera {:?}, but came on {}",
                        c.header.owner, source.edge, source.camera, c.message.subject
                    );
                    self.refuse(&c.message, (DeadLetterReason::Subject, detail), cancel)
                        .await?;
                }
                None => self.wait_for_owner(c, cancel).await?,
            }
        }
        let mut stored = Vec::new();
        let mut ready = ready.into_iter();
        while let Some(c) = ready.next() {
            let metadata = [
                ("edge_id", c.edge_id.clone()),
                ("camera_id", c.camera_id.clone()),
                ("of", c.header.owner.to_string()),
                ("sha256", c.header.sha256.clone()),
            ];
            let put = self
                .store
                .put(c.header.id, c.message.payload.clone(), &metadata)
                .await;
            if let Err(error) = put {
                tracing::warn!(%error, snapshot = %c.header.id, "putting a snapshot failed; the uploads will be redelivered");
                self.metrics.snapshot_errors.inc();
                stored.push(c);
                stored.extend(ready);
                put_back(messages_of(&stored), Duration::from_secs(1)).await;
                return Err(Stop::Failed);
            }
            stored.push(c);
        }
        if stored.is_empty() {
            return Ok(());
        }
        let now = sightline_runtime::now().as_millis();
        let rows: Vec<SnapshotRow> = stored.iter().map(|c| row(c, now)).collect();
        if let Err(error) = insert_rows(&self.client, SNAPSHOTS, &rows, self.timeout, None).await {
            tracing::warn!(%error, rows = rows.len(), "recording snapshots failed; the uploads will be redelivered (their objects are overwritten)");
            self.metrics.snapshot_errors.inc();
            put_back(messages_of(&stored), Duration::from_secs(1)).await;
            return Err(Stop::Failed);
        }
        for c in &stored {
            self.metrics.snapshots_stored.inc();
            self.metrics.snapshot_bytes_stored.inc_by(c.info.len as u64);
            if let Err(error) = c.message.ack().await {
                self.metrics.ack_errors.inc();
                tracing::warn!(%error, "an ack failed (the snapshot will be stored again; the copies collapse)");
            }
        }
        Ok(())
    }

    /// An upload whose event or track is not in ClickHouse: put back for a while, then
    /// dead-lettered.
    async fn wait_for_owner(&self, c: Checked, cancel: &CancellationToken) -> Result<(), Stop> {
        // How long this writer has waited: each delivery after the first came OWNER_RETRY
        // after a put-back. Counted in deliveries, not from the upload's publish time, so
        // uploads that waited in the stream while ingest (or ClickHouse) was down get their
        // whole wait once it runs again, beside the events backlog they wait for.
        let deliveries = c.message.info().map_or(1, |info| info.delivered.max(1));
        let waited = (deliveries - 1) as u64 * OWNER_RETRY.as_secs();
        if waited < self.settings.owner_wait_secs {
            tracing::debug!(snapshot = %c.header.id, of = %c.header.owner, "the snapshot's event or track has not arrived; trying again soon");
            self.metrics.snapshots_waiting.inc();
            put_back([&c.message], OWNER_RETRY).await;
            return Ok(());
        }
        let detail = format!(
            "the {} it shows did not reach the cloud from edge {:?} while the writer waited {} s for it",
            c.header.owner, c.edge_id, self.settings.owner_wait_secs
        );
        self.refuse(&c.message, (DeadLetterReason::Owner, detail), cancel)
            .await
    }

    async fn refuse(
        &self,
        message: &jetstream::Message,
        (reason, detail): Refusal,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        tracing::error!(subject = %message.subject, detail, "a snapshot cannot be stored; dead-lettering it");
        self.dead_letters
            .send(message, reason, &detail, cancel)
            .await
            .map_err(|_| Stop::Cancelled)
    }

    /// Where each owner of `checked` that ClickHouse has came from, keyed by the uploading
    /// edge and the owner (a track id is only unique per edge).
    async fn sources(
        &self,
        checked: &[Checked],
    ) -> Result<HashMap<(String, Owner), Source>, clickhouse::error::Error> {
        let mut found = HashMap::new();
        let events: HashSet<Uuid> = checked
            .iter()
            .filter_map(|c| match c.header.owner {
                Owner::Event(id) => Some(*id.as_uuid()),
                Owner::Track(_) => None,
            })
            .collect();
        if !events.is_empty() {
            // The id index gives camera and capture time; those locate the rows in `events`
            // by its sorting key, which gives the edge.
            let ids = uuid_list(events.iter());
            let places: Vec<(String, i64)> = self
                .bounded(
                    self.client
                        .query(&format!(
                            "SELECT DISTINCT camera_id, captured_at_ms FROM {EVENTS_BY_ID} \
                             WHERE event_id IN ({ids})"
                        ))
                        .fetch_all(),
                )
                .await?;
            // The sorting key of `events` is (camera, capture ms, id): both narrow the read.
            if !places.is_empty() {
                let cameras: HashSet<&str> = places.iter().map(|(c, _)| c.as_str()).collect();
                let cameras = cameras
                    .iter()
                    .map(|c| format!("'{}'", c.replace(['\\', '\''], "")))
                    .collect::<Vec<_>>()
                    .join(",");
                let seconds: HashSet<i64> =
                    places.iter().map(|(_, ms)| ms.div_euclid(1000)).collect();
                let seconds = seconds
                    .iter()
                    .map(|s| format!("toDateTime({s})"))
                    .collect::<Vec<_>>()
                    .join(",");
                let millis: HashSet<i64> = places.iter().map(|(_, ms)| *ms).collect();
                let millis = millis
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let rows: Vec<(String, String, String, i64)> = self
                    .bounded(
                        self.client
                            .query(&format!(
                                "SELECT DISTINCT toString(event_id), edge_id, camera_id, captured_at_ms FROM {EVENTS} \
                                 WHERE camera_id IN ({cameras}) AND captured_at IN ({seconds}) \
                                 AND captured_at_ms IN ({millis}) AND event_id IN ({ids})"
                            ))
                            .fetch_all(),
                    )
                    .await?;
                for (id, edge, camera, captured_ms) in rows {
                    let Ok(id) = id.parse() else { continue };
                    // Keyed by every uploader: an event is found whichever edge sent the
                    // upload, so an upload from another edge is told apart from a missing one.
                    for c in checked {
                        if c.header.owner == Owner::Event(id) {
                            found.insert(
                                (c.edge_id.clone(), c.header.owner),
                                Source {
                                    edge: edge.clone(),
                                    camera: camera.clone(),
                                    captured: Captured::Exactly(captured_ms),
                                },
                            );
                        }
                    }
                }
            }
        }
        let tracks: HashSet<(&str, u64)> = checked
            .iter()
            .filter_map(|c| match c.header.owner {
                Owner::Track(id) => Some((c.edge_id.as_str(), id)),
                Owner::Event(_) => None,
            })
            .collect();
        if !tracks.is_empty() {
            let keys = tracks
                .iter()
                .map(|(edge, id)| format!("('{edge}',{id})"))
                .collect::<Vec<_>>()
                .join(",");
            let rows: Vec<(String, u64, String, i64)> = self
                .bounded(
                    self.client
                        .query(&format!(
                            "SELECT DISTINCT edge_id, track_id, camera_id, started_at_ms FROM {TRACKS_BY_ID} \
                             WHERE (edge_id, track_id) IN ({keys})"
                        ))
                        .fetch_all(),
                )
                .await?;
            for (edge, id, camera, started_ms) in rows {
                found.insert(
                    (edge.clone(), Owner::Track(id)),
                    Source {
                        edge,
                        camera,
                        captured: Captured::From(started_ms),
                    },
                );
            }
        }
        Ok(found)
    }

    async fn bounded<T>(
        &self,
        query: impl Future<Output = Result<T, clickhouse::error::Error>>,
    ) -> Result<T, clickhouse::error::Error> {
        tokio::time::timeout(self.timeout, query)
            .await
            .unwrap_or(Err(clickhouse::error::Error::TimedOut))
    }
}

/// `'uuid','uuid',...` for an `IN` list (parsed UUIDs: nothing to escape).
fn uuid_list<'a>(ids: impl Iterator<Item = &'a Uuid>) -> String {
    let mut out = String::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "toUUID('{id}')");
    }
    out
}

fn row(c: &Checked, stored_at_ms: i64) -> SnapshotRow {
    let (event_id, track_id) = SnapshotRow::owner_columns(c.header.owner);
    SnapshotRow {
        schema_version: SnapshotRow::SCHEMA_VERSION,
        snapshot_id: c.header.id,
        event_id,
        track_id,
        edge_id: c.edge_id.clone(),
        camera_id: c.camera_id.clone(),
        captured_at: u32::try_from(c.header.captured_at.as_secs()).unwrap_or(0),
        captured_at_ms: c.header.captured_at.as_millis(),
        width: c.info.width,
        height: c.info.height,
        size: u32::try_from(c.info.len).unwrap_or(u32::MAX),
        sha256: c.header.sha256.clone(),
        stored_at_ms,
    }
}

/// Why a round stopped early.
enum Stop {
    /// Shutdown: what is unacknowledged is redelivered later.
    Cancelled,
    /// A store or ClickHouse failure: the uploads were put back.
    Failed,
}

fn messages_of(checked: &[Checked]) -> Vec<&jetstream::Message> {
    checked.iter().map(|c| &c.message).collect()
}

/// Acknowledges negatively, asking for redelivery after `delay`.
async fn put_back<'a>(messages: impl IntoIterator<Item = &'a jetstream::Message>, delay: Duration) {
    for message in messages {
        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
    }
}
