//! The dead-letter console mounted beside the API, and the health names.

use contracts::{Routed, payments::v1::RefundPayment};
use inbox::admin::v1::{
    DeadLetterFilter, GetDeadLetterRequest, ListDeadLettersRequest, dead_letter_service_client::DeadLetterServiceClient,
};
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::helpers::*;

const TOKEN: &str = "payments-admin-token";

fn authorized<T>(body: T) -> Request<T> {
    let mut request = Request::new(body);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

#[sqlx::test(migrations = false)]
async fn the_console_shows_a_refused_command_to_the_token_holder(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db));
    config.admin_token = Some(SecretString::from(TOKEN));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let broker = Broker::connect(&topology).await;
    let mut bad = refund_payment("not-an-order");
    bad.correlation_id = "corr-console".into();
    broker.refund(&bad).await;

    let mut console = DeadLetterServiceClient::connect(format!("http://{}", app.addr)).await.unwrap();
    let list = || ListDeadLettersRequest {
        filter: Some(DeadLetterFilter::default()),
        page_size: 10,
        page_token: String::new(),
    };
    let refused = console.list_dead_letters(Request::new(list())).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut listed = Vec::new();
    for _ in 0..250 {
        listed = console.list_dead_letters(authorized(list())).await.unwrap().into_inner().dead_letters;
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 1);
    let letter = &listed[0];
    assert_eq!(
        (letter.reason.as_str(), letter.message_type.as_str()),
        ("validation_failed", RefundPayment::MESSAGE_TYPE)
    );
    assert_eq!(letter.correlation_id, "corr-console");
    let shown = console.get_dead_letter(authorized(GetDeadLetterRequest { id: letter.id.clone() })).await.unwrap();
    let payload = shown.into_inner().payload_json;
    assert!(payload.contains("not-an-order"), "{payload}");
    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn every_health_name_serves_once_the_parts_are_up(_: PgPoolOptions, db: PgConnectOptions) {
    let config = test_config(&database_url(&db));
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for name in ["", "pulse.payments.v1.PaymentService", payments::CONSUMER_HEALTH_NAME, payments::RELAY_HEALTH_NAME] {
        let health = &mut health;
        let mut serving = false;
        for _ in 0..250 {
            let status =
                health.check(HealthCheckRequest { service: name.to_owned() }).await.unwrap().into_inner().status;
            if status == ServingStatus::Serving as i32 {
                serving = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(serving, "{name:?} never became SERVING");
    }
    app.stop().await;
    delete_topology(&topology).await;
}
