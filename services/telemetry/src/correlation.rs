//! Correlation ids: kept when a caller sends a well-formed one, replaced by a
//! fresh UUID otherwise, and carried on every log line, row and message.

use uuid::Uuid;

/// gRPC metadata key and AMQP header that carry the correlation id.
pub const HEADER: &str = "x-correlation-id";

/// A correlation id: 1 to 128 characters of `[A-Za-z0-9._:-]` (a UUID is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(String);

impl CorrelationId {
    /// Accepts a well-formed id as it is.
    pub fn parse(raw: &str) -> Option<Self> {
        let well_formed = !raw.is_empty()
            && raw.len() <= 128
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        well_formed.then(|| Self(raw.to_owned()))
    }

    /// A fresh random id.
    pub fn generate() -> Self {
        Self(Uuid::new_v4().to_string())
    }

    /// The caller's id when it is well-formed, a fresh one when it is missing or malformed.
    pub fn from_header(raw: Option<&str>) -> Self {
        raw.and_then(Self::parse).unwrap_or_else(Self::generate)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keeps_uuids_and_tokens_and_replaces_the_rest() {
        let uuid = "5f0c7a9e-2b1d-4c3e-9f8a-1b2c3d4e5f60";
        assert_eq!(CorrelationId::from_header(Some(uuid)).as_str(), uuid);
        assert_eq!(CorrelationId::from_header(Some("req:42.a_b-c")).as_str(), "req:42.a_b-c");
        for bad in ["", "has space", "semi;colon", "é", &"x".repeat(129)] {
            let replaced = CorrelationId::from_header(Some(bad));
            assert_ne!(replaced.as_str(), bad);
            assert!(Uuid::parse_str(replaced.as_str()).is_ok());
        }
        assert!(Uuid::parse_str(CorrelationId::from_header(None).as_str()).is_ok());
    }

    proptest! {
        #[test]
        fn accepted_ids_are_exactly_the_allowed_alphabet(raw in "\\PC{0,140}") {
            let allowed = !raw.is_empty() && raw.len() <= 128
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
            prop_assert_eq!(CorrelationId::parse(&raw).is_some(), allowed);
        }
    }
}
