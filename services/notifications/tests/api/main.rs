//! API tests: the service runs in-process against a fresh database
//! (`#[sqlx::test]`) and the local RabbitMQ, with its own exchange and queues
//! per test, and is driven through its generated gRPC client.

mod admin_tls;
mod cli;
mod config;
mod consumer;
mod delivery;
mod dlq;
mod faults;
mod helpers;
mod list;
mod metrics;
mod secrets;
mod throughput;
mod upgrade;
