//! The ingest service: JetStream -> ClickHouse.
//!
//! A durable pull consumer reads events from the `SIGHTLINE_EVENTS` stream, decodes and
//! validates each message, gathers valid events into batches by rows, bytes and time, writes
//! each batch to ClickHouse in one `INSERT`, and acknowledges the messages only after that
//! insert succeeded. What cannot be stored goes to the dead-letter stream with the reason.
//!
//! Stages, one file each: [`config`], [`nats`] (streams and the durable consumer) ->
//! [`consumer`] (fetch, decode, batch) -> [`writer`]
//! (insert through [`sink`], retry, bisect, then ack) and [`deadletter`]; [`heartbeats`]
//! stores the edge agents' heartbeats with a second consumer; [`migrations`] owns the ClickHouse tables,
//! [`schema`] the row type the query service reads back, [`capabilities`] what the server can
//! do, [`retention`] how long rows live (TTL or partition sweeps); [`backlog`] watches the
//! durable's position (backlog gauges, ack floor, events the stream removed before delivery);
//! [`leader`] elects the replica that runs the singleton jobs; [`service`] wires them with
//! [`http`] and [`metrics`].

pub mod backlog;
pub mod capabilities;
pub mod config;
pub mod consumer;
pub mod deadletter;
pub mod heartbeats;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod migrations;
pub mod nats;
pub mod retention;
pub mod schema;
pub mod service;
pub mod sink;
pub mod writer;

pub use config::IngestConfig;
pub use service::run;
