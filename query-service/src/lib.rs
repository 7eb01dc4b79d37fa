//! The query service: Sightline's HTTP API over ClickHouse.
//!
//! [`params`] turns query strings into typed requests ([`model`]) from one table of
//! parameter specs (every mistake is a 400 naming the parameter), [`store`] runs
//! parameterized SQL for them against the tables of the `sightline-store` contract, [`export`] streams NDJSON and CSV, [`replay`]
//! republishes history to NATS, `snapshots` serves pictures from the snapshot store, [`fleet`]
//! is the edges as their heartbeats show them, [`auth`] checks bearer tokens, [`openapi`] describes it all
//! from the same specs, [`api`] holds the routes and maps errors to status codes in one
//! place, and [`service`] runs the server with graceful shutdown.

mod api;
mod auth;
mod config;
mod console;
pub mod export;
pub mod fleet;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod params;
mod replay;
mod service;
mod snapshots;
pub mod store;

pub use config::{AuthConfig, ClientConfig, QueryConfig, ReplayConfig, Scope};
pub use service::run;
