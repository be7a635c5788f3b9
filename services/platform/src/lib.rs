//! The service kit every Pulse service is built from: database start-up
//! (create, connect, migrate), the gRPC bootstrap (health, reflection of the
//! descriptor sets a service hands it, call metrics and request limits), the
//! run loop both services use ([`run::Service`]), command-line errors, TLS, the shutdown signal,
//! gRPC error details, the rule for free-text identifiers, and the values
//! Pulse's messages carry (amount, currency, customer id).

pub mod cli;
pub mod db;
pub mod errors;
pub mod grpc;
pub mod health;
pub mod rpc;
pub mod run;
pub mod serve;
pub mod shutdown;
pub mod text;
pub mod tls;
pub mod values;
