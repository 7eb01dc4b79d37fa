//! The Sightline event contract, shared by every service.
//!
//! * [`event`]: the detection event (schema v2, and the v1 layout it still reads) and its
//!   parts.
//! * [`validate`]: the rules an event must satisfy before anyone stores it.
//! * [`codec`]: the versioned wire format (bincode by default, JSON as the alternative),
//!   selected by a `Content-Type` header that also names the schema version.
//! * [`track`]: the track record (schema v1): one object's visit to one camera.
//! * [`heartbeat`]: the edge agent's periodic status message (JSON).
//! * [`subjects`]: NATS subject and JetStream stream names.
//! * [`zone`]: named polygons over a camera's frame, and which of them hold an object.
//! * [`clock`]: the cloud's clock answer, and the edge's offset from it.
//! * [`snapshot`]: the headers a snapshot upload carries, and what the snapshot shows.
//! * [`jpeg`]: checking that a snapshot is a whole JPEG of the size and SHA-256 it claims.
//! * [`config`]: the config error and validation trait, TOML parsing, and the connection
//!   sections that more than one service reads from its config file.
//!
//! Architecture invariant: this crate holds types and pure functions only. It has no tokio,
//! no sockets, no ClickHouse and no DuckDB; anything that does I/O lives in a service crate.
//! The current time is always a parameter, never read here.

pub mod backoff;
pub mod clock;
pub mod codec;
pub mod config;
pub mod event;
pub mod heartbeat;
pub mod jpeg;
pub mod snapshot;
pub mod subjects;
pub mod timestamp;
pub mod track;
pub mod validate;
pub mod zone;

pub use backoff::Backoff;
pub use codec::{CodecError, ContentType, Encoding, Kind};
pub use event::{BoundingBox, Detection, DetectionEvent, EventId, ModelInfo, SCHEMA_VERSION};
pub use timestamp::Timestamp;
pub use track::{TrackKey, TrackRecord};
pub use validate::ValidationError;
