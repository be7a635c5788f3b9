//! API tests: the service runs in-process against a fresh database
//! (`#[sqlx::test]`) and the local RabbitMQ, with its own exchange and queues
//! per test; commands are published as the Orders saga would publish them and
//! the replies read from a queue of the test's own.

mod admin;
mod binary;
mod cli;
mod commands;
mod concurrency;
mod credit;
mod faults;
mod helpers;
