//! The query service: Sightline's HTTP API over ClickHouse.
//!
//! [`params`] turns query strings into typed filters (every mistake is a 400 naming the
//! parameter), [`store`] runs parameterized SQL against the tables the ingest service owns,
//! [`api`] holds the routes and maps errors to status codes in one place, and [`service`]
//! runs the server with graceful shutdown.

pub mod api;
pub mod config;
pub mod metrics;
pub mod params;
pub mod service;
pub mod store;

pub use config::QueryConfig;
pub use service::run;
