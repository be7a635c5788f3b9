//! Wiring: the kit's parts ([`platform::consumer`]: database, health,
//! dead-letter console, consumer) with notifications' own API and handler,
//! handed to the kit's run loop, which serves them and stops them in order.

use contracts::notifications::v1::{
    SERVICE_NAME, delivery_service_server::DeliveryServiceServer,
    notification_service_server::NotificationServiceServer,
};
use platform::consumer::{App, Kit, Spec};

use crate::{
    config::{Config, read_admin_token},
    delivery::grpc::DeliveryApi,
    grpc::NotificationApi,
    handler::OrderEventsHandler,
};

/// Health name that follows the consumer's broker connection.
pub const CONSUMER_HEALTH_NAME: &str = "pulse.notifications.v1.Consumer";

/// Notifications to the kit (it runs no relay).
const SPEC: Spec = Spec {
    name: "notifications",
    prefix: crate::config::PREFIX,
    service_name: SERVICE_NAME,
    descriptor_set: contracts::FILE_DESCRIPTOR_SET,
    consumer_health_name: CONSUMER_HEALTH_NAME,
    relay_health_name: "",
};

/// Creates the database if needed, applies migrations, binds the gRPC port
/// and the metrics port, and prepares the consumer (unless it is disabled);
/// starts the delivery dispatcher (unless DELIVERY_ENABLED is off).
pub async fn build(config: Config) -> anyhow::Result<App> {
    let kit = Kit::start(SPEC, &config.server(), &config.inbox, crate::db::schemas()).await?;
    let admin_token = config.admin_token_file.as_deref().map(read_admin_token).transpose()?;
    let api = NotificationApi::new(kit.pool().clone());
    let delivery = &config.delivery;
    let delivery_api = DeliveryApi::new(kit.pool().clone(), delivery.secret_key.clone(), delivery.rotation_window);
    if delivery.secret_key.is_none() {
        tracing::warn!("no DELIVERY_SECRET_KEY: webhook endpoints cannot be created or have their secret rotated");
    }
    let handoff = if delivery.enabled {
        let listen_options = platform::db::connect_options(&config.database_url)?;
        Some(crate::delivery::spawn(kit.pool().clone(), listen_options, delivery.clone(), kit.registry())?)
    } else {
        None
    };
    let handler = config.consumer_enabled.then(|| OrderEventsHandler::new(handoff));
    kit.serve(None, handler, admin_token, |router| {
        router
            .add_service(
                NotificationServiceServer::new(api).max_decoding_message_size(platform::grpc::MAX_MESSAGE_BYTES),
            )
            .add_service(
                DeliveryServiceServer::new(delivery_api).max_decoding_message_size(platform::grpc::MAX_MESSAGE_BYTES),
            )
    })
    .await
}
