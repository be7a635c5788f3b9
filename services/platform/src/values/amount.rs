//! Money amounts as decimal strings: positive, at most two decimals, no
//! exponent, no sign, no NaN; held exactly as minor units.

use std::fmt;

/// A positive amount with at most two decimals, held in minor units (cents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(u128);

impl Amount {
    /// Integer digits allowed: the column is `numeric(20,2)`.
    const MAX_INTEGER_DIGITS: usize = 18;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let shape = "must be a decimal number such as \"77.50\" (digits, optional point, at most two decimals)";
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
        if fraction.len() > 2 {
            return Err("must have at most two decimals".into());
        }
        let significant = integer.trim_start_matches('0');
        if significant.len() > Self::MAX_INTEGER_DIGITS {
            return Err(format!("must be less than 10^{}", Self::MAX_INTEGER_DIGITS));
        }
        let whole: u128 = if significant.is_empty() { 0 } else { significant.parse().map_err(|_| shape.to_owned())? };
        let cents: u128 = format!("{fraction:0<2}").parse().expect("two digits");
        let minor = whole * 100 + cents;
        if minor == 0 {
            return Err("must be greater than zero".into());
        }
        Ok(Self(minor))
    }

    pub fn minor_units(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Amount {
    /// Always two decimals: `77.50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_plain_decimals() {
        for (raw, shown) in [("77.50", "77.50"), ("77.5", "77.50"), ("1", "1.00"), ("0.01", "0.01"), ("007", "7.00")] {
            assert_eq!(Amount::parse(raw).unwrap().to_string(), shown, "{raw}");
        }
        assert!(Amount::parse("999999999999999999.99").is_ok());
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
            assert!(Amount::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    proptest! {
        #[test]
        fn round_trips_every_valid_amount(cents in 1u128..100_000_000_000_000_000_000) {
            let shown = format!("{}.{:02}", cents / 100, cents % 100);
            prop_assert_eq!(Amount::parse(&shown).unwrap().minor_units(), cents);
        }

        #[test]
        fn never_panics(raw in "\\PC{0,40}") {
            let _ = Amount::parse(&raw);
        }
    }
}
