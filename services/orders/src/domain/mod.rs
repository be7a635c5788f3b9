//! Orders as the service understands them: validated values with `parse`
//! constructors, so nothing unchecked reaches the database.

mod lines;

pub use lines::{MAX_LINES, parse_lines};
pub use platform::values::{Amount, Currency, CustomerId};
use uuid::Uuid;

pub use platform::errors::FieldViolation;

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
        let currency = Currency::parse(currency);
        let amount = Amount::parse_in(amount, currency.as_ref().ok().copied())
            .map_err(|e| violations.push(FieldViolation::new("amount", e)));
        let currency = currency.map_err(|e| violations.push(FieldViolation::new("currency", e)));
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
    fn new_order_reports_every_bad_field() {
        let err = NewOrder::parse("", "0", "eur", "nope").unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["customer_id", "amount", "currency", "request_id"]);
        let ok = NewOrder::parse("c-1", "77.5", "EUR", "").unwrap();
        assert_eq!(ok.amount.to_string(), "77.50");
        assert_eq!(ok.request_id, None);
    }

    #[test]
    fn amounts_follow_the_currency_minor_unit() {
        let fields = |amount, currency| {
            NewOrder::parse("c-1", amount, currency, "")
                .err()
                .unwrap_or_default()
                .iter()
                .map(|v| v.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(fields("1.00", "JPY"), ["amount"]);
        assert_eq!(fields("1.234", "EUR"), ["amount"]);
        assert!(fields("1.234", "KWD").is_empty());
        assert!(fields("1000", "JPY").is_empty());
        assert_eq!(
            fields("1.234", "EURO"),
            ["currency"],
            "a well-formed amount of a bad currency names only the currency"
        );
        assert_eq!(fields("abc", "EURO"), ["amount", "currency"]);
    }
}
