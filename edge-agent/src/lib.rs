//! The edge agent: cameras -> detection events -> DuckDB buffer -> JetStream.
//!
//! [`synthetic`] is the first camera source (capture and inference come later and feed the
//! same buffer). Every event is committed to the [`buffer`] (a DuckDB file, on its own
//! thread) before it counts as created, and written to the day's logs ([`daylog`]);
//! [`publisher`] publishes from the buffer with `Nats-Msg-Id = event_id` and a bounded
//! window of in-flight publishes, and the buffer marks an event sent only after JetStream
//! acknowledged it. [`storage`] keeps the data directory inside its budget. [`status`] is the
//! local HTTP endpoint, [`heartbeat`] the periodic status to the cloud, and [`agent`] wires
//! it together with clean shutdown.

pub mod agent;
pub mod buffer;
pub mod config;
pub mod daylog;
pub mod heartbeat;
pub mod metrics;
pub mod outbox;
pub mod publisher;
pub mod status;
pub mod storage;
pub mod synthetic;

pub use agent::run;
pub use config::AgentConfig;
