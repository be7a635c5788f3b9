//! The service's one error type and its one mapping to gRPC status codes.

use tonic::Status;

use platform::errors::FieldViolation;

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
        if infra::pg::is_unavailable(&err) { Self::Unavailable(err) } else { Self::Internal(err.into()) }
    }
}

impl From<OrdersError> for Status {
    fn from(err: OrdersError) -> Self {
        match err {
            OrdersError::InvalidArgument(violations) => platform::errors::invalid_argument(violations),
            OrdersError::NotFound => platform::errors::not_found("order"),
            OrdersError::Unavailable(source) => platform::errors::database_unavailable(&source),
            OrdersError::Internal(source) => platform::errors::internal(&source),
        }
    }
}
