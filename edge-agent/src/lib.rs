//! The edge agent: cameras -> detection events -> DuckDB buffer -> JetStream.
//!
//! Each camera runs on its own thread ([`camera`]): frames from a [`capture`] source (V4L2,
//! files, a test pattern), [`motion`] gating, the ONNX Runtime [`detect`]or, the IoU
//! [`track`]er that turns objects into one event each, and an annotated [`snapshot`].
//! [`synthetic`] cameras make events without frames or a model, for load tests. Every event is committed to the [`buffer`] (a DuckDB file, on its own
//! thread) before it counts as created, and written to the day's logs ([`daylog`]);
//! [`publisher`] publishes from the buffer with `Nats-Msg-Id = event_id` and a bounded
//! window of in-flight publishes, and the buffer marks an event sent only after JetStream
//! acknowledged it. [`storage`] keeps the data directory inside its budget. [`status`] is the
//! local HTTP endpoint, [`heartbeat`] the periodic status to the cloud, [`uploader`] sends
//! the snapshots the upload rules chose (after their events, under a bandwidth cap), and [`agent`] wires
//! it together with clean shutdown.

mod agent;
pub mod buffer;
mod camera;
pub mod capture;
pub mod config;
pub mod daylog;
pub mod detect;
pub mod heartbeat;
pub mod metrics;
pub mod motion;
pub mod outbox;
pub mod publisher;
pub mod snapshot;
mod status;
pub mod synthetic;
pub mod track;
pub mod uploader;

pub use agent::run;
pub use buffer::storage;
pub use capture::file::pan_window;
pub use config::AgentConfig;
