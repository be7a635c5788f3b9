//! Orders as the service understands them: validated values with `parse`
//! constructors, so nothing unchecked reaches the database.

mod amount;
mod currency;

pub use amount::Amount;
pub use currency::Currency;
use uuid::Uuid;

pub use platform::errors::FieldViolation;

/// A customer id: 1 to 128 characters, at least one of them visible, no
/// control characters, no white space or invisible characters at either end
/// (see [`platform::text::check_identifier`]).
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
        platform::text::check_identifier(raw)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An order that passed validation and is ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_id: CustomerId,
    pub amount: Amount,
    pub currency: Currency,
    pub request_id: Option<Uuid>,
}

impl NewOrder {
    /// Validates every field and reports all violations at once.
    pub fn parse(
        customer_id: &str,
        amount: &str,
        currency: &str,
        request_id: &str,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        let customer_id =
            CustomerId::parse(customer_id).map_err(|e| violations.push(FieldViolation::new("customer_id", e)));
        let amount = Amount::parse(amount).map_err(|e| violations.push(FieldViolation::new("amount", e)));
        let currency = Currency::parse(currency).map_err(|e| violations.push(FieldViolation::new("currency", e)));
        let request_id =
            parse_optional_uuid(request_id).map_err(|e| violations.push(FieldViolation::new("request_id", e)));
        match (customer_id, amount, currency, request_id) {
            (Ok(customer_id), Ok(amount), Ok(currency), Ok(request_id)) if violations.is_empty() => {
                Ok(Self { customer_id, amount, currency, request_id })
            }
            _ => Err(violations),
        }
    }
}

/// A required UUID (`order_id` and the like).
pub fn parse_uuid(raw: &str) -> Result<Uuid, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    Uuid::try_parse(raw).map_err(|_| "must be a UUID".into())
}

fn parse_optional_uuid(raw: &str) -> Result<Option<Uuid>, String> {
    if raw.is_empty() { Ok(None) } else { parse_uuid(raw).map(Some) }
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

    #[test]
    fn new_order_reports_every_bad_field() {
        let err = NewOrder::parse("", "0", "eur", "nope").unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["customer_id", "amount", "currency", "request_id"]);
        let ok = NewOrder::parse("c-1", "77.5", "EUR", "").unwrap();
        assert_eq!(ok.amount.to_string(), "77.50");
        assert_eq!(ok.request_id, None);
    }
}
