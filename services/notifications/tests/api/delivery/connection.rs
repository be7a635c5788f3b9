//! The dispatcher's connections to a receiver: kept for the next delivery.

use std::{collections::HashSet, net::SocketAddr};

use contracts::notifications::v1::DeliveryStatus;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::receiver::{Reply, WebhookReceiver};

use super::support::*;

#[sqlx::test(migrations = false)]
async fn an_answer_with_a_body_leaves_its_connection_to_the_next_delivery(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let receiver = WebhookReceiver::start().await;
    // More than one read of the socket: an answer left unread would close its connection.
    receiver.default_reply(Reply::status(200).body(&"x".repeat(40_000)));
    setup.webhook(&receiver.url("/"), &[]).await;
    for _ in 0..3 {
        let (order_id, _) = setup.order().await;
        setup.settled(&order_id, DeliveryStatus::Delivered).await;
    }
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    let peers: HashSet<SocketAddr> = received.iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 1, "a connection per delivery: {peers:?}");
    setup.app.stop().await;
}
