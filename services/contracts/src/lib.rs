//! Pulse's wire contracts, generated from `proto/` at build time: the gRPC
//! services of Orders, Notifications, Payments and Inventory, and the
//! versioned messages on the `pulse.events` exchange, each with its AMQP
//! `type` and routing key ([`Routed`]).
#![allow(unreachable_pub, clippy::all)]

/// Encoded `FileDescriptorSet` of every Pulse proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pulse_descriptor.bin"));

pub mod orders {
    pub mod v1 {
        tonic::include_proto!("pulse.orders.v1");
        /// Full gRPC name of the service, as health checks name it.
        pub const SERVICE_NAME: &str = "pulse.orders.v1.OrderService";
    }
}

pub mod notifications {
    pub mod v1 {
        tonic::include_proto!("pulse.notifications.v1");
        /// Full gRPC name of the service, as health checks name it.
        pub const SERVICE_NAME: &str = "pulse.notifications.v1.NotificationService";
    }
}

pub mod payments {
    pub mod v1 {
        tonic::include_proto!("pulse.payments.v1");
        /// Full gRPC name of the service, as health checks name it.
        pub const SERVICE_NAME: &str = "pulse.payments.v1.PaymentService";
    }
}

pub mod inventory {
    pub mod v1 {
        tonic::include_proto!("pulse.inventory.v1");
        /// Full gRPC name of the service, as health checks name it.
        pub const SERVICE_NAME: &str = "pulse.inventory.v1.InventoryService";
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("pulse.events.v1");
        /// AMQP `type` property of an [`OrderCreated`] message.
        pub const ORDER_CREATED_TYPE: &str = <OrderCreated as crate::Routed>::MESSAGE_TYPE;
        /// Routing key of [`OrderCreated`] on the `pulse.events` exchange.
        pub const ORDER_CREATED_ROUTING_KEY: &str = <OrderCreated as crate::Routed>::ROUTING_KEY;
    }
}

/// The exchange every Pulse event is published to.
pub const EVENTS_EXCHANGE: &str = "pulse.events";

/// A message published on the [`EVENTS_EXCHANGE`]: its AMQP `type` property
/// (the full protobuf name) and its routing key.
pub trait Routed: prost::Message + Default {
    const MESSAGE_TYPE: &'static str;
    const ROUTING_KEY: &'static str;
}

macro_rules! routed {
    ($($message:path => $type:literal, $key:literal;)*) => {
        $(impl Routed for $message {
            const MESSAGE_TYPE: &'static str = $type;
            const ROUTING_KEY: &'static str = $key;
        })*
    };
}

routed! {
    events::v1::OrderCreated => "pulse.events.v1.OrderCreated", "order.created";
    events::v1::OrderCompleted => "pulse.events.v1.OrderCompleted", "order.completed";
    events::v1::OrderFailed => "pulse.events.v1.OrderFailed", "order.failed";
    payments::v1::ProcessPayment => "pulse.payments.v1.ProcessPayment", "payment.process";
    payments::v1::RefundPayment => "pulse.payments.v1.RefundPayment", "payment.refund";
    payments::v1::PaymentProcessed => "pulse.payments.v1.PaymentProcessed", "payment.processed";
    payments::v1::PaymentDeclined => "pulse.payments.v1.PaymentDeclined", "payment.declined";
    payments::v1::PaymentRefunded => "pulse.payments.v1.PaymentRefunded", "payment.refunded";
    inventory::v1::ReserveInventory => "pulse.inventory.v1.ReserveInventory", "inventory.reserve";
    inventory::v1::ReleaseInventory => "pulse.inventory.v1.ReleaseInventory", "inventory.release";
    inventory::v1::InventoryReserved => "pulse.inventory.v1.InventoryReserved", "inventory.reserved";
    inventory::v1::InventoryReservationFailed => "pulse.inventory.v1.InventoryReservationFailed", "inventory.reservation_failed";
    inventory::v1::InventoryReleased => "pulse.inventory.v1.InventoryReleased", "inventory.released";
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every routed message's `type` is a message of the descriptor set that
    /// reflection serves, so a consumer in any language finds its schema.
    #[test]
    fn message_types_name_messages_of_the_descriptor_set() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let known: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| file.message_type.iter().map(move |m| format!("{}.{}", file.package(), m.name())))
            .collect();
        let types = [
            events::v1::OrderCreated::MESSAGE_TYPE,
            events::v1::OrderCompleted::MESSAGE_TYPE,
            events::v1::OrderFailed::MESSAGE_TYPE,
            payments::v1::ProcessPayment::MESSAGE_TYPE,
            payments::v1::RefundPayment::MESSAGE_TYPE,
            payments::v1::PaymentProcessed::MESSAGE_TYPE,
            payments::v1::PaymentDeclined::MESSAGE_TYPE,
            payments::v1::PaymentRefunded::MESSAGE_TYPE,
            inventory::v1::ReserveInventory::MESSAGE_TYPE,
            inventory::v1::ReleaseInventory::MESSAGE_TYPE,
            inventory::v1::InventoryReserved::MESSAGE_TYPE,
            inventory::v1::InventoryReservationFailed::MESSAGE_TYPE,
            inventory::v1::InventoryReleased::MESSAGE_TYPE,
        ];
        for message_type in types {
            assert!(known.iter().any(|k| k == message_type), "{message_type} is not in the descriptor set");
        }
    }
}
