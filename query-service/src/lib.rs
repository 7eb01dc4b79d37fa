//! The query service: Sightline's HTTP API over ClickHouse.
//!
//! [`params`] turns query strings into typed requests from one table of parameter specs
//! (every mistake is a 400 naming the parameter), [`store`] runs parameterized SQL against
//! the tables the ingest service owns, [`export`] streams NDJSON and CSV, [`replay`]
//! republishes history to NATS, [`auth`] checks bearer tokens, [`openapi`] describes it all
//! from the same specs, [`api`] holds the routes and maps errors to status codes in one
//! place, and [`service`] runs the server with graceful shutdown.

pub mod api;
pub mod auth;
pub mod config;
pub mod export;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod replay;
pub mod service;
pub mod store;

pub use config::QueryConfig;
pub use service::run;
