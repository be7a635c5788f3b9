//! The service's one error type and its one mapping to gRPC status codes.

use tonic::Status;

pub(crate) use platform::errors::FieldViolation;

#[derive(Debug, thiserror::Error)]
pub(crate) enum InventoryError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// The kind of thing (e.g. `reservation`) that does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl InventoryError {
    /// INVALID_ARGUMENT naming one field.
    pub(crate) fn field(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<sqlx::Error> for InventoryError {
    fn from(err: sqlx::Error) -> Self {
        if infra::pg::is_unavailable(&err) { Self::Unavailable(err) } else { Self::Internal(err.into()) }
    }
}

impl From<InventoryError> for Status {
    fn from(err: InventoryError) -> Self {
        match err {
            InventoryError::InvalidArgument(violations) => platform::errors::invalid_argument(violations),
            InventoryError::NotFound(resource) => platform::errors::not_found(resource),
            InventoryError::Unavailable(source) => platform::errors::database_unavailable(&source),
            InventoryError::Internal(source) => platform::errors::internal(&source),
        }
    }
}
