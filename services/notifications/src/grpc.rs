//! `pulse.notifications.v1.NotificationService`: proto in, rows out.

use contracts::notifications::v1::{
    ListNotificationsRequest, ListNotificationsResponse, Notification as NotificationProto,
    notification_service_server::NotificationService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    db::{self, Notification},
    error::{FieldViolation, NotificationsError},
};

pub(crate) struct NotificationApi {
    pool: PgPool,
}

impl NotificationApi {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        // The call's span and correlation id are the RPC layer's (platform::rpc).
        let body = request.into_inner();
        let response = self.list(&body).await.map_err(Status::from)?;
        Ok(Response::new(response))
    }
}

impl NotificationApi {
    async fn list(&self, body: &ListNotificationsRequest) -> Result<ListNotificationsResponse, NotificationsError> {
        let order_id = parse_order_id(&body.order_id)?;
        let (size, after) = parse_page(body.page_size, &body.page_token, order_id)?;
        let limit = i64::from(size) + 1;
        let mut rows = db::page_for_order(&self.pool, order_id, after, limit).await?;
        // One row more than the page says whether another page follows.
        let next_page_token = if rows.len() > size as usize {
            rows.truncate(size as usize);
            rows.last().map(|last| page_token(order_id, last)).unwrap_or_default()
        } else {
            String::new()
        };
        tracing::debug!(%order_id, count = rows.len(), more = !next_page_token.is_empty(), "listed notifications");
        Ok(ListNotificationsResponse { notifications: rows.into_iter().map(to_proto).collect(), next_page_token })
    }
}

fn parse_order_id(raw: &str) -> Result<Uuid, NotificationsError> {
    Uuid::parse_str(raw.trim()).map_err(|_| {
        NotificationsError::InvalidArgument(vec![FieldViolation::new(
            "order_id",
            format!("must be a UUID, got {raw:?}"),
        )])
    })
}

/// The page size when the request gives none.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest page; a larger `page_size` is served as this.
pub(crate) const MAX_PAGE_SIZE: u32 = 1000;

/// The token's layout version, so a later layout can refuse an older token by name.
const TOKEN_VERSION: u8 = 1;
/// Version, order id, `created_at` in microseconds, notification id.
const TOKEN_BYTES: usize = 1 + 16 + 8 + 16;

/// The page size a list request asks for: 0 is the default, more than the
/// maximum is the maximum; a negative one is a violation naming `page_size`.
pub(crate) fn page_size_of(page_size: i32, violations: &mut Vec<FieldViolation>) -> u32 {
    match u32::try_from(page_size) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(size) => size.min(MAX_PAGE_SIZE),
        Err(_) => {
            violations.push(FieldViolation::new("page_size", "must not be negative"));
            DEFAULT_PAGE_SIZE
        }
    }
}

/// The page size and the position a request asks for.
fn parse_page(
    page_size: i32,
    page_token: &str,
    order_id: Uuid,
) -> Result<(u32, Option<db::After>), NotificationsError> {
    let mut violations = Vec::new();
    let size = page_size_of(page_size, &mut violations);
    let after = if page_token.is_empty() {
        None
    } else {
        parse_page_token(page_token, order_id).map_err(|e| violations.push(FieldViolation::new("page_token", e))).ok()
    };
    if violations.is_empty() { Ok((size, after)) } else { Err(NotificationsError::InvalidArgument(violations)) }
}

/// The token of the page after `last`: opaque to clients (hex of a versioned
/// binary position), bound to the order it was issued for.
fn page_token(order_id: Uuid, last: &Notification) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_BYTES);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(order_id.as_bytes());
    bytes.extend_from_slice(&last.created_at.timestamp_micros().to_be_bytes());
    bytes.extend_from_slice(last.notification_id.as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_page_token(raw: &str, order_id: Uuid) -> Result<db::After, String> {
    let invalid = || "is not a page token returned by ListNotifications".to_owned();
    if raw.len() != TOKEN_BYTES * 2 || !raw.is_ascii() {
        return Err(invalid());
    }
    let bytes = (0..TOKEN_BYTES)
        .map(|i| u8::from_str_radix(&raw[i * 2..i * 2 + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    if bytes[0] != TOKEN_VERSION {
        return Err(invalid());
    }
    let issued_for = Uuid::from_slice(&bytes[1..17]).map_err(|_| invalid())?;
    if issued_for != order_id {
        return Err("was returned for another order_id".into());
    }
    let micros = i64::from_be_bytes(bytes[17..25].try_into().expect("eight bytes"));
    let created_at = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    let notification_id = Uuid::from_slice(&bytes[25..41]).map_err(|_| invalid())?;
    Ok(db::After { created_at, notification_id })
}

fn to_proto(row: Notification) -> NotificationProto {
    NotificationProto {
        notification_id: row.notification_id.to_string(),
        order_id: row.order_id.to_string(),
        event_id: row.event_id.to_string(),
        message: row.message,
        correlation_id: row.correlation_id,
        created_at: Some(prost_types::Timestamp {
            seconds: row.created_at.timestamp(),
            nanos: row.created_at.timestamp_subsec_nanos() as i32,
        }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn order_ids_must_be_uuids() {
        let id = Uuid::new_v4();
        assert_eq!(parse_order_id(&id.to_string()).unwrap(), id);
        for bad in ["", "42", "not-a-uuid"] {
            match parse_order_id(bad) {
                Err(NotificationsError::InvalidArgument(v)) => assert_eq!(v[0].field, "order_id"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_order() {
        let order_id = Uuid::new_v4();
        let created_at = chrono::DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap();
        let row = Notification {
            notification_id: Uuid::now_v7(),
            order_id,
            event_id: Uuid::new_v4(),
            message: String::new(),
            correlation_id: String::new(),
            created_at,
        };
        let token = page_token(order_id, &row);
        assert_eq!(
            parse_page_token(&token, order_id).unwrap(),
            db::After { created_at, notification_id: row.notification_id }
        );
        assert!(parse_page_token(&token, Uuid::new_v4()).unwrap_err().contains("another order_id"));
        for bad in
            ["x", "zz", &token[2..], &format!("02{}", &token[2..]), &format!("g{}", &token[1..]), &format!("{token}00")]
        {
            assert!(parse_page_token(bad, order_id).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_sizes_default_and_cap() {
        let id = Uuid::new_v4();
        assert_eq!(parse_page(0, "", id).unwrap().0, DEFAULT_PAGE_SIZE);
        assert_eq!(parse_page(7, "", id).unwrap().0, 7);
        assert_eq!(parse_page(i32::MAX, "", id).unwrap().0, MAX_PAGE_SIZE);
        match parse_page(-1, "nope", id) {
            Err(NotificationsError::InvalidArgument(v)) => {
                assert_eq!(v.iter().map(|v| v.field).collect::<Vec<_>>(), ["page_size", "page_token"])
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn anything_not_a_uuid_is_rejected(raw in "\\PC{0,40}") {
            prop_assert_eq!(parse_order_id(&raw).is_ok(), Uuid::parse_str(raw.trim()).is_ok());
        }
    }
}
