//! The write stage: one batch at a time, INSERT then ack.
//!
//! The consume loop hands a batch (full, or due) to the writer when the writer has room for it
//! ([`hand_over`]): the one it writes and one waiting, both kept alive, so fetching and
//! decoding overlaps with inserting, and no batch waits between the two where nobody keeps
//! it alive. Per batch: the INSERT succeeds, then every message is acknowledged. While a transient failure is retried the
//! messages are kept alive with in-progress acks so JetStream does not hand them to another
//! replica. A permanent failure bisects the batch until the bad rows are alone, and those go
//! to the dead-letter stream. In-progress acks go out on a timer for as long as the batch is
//! in hand (a slow INSERT, retries, a bisection), three times per ack wait.
//!
//! Before ClickHouse's word that rows are bad is believed, the `events` table's columns are
//! compared with those at start-up: if someone changed the table under the service (a column
//! type altered or a column dropped by hand), every row would look bad, and emptying the stream into the
//! dead-letter stream is the wrong answer. Then the batch is retried like any transient
//! failure, with an ERROR naming the difference, until the table is put back.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use sightline_runtime::retry::sleep_unless_cancelled;
use sightline_shared::Backoff;
use sightline_store::EventRow;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::deadletter::{Cancelled, DeadLetters};
use crate::metrics::{DeadLetterReason, Metrics};
use crate::sink::{InsertError, Sink};

/// How long a look at the `events` table's columns is trusted during one batch.
const TABLE_CHECK_VALID: Duration = Duration::from_secs(5);

/// Messages waiting for their batch's INSERT, and their rows, index for index.
#[derive(Debug)]
pub(crate) struct Batch {
    pub messages: Vec<jetstream::Message>,
    pub rows: Vec<EventRow>,
    pub bytes: usize,
    /// When its first message came: in-progress acks are timed from here, wherever the
    /// batch waits.
    pub started: Instant,
}

impl Default for Batch {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Batch {
    /// An empty batch with room for `rows` (growing a batch of 50,000 messages step by step
    /// costs copies and page faults a benchmark can see).
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            messages: Vec::with_capacity(rows),
            rows: Vec::with_capacity(rows),
            bytes: 0,
            started: Instant::now(),
        }
    }

    /// Adds a message and its row.
    pub(crate) fn push(&mut self, message: jetstream::Message, row: EventRow) {
        if self.is_empty() {
            self.started = Instant::now();
        }
        self.bytes += message.payload.len();
        self.rows.push(row);
        self.messages.push(message);
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The way from the consume loop to the writer: a batch passes only when the writer has room
/// to take it into its own hands (to write it, or to hold it, kept alive, while it writes
/// the one before). A batch queued between them would get no in-progress acks from either
/// side, and with ClickHouse down for longer than the ack wait JetStream would deliver its
/// messages a second time while the first copies still waited: stored twice, and counted
/// twice by the rollups for good.
///
/// The writer asks for each batch with a one-shot channel and asks again only once it came,
/// so there is never more than one batch's room on offer.
pub(crate) fn hand_over() -> (Outlet, Intake) {
    let (requests, asked) = mpsc::channel(1);
    (
        Outlet { asked },
        Intake {
            requests,
            waiting: None,
        },
    )
}

/// The consume loop's end of [`hand_over`].
#[derive(Debug)]
pub(crate) struct Outlet {
    /// The writer's open request for a batch, while it has room.
    asked: mpsc::Receiver<oneshot::Sender<Batch>>,
}

/// Room in the writer for one batch.
#[derive(Debug)]
pub(crate) struct Room(oneshot::Sender<Batch>);

impl Room {
    /// Passes `batch` to the writer; an error if the writer has gone.
    pub(crate) fn send(self, batch: Batch) -> Result<(), Cancelled> {
        self.0.send(batch).map_err(|_| Cancelled)
    }
}

impl Outlet {
    /// Waits until the writer has room for a batch; an error if it is gone.
    pub(crate) async fn room(&mut self) -> Result<Room, Cancelled> {
        self.asked.recv().await.map(Room).ok_or(Cancelled)
    }

    /// At shutdown: passes `batch` to the writer if it has room right now; gives it back
    /// otherwise.
    pub(crate) fn leave(&mut self, batch: Batch) -> Result<(), Batch> {
        match self.asked.try_recv() {
            Ok(room) => room.send(batch),
            Err(_) => Err(batch),
        }
    }
}

/// The writer's end of [`hand_over`].
#[derive(Debug)]
pub(crate) struct Intake {
    requests: mpsc::Sender<oneshot::Sender<Batch>>,
    /// The request made and not answered yet.
    waiting: Option<oneshot::Receiver<Batch>>,
}

impl Intake {
    /// Offers room for one batch and waits for it; `None` once the consume loop has gone.
    /// Dropped before the batch came, the offer stands, and the next call waits for the
    /// same batch.
    async fn recv(&mut self) -> Option<Batch> {
        if self.waiting.is_none() {
            let (room, answer) = oneshot::channel();
            // Never waits: the one request at a time fits the channel.
            self.requests.send(room).await.ok()?;
            self.waiting = Some(answer);
        }
        let batch = self.waiting.as_mut()?.await.ok();
        self.waiting = None;
        batch
    }
}

/// How long the write stage may take, once the consume loop has gone, to store what it
/// holds before the batches in hand are left to redelivery.
pub(crate) const LAST_FLUSH: Duration = Duration::from_secs(5);

/// Waits for the writer task `writing` to store what it holds after the consume loop has
/// gone, for at most `budget`; then stops it with `stop` (the batches in hand go back to
/// JetStream unacknowledged): shutdown must not hang on a dead ClickHouse or NATS.
pub(crate) async fn finish(
    mut writing: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    budget: Duration,
) -> anyhow::Result<()> {
    let joined = match tokio::time::timeout(budget, &mut writing).await {
        Ok(joined) => joined,
        Err(_) => {
            stop.cancel();
            writing.await
        }
    };
    joined.map_err(|e| anyhow::anyhow!("the write stage failed: {e}"))
}

/// Inserts and acknowledges batches.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub sink: Sink,
    pub dead_letters: DeadLetters,
    pub metrics: Metrics,
    /// JetStream's ack wait; in-progress acks go out three times per wait while a batch is
    /// in hand.
    pub ack_wait: Duration,
    /// The `events` table's columns when the service started ([`Sink::columns`]).
    pub columns: Arc<Vec<(String, String)>>,
}

impl Writer {
    /// Writes batches from `intake` until the consume loop has gone, or until `stop` fires
    /// (then the batches in hand, the one written and the next, are dropped unacknowledged,
    /// and JetStream redelivers them).
    pub(crate) async fn run(self, mut intake: Intake, stop: CancellationToken) {
        // The batch taken while the one before it was written, kept alive meanwhile.
        let mut next: Option<Batch> = None;
        loop {
            let mut batch = match next.take() {
                Some(batch) => batch,
                None => match intake.recv().await {
                    Some(batch) => batch,
                    None => return,
                },
            };
            let rows = batch.len();
            // Once the consume loop has gone, `recv` says so at once: nothing more to take.
            let take_next = async {
                if let Some(waiting) = intake.recv().await {
                    let waiting = next.insert(waiting);
                    let forever = std::future::pending::<()>();
                    self.keeping_alive(&waiting.messages, waiting.started, forever)
                        .await;
                }
                std::future::pending::<std::convert::Infallible>().await
            };
            let stored = tokio::select! {
                result = self.flush(&mut batch, &stop) => result.is_ok(),
                never = take_next => match never {},
                () = stop.cancelled() => false,
            };
            if !stored {
                let rows = rows + next.as_ref().map_or(0, Batch::len);
                tracing::warn!(
                    rows,
                    "batches not stored before shutdown; JetStream will redeliver them"
                );
                return;
            }
        }
    }

    /// Stores and acknowledges every message of `batch` (emptying it), keeping the messages
    /// alive meanwhile.
    async fn flush(&self, batch: &mut Batch, cancel: &CancellationToken) -> Result<(), Cancelled> {
        let Batch {
            messages,
            rows,
            started,
            ..
        } = std::mem::take(batch);
        self.keeping_alive(&messages, started, self.store(&messages, &rows, cancel))
            .await
    }

    /// Runs `work` while sending in-progress acks for `messages` three times per ack wait,
    /// so JetStream does not redeliver them meanwhile. The first round is due a third of the
    /// wait after `since` (when the first of them came), or at once if that has passed: a
    /// batch changing hands after that gets a round from its new keeper right away, even if
    /// the last one sent one a moment before (a round more, never a gap).
    pub(crate) async fn keeping_alive<T>(
        &self,
        messages: &[jetstream::Message],
        since: Instant,
        work: impl Future<Output = T>,
    ) -> T {
        if messages.is_empty() {
            return work.await;
        }
        let every = self.ack_wait / 3;
        let first = tokio::time::Instant::from_std(since + every).max(tokio::time::Instant::now());
        let mut ticker = tokio::time::interval_at(first, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = ticker.tick() => {
                    self.metrics.keep_alives.inc();
                    // With NATS down the acks cannot even be queued; the work (which may
                    // be waiting for shutdown) must not wait behind them.
                    tokio::select! {
                        () = self.keep_alive(messages) => {}
                        out = &mut work => return out,
                    }
                }
            }
        }
    }

    /// Inserts `rows` and acknowledges their `messages`, bisecting around rows ClickHouse
    /// rejects and retrying transient failures until `cancel` fires.
    async fn store(
        &self,
        messages: &[jetstream::Message],
        rows: &[EventRow],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let mut ranges = vec![(0, rows.len())];
        // Not `runtime::retry`: each range's outcome (store, retry, bisect, dead-letter)
        // changes the work left, so the loop is over ranges; only the wait is shared.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        // Once the table is found as it was, a bisection does not ask again at every step,
        // only when the last look is older than a few seconds.
        let mut table_seen_unchanged: Option<Instant> = None;
        while let Some((lo, hi)) = ranges.pop() {
            let result = self.sink.insert(&rows[lo..hi]).await;
            // Rows the server calls bad while the table is not what it was: the table's fault.
            let drifted = matches!(result, Err(InsertError::Permanent { .. }))
                && self.table_drifted(&mut table_seen_unchanged).await;
            match result {
                Ok(()) => {
                    backoff.reset();
                    self.ack(&messages[lo..hi]).await;
                }
                Err(error) if drifted || matches!(error, InsertError::Transient(_)) => {
                    self.metrics.insert_retries.inc();
                    ranges.push((lo, hi));
                    let delay = backoff.next_delay(rand::random());
                    let retry_in_ms = delay.as_millis() as u64;
                    if drifted {
                        tracing::error!(%error, rows = hi - lo, retry_in_ms, "ClickHouse rejected rows, but the events table is not what it was at start-up: retrying instead of dead-lettering");
                    } else {
                        tracing::warn!(%error, rows = hi - lo, retry_in_ms, "insert failed, retrying");
                    }
                    if !sleep_unless_cancelled(delay, cancel).await {
                        return Err(Cancelled);
                    }
                }
                Err(InsertError::Permanent { code, source }) if hi - lo > 1 => {
                    let mid = lo + (hi - lo) / 2;
                    tracing::warn!(code, error = %source, rows = hi - lo, "ClickHouse rejected a batch, bisecting");
                    ranges.push((mid, hi));
                    ranges.push((lo, mid));
                }
                Err(error) => {
                    let detail = error.to_string();
                    self.dead_letters
                        .send(&messages[lo], DeadLetterReason::Insert, &detail, cancel)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Whether the `events` table changed since start-up, asking ClickHouse only when
    /// `seen_unchanged` (when it was last found unchanged) is older than
    /// [`TABLE_CHECK_VALID`].
    async fn table_drifted(&self, seen_unchanged: &mut Option<Instant>) -> bool {
        if seen_unchanged.is_some_and(|at| at.elapsed() <= TABLE_CHECK_VALID) {
            return false;
        }
        let unchanged = self.table_unchanged().await;
        *seen_unchanged = unchanged.then(Instant::now);
        !unchanged
    }

    /// Whether the `events` table still has every column it had at start-up, of the same
    /// type (logged when not; columns added since, such as an operator's MATERIALIZED
    /// column, are fine). A failure to read them counts as changed: rows are dead-lettered
    /// only when the table is known to be as expected.
    async fn table_unchanged(&self) -> bool {
        match self.sink.columns().await {
            Ok(now) => {
                let changed: Vec<String> = self
                    .columns
                    .iter()
                    .filter(|c| !now.contains(c))
                    .map(|(name, kind)| {
                        let found = now.iter().find(|(n, _)| n == name);
                        format!("{name} {kind} -> {}", found.map_or("(gone)", |(_, k)| k))
                    })
                    .collect();
                if changed.is_empty() {
                    return true;
                }
                tracing::error!(
                    ?changed,
                    "columns of the events table changed since start-up"
                );
                false
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the events table's columns");
                false
            }
        }
    }

    async fn ack(&self, messages: &[jetstream::Message]) {
        for message in messages {
            match message.ack().await {
                Ok(()) => {
                    self.metrics.messages_acked.inc();
                }
                Err(error) => {
                    // Stored already; a redelivery is deduplicated downstream.
                    tracing::warn!(%error, "failed to ack a stored message");
                    self.metrics.ack_errors.inc();
                }
            }
        }
    }

    /// Tells JetStream the batch is still being worked on, so it is not redelivered.
    async fn keep_alive(&self, messages: &[jetstream::Message]) {
        for message in messages {
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(%error, "failed to send an in-progress ack");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_passes_only_when_the_writer_has_room() {
        let short = Duration::from_millis(50);
        let (mut outlet, mut intake) = hand_over();
        assert!(
            tokio::time::timeout(short, outlet.room()).await.is_err(),
            "room before the writer offered it"
        );
        // An offer dropped before its batch came still stands, once.
        assert!(tokio::time::timeout(short, intake.recv()).await.is_err());
        assert!(tokio::time::timeout(short, intake.recv()).await.is_err());
        let room = outlet.room().await.unwrap();
        assert!(
            tokio::time::timeout(short, outlet.room()).await.is_err(),
            "room for two batches"
        );
        room.send(Batch::with_capacity(7)).unwrap();
        assert!(intake.recv().await.is_some());
        assert!(
            outlet.leave(Batch::default()).is_err(),
            "room again before the writer offered it"
        );
        drop(intake);
        assert!(outlet.room().await.is_err(), "the writer is gone");
    }
}
