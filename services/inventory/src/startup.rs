//! Wiring: the kit's parts ([`platform::consumer`]: database, health,
//! dead-letter console, command consumer, outbox relay of the replies) with
//! inventory's own API and handler, handed to the kit's run loop, which
//! serves them and stops them in order.

use contracts::inventory::v1::{SERVICE_NAME, inventory_service_server::InventoryServiceServer};
use platform::consumer::{App, Kit, Spec, read_admin_token};

use crate::{
    config::{ADMIN_TOKEN_FILE, Config},
    grpc::InventoryApi,
    handler::CommandHandler,
};

/// Health name that follows the consumer's broker connection.
pub const CONSUMER_HEALTH_NAME: &str = "pulse.inventory.v1.Consumer";

/// Health name of the outbox relay: NOT_SERVING while it cannot reach the broker.
pub const RELAY_HEALTH_NAME: &str = "pulse.inventory.v1.OutboxRelay";

/// Inventory to the kit.
const SPEC: Spec = Spec {
    name: "inventory",
    prefix: crate::config::PREFIX,
    service_name: SERVICE_NAME,
    descriptor_set: contracts::FILE_DESCRIPTOR_SET,
    consumer_health_name: CONSUMER_HEALTH_NAME,
    relay_health_name: RELAY_HEALTH_NAME,
};

/// Creates the database if needed, applies the schemas, binds the gRPC port
/// and the metrics port, and prepares the consumer and the relay.
pub async fn build(config: Config) -> anyhow::Result<App> {
    let kit = Kit::start(SPEC, &config.server, &config.inbox, crate::db::schemas()).await?;
    let handler = CommandHandler::new(&config.inbox.exchange, config.relay.notify_channel.clone(), kit.registry());
    let admin_token = config.admin_token_file.as_deref().map(|path| read_admin_token(ADMIN_TOKEN_FILE, path));
    let api = InventoryApi::new(kit.pool().clone());
    kit.serve(Some(&config.relay), Some(handler), admin_token.transpose()?, |router| {
        router
            .add_service(InventoryServiceServer::new(api).max_decoding_message_size(platform::grpc::MAX_MESSAGE_BYTES))
    })
    .await
}
