//! Pulse Notifications: consumes `pulse.events.v1.OrderCreated` through the
//! [`inbox`] (one notification per event, exactly once, retry tiers and a
//! dead-letter queue) and serves them through
//! `pulse.notifications.v1.NotificationService/ListNotifications`; delivers
//! them to webhook endpoints and email addresses ([`delivery`], managed
//! through `pulse.notifications.v1.DeliveryService`).
//!
//! [`build`] prepares everything and binds the port; [`App::run_until_stopped`]
//! runs until the shutdown token fires. Health names: `""` and
//! `pulse.notifications.v1.NotificationService` follow the database,
//! [`CONSUMER_HEALTH_NAME`] follows the consumer's broker connection,
//! `liveness` only the process.

pub mod config;
mod db;
pub mod delivery;
pub mod dlq;
mod dlq_channel;
mod error;
mod grpc;
mod handler;
mod startup;

pub use config::{ADMIN_TOKEN_FILE, Config, queue_name, read_admin_token};
pub use db::migrate;
pub use handler::{OrderEvent, OrderEventsHandler, routing_keys};
pub use platform::consumer::App;
pub use startup::{CONSUMER_HEALTH_NAME, build};
