//! The plumbing every Pulse service shares: environment configuration,
//! telemetry, the shutdown signal, database creation and migration, the gRPC
//! bootstrap (health and reflection), correlation ids and retry backoff.

pub mod backoff;
pub mod config;
pub mod correlation;
pub mod db;
pub mod grpc;
pub mod shutdown;
pub mod telemetry;
pub mod tracecontext;
