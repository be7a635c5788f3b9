//! Pulse Payments: the payment step of the order saga. Customers have a
//! credit per currency; `ProcessPayment` commands capture an order's amount
//! from it (or are declined) and `RefundPayment` commands give it back (or
//! cancel a payment not made yet), each consumed exactly once through the
//! [`inbox`] and answered through the [`outbox`] in the same transaction.
//! `pulse.payments.v1.PaymentService` sets and reads credit and reads payments.
//!
//! [`build`] prepares everything and binds the ports; [`App::run_until_stopped`]
//! runs until the shutdown token fires. Health names: `""` and
//! `pulse.payments.v1.PaymentService` follow the database,
//! [`CONSUMER_HEALTH_NAME`] the consumer's broker connection,
//! [`RELAY_HEALTH_NAME`] the relay's.

mod commands;
pub mod config;
mod db;
mod error;
mod grpc;
mod handler;
mod metrics;
pub mod money;
mod replies;
mod startup;

pub use config::{Config, queue_name};
pub use db::migrate;
pub use handler::{Command, CommandHandler};
pub use platform::consumer::App;
pub use startup::{CONSUMER_HEALTH_NAME, RELAY_HEALTH_NAME, build};
