//! Orders API tests: the real service in-process against the real Postgres
//! and RabbitMQ, driven through a generated gRPC client (and grpcurl).

mod cli;
mod config;
mod create;
mod group;
mod grpcurl;
mod health;
mod helpers;
mod limits;
mod lines;
mod metrics;
mod outbox_status;
mod relay;
mod resource;
mod restart;
mod saga;
mod secrets;
mod tls;
mod upgrade;
