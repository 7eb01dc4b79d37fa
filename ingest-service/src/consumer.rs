//! The consume loop: fetch, decode and validate, batch by rows, bytes and time, and hand
//! batches (full, or due by time) to the [`crate::writer`], which inserts and then acknowledges.
//!
//! A crash between an INSERT and its acks redelivers the batch, and the `ReplacingMergeTree`
//! plus `LIMIT 1 BY event_id` on reads make the second copy invisible. Messages that can
//! never be stored (undecodable, invalid, on the wrong subject) go to the dead-letter stream
//! right here.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use futures::StreamExt;
use sightline_runtime::now;
use sightline_runtime::retry::sleep_unless_cancelled;
use sightline_shared::{Backoff, DetectionEvent, Timestamp, codec, subjects};
use sightline_store::EventRow;
use tokio_util::sync::CancellationToken;

use crate::backlog::AckFloor;
use crate::config::IngestConfig;
use crate::deadletter::{Cancelled, DeadLetters};
use crate::metrics::{DeadLetterReason, Metrics};
use crate::writer::{Batch, Outlet, Writer};

/// Checks one message: content type, payload, contract, and that the event came on its own
/// camera's subject. The error is the dead-letter reason and a readable detail.
pub fn check_message(
    subject: &str,
    content_type: Option<&str>,
    payload: &[u8],
    now: Timestamp,
    max_future_skew_ms: i64,
) -> Result<DetectionEvent, (DeadLetterReason, String)> {
    let event = codec::decode(content_type, payload)
        .map_err(|e| (DeadLetterReason::Decode, e.to_string()))?;
    event
        .validate_with_skew(now, max_future_skew_ms)
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
/// Made by whoever runs the write stage too (the service), which owns both ends of the
/// hand-over: this loop holds the [`Outlet`].
pub struct Consumer {
    pub(crate) consumer: PullConsumer,
    pub(crate) config: Arc<IngestConfig>,
    /// The way to the write stage, which takes a batch when it has room.
    pub(crate) outlet: Outlet,
    /// The write stage's interface for batches in hand: keeping their messages alive.
    pub(crate) writer: Writer,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) metrics: Metrics,
    /// To declare the durable again if it is deleted under the service: where the streams
    /// live and the last ack floor read.
    pub(crate) js: jetstream::Context,
    pub(crate) ack_floor: AckFloor,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("batch", &self.config.batch)
            .finish_non_exhaustive()
    }
}

/// What the loop does after each step.
enum Next {
    /// Go on reading this pull (boxed: it is large, and moves at every message).
    Read(Box<Pull>),
    /// Start a new pull, after `delay`, declaring the durable again first if it is gone.
    Pull {
        delay: Option<Duration>,
        redeclare: bool,
    },
    /// Shutdown, or the write stage has gone.
    Stop,
}

impl Next {
    const AGAIN: Self = Self::Pull {
        delay: None,
        redeclare: false,
    };
}

/// A pull in progress, and how long the messages in its buffer may have waited unread.
struct Pull {
    messages: pull::Stream,
    unread: Unread,
}

impl Pull {
    /// The next message, noting when the client's buffer is seen empty.
    fn next(&mut self) -> impl Future<Output = Option<Result<jetstream::Message, PullError>>> + '_ {
        std::future::poll_fn(|cx| {
            let next = self.messages.poll_next_unpin(cx);
            // Pending with budget left: the client's buffer is empty. (Out of budget,
            // tokio's channels say Pending whatever they hold.)
            if next.is_pending() && tokio::task::coop::has_budget_remaining() {
                self.unread.caught_up();
            }
            next
        })
    }
}

type PullError = async_nats::error::Error<MessagesErrorKind>;

impl Consumer {
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
        self.metrics.consumer_redeclared.inc();
        let declared = sightline_runtime::retry::retry(
            "declare the consumer again",
            cancel,
            sightline_runtime::retry::start_up_backoff(),
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

    /// Runs until `cancel` fires, then leaves the batch it holds with the write stage if it
    /// has room right away. Messages not stored by then are simply not acknowledged:
    /// JetStream redelivers them.
    ///
    /// Every message the service holds gets an in-progress ack within the ack wait, or is
    /// let go unread, so none comes back as a second delivery while the first is still on
    /// its way to ClickHouse: a batch being filled is handed over within `batch.max_wait_ms`
    /// (at most half the ack wait) and from then on is kept alive, by the hand-over or by the
    /// writer; messages the client pulled ahead cannot be, so a pull whose buffered messages
    /// may have waited unread for a quarter of the ack wait is dropped (see [`Unread`] and
    /// [`Self::hand_over`]).
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut batch = Batch::default();
        // Not `runtime::retry`: a failed pull is one state of this loop (the batch begun is
        // handed over, the durable may need declaring again), not an operation to repeat.
        let mut reconnect = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut next = Next::AGAIN;
        while !cancel.is_cancelled() {
            next = match next {
                Next::Read(pull) => self.step(pull, &mut batch, &mut reconnect, &cancel).await,
                Next::Pull { delay, redeclare } => {
                    let start =
                        self.start_pull(&mut batch, delay, redeclare, &mut reconnect, &cancel);
                    // Boxed: a cold path that would otherwise make the loop's future large.
                    Box::pin(start).await
                }
                Next::Stop => break,
            };
        }
        self.leave(batch);
    }

    /// One step of a pull: whichever comes first of shutdown, the batch falling due, and
    /// what the pull brings.
    async fn step(
        &mut self,
        mut pull: Box<Pull>,
        batch: &mut Batch,
        reconnect: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Next {
        let flush_at = tokio::time::Instant::from_std(batch.started + self.config.batch.max_wait());
        tokio::select! {
            biased;
            () = cancel.cancelled() => Next::Stop,
            () = tokio::time::sleep_until(flush_at), if !batch.is_empty() => {
                self.hand_over(batch, Some(pull), cancel).await
            }
            next = pull.next() => self.on_pulled(next, pull, batch, reconnect, cancel).await,
        }
    }

    /// Starts a new pull: between pulls the loop holds nothing (a batch begun goes to the
    /// writer, which keeps it alive through whatever the reconnection takes), then waits
    /// `delay` and declares the durable again if it is gone.
    async fn start_pull(
        &mut self,
        batch: &mut Batch,
        delay: Option<Duration>,
        redeclare: bool,
        reconnect: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Next {
        if !batch.is_empty() && matches!(self.hand_over(batch, None, cancel).await, Next::Stop) {
            return Next::Stop;
        }
        if let Some(delay) = delay
            && !sleep_unless_cancelled(delay, cancel).await
        {
            return Next::Stop;
        }
        if redeclare && !self.recover_consumer(cancel).await {
            return Next::Stop;
        }
        let messages = self
            .consumer
            .stream()
            .max_messages_per_batch(self.config.consumer.fetch_batch)
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_secs(2))
            .messages()
            .await;
        match messages {
            Ok(messages) => Next::Read(Box::new(Pull {
                messages,
                unread: Unread::new(self.config.consumer.fetch_batch),
            })),
            Err(error) => {
                tracing::warn!(%error, "failed to start pulling messages, retrying");
                Next::Pull {
                    redeclare: Self::consumer_missing(&mut self.consumer).await,
                    delay: Some(reconnect.next_delay(rand::random())),
                }
            }
        }
    }

    /// What the pull brought: a message, an error (the durable may be gone), or its end.
    async fn on_pulled(
        &mut self,
        next: Option<Result<jetstream::Message, PullError>>,
        pull: Box<Pull>,
        batch: &mut Batch,
        reconnect: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Next {
        match next {
            Some(Ok(message)) => {
                self.on_message(message, pull, batch, reconnect, cancel)
                    .await
            }
            // Boxed: a cold path that would otherwise make the loop's future large.
            Some(Err(error)) => Box::pin(self.on_pull_error(&error, pull, batch)).await,
            None => {
                tracing::warn!("message stream ended, pulling again");
                Next::Pull {
                    delay: Some(reconnect.next_delay(rand::random())),
                    redeclare: false,
                }
            }
        }
    }

    /// A message: into the batch (handed over once full), or to the dead-letter stream if it
    /// can never be stored. A message that may have waited unread too long ends the pull.
    async fn on_message(
        &mut self,
        message: jetstream::Message,
        mut pull: Box<Pull>,
        batch: &mut Batch,
        reconnect: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Next {
        if pull.unread.longest() >= self.stale_after() {
            // It may be on its way again already: let it go with the pull.
            pull_dropped(&self.metrics, pull.unread.longest());
            return Next::AGAIN;
        }
        pull.unread.read();
        reconnect.reset();
        self.metrics.messages_received.inc();
        let arrived = now();
        match check_message(
            &message.subject,
            content_type(&message),
            &message.payload,
            arrived,
            self.max_future_skew_ms(),
        ) {
            Ok(event) => {
                self.note_if_expired(&event, arrived);
                batch.push(message, EventRow::from(event));
                self.metrics.pending_rows.set(batch.len() as i64);
                let full = batch.len() >= self.config.batch.max_rows
                    || batch.bytes >= self.config.batch.max_bytes;
                if full {
                    self.hand_over(batch, Some(pull), cancel).await
                } else {
                    Next::Read(pull)
                }
            }
            Err((reason, detail)) => {
                // Boxed: a cold path that would otherwise make the loop's future large.
                let sent = Box::pin(self.dead_letter(&message, reason, &detail, batch, cancel));
                let sending = Instant::now();
                let sent = sent.await;
                pull.unread.waited(sending.elapsed());
                if sent.is_err() {
                    Next::Stop
                } else {
                    Next::Read(pull)
                }
            }
        }
    }

    /// Sends a message that can never be stored to the dead-letter stream, keeping it and the
    /// batch in hand alive meanwhile.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        reason: DeadLetterReason,
        detail: &str,
        batch: &Batch,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let sending = Instant::now();
        let sent = self.dead_letters.send(message, reason, detail, cancel);
        let sent = self
            .writer
            .keeping_alive(std::slice::from_ref(message), sending, sent);
        self.writer
            .keeping_alive(&batch.messages, batch.started, sent)
            .await
    }

    /// An error from the pull: if the durable is gone, a new pull declares it again first.
    /// Asked after a deletion notice, and after every missed heartbeat, because a deletion
    /// seen while the server was still removing the durable (its info still answered) leaves
    /// the next pull waiting on a durable that no longer exists.
    async fn on_pull_error(
        &mut self,
        error: &PullError,
        mut pull: Box<Pull>,
        batch: &Batch,
    ) -> Next {
        tracing::warn!(%error, "error while pulling messages");
        let asking = Instant::now();
        let missing = matches!(
            error.kind(),
            MessagesErrorKind::ConsumerDeleted
                | MessagesErrorKind::NoResponders
                // nats-server 2.9 answers a pull on a durable deleted meanwhile with silence,
                // not an error: the pull then only misses heartbeats.
                | MessagesErrorKind::MissingHeartbeat
        ) && self
            .writer
            .keeping_alive(
                &batch.messages,
                batch.started,
                Self::consumer_missing(&mut self.consumer),
            )
            .await;
        pull.unread.waited(asking.elapsed());
        if missing {
            Next::Pull {
                delay: None,
                redeclare: true,
            }
        } else {
            Next::Read(pull)
        }
    }

    /// At shutdown: the batch in hand goes to the writer if it has room right away, for its
    /// last, bounded flush (see [`crate::writer::finish`]); otherwise JetStream redelivers it.
    fn leave(mut self, batch: Batch) {
        let rows = batch.len();
        if !batch.is_empty() && self.outlet.leave(batch).is_err() {
            tracing::warn!(
                rows,
                "could not flush on shutdown; JetStream will redeliver"
            );
        }
    }

    fn max_future_skew_ms(&self) -> i64 {
        i64::try_from(self.config.consumer.max_future_skew_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }

    /// An event captured longer ago than the events' retention is stored (it was sent and
    /// must be acknowledged), but retention removes it soon after: counted, and logged at
    /// ERROR with its edge (the first, then every thousandth, so a long backlog does not
    /// flood the log).
    fn note_if_expired(&self, event: &DetectionEvent, arrived: Timestamp) {
        let retention_ms = i64::from(self.config.retention.events_days) * 86_400_000;
        if event.captured_at.as_millis() >= arrived.as_millis() - retention_ms {
            return;
        }
        let counter = &self.metrics.events_expired_on_arrival;
        let seen = counter.inc() + 1;
        if seen % 1000 == 1 {
            tracing::error!(
                edge = %event.edge_id,
                camera = %event.camera_id,
                event_id = %event.event_id,
                captured_at = %event.captured_at,
                events_days = self.config.retention.events_days,
                expired_so_far = seen,
                "an event older than the events' retention arrived (an edge offline that long, or its clock set back): it is stored, and retention deletes it soon after"
            );
        }
    }

    /// How long messages may wait unread in the client's buffer: a quarter of the ack wait,
    /// so that with up to half of it in a filling batch they still get their first
    /// in-progress ack in time, with a quarter left for reading, decoding and sending.
    fn stale_after(&self) -> Duration {
        Duration::from_secs(self.config.consumer.ack_wait_secs) / 4
    }

    /// Passes the batch in hand to the writer, waiting while it has no room and keeping the
    /// batch's messages alive meanwhile (the writer may be retrying against a ClickHouse
    /// that is down).
    ///
    /// `pull` is the pull in progress, if any, with how long its buffered messages may have
    /// waited (grown by this wait). What the client pulled ahead gets no in-progress acks:
    /// past the ack wait JetStream would deliver it again while the first copies still sat
    /// in the client's buffer, and both would be stored. So once they may have waited
    /// [`Self::stale_after`] the pull is dropped: unread, those messages come back once, to
    /// the next pull, after their ack wait. Next: the pull if it is still on, else a new one.
    async fn hand_over(
        &mut self,
        batch: &mut Batch,
        mut pull: Option<Box<Pull>>,
        cancel: &CancellationToken,
    ) -> Next {
        let waiting = Instant::now();
        let before = pull.as_ref().map_or(Duration::ZERO, |p| p.unread.longest());
        let stale_after = self.stale_after();
        let (outlet, metrics) = (&mut self.outlet, &self.metrics);
        let room = async {
            let pull_ends = tokio::time::sleep(stale_after.saturating_sub(before));
            tokio::pin!(pull_ends);
            loop {
                tokio::select! {
                    room = outlet.room() => return room,
                    () = cancel.cancelled() => return Err(Cancelled),
                    () = &mut pull_ends, if pull.is_some() => {
                        pull = None;
                        pull_dropped(metrics, before + waiting.elapsed());
                    }
                }
            }
        };
        let room = self
            .writer
            .keeping_alive(&batch.messages, batch.started, room)
            .await;
        let Ok(room) = room else {
            return Next::Stop;
        };
        self.metrics.pending_rows.set(0);
        // The next batch is likely as large as this one.
        let capacity = batch.len();
        if room
            .send(std::mem::replace(batch, Batch::with_capacity(capacity)))
            .is_err()
        {
            return Next::Stop;
        }
        match pull {
            Some(mut pull) => {
                pull.unread.waited(waiting.elapsed());
                Next::Read(pull)
            }
            None => Next::AGAIN,
        }
    }
}

/// A pull dropped because its buffered messages may have waited unread too long.
fn pull_dropped(metrics: &Metrics, unread: Duration) {
    metrics.pulls_restarted.inc();
    tracing::info!(
        unread_ms = unread.as_millis() as u64,
        "messages pulled ahead waited unread for a quarter of the ack wait: dropping the pull; they come back once, after their ack wait"
    );
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

    /// The default `consumer.max_future_skew_secs`, in ms.
    const SKEW: i64 = sightline_shared::validate::MAX_FUTURE_SKEW_MS;

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
        assert!(check_message("sightline.events.e1.c1", Some(&ct), &good, now(), SKEW).is_ok());
        let (reason, detail) =
            check_message("sightline.events.e1.c2", Some(&ct), &good, now(), SKEW).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Subject, "{detail}");
        let (reason, _) =
            check_message("sightline.events.e1.c1", None, &good, now(), SKEW).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Decode);
        let (reason, _) = check_message(
            "sightline.events.e1.c1",
            Some(&ct),
            b"\x00garbage",
            now(),
            SKEW,
        )
        .unwrap_err();
        assert_eq!(reason, DeadLetterReason::Decode);
        let mut bad = event();
        bad.motion_score = 7.0;
        let bytes = codec::encode(&bad, Encoding::Json).unwrap();
        let (reason, detail) =
            check_message("sightline.events.e1.c1", Some(&ct), &bytes, now(), SKEW).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Validation);
        assert!(detail.contains("motion_score"), "{detail}");
        // Ahead of ingest's clock: within the configured bound, or dead-lettered naming it.
        let mut ahead = event();
        ahead.captured_at = Timestamp::from_millis(now().as_millis() + 60_000);
        let bytes = codec::encode(&ahead, Encoding::Json).unwrap();
        assert!(check_message("sightline.events.e1.c1", Some(&ct), &bytes, now(), SKEW).is_ok());
        let (reason, detail) =
            check_message("sightline.events.e1.c1", Some(&ct), &bytes, now(), 30_000).unwrap_err();
        assert_eq!(reason, DeadLetterReason::Validation);
        assert!(detail.contains("more than 30s ahead"), "{detail}");
    }
}
