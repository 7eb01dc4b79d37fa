//! Where the publisher takes events from, and tells when each is safely in JetStream.
//!
//! The agent's outbox is the DuckDB buffer ([`crate::buffer::worker::BufferOutbox`]): `next`
//! reads unsent rows, `confirm` marks them sent. [`ChannelOutbox`] publishes a fixed set of
//! events from memory (tools and tests that drive the publisher directly).

use std::future::Future;

use sightline_shared::DetectionEvent;
use tokio::sync::mpsc;

/// An event to publish and its position in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The outbox's key for [`Outbox::confirm`].
    pub seq: u64,
    pub event: DetectionEvent,
}

/// A source of events to publish.
pub trait Outbox: Send {
    /// The next event to publish, or `None` once the outbox is closed and empty.
    ///
    /// Must be cancel-safe: the publisher polls it inside `select!`, and a dropped call must
    /// not lose an event.
    fn next(&mut self) -> impl Future<Output = Option<Outgoing>> + Send;

    /// JetStream has acknowledged the event; it may be forgotten (or marked sent).
    fn confirm(&mut self, seq: u64) -> impl Future<Output = ()> + Send;
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
    async fn next(&mut self) -> Option<Outgoing> {
        let event = self.rx.recv().await?;
        Some(Outgoing { seq: 0, event })
    }

    fn confirm(&mut self, _seq: u64) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
