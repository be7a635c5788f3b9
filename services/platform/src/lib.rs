//! The service kit every Pulse service is built from: database start-up
//! (create, connect, migrate), the gRPC bootstrap (health, reflection of the
//! descriptor sets a service hands it, call metrics and request limits), the
//! run loop every service uses ([`run::Service`]), the wiring of the services
//! that consume through the inbox ([`consumer`]), command-line errors and
//! commands, TLS, the shutdown signal,
//! gRPC error details, the rule for free-text identifiers, and the values
//! Pulse's messages carry (amount, currency, customer id).

pub mod cli;
pub mod consumer;
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
