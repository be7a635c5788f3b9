//! Inbox tests against the local Postgres (a fresh database per test) and
//! RabbitMQ (a fresh exchange and queue set per test, so tests run in parallel).

mod amqp;
mod batching;
mod broker;
mod dedup;
mod delivery_limit;
mod failures;
mod schema;
mod support;
