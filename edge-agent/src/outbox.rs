//! Where the publisher takes events from, and tells when each is safely in JetStream.
//!
//! The agent's outbox is the DuckDB buffer ([`crate::buffer::worker::BufferOutbox`]): `next`
//! reads unsent rows, `confirm` marks them sent. [`ChannelOutbox`] publishes a fixed set of
//! events from memory (tools and tests that drive the publisher directly).
//!
//! Events travel to the publisher already encoded: the buffer stores each event's contract
//! payload (bincode, current schema) when it commits it, and hands that payload out again
//! with the few fields routing needs, so a drain neither decodes nor re-encodes events.

use std::future::Future;

use bytes::Bytes;
use sightline_shared::codec::{self, CodecError, EventHead};
use sightline_shared::{ContentType, DetectionEvent, Encoding, Kind, Timestamp, TrackRecord};
use tokio::sync::mpsc;

use crate::metrics::{DropReason, Metrics};

/// An event to publish and its position in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The outbox's key for [`Outbox::confirm`].
    pub seq: u64,
    /// Id, edge and camera: the message id and subject.
    pub head: EventHead,
    /// What `payload` is: the current schema in bincode for every event this agent creates;
    /// an older version for rows an earlier agent buffered, published as they are.
    pub content_type: ContentType,
    /// The event, encoded as `content_type` says.
    pub payload: Bytes,
}

/// What every event this agent creates is stored as.
pub const STORED: ContentType = ContentType::current(Encoding::Bincode);
/// What every track record this agent creates is stored as.
pub const STORED_TRACK: ContentType = ContentType::current_of(Kind::Track, Encoding::Bincode);

/// Something the buffer stores and the publisher sends: an event or a track record.
pub trait Stored {
    /// Encodes it (validated) for the outbox as row `seq`.
    fn encode(&self, seq: u64) -> Result<Outgoing, CodecError>;
    /// Its message id, for logs.
    fn id(&self) -> String;
    fn camera_id(&self) -> &str;
    /// The time that files it under a day (rotation): an event's capture, a track record's
    /// last sighting.
    fn filed_at(&self) -> Timestamp;
    /// Checks it against the contract, `now` being the agent's clock.
    fn validate(&self, now: Timestamp) -> Result<(), String>;
}

impl Stored for DetectionEvent {
    fn encode(&self, seq: u64) -> Result<Outgoing, CodecError> {
        Outgoing::encode(seq, self)
    }
    fn id(&self) -> String {
        self.event_id.to_string()
    }
    fn camera_id(&self) -> &str {
        &self.camera_id
    }
    fn filed_at(&self) -> Timestamp {
        self.captured_at
    }
    fn validate(&self, now: Timestamp) -> Result<(), String> {
        DetectionEvent::validate(self, now).map_err(|e| e.to_string())
    }
}

impl Stored for TrackRecord {
    fn encode(&self, seq: u64) -> Result<Outgoing, CodecError> {
        Ok(Outgoing {
            seq,
            head: EventHead::from(self),
            content_type: STORED_TRACK,
            payload: codec::encode_track(self, Encoding::Bincode)?.into(),
        })
    }
    fn id(&self) -> String {
        self.record_id.to_string()
    }
    fn camera_id(&self) -> &str {
        &self.camera_id
    }
    fn filed_at(&self) -> Timestamp {
        self.last_seen_at
    }
    fn validate(&self, now: Timestamp) -> Result<(), String> {
        TrackRecord::validate(self, now, sightline_shared::validate::MAX_FUTURE_SKEW_MS)
            .map_err(|e| e.to_string())
    }
}

/// An event or a track record on its way into the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Event(DetectionEvent),
    Track(TrackRecord),
}

impl Message {
    fn inner(&self) -> &dyn Stored {
        match self {
            Self::Event(event) => event,
            Self::Track(record) => record,
        }
    }
}

impl Stored for Message {
    fn encode(&self, seq: u64) -> Result<Outgoing, CodecError> {
        self.inner().encode(seq)
    }
    fn id(&self) -> String {
        self.inner().id()
    }
    fn camera_id(&self) -> &str {
        self.inner().camera_id()
    }
    fn filed_at(&self) -> Timestamp {
        self.inner().filed_at()
    }
    fn validate(&self, now: Timestamp) -> Result<(), String> {
        self.inner().validate(now)
    }
}

impl Outgoing {
    /// Encodes a (validated) event for the outbox, in its own schema version (a v1 event
    /// from an older agent's day log stays v1, under the v1 content type).
    pub fn encode(seq: u64, event: &DetectionEvent) -> Result<Self, CodecError> {
        Ok(Self {
            seq,
            head: EventHead::from(event),
            content_type: ContentType::of_event(event, STORED.encoding),
            payload: codec::encode(event, Encoding::Bincode)?.into(),
        })
    }

    /// An outgoing event from a stored payload of any schema version: only its head is
    /// decoded.
    pub fn from_stored(seq: u64, content_type: &str, payload: Vec<u8>) -> Result<Self, CodecError> {
        let content_type: ContentType = content_type.parse()?;
        Ok(Self {
            seq,
            head: codec::decode_head(content_type, &payload)?,
            content_type,
            payload: payload.into(),
        })
    }

    /// Whether the payload is of the schema version of its kind this build reads whole.
    pub fn is_current(&self) -> bool {
        self.content_type.is_current()
    }

    /// The whole event, decoded (for a publisher configured for JSON, and for checks).
    pub fn event(&self) -> Result<DetectionEvent, CodecError> {
        codec::decode_as(self.content_type, &self.payload)
    }
}

/// Decodes a stored payload of the current schema (the status endpoint's recent events).
pub fn decode_stored(content_type: &str, payload: &[u8]) -> Result<DetectionEvent, CodecError> {
    codec::decode_as(content_type.parse()?, payload)
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

/// An outbox over a bounded in-memory channel. Events are validated and encoded as they are
/// taken; one that fails is dropped, counted and logged.
#[derive(Debug)]
pub struct ChannelOutbox {
    rx: mpsc::Receiver<DetectionEvent>,
    metrics: Metrics,
}

impl ChannelOutbox {
    /// A channel outbox holding up to `capacity` events, and the sender cameras use.
    pub fn new(capacity: usize, metrics: Metrics) -> (mpsc::Sender<DetectionEvent>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self { rx, metrics })
    }

    /// Events still queued (for the shutdown report).
    pub fn queued(&self) -> usize {
        self.rx.len()
    }
}

impl Outbox for ChannelOutbox {
    async fn next(&mut self) -> Option<Outgoing> {
        loop {
            let event = self.rx.recv().await?;
            let checked = event
                .validate(sightline_runtime::now())
                .map_err(|e| e.to_string())
                .and_then(|()| Outgoing::encode(0, &event).map_err(|e| e.to_string()));
            match checked {
                Ok(outgoing) => return Some(outgoing),
                Err(error) => {
                    tracing::error!(event_id = %event.event_id, camera = %event.camera_id, error, "dropping an invalid event");
                    self.metrics.dropped(DropReason::Invalid, 1);
                }
            }
        }
    }

    fn confirm(&mut self, _seq: u64) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}
