//! End-to-end tests: the real `orders`, `notifications`, `payments` and `inventory` binaries as
//! processes against the real Postgres and RabbitMQ, each test in its own
//! RabbitMQ vhost with its own databases. Tests named `serial_*` run alone
//! (see `.config/nextest.toml`). The binaries must be built first:
//! `cargo build --workspace --bins` (build-support/scripts/test.sh does it).

mod amqps;
mod broker_outage;
mod clients;
mod cluster;
mod collector;
mod consumer;
mod crashes;
mod dashboard;
mod database_outage;
mod deliveries;
mod happy_path;
mod postgres_restart;
mod postgres_tls;
mod relay_failover;
mod saga;
mod saga_trace;
mod support;
