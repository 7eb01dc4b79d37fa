//! The edge agent: cameras -> detection events -> outbox -> JetStream.
//!
//! [`synthetic`] is the first camera source (capture and inference come later and feed the
//! same channel); every event goes through an [`outbox::Outbox`], today a bounded channel and
//! later the DuckDB buffer, and [`publisher`] publishes from it in order with `Nats-Msg-Id =
//! event_id`, a bounded window of in-flight publishes, and confirmation back to the outbox
//! only after JetStream acknowledged. [`agent`] wires it together with clean shutdown.

pub mod agent;
pub mod config;
pub mod metrics;
pub mod outbox;
pub mod publisher;
pub mod synthetic;

pub use agent::run;
pub use config::AgentConfig;
