//! The ingest service: JetStream -> ClickHouse.
//!
//! A durable pull consumer reads events from the `SIGHTLINE_EVENTS` stream, decodes and
//! validates each message, gathers valid events into batches by rows, bytes and time, writes
//! each batch to ClickHouse in one `INSERT`, and acknowledges the messages only after that
//! insert succeeded. What cannot be stored goes to the dead-letter stream with the reason.
//!
//! Stages, one file each: [`config`], [`nats`] (streams and the durable consumer) ->
//! [`consumer`] (fetch, decode, batch) -> [`writer`]
//! (insert through [`sink`], retry, bisect, then ack) and [`deadletter`]; `side` stores
//! the edge agents' heartbeats and track records with consumers of their own; `snapshots`
//! checks snapshot uploads and keeps them in the object store; `retention` runs the
//! partition sweep on servers without TTL and the snapshot sweep on all; [`backlog`] watches the
//! durable's position (backlog gauges, ack floor, events the stream removed before delivery);
//! [`leader`] elects the replica that runs the singleton jobs; [`service`] wires them with
//! [`http`] and [`metrics`].
//!
//! The ClickHouse contract (tables, row types, migrations, capabilities, what an error
//! means) is the `sightline-store` crate's, shared with the query service.

mod backlog;
mod clock;
mod config;
pub mod consumer;
mod deadletter;
mod http;
pub mod leader;
pub mod metrics;
pub mod nats;
mod retention;
mod service;
mod side;
pub mod sink;
mod snapshots;
mod writer;

pub use config::IngestConfig;
pub use service::run;
