//! The plumbing every Pulse service shares: environment configuration,
//! telemetry and the JSON log format, the shutdown signal, database creation
//! and migration, the gRPC bootstrap (health, reflection, call metrics),
//! Prometheus metrics, broker addresses (a cluster's nodes), correlation ids, retry backoff and arrival rates, the
//! rule for free-text identifiers, and the values Pulse's messages carry
//! (amount, currency, customer id).

pub mod amqp;
pub mod backoff;
pub mod config;
pub mod correlation;
pub mod db;
pub mod errors;
pub mod grpc;
pub mod lane;
pub mod logformat;
pub mod metrics;
pub mod rate;
pub mod shutdown;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod tracecontext;
pub mod values;
