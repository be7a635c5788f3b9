//! Wiring: the kit's parts ([`platform::consumer`]: database, health,
//! dead-letter console, command consumer, outbox relay) with payments' own
//! API and handler, handed to the kit's run loop, which serves them and stops them in order.

use contracts::payments::v1::{SERVICE_NAME, payment_service_server::PaymentServiceServer};
use platform::consumer::{App, Kit, Spec};

use crate::{config::Config, grpc::PaymentApi, handler::CommandHandler};

/// Health name that follows the command consumer's broker connection.
pub const CONSUMER_HEALTH_NAME: &str = "pulse.payments.v1.Consumer";

/// Health name of the outbox relay: NOT_SERVING while it cannot reach the broker.
pub const RELAY_HEALTH_NAME: &str = "pulse.payments.v1.OutboxRelay";

/// Payments to the kit.
const SPEC: Spec = Spec {
    name: "payments",
    prefix: crate::config::PREFIX,
    service_name: SERVICE_NAME,
    descriptor_set: contracts::FILE_DESCRIPTOR_SET,
    consumer_health_name: CONSUMER_HEALTH_NAME,
    relay_health_name: RELAY_HEALTH_NAME,
};

/// Creates the database if needed, applies the migrations, binds the gRPC
/// and metrics ports, and prepares the consumer and the relay.
pub async fn build(config: Config) -> anyhow::Result<App> {
    let kit = Kit::start(SPEC, &config.server, &config.inbox, crate::db::schemas()).await?;
    let handler = CommandHandler::new(
        config.inbox.exchange.clone(),
        config.default_credit,
        config.relay.notify_channel.clone(),
        kit.registry(),
    );
    let api = PaymentApi::new(kit.pool().clone(), config.default_credit);
    kit.serve(Some(&config.relay), Some(handler), config.admin_token.clone(), |router| {
        router.add_service(PaymentServiceServer::new(api).max_decoding_message_size(platform::grpc::MAX_MESSAGE_BYTES))
    })
    .await
}
