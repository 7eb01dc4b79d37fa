//! The ClickHouse contract, in one place: what both the ingest service (the writer) and the
//! query service (the reader) must agree on, so they cannot drift.
//!
//! * [`tables`]: the name of every table and view. No other crate writes a table's name in
//!   SQL (`store/tests/ownership.rs` checks).
//! * [`schema`]: the row types, in column order ([`EventRow`], [`HeartbeatRow`]).
//! * [`migrations`]: the versioned DDL (`store/migrations/*.sql`, checksummed), and
//!   [`setup`], which brings a server up to this build under a caller's [`SchemaLock`].
//! * [`rebuild`]: a table rebuilt into a layout ClickHouse cannot change in place (copy,
//!   swap, views), resumable after a crash.
//! * [`capabilities`]: what the server can do (TTL, deduplication tokens), detected once.
//! * [`retention`]: how long each table keeps its rows (TTL, or partition sweeps).
//! * [`error`]: what a ClickHouse error means (bad data, over limit, bad argument, schema
//!   drift, unavailable), decided once for every caller.
//! * [`insert`]: one bounded INSERT, with a deduplication token where the server has them.
//! * [`client`]: the client for a configured server.
//!
//! It depends on `shared` and the ClickHouse client only: no NATS, no Kubernetes, no HTTP
//! server.

pub mod capabilities;
pub mod error;
pub mod insert;
pub mod migrations;
pub mod rebuild;
pub mod retention;
pub mod schema;
pub mod setup;
pub mod tables;

pub use capabilities::Capabilities;
pub use error::{ErrorKind, classify};
pub use schema::{EventRow, HeartbeatRow, SnapshotRow, TrackRow, client};
pub use setup::{NoLock, SchemaLock, SetupError};
