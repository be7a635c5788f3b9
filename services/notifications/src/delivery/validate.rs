//! The rules a `CreateEndpoint` request and ids are checked against; each
//! problem names its field.

use contracts::notifications::v1::{CreateEndpointRequest, EndpointKind};
use uuid::Uuid;

use super::db::{EVENT_TYPES, Kind, NewEndpoint};
use crate::error::{FieldViolation, NotificationsError};

/// The longest description, in characters.
pub(crate) const MAX_DESCRIPTION: usize = 256;
/// The longest URL, in bytes.
const MAX_URL: usize = 2048;

/// A UUID, or a violation naming `field`.
pub(crate) fn uuid(field: &'static str, raw: &str) -> Result<Uuid, FieldViolation> {
    Uuid::parse_str(raw.trim()).map_err(|_| FieldViolation::new(field, format!("must be a UUID, got {raw:?}")))
}

/// [`uuid`] as the error of a call with that one field.
pub(crate) fn id(field: &'static str, raw: &str) -> Result<Uuid, NotificationsError> {
    uuid(field, raw).map_err(|violation| NotificationsError::InvalidArgument(vec![violation]))
}

/// The endpoint a request asks for (its secret not made yet), or every problem it has.
pub(crate) fn new_endpoint(body: &CreateEndpointRequest) -> Result<NewEndpoint, NotificationsError> {
    let mut violations = Vec::new();
    let kind = match EndpointKind::try_from(body.kind) {
        Ok(EndpointKind::Webhook) => Some(Kind::Webhook),
        Ok(EndpointKind::Email) => Some(Kind::Email),
        _ => {
            violations.push(FieldViolation::new("kind", "must be ENDPOINT_KIND_WEBHOOK or ENDPOINT_KIND_EMAIL"));
            None
        }
    };
    let (url, email) = (body.url.trim(), body.email_address.trim());
    match kind {
        Some(Kind::Webhook) => {
            if let Err(problem) = webhook_url(url) {
                violations.push(FieldViolation::new("url", problem));
            }
            if !email.is_empty() {
                violations.push(FieldViolation::new("email_address", "must be empty for a webhook endpoint"));
            }
        }
        Some(Kind::Email) => {
            if let Err(problem) = email_address(email) {
                violations.push(FieldViolation::new("email_address", problem));
            }
            if !url.is_empty() {
                violations.push(FieldViolation::new("url", "must be empty for an email endpoint"));
            }
        }
        None => {}
    }
    let mut event_types: Vec<String> = Vec::new();
    for raw in &body.event_types {
        if !EVENT_TYPES.contains(&raw.as_str()) {
            violations
                .push(FieldViolation::new("event_types", format!("{raw:?} is not one of {}", EVENT_TYPES.join(", "))));
        } else if !event_types.contains(raw) {
            event_types.push(raw.clone());
        }
    }
    let description = body.description.trim();
    if description.chars().count() > MAX_DESCRIPTION {
        violations.push(FieldViolation::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters, got {}", description.chars().count()),
        ));
    }
    match kind {
        Some(kind) if violations.is_empty() => Ok(NewEndpoint {
            kind,
            url: (kind == Kind::Webhook).then(|| url.to_owned()),
            email_address: (kind == Kind::Email).then(|| email.to_owned()),
            event_types,
            description: description.to_owned(),
            sealed_secret: None,
        }),
        _ => Err(NotificationsError::InvalidArgument(violations)),
    }
}

/// An absolute http or https URL with a host and no credentials.
fn webhook_url(raw: &str) -> Result<(), String> {
    if raw.is_empty() {
        return Err("is required for a webhook endpoint".into());
    }
    if raw.len() > MAX_URL {
        return Err(format!("must be at most {MAX_URL} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|err| format!("must be an absolute http or https URL ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be an http or https URL, not {}", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(())
}

/// An address such as `ops@example.com`.
fn email_address(raw: &str) -> Result<(), String> {
    if raw.is_empty() {
        return Err("is required for an email endpoint".into());
    }
    raw.parse::<lettre::Address>()
        .map(drop)
        .map_err(|_| format!("must be an address such as ops@example.com, got {raw:?}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn fields(result: Result<NewEndpoint, NotificationsError>) -> Vec<&'static str> {
        match result {
            Err(NotificationsError::InvalidArgument(v)) => v.iter().map(|v| v.field).collect(),
            other => panic!("{other:?}"),
        }
    }

    fn webhook(url: &str) -> CreateEndpointRequest {
        CreateEndpointRequest { kind: EndpointKind::Webhook as i32, url: url.into(), ..Default::default() }
    }

    #[test]
    fn webhooks_need_an_absolute_http_url() {
        assert!(new_endpoint(&webhook("https://example.com/hook")).is_ok());
        assert!(new_endpoint(&webhook("http://127.0.0.1:8080/")).is_ok());
        for bad in ["", "example.com/hook", "ftp://example.com/", "/hook", "https://user:pw@example.com/"] {
            assert_eq!(fields(new_endpoint(&webhook(bad))), ["url"], "{bad:?}");
        }
    }

    #[test]
    fn each_problem_is_named() {
        let request = CreateEndpointRequest {
            kind: EndpointKind::Email as i32,
            url: "https://example.com".into(),
            email_address: "nobody".into(),
            event_types: vec!["order.created".into(), "order.shipped".into()],
            description: "x".repeat(MAX_DESCRIPTION + 1),
        };
        assert_eq!(fields(new_endpoint(&request)), ["email_address", "url", "event_types", "description"]);
        assert_eq!(fields(new_endpoint(&CreateEndpointRequest::default())), ["kind"]);
    }

    #[test]
    fn event_types_are_kept_once() {
        let mut request = webhook("https://example.com");
        request.event_types = vec!["order.failed".into(), "order.failed".into(), "order.created".into()];
        assert_eq!(new_endpoint(&request).unwrap().event_types, ["order.failed", "order.created"]);
    }

    proptest! {
        #[test]
        fn ids_are_uuids(raw in "\\PC{0,40}") {
            prop_assert_eq!(uuid("id", &raw).is_ok(), Uuid::parse_str(raw.trim()).is_ok());
        }
    }
}
