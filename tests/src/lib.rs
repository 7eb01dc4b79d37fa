//! Test fixtures: real NATS and ClickHouse server processes (Debian's or the modern
//! generation, [`Servers`]) on free loopback ports with their own temporary data
//! directories, stopped (killed) on drop, plus a [`Stack`] that runs the ingest and query
//! services against them in-process through the same `run` functions their binaries call.

pub mod data;
pub mod fixtures;
pub mod stack;

pub use fixtures::{ClickHouseServer, NatsServer, Servers};
pub use stack::Stack;
