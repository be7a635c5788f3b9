//! DeliveryService calls: each RPC, bad input (named, nothing written), and
//! the secret shown once and stored encrypted.

use contracts::notifications::v1::{
    CreateEndpointRequest, DeliveryStatus, DisableEndpointRequest, EnableEndpointRequest, EndpointKind,
    ListDeliveriesRequest, ListEndpointsRequest, RecoverEndpointRequest, RetryDeliveryRequest,
    RotateEndpointSecretRequest,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use super::support::*;
use crate::helpers::*;

fn fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    details.bad_request().expect("a BadRequest").field_violations.iter().map(|v| v.field.clone()).collect()
}

async fn endpoints_in(pool: &sqlx::PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM delivery_endpoints").await
}

#[sqlx::test(migrations = false)]
async fn a_webhook_secret_is_shown_once_and_stored_encrypted(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let (endpoint_id, secret) = setup.webhook("https://hooks.example.com/pulse", &["order.created"]).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret FROM delivery_endpoints WHERE endpoint_id = $1")
        .bind(Uuid::parse_str(&endpoint_id).unwrap())
        .fetch_one(&setup.pool)
        .await
        .unwrap();
    let key_part = secret.trim_start_matches("whsec_").as_bytes();
    assert!(!stored.windows(key_part.len()).any(|w| w == key_part), "the secret is stored in clear");
    let listed = setup.client().await.list_endpoints(ListEndpointsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.endpoints.len(), 1);
    let endpoint = &listed.endpoints[0];
    assert_eq!((endpoint.kind, endpoint.enabled), (EndpointKind::Webhook as i32, true));
    assert_eq!(
        (endpoint.url.as_str(), endpoint.event_types.as_slice()),
        ("https://hooks.example.com/pulse", &["order.created".to_owned()][..])
    );
    assert_eq!(endpoint.description, "test receiver");
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn bad_endpoints_are_refused_by_field_and_nothing_is_written(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let mut client = setup.client().await;
    let cases: Vec<(CreateEndpointRequest, &[&str])> = vec![
        (CreateEndpointRequest::default(), &["kind"]),
        (
            CreateEndpointRequest { kind: EndpointKind::Webhook as i32, url: "not a url".into(), ..Default::default() },
            &["url"],
        ),
        (
            CreateEndpointRequest {
                kind: EndpointKind::Webhook as i32,
                url: "ftp://example.com/x".into(),
                ..Default::default()
            },
            &["url"],
        ),
        (
            CreateEndpointRequest {
                kind: EndpointKind::Email as i32,
                email_address: "nobody".into(),
                ..Default::default()
            },
            &["email_address"],
        ),
        (
            CreateEndpointRequest {
                kind: EndpointKind::Webhook as i32,
                url: "https://example.com".into(),
                event_types: vec!["order.shipped".into()],
                description: "d".repeat(257),
                ..Default::default()
            },
            &["event_types", "description"],
        ),
    ];
    for (request, want) in cases {
        let status = client.create_endpoint(request.clone()).await.unwrap_err();
        assert_eq!(fields(&status), want, "{request:?}");
    }
    for id in ["", "42"] {
        let status = client.disable_endpoint(DisableEndpointRequest { endpoint_id: id.into() }).await.unwrap_err();
        assert_eq!(fields(&status), ["endpoint_id"]);
        let status = client.retry_delivery(RetryDeliveryRequest { delivery_id: id.into() }).await.unwrap_err();
        assert_eq!(fields(&status), ["delivery_id"]);
    }
    let status = client.list_deliveries(ListDeliveriesRequest::default()).await.unwrap_err();
    assert_eq!(fields(&status), ["order_id"]);
    let both = ListDeliveriesRequest {
        order_id: Uuid::new_v4().to_string(),
        endpoint_id: Uuid::new_v4().to_string(),
        page_token: "nope".into(),
        ..Default::default()
    };
    assert_eq!(fields(&client.list_deliveries(both).await.unwrap_err()), ["endpoint_id", "page_token"]);
    let status = client.list_endpoints(ListEndpointsRequest { page_size: -1, ..Default::default() }).await.unwrap_err();
    assert_eq!(fields(&status), ["page_size"]);
    assert_eq!(endpoints_in(&setup.pool).await, 0);
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn without_a_secret_key_webhooks_cannot_be_created(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = config(&db);
    config.delivery.secret_key = None;
    let setup = start(config, &db).await;
    let mut client = setup.client().await;
    let request = CreateEndpointRequest {
        kind: EndpointKind::Webhook as i32,
        url: "https://example.com/hook".into(),
        ..Default::default()
    };
    let status = client.create_endpoint(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("DELIVERY_SECRET_KEY"), "{}", status.message());
    assert_eq!(endpoints_in(&setup.pool).await, 0);
    // Email needs no secret.
    setup.email("ops@example.com").await;
    assert_eq!(endpoints_in(&setup.pool).await, 1);
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn endpoints_page_disable_enable_and_rotate(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let mut client = setup.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(setup.webhook(&format!("https://example.com/{i}"), &[]).await.0);
    }
    let email = setup.email("ops@example.com").await;
    ids.push(email.clone());
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_endpoints(ListEndpointsRequest { page_size: 4, page_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.endpoints.into_iter().map(|e| e.endpoint_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);

    let disabled = client.disable_endpoint(DisableEndpointRequest { endpoint_id: ids[0].clone() }).await.unwrap();
    let disabled = disabled.into_inner().endpoint.unwrap();
    assert_eq!((disabled.enabled, disabled.disabled_reason.as_str()), (false, "disabled by request"));
    let enabled = client.enable_endpoint(EnableEndpointRequest { endpoint_id: ids[0].clone() }).await.unwrap();
    let enabled = enabled.into_inner().endpoint.unwrap();
    assert_eq!((enabled.enabled, enabled.disabled_reason.as_str()), (true, ""));
    let unknown = Uuid::new_v4().to_string();
    let status = client.enable_endpoint(EnableEndpointRequest { endpoint_id: unknown.clone() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let rotated = client
        .rotate_endpoint_secret(RotateEndpointSecretRequest { endpoint_id: ids[0].clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.secret.starts_with("whsec_"));
    let expires = rotated.previous_expires_at.unwrap().seconds - chrono::Utc::now().timestamp();
    assert!((23 * 3600..=24 * 3600 + 5).contains(&expires), "{expires}");
    let status = client.rotate_endpoint_secret(RotateEndpointSecretRequest { endpoint_id: email }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = client.rotate_endpoint_secret(RotateEndpointSecretRequest { endpoint_id: unknown }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    setup.app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn retry_and_recover_need_failed_deliveries(_: PgPoolOptions, db: PgConnectOptions) {
    let setup = start(config(&db), &db).await;
    let mut client = setup.client().await;
    let receiver = testkit::receiver::WebhookReceiver::start().await;
    let (endpoint_id, _) = setup.webhook(&receiver.url("/hook"), &[]).await;
    let (order_id, _) = setup.order().await;
    let delivered = setup.settled(&order_id, DeliveryStatus::Delivered).await;
    let status =
        client.retry_delivery(RetryDeliveryRequest { delivery_id: delivered.delivery_id.clone() }).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("DELIVERED"), "{}", status.message());
    let status =
        client.retry_delivery(RetryDeliveryRequest { delivery_id: Uuid::new_v4().to_string() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let recovered = client
        .recover_endpoint(RecoverEndpointRequest { endpoint_id: endpoint_id.clone(), since: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recovered.retried, 0);
    let status = client
        .recover_endpoint(RecoverEndpointRequest { endpoint_id: Uuid::new_v4().to_string(), since: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Filtered by status, by endpoint.
    let request = ListDeliveriesRequest { endpoint_id, status: DeliveryStatus::Failed as i32, ..Default::default() };
    assert!(client.list_deliveries(request).await.unwrap().into_inner().deliveries.is_empty());
    assert_eq!(receiver.received().len(), 1);
    setup.app.stop().await;
}
