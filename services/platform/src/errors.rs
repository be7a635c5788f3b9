//! The gRPC statuses every service answers with, so that a bad field, a lost
//! database and an internal failure look the same whichever service reports them.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One rejected request field and why, for a `google.rpc.BadRequest` detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self { field, description: description.into() }
    }
}

/// `INVALID_ARGUMENT` naming every bad field in the message and in a `BadRequest` detail.
pub fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
    let message = format!("invalid {}", fields.join(", "));
    let details = ErrorDetails::with_bad_request(
        violations.into_iter().map(|v| tonic_types::FieldViolation::new(v.field, v.description)).collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// `UNAVAILABLE` for a database that cannot be reached; the cause is logged, not sent.
pub fn database_unavailable(source: &sqlx::Error) -> Status {
    tracing::warn!(error = %source, "database unavailable");
    Status::unavailable("database unavailable, retry later")
}

/// `INTERNAL` with a plain message; the whole cause chain is logged once, here.
pub fn internal(source: &anyhow::Error) -> Status {
    tracing::error!(error = format!("{source:#}"), "internal error");
    Status::internal("internal error")
}
