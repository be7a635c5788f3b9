//! The service's one error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::FieldViolation;

#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("order not found")]
    NotFound,
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for OrdersError {
    fn from(err: sqlx::Error) -> Self {
        if platform::db::is_unavailable(&err) { Self::Unavailable(err) } else { Self::Internal(err.into()) }
    }
}

impl From<OrdersError> for Status {
    fn from(err: OrdersError) -> Self {
        match err {
            OrdersError::InvalidArgument(violations) => {
                let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
                let message = format!("invalid {}", fields.join(", "));
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            OrdersError::NotFound => Status::not_found("order not found"),
            OrdersError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                Status::unavailable("database unavailable, retry later")
            }
            OrdersError::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}
