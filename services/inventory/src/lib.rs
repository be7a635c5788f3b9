//! Pulse Inventory: stock per sku, and the stock step of the order saga.
//!
//! * `pulse.inventory.v1.InventoryService` (on `INVENTORY_GRPC_ADDR`) sets and
//!   reads stock and reads an order's reservation.
//! * ReserveInventory and ReleaseInventory arrive on one queue
//!   (`<prefix>.inventory.commands`) through the [`inbox`]: each is applied
//!   exactly once, and its reply (InventoryReserved,
//!   InventoryReservationFailed, InventoryReleased) is written to the
//!   [`outbox`] in the same transaction; the relay in this process publishes it.
//! * A reservation holds every line of an order or none, and an order has at
//!   most one: a command is idempotent by order as well as by event id, and a
//!   release that arrives before its reservation makes the reservation fail.
//!
//! [`build`] prepares everything and binds the ports; [`App::run_until_stopped`]
//! runs until the shutdown token fires. Health names: `""` and
//! `pulse.inventory.v1.InventoryService` follow the database,
//! [`CONSUMER_HEALTH_NAME`] the consumer's broker connection,
//! [`RELAY_HEALTH_NAME`] the relay's, `liveness` only the process.

pub mod config;
mod db;
pub mod domain;
mod error;
mod grpc;
mod handler;
mod replies;
mod saga;
mod startup;

pub use config::{Config, queue_name};
pub use db::migrate;
pub use handler::{Command, CommandHandler};
pub use platform::consumer::App;
pub use startup::{CONSUMER_HEALTH_NAME, RELAY_HEALTH_NAME, build};
