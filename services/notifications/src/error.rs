//! The service's one error type and its one mapping to gRPC status codes.

use tonic::Status;

pub(crate) use platform::errors::FieldViolation;

#[derive(Debug, thiserror::Error)]
pub(crate) enum NotificationsError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// The resource (`endpoint`, `delivery`) does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The call cannot be served in the current state; the message says why.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for NotificationsError {
    fn from(err: sqlx::Error) -> Self {
        if infra::pg::is_unavailable(&err) { Self::Unavailable(err) } else { Self::Internal(err.into()) }
    }
}

impl From<NotificationsError> for Status {
    fn from(err: NotificationsError) -> Self {
        match err {
            NotificationsError::InvalidArgument(violations) => platform::errors::invalid_argument(violations),
            NotificationsError::NotFound(resource) => platform::errors::not_found(resource),
            NotificationsError::FailedPrecondition(message) => Status::failed_precondition(message),
            NotificationsError::Unavailable(source) => platform::errors::database_unavailable(&source),
            NotificationsError::Internal(source) => platform::errors::internal(&source),
        }
    }
}
