//! Where the publisher takes events from, and tells when each is safely in JetStream.
//!
//! Today the outbox is a bounded channel from the cameras ([`ChannelOutbox`]): when it is
//! full, cameras wait (backpressure, nothing dropped). The DuckDB buffer will implement the
//! same trait: `next` reads the oldest unsent row, `confirm` marks it sent.

use std::future::Future;

use sightline_shared::{DetectionEvent, EventId};
use tokio::sync::mpsc;

/// A source of events to publish.
pub trait Outbox: Send {
    /// The next event to publish, or `None` once the outbox is closed and empty.
    ///
    /// Must be cancel-safe: the publisher polls it inside `select!`, and a dropped call must
    /// not lose an event.
    fn next(&mut self) -> impl Future<Output = Option<DetectionEvent>> + Send;

    /// JetStream has acknowledged the event; it may be forgotten (or marked sent).
    fn confirm(&mut self, id: EventId) -> impl Future<Output = ()> + Send;
}

/// An outbox over a bounded in-memory channel.
#[derive(Debug)]
pub struct ChannelOutbox {
    rx: mpsc::Receiver<DetectionEvent>,
}

impl ChannelOutbox {
    /// A channel outbox holding up to `capacity` events, and the sender cameras use.
    pub fn new(capacity: usize) -> (mpsc::Sender<DetectionEvent>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self { rx })
    }

    /// Events still queued (for the shutdown report).
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

impl Outbox for ChannelOutbox {
    fn next(&mut self) -> impl Future<Output = Option<DetectionEvent>> + Send {
        self.rx.recv()
    }

    fn confirm(&mut self, _id: EventId) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
