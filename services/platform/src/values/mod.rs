//! The values Pulse's messages carry, with the parsers that decide what is
//! valid: the API refuses a request that fails them and the consumer
//! dead-letters an event that fails them, so both hold one rule.

mod amount;
mod currency;
mod sku;

pub use amount::Amount;
pub use currency::Currency;
pub use sku::Sku;

/// A customer id: 1 to 128 characters, at least one of them visible, no
/// control characters, no white space or invisible characters at either end
/// (see [`crate::text::check_identifier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerId(String);

impl CustomerId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        crate::text::check_identifier(raw)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_id_rules() {
        assert!(CustomerId::parse("c-1").is_ok());
        assert!(CustomerId::parse(&"é".repeat(128)).is_ok());
        for bad in ["", "   ", " c", "c\n", "a\u{0}b", "\u{200B}", "\u{200B}c", "\u{FEFF}\u{2060}", "\u{3164}"] {
            assert!(CustomerId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(CustomerId::parse("\u{200B}").unwrap_err().contains("visible"));
        assert!(CustomerId::parse(&"x".repeat(129)).is_err());
    }
}
