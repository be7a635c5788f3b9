//! API tests: the service runs in-process against a fresh database
//! (`#[sqlx::test]`) and the local RabbitMQ, with its own exchange and queues
//! per test; commands are published to that exchange and the replies the
//! relay publishes are read from a queue bound to the three reply keys.

mod cli;
mod commands;
mod concurrency;
mod console;
mod dead_letters;
mod faults;
mod grpc;
mod helpers;
mod idempotency;
mod process;
