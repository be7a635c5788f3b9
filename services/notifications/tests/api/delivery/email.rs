//! Email deliveries to a real SMTP server (aiosmtpd).

use std::time::Duration;

use contracts::notifications::v1::DeliveryStatus;
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use testkit::smtp::SmtpServer;

use super::support::*;
use crate::helpers::*;

async fn with_smtp(db: &PgConnectOptions) -> (Setup, SmtpServer) {
    let smtp = SmtpServer::start().await;
    let mut config = config(db);
    config.delivery.smtp_url = SecretString::from(smtp.url());
    config.delivery.smtp_from = "Pulse Tests <pulse@tests.example>".into();
    (start(config, db).await, smtp)
}

#[sqlx::test(migrations = false)]
async fn a_mail_carries_the_message_and_the_delivery_id(_: PgPoolOptions, db: PgConnectOptions) {
    let (setup, smtp) = with_smtp(&db).await;
    setup.email("ops@example.com").await;
    let (order_id, _) = setup.order().await;
    let delivery = setup.settled(&order_id, DeliveryStatus::Delivered).await;
    assert_eq!(delivery.attempts, 1);
    let mails = smtp.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert!(mail.contains(&format!("Message-ID: <{}@pulse>", delivery.delivery_id)), "{mail}");
    assert!(mail.contains(&format!("Subject: order.created: order {order_id}")), "{mail}");
    assert!(
        mail.contains("From: \"Pulse Tests\" <pulse@tests.example>")
            || mail.contains("From: Pulse Tests <pulse@tests.example>"),
        "{mail}"
    );
    assert!(mail.contains("To: ops@example.com"), "{mail}");
    assert!(mail.contains(&format!("Order {order_id} for 77.50 EUR has been received")), "{mail}");
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_permanent_smtp_refusal_fails_and_a_transient_one_retries(_: PgPoolOptions, db: PgConnectOptions) {
    let (setup, smtp) = with_smtp(&db).await;
    let rejected = setup.email("reject@example.com").await;
    let (order_id, _) = setup.order().await;
    let failed = setup.settled(&order_id, DeliveryStatus::Failed).await;
    assert_eq!((failed.attempts, failed.last_status_code), (1, 550));

    let mut client = setup.client().await;
    client
        .disable_endpoint(contracts::notifications::v1::DisableEndpointRequest { endpoint_id: rejected })
        .await
        .unwrap();
    setup.email("busy@example.com").await;
    let (order_id, _) = setup.order().await;
    // 451 each time: retried on the schedule, then FAILED after the third attempt.
    let failed = setup.settled(&order_id, DeliveryStatus::Failed).await;
    assert_eq!((failed.attempts, failed.last_status_code), (3, 451));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(smtp.mails().is_empty());
    setup.app.stop().await;
}
