//! The service's one error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid request field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldViolation {
    pub(crate) field: &'static str,
    pub(crate) description: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum NotificationsError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for NotificationsError {
    fn from(err: sqlx::Error) -> Self {
        if platform::db::is_unavailable(&err) { Self::Unavailable(err) } else { Self::Internal(err.into()) }
    }
}

impl From<NotificationsError> for Status {
    fn from(err: NotificationsError) -> Self {
        match err {
            NotificationsError::InvalidArgument(violations) => {
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
            NotificationsError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                Status::unavailable("database unavailable, retry later")
            }
            NotificationsError::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}
