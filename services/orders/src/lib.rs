//! Pulse Orders: `CreateOrder` stores an order, its `OrderCreated` event and
//! the first command of its saga in one transaction (the transactional
//! outbox), `GetOrder` reads it back, the saga ([`saga`]) drives it to
//! COMPLETED or FAILED through the participants' replies and its timers, and
//! the outbox relay, unless switched off, publishes the messages to RabbitMQ.

pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod group;
pub mod grpc;
pub mod messaging;
pub mod operator;
pub mod saga;
pub mod service;
pub mod startup;
