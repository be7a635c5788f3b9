//! The service's one error type and its one mapping to gRPC status codes.

use tonic::Status;

pub(crate) use platform::errors::FieldViolation;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PaymentsError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("payment not found")]
    NotFound,
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for PaymentsError {
    fn from(err: sqlx::Error) -> Self {
        if infra::pg::is_unavailable(&err) { Self::Unavailable(err) } else { Self::Internal(err.into()) }
    }
}

impl From<PaymentsError> for Status {
    fn from(err: PaymentsError) -> Self {
        match err {
            PaymentsError::InvalidArgument(violations) => platform::errors::invalid_argument(violations),
            PaymentsError::NotFound => platform::errors::not_found("payment"),
            PaymentsError::Unavailable(source) => platform::errors::database_unavailable(&source),
            PaymentsError::Internal(source) => platform::errors::internal(&source),
        }
    }
}
