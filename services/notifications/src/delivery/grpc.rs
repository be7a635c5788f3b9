//! `pulse.notifications.v1.DeliveryService`: endpoints and deliveries, proto in, rows out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use contracts::notifications::v1::{
    CreateEndpointRequest, CreateEndpointResponse, Delivery as DeliveryProto, DeliveryStatus, DisableEndpointRequest,
    DisableEndpointResponse, EnableEndpointRequest, EnableEndpointResponse, Endpoint as EndpointProto, EndpointKind,
    ListDeliveriesRequest, ListDeliveriesResponse, ListEndpointsRequest, ListEndpointsResponse, RecoverEndpointRequest,
    RecoverEndpointResponse, RetryDeliveryRequest, RetryDeliveryResponse, RotateEndpointSecretRequest,
    RotateEndpointSecretResponse, delivery_service_server::DeliveryService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::{
    db::{self, Kind, Owner},
    page::{self, Page},
    secret::{self, SecretKey},
    validate,
};
use crate::error::{FieldViolation, NotificationsError};

/// The reason DisableEndpoint records.
const DISABLED_BY_REQUEST: &str = "disabled by request";

pub(crate) struct DeliveryApi {
    pool: PgPool,
    secret_key: Option<SecretKey>,
    rotation_window: Duration,
}

impl DeliveryApi {
    pub(crate) fn new(pool: PgPool, secret_key: Option<SecretKey>, rotation_window: Duration) -> Self {
        Self { pool, secret_key, rotation_window }
    }

    fn key(&self) -> Result<&SecretKey, NotificationsError> {
        self.secret_key.as_ref().ok_or_else(|| {
            NotificationsError::FailedPrecondition(
                "webhook secrets cannot be stored: set DELIVERY_SECRET_KEY (or DELIVERY_SECRET_KEY_FILE) to base64 of 32 random bytes".into(),
            )
        })
    }
}

type Answer<T> = Result<Response<T>, Status>;

fn answer<T>(result: Result<T, NotificationsError>) -> Answer<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl DeliveryService for DeliveryApi {
    async fn create_endpoint(&self, request: Request<CreateEndpointRequest>) -> Answer<CreateEndpointResponse> {
        answer(self.create(request.into_inner()).await)
    }

    async fn list_endpoints(&self, request: Request<ListEndpointsRequest>) -> Answer<ListEndpointsResponse> {
        answer(self.list_endpoints(request.into_inner()).await)
    }

    async fn disable_endpoint(&self, request: Request<DisableEndpointRequest>) -> Answer<DisableEndpointResponse> {
        let endpoint = self.set_enabled(&request.into_inner().endpoint_id, false).await;
        answer(endpoint.map(|endpoint| DisableEndpointResponse { endpoint: Some(endpoint) }))
    }

    async fn enable_endpoint(&self, request: Request<EnableEndpointRequest>) -> Answer<EnableEndpointResponse> {
        let endpoint = self.set_enabled(&request.into_inner().endpoint_id, true).await;
        answer(endpoint.map(|endpoint| EnableEndpointResponse { endpoint: Some(endpoint) }))
    }

    async fn rotate_endpoint_secret(
        &self,
        request: Request<RotateEndpointSecretRequest>,
    ) -> Answer<RotateEndpointSecretResponse> {
        answer(self.rotate(&request.into_inner().endpoint_id).await)
    }

    async fn list_deliveries(&self, request: Request<ListDeliveriesRequest>) -> Answer<ListDeliveriesResponse> {
        answer(self.list_deliveries(request.into_inner()).await)
    }

    async fn retry_delivery(&self, request: Request<RetryDeliveryRequest>) -> Answer<RetryDeliveryResponse> {
        answer(self.retry(&request.into_inner().delivery_id).await)
    }

    async fn recover_endpoint(&self, request: Request<RecoverEndpointRequest>) -> Answer<RecoverEndpointResponse> {
        answer(self.recover(request.into_inner()).await)
    }
}

impl DeliveryApi {
    async fn create(&self, body: CreateEndpointRequest) -> Result<CreateEndpointResponse, NotificationsError> {
        let valid = validate::new_endpoint(&body)?;
        let secret = match valid.kind {
            Kind::Webhook => Some(secret::generate()),
            Kind::Email => None,
        };
        let sealed_secret = match &secret {
            Some(secret) => Some(self.key()?.encrypt(secret)),
            None => None,
        };
        let endpoint = db::insert_endpoint(&self.pool, &db::NewEndpoint { sealed_secret, ..valid }).await?;
        tracing::info!(endpoint_id = %endpoint.endpoint_id, kind = %endpoint.kind, "delivery endpoint created");
        Ok(CreateEndpointResponse { endpoint: Some(endpoint_proto(endpoint)), secret: secret.unwrap_or_default() })
    }

    async fn list_endpoints(&self, body: ListEndpointsRequest) -> Result<ListEndpointsResponse, NotificationsError> {
        let Page { size, after } = page::parse(body.page_size, &body.page_token, page::Scope::Endpoints)
            .map_err(NotificationsError::InvalidArgument)?;
        let mut rows = db::page_endpoints(&self.pool, after, i64::from(size) + 1).await?;
        let next_page_token = page::next(&mut rows, size, page::Scope::Endpoints, |e| (e.created_at, e.endpoint_id));
        Ok(ListEndpointsResponse { endpoints: rows.into_iter().map(endpoint_proto).collect(), next_page_token })
    }

    async fn set_enabled(&self, raw_id: &str, enabled: bool) -> Result<EndpointProto, NotificationsError> {
        let endpoint_id = validate::id("endpoint_id", raw_id)?;
        let endpoint = db::set_enabled(&self.pool, endpoint_id, enabled, DISABLED_BY_REQUEST)
            .await?
            .ok_or(NotificationsError::NotFound("endpoint"))?;
        tracing::info!(%endpoint_id, enabled, "delivery endpoint {}", if enabled { "enabled" } else { "disabled" });
        Ok(endpoint_proto(endpoint))
    }

    async fn rotate(&self, raw_id: &str) -> Result<RotateEndpointSecretResponse, NotificationsError> {
        let endpoint_id = validate::id("endpoint_id", raw_id)?;
        let key = self.key()?;
        let secret = secret::generate();
        match db::rotate_secret(&self.pool, endpoint_id, &key.encrypt(&secret), self.rotation_window).await? {
            db::Rotated::Done(endpoint, expires_at) => {
                tracing::info!(%endpoint_id, previous_expires_at = %expires_at, "webhook secret rotated");
                Ok(RotateEndpointSecretResponse {
                    endpoint: Some(endpoint_proto(endpoint)),
                    secret,
                    previous_expires_at: Some(timestamp(expires_at)),
                })
            }
            db::Rotated::NotWebhook => {
                Err(NotificationsError::FailedPrecondition("only a webhook endpoint has a secret to rotate".into()))
            }
            db::Rotated::NotFound => Err(NotificationsError::NotFound("endpoint")),
        }
    }

    async fn list_deliveries(&self, body: ListDeliveriesRequest) -> Result<ListDeliveriesResponse, NotificationsError> {
        let mut violations = Vec::new();
        let (order, endpoint) = (body.order_id.trim(), body.endpoint_id.trim());
        let owner = match (order.is_empty(), endpoint.is_empty()) {
            (false, true) => validate::uuid("order_id", order).map(Owner::Order),
            (true, false) => validate::uuid("endpoint_id", endpoint).map(Owner::Endpoint),
            (true, true) => Err(FieldViolation::new("order_id", "give one of order_id and endpoint_id")),
            (false, false) => Err(FieldViolation::new("endpoint_id", "give only one of order_id and endpoint_id")),
        }
        .map_err(|violation| violations.push(violation))
        .ok();
        let status = match DeliveryStatus::try_from(body.status) {
            Ok(DeliveryStatus::Unspecified) => None,
            Ok(status) => Some(status_name(status)),
            Err(_) => {
                violations.push(FieldViolation::new("status", format!("{} is not a DeliveryStatus", body.status)));
                None
            }
        };
        let scope = page::Scope::Deliveries { owner, status };
        let page = page::parse(body.page_size, &body.page_token, scope).map_err(|v| violations.extend(v)).ok();
        let (Some(owner), Some(Page { size, after }), true) = (owner, page, violations.is_empty()) else {
            return Err(NotificationsError::InvalidArgument(violations));
        };
        let mut rows = db::page_deliveries(&self.pool, owner, status, after, i64::from(size) + 1).await?;
        let next_page_token = page::next(&mut rows, size, scope, |d| (d.created_at, d.delivery_id));
        Ok(ListDeliveriesResponse { deliveries: rows.into_iter().map(delivery_proto).collect(), next_page_token })
    }

    async fn retry(&self, raw_id: &str) -> Result<RetryDeliveryResponse, NotificationsError> {
        let delivery_id = validate::id("delivery_id", raw_id)?;
        match db::retry_delivery(&self.pool, delivery_id).await? {
            db::Retried::Done(delivery) => {
                tracing::info!(%delivery_id, "delivery retried by request");
                Ok(RetryDeliveryResponse { delivery: Some(delivery_proto(delivery)) })
            }
            db::Retried::NotFailed(status) => Err(NotificationsError::FailedPrecondition(format!(
                "only a FAILED delivery can be retried; this one is {}",
                status.to_uppercase()
            ))),
            db::Retried::NotFound => Err(NotificationsError::NotFound("delivery")),
        }
    }

    async fn recover(&self, body: RecoverEndpointRequest) -> Result<RecoverEndpointResponse, NotificationsError> {
        let endpoint_id = validate::id("endpoint_id", &body.endpoint_id)?;
        let since = match body.since {
            None => None,
            Some(t) => Some(DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32).ok_or_else(|| {
                NotificationsError::InvalidArgument(vec![FieldViolation::new("since", "is not a valid time")])
            })?),
        };
        let retried = db::recover_endpoint(&self.pool, endpoint_id, since)
            .await?
            .ok_or(NotificationsError::NotFound("endpoint"))?;
        tracing::info!(%endpoint_id, retried, "failed deliveries of the endpoint retried by request");
        Ok(RecoverEndpointResponse { retried: retried as u32 })
    }
}

pub(crate) fn status_name(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Failed => "failed",
        DeliveryStatus::Pending | DeliveryStatus::Unspecified => "pending",
    }
}

fn status_of(name: &str) -> DeliveryStatus {
    match name {
        "delivered" => DeliveryStatus::Delivered,
        "failed" => DeliveryStatus::Failed,
        _ => DeliveryStatus::Pending,
    }
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn endpoint_proto(row: db::Endpoint) -> EndpointProto {
    EndpointProto {
        endpoint_id: row.endpoint_id.to_string(),
        kind: match Kind::parse(&row.kind) {
            Kind::Webhook => EndpointKind::Webhook,
            Kind::Email => EndpointKind::Email,
        } as i32,
        url: row.url.unwrap_or_default(),
        email_address: row.email_address.unwrap_or_default(),
        event_types: row.event_types,
        enabled: row.enabled,
        description: row.description,
        created_at: Some(timestamp(row.created_at)),
        disabled_reason: row.disabled_reason,
    }
}

fn delivery_proto(row: db::Delivery) -> DeliveryProto {
    let status = status_of(&row.status);
    DeliveryProto {
        delivery_id: row.delivery_id.to_string(),
        endpoint_id: row.endpoint_id.to_string(),
        notification_id: row.notification_id.to_string(),
        order_id: row.order_id.to_string(),
        event_type: row.event_type,
        status: status as i32,
        attempts: row.attempts.max(0) as u32,
        last_error: row.last_error,
        last_status_code: row.last_status_code.max(0) as u32,
        next_attempt_at: (status == DeliveryStatus::Pending).then(|| timestamp(row.next_attempt_at)),
        delivered_at: row.delivered_at.map(timestamp),
        created_at: Some(timestamp(row.created_at)),
    }
}
