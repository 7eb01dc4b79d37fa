//! The buffer's own OS thread: it owns the DuckDB connection, the daily logs and the storage
//! budget, so no DuckDB call or file walk ever runs on the async runtime.
//!
//! Cameras [`BufferHandle::append`] and wait until their event is committed (appends that
//! arrive together share one transaction: group commit). The publisher reads through a
//! [`BufferOutbox`]. Status, recent events and rotation are requests on the same queue.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use sightline_shared::{DetectionEvent, TrackRecord};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::storage::{self, Budget, FullPolicy, Rotation, Usage};
use super::uploads::UploadCounts;
use super::{
    Buffer, BufferError, BufferStats, Opened, PendingUpload, RecentEvent, Recovery, UploadOutcome,
    UploadRequest,
};
use crate::daylog::DayLogs;
use crate::metrics::{DropReason, Metrics, UploadDrop};
use crate::outbox::{Message, Outbox, Outgoing, Stored};

/// Most appends committed in one transaction.
const MAX_GROUP: usize = 4096;
/// A group this big pays for its transaction: it commits without waiting out the window.
const GROUP_ENOUGH: usize = 1024;
/// Acks are written back in groups of this many, or after [`ACK_FLUSH`]. Each write is a
/// `DELETE` (about half a millisecond of CPU at a steady rate); acks not yet written when
/// the agent dies are published again after the restart and deduplicated downstream.
const ACK_GROUP: usize = 1024;
const ACK_FLUSH: Duration = Duration::from_secs(1);
/// Events per page the publisher reads from the buffer.
pub const PAGE_SIZE: usize = 4096;
/// The file name of the buffer inside the data directory.
pub const BUFFER_FILE: &str = "buffer.duckdb";

/// How the worker is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub budget: Budget,
    pub check_interval: Duration,
    pub daily_logs: bool,
    /// How long the first append of a group waits for others to share its transaction
    /// (zero: it commits with whatever arrived with it). See `Worker::linger`.
    pub group_window: Duration,
}

/// Why an event was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("storage is full and the full-disk policy is reject_new")]
    Full,
    #[error("storage is full and the full-disk policy is stop: the agent is stopping")]
    Stopped,
    #[error("the event is invalid: {0}")]
    Invalid(String),
    #[error("the buffer failed: {0}")]
    Failed(String),
}

impl From<BufferError> for AppendError {
    fn from(error: BufferError) -> Self {
        match error {
            BufferError::Encode { reason, .. } => Self::Invalid(reason),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl AppendError {
    /// The drop reason to count this under.
    pub fn drop_reason(&self) -> DropReason {
        match self {
            Self::Full | Self::Stopped => DropReason::StorageFull,
            Self::Invalid(_) => DropReason::Invalid,
            Self::Failed(_) => DropReason::BufferError,
        }
    }
}

/// An append on its way to its transaction (see [`BufferHandle::submit`]): await it, or
/// ask [`Commit::try_result`] without waiting. Resolves to the row's seq once committed.
#[derive(Debug)]
#[must_use = "an append is only stored once its commit says so"]
pub struct Commit(oneshot::Receiver<Result<u64, AppendError>>);

impl Commit {
    /// The outcome if it is known (`None`: the transaction has not ended yet).
    pub fn try_result(&mut self) -> Option<Result<u64, AppendError>> {
        match self.0.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(closed())),
        }
    }
}

impl std::future::Future for Commit {
    type Output = Result<u64, AppendError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(closed())))
    }
}

fn closed() -> AppendError {
    AppendError::Failed("the buffer is closed".into())
}

/// The buffer's state for `/v1/status` and heartbeats.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BufferStatus {
    pub path: PathBuf,
    #[serde(flatten)]
    pub stats: BufferStats,
    pub file_bytes: u64,
    pub storage: Usage,
    /// The budget is used up and the policy refuses new events.
    pub full: bool,
    pub policy: FullPolicy,
    /// The snapshot upload queue.
    pub uploads: UploadCounts,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;
/// An append waiting for its transaction: the event or record, its upload, the reply.
type Appending = (
    Message,
    Option<UploadRequest>,
    oneshot::Sender<Result<u64, AppendError>>,
);
/// A page request in flight, and whether the cameras had finished when it was sent.
type PendingPage = (oneshot::Receiver<Result<Vec<Outgoing>, String>>, bool);

enum Command {
    Append(
        Box<Message>,
        Option<UploadRequest>,
        oneshot::Sender<Result<u64, AppendError>>,
    ),
    PendingUploads(usize, u64, Reply<(Vec<PendingUpload>, u64)>),
    FinishUploads(Vec<(uuid::Uuid, UploadOutcome)>),
    Page(usize, Reply<Vec<Outgoing>>),
    Sent(Vec<u64>),
    Status(Reply<BufferStatus>),
    Recent(usize, Reply<Vec<RecentEvent>>),
    Rotate(bool, Reply<Rotation>),
    ReserveTrackIds(u64, Reply<std::ops::Range<u64>>),
    Close(oneshot::Sender<()>),
}

/// The async side of the buffer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BufferHandle {
    tx: std_mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
}

/// Opens the buffer in `settings.data_dir` and starts its thread. Blocking (it opens the
/// database and runs migrations): call it from `spawn_blocking` or before the runtime is busy.
///
/// `storage_stop` is cancelled when the `stop` full-disk policy fires.
pub fn start(
    settings: Settings,
    metrics: Metrics,
    storage_stop: CancellationToken,
) -> Result<(BufferHandle, std::thread::JoinHandle<()>), BufferError> {
    let path = settings.data_dir.join(BUFFER_FILE);
    let (buffer, opened) = Buffer::open(&path)?;
    if let Opened::Recovered(recovery) = &opened {
        count_recovery(&metrics, recovery);
    }
    // What this run starts owing (recovered events included): the counters' identity.
    metrics
        .backlog_at_start
        .set(buffer.stats().map_or(0, |s| s.unsent) as i64);
    let pending_uploads = buffer.upload_counts().map_or(0, |c| c.pending) as i64;
    metrics
        .snapshot_uploads_pending_at_start
        .set(pending_uploads);
    metrics.snapshot_uploads_pending.set(pending_uploads);
    let (tx, rx) = std_mpsc::channel();
    let (committed_tx, committed) = watch::channel(0);
    let logs = DayLogs::new(&settings.data_dir);
    let mut worker = Worker {
        buffer,
        logs,
        settings,
        metrics,
        storage_stop,
        committed: committed_tx,
        full: false,
        warned: false,
        usage: Usage::default(),
        bytes_since_check: 0,
    };
    // A failure is logged inside; the next check tries again.
    let _ = worker.check(false);
    let thread = std::thread::Builder::new()
        .name("sightline-buffer".into())
        .spawn(move || worker.run(&rx))
        .map_err(|e| BufferError::Other {
            path,
            message: format!("cannot start the buffer thread: {e}"),
        })?;
    Ok((BufferHandle { tx, committed }, thread))
}

fn count_recovery(metrics: &Metrics, recovery: &Recovery) {
    metrics.buffer_recovered.inc();
    metrics
        .events_recovered
        .inc_by(recovery.salvaged + recovery.from_logs);
    metrics.events_unrecoverable.inc_by(recovery.unrecoverable);
}

impl BufferHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| "the buffer is closed".to_owned())?;
        rx.await.map_err(|_| "the buffer is closed".to_owned())?
    }

    /// Validates and commits one event; returns its seq once it is durable.
    pub async fn append(&self, event: DetectionEvent) -> Result<u64, AppendError> {
        self.submit(Message::Event(event), None).await
    }

    /// [`Self::append`], with the upload of its snapshot queued in the same transaction.
    pub async fn append_with_upload(
        &self,
        event: DetectionEvent,
        upload: Option<UploadRequest>,
    ) -> Result<u64, AppendError> {
        self.submit(Message::Event(event), upload).await
    }

    /// Validates and commits one track record, like an event (it is published the same
    /// way, on its own subject); it is not written to the day logs. `upload` queues its best
    /// frame's upload in the same transaction.
    pub async fn append_track(
        &self,
        record: TrackRecord,
        upload: Option<UploadRequest>,
    ) -> Result<u64, AppendError> {
        self.submit(Message::Track(record), upload).await
    }

    /// Hands an event or track record (and its upload) to the buffer without waiting for
    /// its commit: the returned [`Commit`] says how it went. Appends submitted close together
    /// share a transaction (see [`Settings::group_window`]); nothing is durable, and nothing
    /// may be counted as stored, before its `Commit` says so.
    pub fn submit(&self, message: Message, upload: Option<UploadRequest>) -> Commit {
        let (reply, rx) = oneshot::channel();
        match message.validate(sightline_runtime::now()) {
            Err(reason) => {
                let _ = reply.send(Err(AppendError::Invalid(reason)));
            }
            Ok(()) => {
                // A closed buffer drops the reply, which the receiver reads as closed.
                let _ = self
                    .tx
                    .send(Command::Append(Box::new(message), upload, reply));
            }
        }
        Commit(rx)
    }

    pub async fn status(&self) -> Result<BufferStatus, String> {
        self.ask(Command::Status).await
    }

    /// The newest `limit` events, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<RecentEvent>, String> {
        self.ask(|reply| Command::Recent(limit, reply)).await
    }

    /// Rotates now: at 90 % or above, or with `force` below it (see [`Budget::rotate`]).
    pub async fn rotate(&self, force: bool) -> Result<Rotation, String> {
        self.ask(|reply| Command::Rotate(force, reply)).await
    }

    /// Reserves `n` track ids, unique on this edge for good (see
    /// [`Buffer::reserve_track_ids`]).
    pub async fn reserve_track_ids(&self, n: u64) -> Result<std::ops::Range<u64>, String> {
        self.ask(|reply| Command::ReserveTrackIds(n, reply)).await
    }

    /// Up to `limit` pending snapshot uploads whose records were sent, oldest first, and
    /// the unsent rows; none while more than `max_unsent` rows are unsent.
    pub async fn pending_uploads(
        &self,
        limit: usize,
        max_unsent: u64,
    ) -> Result<(Vec<PendingUpload>, u64), String> {
        self.ask(|reply| Command::PendingUploads(limit, max_unsent, reply))
            .await
    }

    /// Records how uploads ended.
    pub fn finish_uploads(&self, outcomes: Vec<(uuid::Uuid, UploadOutcome)>) {
        let _ = self.tx.send(Command::FinishUploads(outcomes));
    }

    /// Writes back outstanding state and stops the thread.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Close(reply)).is_ok() {
            let _ = rx.await;
        }
    }

    /// An outbox over the buffer for the publisher. It ends (returns `None`) once `closed`
    /// is cancelled and nothing unsent is left.
    pub fn outbox(&self, page_size: usize, closed: CancellationToken) -> BufferOutbox {
        BufferOutbox {
            handle: self.clone(),
            page_size,
            page: VecDeque::new(),
            pending: None,
            acks: Vec::new(),
            last_flush: Instant::now(),
            closed,
            committed: self.committed.clone(),
        }
    }
}

/// The publisher's view of the buffer.
#[derive(Debug)]
pub struct BufferOutbox {
    handle: BufferHandle,
    page_size: usize,
    page: VecDeque<Outgoing>,
    /// A page request in flight, kept here so a cancelled `next` loses nothing.
    pending: Option<PendingPage>,
    acks: Vec<u64>,
    last_flush: Instant,
    closed: CancellationToken,
    committed: watch::Receiver<u64>,
}

impl BufferOutbox {
    /// Writes the collected acks back to the buffer.
    pub fn flush(&mut self) {
        if !self.acks.is_empty() {
            let acks = std::mem::take(&mut self.acks);
            let _ = self.handle.tx.send(Command::Sent(acks));
        }
        self.last_flush = Instant::now();
    }

    /// Asks the buffer thread for the next page; false if the buffer is closed.
    fn request_page(&mut self) -> bool {
        self.maybe_flush();
        // Whether the cameras had finished before this read: then an empty page means the
        // outbox is done.
        let closed = self.closed.is_cancelled();
        // Commits after this point wake the wait for new events.
        self.committed.mark_unchanged();
        let (reply, rx) = oneshot::channel();
        if self
            .handle
            .tx
            .send(Command::Page(self.page_size, reply))
            .is_err()
        {
            return false;
        }
        self.pending = Some((rx, closed));
        true
    }

    /// Writes acks back once there are enough of them or they have waited long enough
    /// (each write is a DuckDB statement; idle, the 1 s tick below flushes the rest).
    fn maybe_flush(&mut self) {
        if self.acks.len() >= ACK_GROUP || self.last_flush.elapsed() >= ACK_FLUSH {
            self.flush();
        }
    }

    async fn next_page_row(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(stored) = self.page.pop_front() {
                return Some(stored);
            }
            if self.pending.is_none() && !self.request_page() {
                return None;
            }
            let (rx, closed) = self.pending.as_mut().expect("set above");
            let result = rx.await;
            let closed = *closed;
            self.pending = None;
            match result {
                Ok(Ok(rows)) if !rows.is_empty() => {
                    self.page.extend(rows);
                    // Read ahead: the buffer thread fetches the next page while this one
                    // is published.
                    if !self.request_page() {
                        return self.page.pop_front();
                    }
                }
                Ok(Ok(_)) if closed => return None,
                Ok(Ok(_)) => {
                    // Nothing unsent: wait for the next commit (or the end, or a slow tick
                    // as a safety net).
                    tokio::select! {
                        _ = self.committed.changed() => {}
                        () = self.closed.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Ok(Err(error)) => {
                    tracing::error!(%error, "reading the buffer failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(_) => return None,
            }
        }
    }
}

impl Outbox for BufferOutbox {
    async fn next(&mut self) -> Option<Outgoing> {
        self.next_page_row().await
    }

    async fn confirm(&mut self, seq: u64) {
        self.acks.push(seq);
        self.maybe_flush();
    }
}

struct Worker {
    buffer: Buffer,
    logs: DayLogs,
    settings: Settings,
    metrics: Metrics,
    storage_stop: CancellationToken,
    committed: watch::Sender<u64>,
    full: bool,
    warned: bool,
    usage: Usage,
    bytes_since_check: u64,
}

use super::now_ms;

impl Worker {
    fn run(mut self, rx: &std_mpsc::Receiver<Command>) {
        let mut next_check = Instant::now() + self.settings.check_interval;
        loop {
            let wait = next_check.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut commands: Vec<Command> = first.into_iter().collect();
            while commands.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            self.linger(rx, &mut commands);
            let mut appends = Vec::new();
            let mut close = None;
            let mut others = Vec::new();
            for command in commands {
                match command {
                    Command::Append(event, upload, reply) => {
                        appends.push((*event, upload, reply));
                    }
                    Command::Close(reply) => close = Some(reply),
                    other => others.push(other),
                }
            }
            self.append(appends);
            for command in others {
                self.handle(command);
            }
            let growth_trigger = self.settings.budget.limit_bytes / 100;
            if let Some(reply) = close {
                self.finish();
                let _ = reply.send(());
                return;
            }
            if Instant::now() >= next_check || self.bytes_since_check >= growth_trigger {
                let _ = self.check(false);
                next_check = Instant::now() + self.settings.check_interval;
            }
            if let Some(why) = self.buffer.unusable() {
                // Never run on without a database: stop the agent, whose supervisor starts
                // it again, and the next open recovers the file if it must.
                tracing::error!(reason = why, "the buffer cannot go on; stopping the agent");
                self.storage_stop.cancel();
                break;
            }
        }
        self.finish();
    }

    /// Group commit on a timer: a transaction costs about the same for one row as for a
    /// few (its statements and the WAL's fsync), so when an append arrived, appends that
    /// follow within [`Settings::group_window`] of it join its transaction, until the group
    /// has [`GROUP_ENOUGH`] (at high rates it fills within milliseconds). Other
    /// requests (the publisher's pages and acks, status) are answered as they come, not
    /// held by the window. The cameras do not wait for their commits (they count an event
    /// once its commit reports), so a camera's next events can join; what the window costs
    /// is latency, at most the window, and events not yet committed when the power goes
    /// (they were never counted).
    fn linger(&mut self, rx: &std_mpsc::Receiver<Command>, commands: &mut Vec<Command>) {
        let window = self.settings.group_window;
        let mut appended = commands
            .iter()
            .filter(|c| matches!(c, Command::Append(..)))
            .count();
        if window.is_zero() || appended == 0 {
            return;
        }
        let deadline = Instant::now() + window;
        let mut closing = commands.iter().any(|c| matches!(c, Command::Close(_)));
        while appended < GROUP_ENOUGH && commands.len() < MAX_GROUP && !closing {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(command @ Command::Append(..)) => {
                    appended += 1;
                    commands.push(command);
                }
                Ok(command @ Command::Close(_)) => {
                    closing = true;
                    commands.push(command);
                }
                Ok(other) => self.handle(other),
                Err(_) => return,
            }
        }
    }

    /// After a failed buffer operation: a damaged database (a bad block the open did not
    /// read) is set aside and recovered in place.
    fn on_error(&mut self, error: &BufferError) {
        if !Buffer::is_damage(error) {
            return;
        }
        match self.buffer.recover_damaged(error) {
            Ok(recovery) => count_recovery(&self.metrics, &recovery),
            Err(error) => tracing::error!(%error, "recovering the damaged buffer failed"),
        }
    }

    fn finish(&mut self) {
        self.logs.close();
        if let Err(error) = self.buffer.checkpoint() {
            tracing::warn!(%error, "checkpoint on close failed (the WAL replays on the next start)");
        }
    }

    fn append(&mut self, appends: Vec<Appending>) {
        if appends.is_empty() {
            return;
        }
        if self.full {
            let error = match self.settings.budget.policy {
                FullPolicy::Stop => AppendError::Stopped,
                FullPolicy::RejectNew | FullPolicy::DropOldest => AppendError::Full,
            };
            for (event, _, reply) in appends {
                tracing::error!(id = %event.id(), camera = %event.camera_id(), storage = %self.usage.display(), "dropping a new event or track record: {error}");
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        let mut events = Vec::with_capacity(appends.len());
        let mut uploads = Vec::with_capacity(appends.len());
        let mut replies = Vec::with_capacity(appends.len());
        for (event, upload, reply) in appends {
            events.push(event);
            uploads.push(upload);
            replies.push(reply);
        }
        let now = now_ms();
        let appended = self.buffer.append_with_uploads(&events, &uploads, now);
        let outcome: Vec<Result<u64, AppendError>> = match appended {
            Err(BufferError::Encode { .. }) if events.len() > 1 => {
                // One bad event must not fail the others: store them one by one.
                events
                    .iter()
                    .zip(&uploads)
                    .map(|(e, upload)| {
                        self.buffer
                            .append_with_uploads(
                                std::slice::from_ref(e),
                                std::slice::from_ref(upload),
                                now,
                            )
                            .map(|s| s[0])
                            .map_err(AppendError::from)
                    })
                    .collect()
            }
            Err(error) => {
                // A damaged file is recovered, so the next appends can succeed.
                self.on_error(&error);
                let error = AppendError::from(error);
                events.iter().map(|_| Err(error.clone())).collect()
            }
            Ok(seqs) => {
                self.metrics.buffer_commits.inc();
                seqs.into_iter().map(Ok).collect()
            }
        };
        let mut last = None;
        for (((event, upload), reply), result) in
            events.iter().zip(&uploads).zip(replies).zip(outcome)
        {
            match result {
                Ok(seq) => {
                    last = Some(seq);
                    if upload.is_some() {
                        self.metrics.snapshot_uploads_queued.inc();
                        self.metrics.snapshot_uploads_pending.inc();
                    }
                    // Roughly what one event adds: its row, its JSON line and its text record.
                    self.bytes_since_check += 1024;
                    if let Message::Event(event) = event
                        && self.settings.daily_logs
                        && let Err(error) = self.logs.write(event)
                    {
                        self.metrics.log_write_errors.inc();
                        tracing::error!(event_id = %event.event_id, %error, "writing the daily log failed (the event is in the buffer)");
                    }
                    let _ = reply.send(Ok(seq));
                }
                Err(error) => {
                    tracing::error!(id = %event.id(), camera = %event.camera_id(), %error, "the buffer could not store an event or track record");
                    let _ = reply.send(Err(error));
                }
            }
        }
        let superseded = self.buffer.take_superseded();
        self.metrics
            .uploads_dropped(UploadDrop::Superseded, superseded);
        self.metrics
            .snapshot_uploads_pending
            .dec_by(superseded as i64);
        if let Some(seq) = last {
            self.committed.send_replace(seq);
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Page(limit, reply) => {
                let page = self.buffer.next_page(limit);
                if let Err(error) = &page {
                    self.on_error(error);
                }
                let page = page.map_err(|e| e.to_string());
                self.metrics
                    .buffer_rows_read_from_file
                    .inc_by(self.buffer.take_rows_read_from_file());
                self.metrics
                    .events_quarantined
                    .inc_by(self.buffer.take_quarantined());
                self.metrics.uploads_dropped(
                    UploadDrop::EventDropped,
                    self.buffer.take_uploads_dropped_with_events(),
                );
                let _ = reply.send(page);
            }
            Command::Sent(seqs) => {
                if let Err(error) = self.buffer.mark_sent(&seqs) {
                    // The events stay unsent and are published again after a restart;
                    // downstream deduplication absorbs the repeat.
                    tracing::error!(%error, events = seqs.len(), "marking events sent failed");
                    self.on_error(&error);
                }
            }
            Command::Status(reply) => {
                let status = self.buffer.stats().and_then(|stats| {
                    Ok(BufferStatus {
                        path: self.buffer.path().to_owned(),
                        stats,
                        file_bytes: self.buffer.file_bytes(),
                        storage: self.usage,
                        full: self.full,
                        policy: self.settings.budget.policy,
                        uploads: self.buffer.upload_counts()?,
                    })
                });
                let _ = reply.send(status.map_err(|e| e.to_string()));
            }
            Command::Recent(limit, reply) => {
                let _ = reply.send(self.buffer.recent(limit).map_err(|e| e.to_string()));
            }
            Command::Rotate(force, reply) => {
                let _ = reply.send(self.check(force).map_err(|e| e.to_string()));
            }
            Command::ReserveTrackIds(n, reply) => {
                let reserved = match self.buffer.unusable() {
                    Some(why) => Err(format!("the buffer is unusable: {why}")),
                    None => self.buffer.reserve_track_ids(n).map_err(|e| e.to_string()),
                };
                let _ = reply.send(reserved);
            }
            Command::PendingUploads(limit, max_unsent, reply) => {
                let pending = self.buffer.pending_uploads(limit, max_unsent);
                if let Err(error) = &pending {
                    self.on_error(error);
                }
                let _ = reply.send(pending.map_err(|e| e.to_string()));
            }
            Command::FinishUploads(outcomes) => {
                match self.buffer.finish_uploads(&outcomes, now_ms()) {
                    Ok(ended) => {
                        // Counted here, once, for the uploads that ended now.
                        for ((_, outcome), ended) in outcomes.iter().zip(ended) {
                            match (outcome, ended) {
                                (UploadOutcome::Uploaded { bytes }, true) => {
                                    self.metrics.snapshot_uploads.inc();
                                    self.metrics.snapshot_upload_bytes.inc_by(*bytes);
                                }
                                (UploadOutcome::Dropped { why, .. }, true) => {
                                    self.metrics.uploads_dropped(*why, 1);
                                }
                                (_, false) => {}
                            }
                        }
                    }
                    Err(error) => {
                        // They stay pending and are sent again: the cloud takes a repeat as
                        // the same snapshot.
                        tracing::error!(%error, uploads = outcomes.len(), "recording finished uploads failed");
                        self.on_error(&error);
                    }
                }
                self.update_upload_gauge();
            }
            Command::Append(..) | Command::Close(_) => unreachable!("handled in run"),
        }
    }

    /// Measures, warns, rotates, and applies the full-disk policy; updates the gauges.
    fn check(&mut self, force: bool) -> Result<Rotation, BufferError> {
        self.bytes_since_check = 0;
        let budget = self.settings.budget.clone();
        let dir = self.settings.data_dir.clone();
        let rotation = budget.rotate(&dir, &mut self.buffer, &mut self.logs, now_ms(), force);
        let rotation = match rotation {
            Ok(rotation) => rotation,
            Err(error) => {
                tracing::error!(%error, "storage rotation failed");
                self.on_error(&error);
                return Err(error);
            }
        };
        for upload in &rotation.uploads_dropped {
            tracing::error!(snapshot = %upload.snapshot_id, of = %upload.owner, camera = %upload.camera_id, path = %upload.path, "a snapshot was never uploaded: rotation deleted its day first");
        }
        self.metrics
            .uploads_dropped(UploadDrop::Rotated, rotation.uploads_dropped.len() as u64);
        if !rotation.days.is_empty() {
            self.metrics.rotations.inc();
            self.metrics.rotated_bytes.inc_by(
                rotation
                    .before
                    .used_bytes
                    .saturating_sub(rotation.after.used_bytes),
            );
        }
        let mut usage = rotation.after;
        if usage.is_full() && budget.policy == FullPolicy::DropOldest {
            usage = self.drop_oldest(usage);
        }
        self.usage = usage;
        let percent = usage.percent();
        if usage.is_full() {
            if !self.full {
                tracing::error!(storage = %usage.display(), policy = ?budget.policy, "Storage limit exceeded: {}", usage.display());
            }
            // With drop_oldest, still full here means nothing unsent was left to drop (the
            // rest is protected days' logs and snapshots, or buffer files moved aside): new
            // events are refused until rotation can free space.
            self.full = true;
            if budget.policy == FullPolicy::Stop {
                self.storage_stop.cancel();
            }
        } else {
            self.full = false;
        }
        if percent >= storage::WARN_PERCENT {
            if !self.warned {
                self.metrics.storage_warnings.inc();
                tracing::warn!(storage = %usage.display(), "Storage at {}, approaching limit", usage.display());
            }
            self.warned = true;
        } else {
            self.warned = false;
        }
        self.update_gauges();
        Ok(rotation)
    }

    /// The `drop_oldest` policy: deletes the oldest unsent events until usage is down to
    /// [`storage::DROP_TARGET_PERCENT`], logging and counting each.
    fn drop_oldest(&mut self, mut usage: Usage) -> Usage {
        let target = (usage.limit_bytes as f64 * storage::DROP_TARGET_PERCENT / 100.0) as u64;
        // Only the buffer can shrink here (the rest is protected days' logs and snapshots and
        // buffer files moved aside): if it alone is over the target, dropping events would
        // not help.
        let others = usage.used_bytes.saturating_sub(self.buffer.file_bytes());
        // A disk short by more than the whole buffer is full of other files: deleting every
        // unsent event would not give it its reserve back.
        let disk_helps = usage.disk_shortfall() < self.buffer.file_bytes();
        if usage.disk_low() && !disk_helps {
            tracing::error!(storage = %usage.display(), "the filesystem is full of files other than the buffer; dropping unsent events cannot help, refusing new events instead");
        }
        if others >= target && !(usage.disk_low() && disk_helps) {
            tracing::error!(storage = %usage.display(), "storage is full of files other than the buffer (protected days' logs and snapshots, buffer files moved aside); dropping unsent events cannot help, refusing new events instead");
            return usage;
        }
        for _ in 0..8 {
            // Down to the budget's target, and to twice the disk's reserve free.
            let disk = usage.disk_shortfall();
            let disk = if disk < self.buffer.file_bytes() {
                disk
            } else {
                0
            };
            let excess = usage.used_bytes.saturating_sub(target).max(disk);
            if excess == 0 {
                break;
            }
            let rows = self.buffer.stats().map_or(0, |s| s.rows).max(1);
            let per_row = (self.buffer.file_bytes() / rows).max(1);
            let count = excess.div_ceil(per_row).max(1);
            match self.buffer.drop_oldest_unsent(count) {
                Ok(dropped) if dropped.is_empty() => break,
                Ok(dropped) => {
                    for row in &dropped {
                        tracing::error!(event_id = %row.event_id, camera = %row.camera_id, seq = row.seq, "dropping an unpublished event: storage is full and the policy is drop_oldest");
                    }
                    self.metrics
                        .dropped(DropReason::StorageFull, dropped.len() as u64);
                    let seqs: Vec<u64> = dropped.iter().map(|row| row.seq).collect();
                    match self.buffer.drop_uploads_of(&seqs, now_ms()) {
                        Ok(n) => {
                            if n > 0 {
                                tracing::error!(
                                    uploads = n,
                                    "dropping the snapshot uploads of the dropped events"
                                );
                            }
                            self.metrics.uploads_dropped(UploadDrop::EventDropped, n);
                        }
                        Err(error) => {
                            tracing::error!(%error, "dropping the uploads of dropped events failed (they fail when their turn comes)")
                        }
                    }
                    storage::compact(&mut self.buffer);
                }
                Err(error) => {
                    tracing::error!(%error, "dropping the oldest events failed");
                    break;
                }
            }
            usage = self.settings.budget.usage(&self.settings.data_dir);
        }
        usage
    }

    fn update_upload_gauge(&self) {
        if let Ok(counts) = self.buffer.upload_counts() {
            self.metrics
                .snapshot_uploads_pending
                .set(counts.pending as i64);
        }
    }

    fn update_gauges(&self) {
        self.update_upload_gauge();
        let m = &self.metrics;
        m.storage_used_bytes.set(self.usage.used_bytes as i64);
        m.storage_limit_bytes.set(self.usage.limit_bytes as i64);
        if let Some(free) = self.usage.fs_free_bytes {
            m.storage_fs_free_bytes.set(free as i64);
        }
        if let Ok(stats) = self.buffer.stats() {
            m.buffer_rows.set(stats.rows as i64);
            m.buffer_unsent.set(stats.unsent as i64);
            let age = stats
                .oldest_unsent_ms
                .map_or(0.0, |oldest| (now_ms() - oldest).max(0) as f64 / 1000.0);
            m.backlog_age_seconds.set(age);
        }
    }
}
