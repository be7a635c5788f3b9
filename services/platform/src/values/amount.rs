//! Money amounts as decimal strings: positive, no more decimals than the
//! currency's minor unit, no exponent, no sign, no NaN; held exactly as minor
//! units.

use std::fmt;

use super::Currency;

/// A positive amount held in minor units of a currency whose minor unit is
/// `decimals` (cents for EUR, yen for JPY, fils for KWD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount {
    minor: u128,
    decimals: u8,
}

impl Amount {
    /// Integer digits allowed, as the `amount` column checks (below 10^18).
    const MAX_INTEGER_DIGITS: usize = 18;

    /// Parses `raw` as an amount of `currency`: at most its minor unit of decimals.
    pub fn parse(raw: &str, currency: Currency) -> Result<Self, String> {
        Self::parse_with_decimals(raw, currency.minor_unit())
    }

    /// Parses `raw` as an amount of `currency`, or, when the currency is itself
    /// invalid (`None`), against the largest minor unit, so that a malformed
    /// amount is named beside the bad currency.
    pub fn parse_in(raw: &str, currency: Option<Currency>) -> Result<Self, String> {
        match currency {
            Some(currency) => Self::parse(raw, currency),
            None => Self::parse_with_decimals(raw, Currency::MAX_MINOR_UNIT),
        }
    }

    /// Parses `raw` with at most `decimals` decimals (see [`Currency::minor_unit`]).
    pub fn parse_with_decimals(raw: &str, decimals: u8) -> Result<Self, String> {
        let shape = "must be a decimal number such as \"77.50\" (digits, optional point and decimals)";
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        let (integer, fraction) = match raw.split_once('.') {
            Some((integer, fraction)) => (integer, fraction),
            None => (raw, ""),
        };
        if integer.is_empty()
            || !integer.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(shape.into());
        }
        if raw.ends_with('.') {
            return Err(shape.into());
        }
        if fraction.len() > usize::from(decimals) {
            return Err(match decimals {
                0 => "must be a whole number: the currency has no minor unit".into(),
                1 => "must have at most one decimal, the currency's minor unit".into(),
                n => format!("must have at most {n} decimals, the currency's minor unit"),
            });
        }
        let significant = integer.trim_start_matches('0');
        if significant.len() > Self::MAX_INTEGER_DIGITS {
            return Err(format!("must be less than 10^{}", Self::MAX_INTEGER_DIGITS));
        }
        let whole: u128 = if significant.is_empty() { 0 } else { significant.parse().map_err(|_| shape.to_owned())? };
        let width = usize::from(decimals);
        let minor_part: u128 =
            if width == 0 { 0 } else { format!("{fraction:0<width$}").parse().expect("ascii digits") };
        let minor = whole * 10u128.pow(u32::from(decimals)) + minor_part;
        if minor == 0 {
            return Err("must be greater than zero".into());
        }
        Ok(Self { minor, decimals })
    }

    pub fn minor_units(self) -> u128 {
        self.minor
    }

    /// Whether `self` and `other` are the same sum, whatever their decimals:
    /// `1000` JPY as sent now and `1000.00` as stored before amounts followed
    /// the minor unit are the same order.
    pub fn same_value(self, other: Self) -> bool {
        let scaled = |a: Self| a.minor * 10u128.pow(u32::from(Currency::MAX_MINOR_UNIT - a.decimals));
        scaled(self) == scaled(other)
    }
}

impl fmt::Display for Amount {
    /// Always the currency's decimals: `77.50` EUR, `1000` JPY, `1.230` KWD.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.decimals == 0 {
            return write!(f, "{}", self.minor);
        }
        let scale = 10u128.pow(u32::from(self.decimals));
        let width = usize::from(self.decimals);
        write!(f, "{}.{:0width$}", self.minor / scale, self.minor % scale)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn accepts_plain_decimals() {
        for (raw, shown) in [("77.50", "77.50"), ("77.5", "77.50"), ("1", "1.00"), ("0.01", "0.01"), ("007", "7.00")] {
            assert_eq!(Amount::parse(raw, currency("EUR")).unwrap().to_string(), shown, "{raw}");
        }
        assert!(Amount::parse("999999999999999999.99", currency("EUR")).is_ok());
    }

    #[test]
    fn decimals_follow_the_currency_minor_unit() {
        for (raw, code, shown) in [
            ("1000", "JPY", "1000"),
            ("1.234", "KWD", "1.234"),
            ("1.2", "KWD", "1.200"),
            ("0.0001", "CLF", "0.0001"),
            ("1.5", "EUR", "1.50"),
        ] {
            assert_eq!(Amount::parse(raw, currency(code)).unwrap().to_string(), shown, "{raw} {code}");
        }
        for (raw, code) in [("1.00", "JPY"), ("1.5", "JPY"), ("1.234", "EUR"), ("1.2345", "KWD"), ("1.00001", "CLF")] {
            let err = Amount::parse(raw, currency(code)).unwrap_err();
            assert!(err.contains("minor unit"), "{raw} {code}: {err}");
        }
        assert_eq!(Amount::parse("1234", currency("KWD")).unwrap().minor_units(), 1_234_000);
    }

    #[test]
    fn same_value_ignores_trailing_decimals() {
        let jpy = Amount::parse("1000", currency("JPY")).unwrap();
        assert!(jpy.same_value(Amount::parse_with_decimals("1000.00", 2).unwrap()));
        assert!(!jpy.same_value(Amount::parse_with_decimals("1000.01", 2).unwrap()));
        assert!(!jpy.same_value(Amount::parse_with_decimals("100", 0).unwrap()));
    }

    #[test]
    fn rejects_what_is_not_a_positive_two_decimal_number() {
        for bad in [
            "",
            "0",
            "0.00",
            "-1",
            "+1",
            "1.234",
            "abc",
            "NaN",
            "nan",
            "inf",
            "1e309",
            "1e2",
            " 1",
            "1 ",
            "1.",
            ".5",
            "1,50",
            "0x10",
            "1.2.3",
            "١",
            "1000000000000000000",
        ] {
            assert!(Amount::parse(bad, currency("EUR")).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn round_trips_every_valid_amount(minor in 1u128..10_000_000_000_000_000_000_000, decimals in 0u8..=4) {
            let scale = 10u128.pow(u32::from(decimals));
            let minor = minor % (1_000_000_000_000_000_000 * scale - 1) + 1;
            let shown = Amount { minor, decimals }.to_string();
            prop_assert_eq!(Amount::parse_with_decimals(&shown, decimals).unwrap().minor_units(), minor);
        }

        #[test]
        fn never_panics(raw in "\\PC{0,40}", decimals in 0u8..=4) {
            let _ = Amount::parse_with_decimals(&raw, decimals);
        }
    }
}
