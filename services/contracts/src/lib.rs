//! Pulse's wire contracts, generated from `proto/` at build time: the gRPC
//! services of Orders and Notifications and the versioned event messages.
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

pub mod events {
    pub mod v1 {
        tonic::include_proto!("pulse.events.v1");
        /// AMQP `type` property of an [`OrderCreated`] message.
        pub const ORDER_CREATED_TYPE: &str = "pulse.events.v1.OrderCreated";
        /// Routing key of [`OrderCreated`] on the `pulse.events` exchange.
        pub const ORDER_CREATED_ROUTING_KEY: &str = "order.created";
    }
}

/// The exchange every Pulse event is published to.
pub const EVENTS_EXCHANGE: &str = "pulse.events";
