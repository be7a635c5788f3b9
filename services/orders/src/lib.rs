//! Pulse Orders: `CreateOrder` stores an order and its `OrderCreated` event in
//! one transaction (the transactional outbox), `GetOrder` reads it back, and the
//! outbox relay, unless switched off, publishes the events to RabbitMQ.

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod group;
pub mod grpc;
pub mod messaging;
pub mod operator;
pub mod service;
pub mod startup;
