//! `pulse.notifications.v1.NotificationService`: proto in, rows out.

use contracts::notifications::v1::{
    ListNotificationsRequest, ListNotificationsResponse, Notification as NotificationProto,
    notification_service_server::NotificationService,
};
use platform::correlation::{self, CorrelationId};
use sqlx::PgPool;
use tonic::{Request, Response, Status, metadata::MetadataValue};
use tracing::Instrument;
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
        let header = request.metadata().get(correlation::HEADER).and_then(|v| v.to_str().ok());
        let correlation_id = CorrelationId::from_header(header);
        let span = tracing::info_span!("list_notifications", correlation_id = %correlation_id);
        let result = async {
            let order_id = parse_order_id(&request.get_ref().order_id)?;
            let rows = db::for_order(&self.pool, order_id).await?;
            tracing::debug!(%order_id, count = rows.len(), "listed notifications");
            Ok::<_, NotificationsError>(ListNotificationsResponse {
                notifications: rows.into_iter().map(to_proto).collect(),
            })
        }
        .instrument(span)
        .await;
        let value = MetadataValue::try_from(correlation_id.as_str()).expect("correlation ids are valid metadata");
        match result {
            Ok(body) => {
                let mut response = Response::new(body);
                response.metadata_mut().insert(correlation::HEADER, value);
                Ok(response)
            }
            Err(err) => {
                let mut status = Status::from(err);
                status.metadata_mut().insert(correlation::HEADER, value);
                Err(status)
            }
        }
    }
}

fn parse_order_id(raw: &str) -> Result<Uuid, NotificationsError> {
    Uuid::parse_str(raw.trim()).map_err(|_| {
        NotificationsError::InvalidArgument(vec![FieldViolation {
            field: "order_id",
            description: format!("must be a UUID, got {raw:?}"),
        }])
    })
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

    proptest! {
        #[test]
        fn anything_not_a_uuid_is_rejected(raw in "\\PC{0,40}") {
            prop_assert_eq!(parse_order_id(&raw).is_ok(), Uuid::parse_str(raw.trim()).is_ok());
        }
    }
}
