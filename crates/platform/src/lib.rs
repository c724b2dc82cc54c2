//! orderflow's shared plumbing, one module per concern. Services hold the business rules; everything
//! that talks to NATS, owns a transaction boundary or speaks HTTP conventions lives here, so the
//! delivery guarantees are written (and reviewed) once.

pub mod access;
pub mod backoff;
pub mod config;
pub mod consumer;
pub mod db;
pub mod health;
pub mod http;
pub mod nats;
pub mod outbox;
pub mod retention;
pub mod schema;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use shutdown::Shutdown;
