//! Page sizes and page tokens of ListEndpoints and ListDeliveries. A token is
//! opaque to clients (hex of a versioned binary position) and bound to the
//! listing it was returned for.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::db::{After, Owner};
use crate::{error::FieldViolation, grpc::page_size_of};

const TOKEN_VERSION: u8 = 1;
/// Version, scope (tag, id, status), `created_at` in microseconds, row id.
const TOKEN_BYTES: usize = 1 + 1 + 16 + 1 + 8 + 16;

/// What a listing lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Endpoints,
    /// `owner` None only while the request is being checked (its token then cannot match).
    Deliveries {
        owner: Option<Owner>,
        status: Option<&'static str>,
    },
}

impl Scope {
    fn bytes(self) -> [u8; 18] {
        let mut out = [0u8; 18];
        let (tag, id, status) = match self {
            Self::Endpoints => (0, Uuid::nil(), 0),
            Self::Deliveries { owner, status } => {
                let (tag, id) = match owner {
                    Some(Owner::Order(id)) => (1, id),
                    Some(Owner::Endpoint(id)) => (2, id),
                    None => (3, Uuid::nil()),
                };
                let status = match status {
                    None => 0,
                    Some("pending") => 1,
                    Some("delivered") => 2,
                    Some(_) => 3,
                };
                (tag, id, status)
            }
        };
        out[0] = tag;
        out[1..17].copy_from_slice(id.as_bytes());
        out[17] = status;
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) size: u32,
    pub(crate) after: Option<After>,
}

/// The page size and position a request asks for, or the violations naming `page_size` and `page_token`.
pub(crate) fn parse(page_size: i32, page_token: &str, scope: Scope) -> Result<Page, Vec<FieldViolation>> {
    let mut violations = Vec::new();
    let size = page_size_of(page_size, &mut violations);
    let after = if page_token.is_empty() {
        None
    } else {
        decode(page_token, scope).map_err(|e| violations.push(FieldViolation::new("page_token", e))).ok()
    };
    if violations.is_empty() { Ok(Page { size, after }) } else { Err(violations) }
}

/// Cuts `rows` (fetched one longer than `size`) to the page and returns the
/// next page's token, empty on the last page.
pub(crate) fn next<T>(
    rows: &mut Vec<T>,
    size: u32,
    scope: Scope,
    position: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> String {
    if rows.len() <= size as usize {
        return String::new();
    }
    rows.truncate(size as usize);
    rows.last().map(|last| encode(scope, position(last))).unwrap_or_default()
}

fn encode(scope: Scope, (created_at, id): (DateTime<Utc>, Uuid)) -> String {
    let mut bytes = Vec::with_capacity(TOKEN_BYTES);
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&scope.bytes());
    bytes.extend_from_slice(&created_at.timestamp_micros().to_be_bytes());
    bytes.extend_from_slice(id.as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(raw: &str, scope: Scope) -> Result<After, String> {
    let invalid = || "is not a page token returned by this listing".to_owned();
    if raw.len() != TOKEN_BYTES * 2 || !raw.is_ascii() {
        return Err(invalid());
    }
    let bytes = (0..TOKEN_BYTES)
        .map(|i| u8::from_str_radix(&raw[i * 2..i * 2 + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    if bytes[0] != TOKEN_VERSION {
        return Err(invalid());
    }
    if bytes[1..19] != scope.bytes() {
        return Err("was returned for another listing (other ids or status)".into());
    }
    let micros = i64::from_be_bytes(bytes[19..27].try_into().expect("eight bytes"));
    let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
    let id = Uuid::from_slice(&bytes[27..43]).map_err(|_| invalid())?;
    Ok(After { created_at, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};

    #[test]
    fn tokens_round_trip_within_their_listing() {
        let scope = Scope::Deliveries { owner: Some(Owner::Endpoint(Uuid::new_v4())), status: Some("failed") };
        let at = DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        let token = encode(scope, (at, id));
        assert_eq!(parse(5, &token, scope).unwrap(), Page { size: 5, after: Some(After { created_at: at, id }) });
        let other = Scope::Deliveries { owner: Some(Owner::Endpoint(Uuid::new_v4())), status: Some("failed") };
        assert!(parse(5, &token, other).is_err());
        assert!(parse(5, &token, Scope::Endpoints).is_err());
        for bad in ["x", &token[2..], &format!("02{}", &token[2..]), &format!("{token}00")] {
            assert!(parse(0, bad, scope).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(parse(0, "", Scope::Endpoints).unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(parse(i32::MAX, "", Scope::Endpoints).unwrap().size, MAX_PAGE_SIZE);
        let fields: Vec<_> = parse(-1, "zz", Scope::Endpoints).unwrap_err().iter().map(|v| v.field).collect();
        assert_eq!(fields, ["page_size", "page_token"]);
    }
}
