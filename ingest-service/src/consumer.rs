//! The consume loop: fetch, decode and validate, batch by rows, bytes and time, and hand
//! batches (full, or due by time) to the [`crate::writer`], which inserts and then acknowledges.
//!
//! A crash between an INSERT and its acks redelivers the batch, and the `ReplacingMergeTree`
//! plus `LIMIT 1 BY event_id` on reads make the second copy invisible. Messages that can
//! never be stored (undecodable, invalid, on the wrong subject) go to the dead-letter stream
//! right here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use futures::StreamExt;
use sightline_runtime::now;
use sightline_shared::{Backoff, DetectionEvent, Timestamp, codec, subjects};
use tokio_util::sync::CancellationToken;

use crate::backlog::AckFloor;
use crate::config::IngestConfig;
use crate::deadletter::Cancelled;
use crate::metrics::DeadLetterReason;
use crate::schema::EventRow;
use crate::writer::{Batch, Outlet, Writer};

/// How long the flush at shutdown may take before the batches in hand are left to redelivery.
const LAST_FLUSH: Duration = Duration::from_secs(5);

/// Checks one message: content type, payload, contract, and that the event came on its own
/// camera's subject. The error is the dead-letter reason and a readable detail.
pub fn check_message(
    subject: &str,
    content_type: Option<&str>,
    payload: &[u8],
    now: Timestamp,
) -> Result<DetectionEvent, (DeadLetterReason, String)> {
    let event = codec::decode(content_type, payload)
        .map_err(|e| (DeadLetterReason::Decode, e.to_string()))?;
    event
        .validate(now)
        .map_err(|e| (DeadLetterReason::Validation, e.to_string()))?;
    match subjects::parse_event_subject(subject) {
        Some((edge, camera)) if edge == event.edge_id && camera == event.camera_id => Ok(event),
        _ => Err((
            DeadLetterReason::Subject,
            format!(
                "event of edge {:?} camera {:?} arrived on subject {subject:?}",
                event.edge_id, event.camera_id
            ),
        )),
    }
}

/// The `Content-Type` header of a message, matched case-insensitively.
pub fn content_type(message: &jetstream::Message) -> Option<&str> {
    let headers = message.headers.as_ref()?;
    if let Some(value) = headers.get(codec::CONTENT_TYPE_HEADER) {
        return Some(value.as_str());
    }
    headers
        .iter()
        .find(|(name, _): &(&async_nats::HeaderName, _)| {
            AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(codec::CONTENT_TYPE_HEADER)
        })
        .and_then(|(_, values)| values.first())
        .map(|value| value.as_str())
}

/// How long the messages in the client's buffer may have waited unread: the loop's waits
/// (hand-overs, dead-letter sends, questions to the server) since the buffer was last seen
/// empty. A wait stops counting once the loop has read as many messages as the buffer can
/// have held after it: async-nats asks for the next `fetch_batch` once half the last one is
/// read (1.5 pulls buffered), and its background task sends up to two more when pulls expire
/// while nobody reads; four pulls' worth covers both.
#[derive(Debug)]
struct Unread {
    /// Each wait counted, with the read count by which all it could have aged is read.
    waits: VecDeque<(Duration, u64)>,
    longest: Duration,
    reads: u64,
    buffer: u64,
}

impl Unread {
    fn new(fetch_batch: usize) -> Self {
        Self {
            waits: VecDeque::new(),
            longest: Duration::ZERO,
            reads: 0,
            buffer: 4 * fetch_batch as u64,
        }
    }

    /// The longest any message in the buffer may have waited unread.
    fn longest(&self) -> Duration {
        self.longest
    }

    /// The loop could not read for `time`.
    fn waited(&mut self, time: Duration) {
        self.longest += time;
        self.waits.push_back((time, self.reads + self.buffer));
    }

    /// One message read: waits whose messages have all been read stop counting.
    fn read(&mut self) {
        self.reads += 1;
        while let Some(&(time, until)) = self.waits.front() {
            if until > self.reads {
                break;
            }
            self.longest -= time;
            self.waits.pop_front();
        }
    }

    /// The buffer was seen empty.
    fn caught_up(&mut self) {
        self.waits.clear();
        self.longest = Duration::ZERO;
    }
}

/// The consume loop's state.
pub struct Consumer {
    consumer: PullConsumer,
    config: Arc<IngestConfig>,
    /// The write stage; its dead letters and metrics serve this loop too.
    writer: Writer,
    /// To declare the durable again if it is deleted under the service: where the streams
    /// live and the last ack floor read.
    js: jetstream::Context,
    ack_floor: AckFloor,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("batch", &self.config.batch)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub fn new(
        consumer: PullConsumer,
        config: Arc<IngestConfig>,
        writer: Writer,
        js: jetstream::Context,
        ack_floor: AckFloor,
    ) -> Self {
        Self {
            consumer,
            config,
            writer,
            js,
            ack_floor,
        }
    }

    /// Whether the server says the durable does not exist (not merely unreachable).
    async fn consumer_missing(consumer: &mut PullConsumer) -> bool {
        match consumer.info().await {
            Ok(_) => false,
            Err(error) => {
                tracing::debug!(%error, "consumer info");
                // Missing, as opposed to a stream gone or a server unreachable (those
                // are for the retries, and a restart, to sort out).
                error.kind() == ConsumerInfoErrorKind::NotFound
            }
        }
    }

    /// Declares the durable again after it was deleted under the service (by an operator,
    /// or lost with the server's state), instead of pulling from nothing forever. The new
    /// durable resumes just past the last ack floor read ([`crate::nats::resume_policy`]).
    /// False if `cancel` fired first.
    async fn recover_consumer(&mut self, cancel: &CancellationToken) -> bool {
        tracing::error!(consumer = %self.config.consumer.durable_name, "the durable consumer is gone; declaring it again, resuming from the last ack floor read");
        self.writer.metrics.consumer_redeclared.inc();
        let declared = crate::service::retry(
            "declare the consumer again",
            cancel,
            |_| true,
            // Boxed: a cold path that would otherwise make the loop's future large.
            || {
                Box::pin(crate::nats::declare(
                    &self.js,
                    &self.config,
                    self.ack_floor.get(),
                ))
            },
        )
        .await;
        match declared {
            Ok(Some(consumer)) => {
                self.consumer = consumer;
                true
            }
            Ok(None) | Err(_) => false,
        }
    }

    /// Runs until `cancel` fires, then hands over what it holds for one last, bounded write
    /// and returns. Messages not stored by then are simply not acknowledged: JetStream
    /// redelivers them.
    ///
    /// Every message the service holds gets an in-progress ack within the ack wait, or is
    /// let go unread, so none comes back as a second delivery while the first is still on
    /// its way to ClickHouse: a batch being filled is handed over within `batch.max_wait_ms`
    /// (at most half the ack wait) and from then on is kept alive, by the hand-over or by the
    /// writer; messages the client pulled ahead cannot be, so a pull whose buffered messages
    /// may have waited unread for a quarter of the ack wait is dropped (see [`Unread`] and
    /// [`Self::hand_over`]).
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        // One batch being written, one waiting in the writer, one filling (or waiting for
        // the writer): bounded memory, fetching overlaps with inserting, all kept alive.
        let (mut outlet, intake) = crate::writer::hand_over();
        let stop_writer = CancellationToken::new();
        let mut writing = tokio::spawn(self.writer.clone().run(intake, stop_writer.clone()));
        let mut batch = Batch::default();
        let mut reconnect = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // Set when a pull ended: how long to wait before the next, and whether the durable
        // must be declared again first.
        let mut delay: Option<Duration> = None;
        let mut redeclare = false;
        'connect: while !cancel.is_cancelled() {
            // Between pulls the loop holds nothing: a batch begun goes to the writer, which
            // keeps it alive through whatever the reconnection takes.
            if !batch.is_empty() {
                let mut no_pull = Unread::new(0);
                let handed = self.hand_over(&mut batch, &mut outlet, None, &mut no_pull, &cancel);
                if handed.await.is_err() {
                    break 'connect;
                }
            }
            if let Some(delay) = delay.take() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => break 'connect,
                }
            }
            if std::mem::take(&mut redeclare) && !self.recover_consumer(&cancel).await {
                break 'connect;
            }
            let messages = self
                .consumer
                .stream()
                .max_messages_per_batch(self.config.consumer.fetch_batch)
                .expires(Duration::from_secs(5))
                .heartbeat(Duration::from_secs(2))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "failed to start pulling messages, retrying");
                    redeclare = Self::consumer_missing(&mut self.consumer).await;
                    delay = Some(reconnect.next_delay(rand::random()));
                    continue 'connect;
                }
            };
            let mut unread = Unread::new(self.config.consumer.fetch_batch);
            loop {
                let flush_at =
                    tokio::time::Instant::from_std(batch.started + self.config.batch.max_wait());
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break 'connect,
                    () = tokio::time::sleep_until(flush_at), if !batch.is_empty() => {
                        match self.hand_over(&mut batch, &mut outlet, Some(messages), &mut unread, &cancel).await {
                            Ok(Some(pulling)) => messages = pulling,
                            Ok(None) => continue 'connect,
                            Err(Cancelled) => break 'connect,
                        }
                    }
                    next = std::future::poll_fn(|cx| {
                        let next = messages.poll_next_unpin(cx);
                        // Pending with budget left: the client's buffer is empty. (Out of
                        // budget, tokio's channels say Pending whatever they hold.)
                        if next.is_pending() && tokio::task::coop::has_budget_remaining() {
                            unread.caught_up();
                        }
                        next
                    }) => match next {
                        Some(Ok(message)) => {
                            if unread.longest() >= self.stale_after() {
                                // It may be on its way again already: let it go with the pull.
                                self.pull_dropped(unread.longest());
                                continue 'connect;
                            }
                            unread.read();
                            reconnect.reset();
                            self.writer.metrics.messages_received.inc();
                            match check_message(&message.subject, content_type(&message), &message.payload, now()) {
                                Ok(event) => {
                                    batch.push(message, EventRow::from(event));
                                    self.writer.metrics.pending_rows.set(batch.len() as i64);
                                    if batch.len() >= self.config.batch.max_rows || batch.bytes >= self.config.batch.max_bytes {
                                        match self.hand_over(&mut batch, &mut outlet, Some(messages), &mut unread, &cancel).await {
                                            Ok(Some(pulling)) => messages = pulling,
                                            Ok(None) => continue 'connect,
                                            Err(Cancelled) => break 'connect,
                                        }
                                    }
                                }
                                Err((reason, detail)) => {
                                    let sending = Instant::now();
                                    let dead_letter = self.writer.dead_letters.send(&message, reason, &detail, &cancel);
                                    let dead_letter = self.writer.keeping_alive(std::slice::from_ref(&message), sending, dead_letter);
                                    // Boxed: a cold path that would otherwise make the loop's future large.
                                    let sent = Box::pin(self.writer.keeping_alive(&batch.messages, batch.started, dead_letter)).await;
                                    unread.waited(sending.elapsed());
                                    if sent.is_err() {
                                        break 'connect;
                                    }
                                }
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "error while pulling messages");
                            let asking = Instant::now();
                            let missing = matches!(error.kind(), MessagesErrorKind::ConsumerDeleted | MessagesErrorKind::NoResponders)
                                && Box::pin(self.writer.keeping_alive(&batch.messages, batch.started, Self::consumer_missing(&mut self.consumer))).await;
                            unread.waited(asking.elapsed());
                            if missing {
                                redeclare = true;
                                continue 'connect;
                            }
                        }
                        None => {
                            tracing::warn!("message stream ended, pulling again");
                            delay = Some(reconnect.next_delay(rand::random()));
                            continue 'connect;
                        }
                    }
                }
            }
        }
        // Shutdown: hand the open batch to the writer if it has room right away, and give
        // the writer a short budget to finish (insert and acks): shutdown must not hang on a
        // dead ClickHouse or NATS.
        let rows = batch.len();
        if !batch.is_empty() && outlet.leave(std::mem::take(&mut batch)).is_err() {
            tracing::warn!(
                rows,
                "could not flush on shutdown; JetStream will redeliver"
            );
        }
        drop(outlet);
        let joined = match tokio::time::timeout(LAST_FLUSH, &mut writing).await {
            Ok(joined) => joined,
            Err(_) => {
                stop_writer.cancel();
                writing.await
            }
        };
        joined.map_err(|e| anyhow::anyhow!("the write stage failed: {e}"))?;
        self.writer.metrics.pending_rows.set(0);
        anyhow::ensure!(
            cancel.is_cancelled(),
            "the consume loop stopped unasked: the write stage is gone"
        );
        Ok(())
    }

    /// How long messages may wait unread in the client's buffer: a quarter of the ack wait,
    /// so that with up to half of it in a filling batch they still get their first
    /// in-progress ack in time, with a quarter left for reading, decoding and sending.
    fn stale_after(&self) -> Duration {
        self.writer.ack_wait / 4
    }

    fn pull_dropped(&self, unread: Duration) {
        self.writer.metrics.pulls_restarted.inc();
        tracing::info!(
            unread_ms = unread.as_millis() as u64,
            "messages pulled ahead waited unread for a quarter of the ack wait: dropping the pull; they come back once, after their ack wait"
        );
    }

    /// Passes the batch in hand to the writer, waiting while it has no room and keeping the
    /// batch's messages alive meanwhile (the writer may be retrying against a ClickHouse
    /// that is down).
    ///
    /// `pull` is the pull in progress, if any, and `unread` how long its buffered messages
    /// may have waited (grown by this wait). What the client pulled ahead gets no
    /// in-progress acks: past the ack wait JetStream would deliver it again while the first
    /// copies still sat in the client's buffer, and both would be stored. So once `unread`
    /// reaches [`Self::stale_after`] the pull is dropped: unread, those messages come back
    /// once, to the next pull, after their ack wait. Returns the pull if it is still on.
    async fn hand_over(
        &self,
        batch: &mut Batch,
        outlet: &mut Outlet,
        mut pull: Option<pull::Stream>,
        unread: &mut Unread,
        cancel: &CancellationToken,
    ) -> Result<Option<pull::Stream>, Cancelled> {
        let waiting = Instant::now();
        let before = unread.longest();
        let room = async {
            let pull_ends = tokio::time::sleep(self.stale_after().saturating_sub(before));
            tokio::pin!(pull_ends);
            loop {
                tokio::select! {
                    room = outlet.room() => return room,
                    () = cancel.cancelled() => return Err(Cancelled),
                    () = &mut pull_ends, if pull.is_some() => {
                        pull = None;
                        self.pull_dropped(before + waiting.elapsed());
                    }
                }
            }
        };
        let room = self
            .writer
            .keeping_alive(&batch.messages, batch.started, room)
            .await?;
        unread.waited(waiting.elapsed());
        self.writer.metrics.pending_rows.set(0);
        // The next batch is likely as large as this one.
        let capacity = batch.len();
        room.send(std::mem::replace(batch, Batch::with_capacity(capacity)))?;
        Ok(pull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_shared::{ContentType, Encoding, EventId, ModelInfo, SCHEMA_VERSION};

    fn event() -> DetectionEvent {
        let at = now();
        DetectionEvent {
            event_id: EventId::new_v7(at),
            schema_version: SCHEMA_VERSION,
            edge_id: "e1".into(),
            camera_id: "c1".into(),
            captured_at: at,
            frame_seq: 1,
            motion_score: 0.1,
            detections: vec![],
            model: ModelInfo {
                name: "m".into(),
                version: "1".into(),
            },
            inference_ms: 1.0,
            snapshot: None,
            description: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn waits_count_until_what_they_aged_is_read() {
        let ms = Duration::from_millis;
        let mut unread = Unread::new(2); // a buffer of 8 messages
        unread.waited(ms(100));
        for _ in 0..5 {
            unread.read();
        }
        unread.waited(ms(50));
        assert_eq!(unread.longest(), ms(150));
        for _ in 0..3 {
            unread.read();
        }
        assert_eq!(
            unread.longest(),
            ms(50),
            "the first wait's messages are all read"
        );
        unread.waited(ms(20));
        unread.caught_up();
        assert_eq!(unread.longest(), Duration::ZERO);
        unread.read();
        assert_eq!(unread.longest(), Duration::ZERO);
    }

    #[test]
    fn sorts_bad_messages_by_reason() {
        let ct = ContentType::current(Encoding::Json).to_string();
        let good = codec::encode(&event(), Encoding::Json).unwrap();
        assert!(check_message("sightline.events.e1.c1", Some(&ct), &good, now()).is_ok());
        let (reason, detail) =
            check_message("sightline.events.e1.c2", Some(&ct), &good, now()).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Subject, "{detail}");
        let (reason, _) = check_message("sightline.events.e1.c1", None, &good, now()).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Decode);
        let (reason, _) =
            check_message("sightline.events.e1.c1", Some(&ct), b"\x00garbage", now()).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Decode);
        let mut bad = event();
        bad.motion_score = 7.0;
        let bytes = codec::encode(&bad, Encoding::Json).unwrap();
        let (reason, detail) =
            check_message("sightline.events.e1.c1", Some(&ct), &bytes, now()).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Validation);
        assert!(detail.contains("motion_score"), "{detail}");
    }
}
