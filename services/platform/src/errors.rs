//! The gRPC statuses every service answers with, so that a bad field, a lost
//! database and an internal failure look the same whichever service reports them.
//!
//! Every status carries a `google.rpc.ErrorInfo` (a stable UPPER_SNAKE_CASE
//! reason in [`ERROR_DOMAIN`], with metadata) that clients branch on instead
//! of the message; `UNAVAILABLE` also carries a `google.rpc.RetryInfo` saying
//! how long to wait before retrying.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Pulse error.
pub const ERROR_DOMAIN: &str = "pulse.dev";

/// The `RetryInfo.retry_delay` of `UNAVAILABLE`: long enough for a pool to
/// reconnect after a database restart, short enough that a retry soon succeeds.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// `ErrorInfo.reason` values.
pub mod reason {
    /// One or more request fields are invalid; `fields` lists them, comma-separated.
    pub const INVALID_FIELD: &str = "INVALID_FIELD";
    /// The database cannot be reached; retry after the `RetryInfo` delay.
    pub const DATABASE_UNAVAILABLE: &str = "DATABASE_UNAVAILABLE";
    /// The thing asked for does not exist; `resource` names its kind.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// The request message is over the size limit; `limit_bytes` says it.
    pub const MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";
    /// The request metadata is over the size limit; `limit_bytes` says it.
    pub const METADATA_TOO_LARGE: &str = "METADATA_TOO_LARGE";
    /// A failure of the service itself, logged with its cause.
    pub const INTERNAL: &str = "INTERNAL";
}

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

/// Error details holding an `ErrorInfo` of `reason` with `metadata`.
fn error_info(reason: &str, metadata: &[(&str, String)]) -> ErrorDetails {
    let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
}

/// `INVALID_ARGUMENT` naming every bad field in the message, in a `BadRequest`
/// detail and in the `ErrorInfo`'s `fields`.
pub fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
    let message = format!("invalid {}", fields.join(", "));
    let mut details = error_info(reason::INVALID_FIELD, &[("fields", fields.join(","))]);
    details.set_bad_request(
        violations.into_iter().map(|v| tonic_types::FieldViolation::new(v.field, v.description)).collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// `NOT_FOUND` for a `resource` (e.g. `order`) that does not exist.
pub fn not_found(resource: &str) -> Status {
    let details = error_info(reason::NOT_FOUND, &[("resource", resource.to_owned())]);
    Status::with_error_details(Code::NotFound, format!("{resource} not found"), details)
}

/// `RESOURCE_EXHAUSTED` for a request over a size limit (`reason` is
/// [`reason::MESSAGE_TOO_LARGE`] or [`reason::METADATA_TOO_LARGE`]).
pub fn too_large(reason: &str, message: String, limit_bytes: usize) -> Status {
    let details = error_info(reason, &[("limit_bytes", limit_bytes.to_string())]);
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// `UNAVAILABLE` for a database that cannot be reached, with a `RetryInfo`
/// of [`RETRY_DELAY`]; the cause is logged, not sent.
pub fn database_unavailable(source: &sqlx::Error) -> Status {
    tracing::warn!(error = %source, "database unavailable");
    let mut details = error_info(reason::DATABASE_UNAVAILABLE, &[]);
    details.set_retry_info(Some(RETRY_DELAY));
    Status::with_error_details(Code::Unavailable, "database unavailable, retry later", details)
}

/// `INTERNAL` with a plain message; the whole cause chain is logged once, here.
pub fn internal(source: &anyhow::Error) -> Status {
    tracing::error!(error = format!("{source:#}"), "internal error");
    Status::with_error_details(Code::Internal, "internal error", error_info(reason::INTERNAL, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_of(status: &Status) -> (String, String) {
        let info = status.get_details_error_info().expect("an ErrorInfo");
        (info.reason, info.domain)
    }

    #[test]
    fn every_status_carries_an_error_info_in_upper_snake_case() {
        let statuses = [
            invalid_argument(vec![FieldViolation::new("amount", "bad")]),
            not_found("order"),
            too_large(reason::MESSAGE_TOO_LARGE, "too large".into(), 1),
            database_unavailable(&sqlx::Error::PoolTimedOut),
            internal(&anyhow::anyhow!("boom")),
        ];
        for status in &statuses {
            let (reason, domain) = reason_of(status);
            assert_eq!(domain, ERROR_DOMAIN);
            assert!(!reason.is_empty() && reason.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{reason}");
        }
    }

    #[test]
    fn only_unavailable_says_when_to_retry() {
        let retry = database_unavailable(&sqlx::Error::PoolTimedOut).get_details_retry_info().expect("a RetryInfo");
        assert_eq!(retry.retry_delay, Some(RETRY_DELAY));
        assert!(internal(&anyhow::anyhow!("boom")).get_details_retry_info().is_none());
    }

    #[test]
    fn invalid_argument_keeps_its_bad_request_beside_the_error_info() {
        let status =
            invalid_argument(vec![FieldViolation::new("amount", "bad"), FieldViolation::new("currency", "bad")]);
        assert_eq!(status.get_details_bad_request().unwrap().field_violations.len(), 2);
        assert_eq!(status.get_details_error_info().unwrap().metadata["fields"], "amount,currency");
    }
}
