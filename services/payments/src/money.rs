//! Money as this service stores it: whole minor units of the currency in an
//! `i64` (cents for EUR, yen for JPY), parsed with the kit's rules
//! ([`platform::values::Amount`]) and shown with the currency's decimals.

use platform::values::{Amount, Currency};

/// A payment's amount in minor units: positive, at most the currency's
/// decimals, small enough for the database's `bigint`.
pub(crate) fn parse_amount(raw: &str, currency: Option<Currency>) -> Result<i64, String> {
    let amount = Amount::parse_in(raw, currency)?;
    to_i64(amount.minor_units())
}

/// A credit limit in minor units: like [`parse_amount`], but zero is a limit too.
pub(crate) fn parse_limit(raw: &str, currency: Option<Currency>) -> Result<i64, String> {
    let decimals = currency.map_or(Currency::MAX_MINOR_UNIT, Currency::minor_unit);
    to_i64(parse_non_negative(raw, decimals)?)
}

/// `minor` units of `currency` as a decimal string: `77.50` EUR, `1000` JPY.
pub fn format_minor(minor: i64, currency: Currency) -> String {
    let decimals = u32::from(currency.minor_unit());
    let sign = if minor < 0 { "-" } else { "" };
    let minor = minor.unsigned_abs();
    if decimals == 0 {
        return format!("{sign}{minor}");
    }
    let scale = 10u64.pow(decimals);
    let width = decimals as usize;
    format!("{sign}{}.{:0width$}", minor / scale, minor % scale)
}

/// The credit of a customer whose limit was never set (`PAYMENTS_DEFAULT_CREDIT`),
/// held at the finest minor unit so that it converts to any currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultCredit {
    /// Ten-thousandths ([`Currency::MAX_MINOR_UNIT`] decimals).
    finest: u128,
}

impl DefaultCredit {
    /// Parses a decimal string, zero or more, with up to four decimals.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Ok(Self { finest: parse_non_negative(raw, Currency::MAX_MINOR_UNIT)? })
    }

    /// The limit in `currency`'s minor units (decimals it has not are dropped:
    /// `1000.50` is 1000 JPY).
    pub fn in_minor_units(self, currency: Currency) -> i64 {
        let drop = 10u128.pow(u32::from(Currency::MAX_MINOR_UNIT - currency.minor_unit()));
        i64::try_from(self.finest / drop).unwrap_or(i64::MAX)
    }
}

impl Default for DefaultCredit {
    /// 1000.00.
    fn default() -> Self {
        Self { finest: 1000 * 10u128.pow(u32::from(Currency::MAX_MINOR_UNIT)) }
    }
}

fn parse_non_negative(raw: &str, decimals: u8) -> Result<u128, String> {
    match Amount::parse_with_decimals(raw, decimals) {
        Ok(amount) => Ok(amount.minor_units()),
        Err(_) if is_zero(raw, decimals) => Ok(0),
        Err(err) => Err(err.replace("greater than zero", "zero or more")),
    }
}

/// `0`, `0.0`, `00.00`: digits before the point, no more decimals than allowed.
fn is_zero(raw: &str, decimals: u8) -> bool {
    let (integer, fraction) = raw.split_once('.').unwrap_or((raw, "0"));
    !integer.is_empty()
        && !fraction.is_empty()
        && fraction.len() <= usize::from(decimals).max(1)
        && (decimals > 0 || !raw.contains('.'))
        && integer.bytes().chain(fraction.bytes()).all(|b| b == b'0')
}

fn to_i64(minor: u128) -> Result<i64, String> {
    i64::try_from(minor).map_err(|_| format!("must be less than {} minor units", i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn amounts_are_positive_minor_units() {
        assert_eq!(parse_amount("77.50", Some(currency("EUR"))), Ok(7750));
        assert_eq!(parse_amount("1000", Some(currency("JPY"))), Ok(1000));
        for bad in ["0", "-1", "1.234", "abc", ""] {
            assert!(parse_amount(bad, Some(currency("EUR"))).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_may_be_zero() {
        for zero in ["0", "0.0", "0.00", "000"] {
            assert_eq!(parse_limit(zero, Some(currency("EUR"))), Ok(0), "{zero:?}");
        }
        assert_eq!(parse_limit("0", Some(currency("JPY"))), Ok(0));
        for bad in ["0.", ".0", "0.000", "-0", "", "x"] {
            assert!(parse_limit(bad, Some(currency("EUR"))).is_err(), "{bad:?}");
        }
        assert!(parse_limit("0.0", Some(currency("JPY"))).is_err());
        assert_eq!(parse_limit("1000.00", Some(currency("EUR"))), Ok(100_000));
    }

    #[test]
    fn minor_units_show_with_the_currency_decimals() {
        assert_eq!(format_minor(7750, currency("EUR")), "77.50");
        assert_eq!(format_minor(5, currency("EUR")), "0.05");
        assert_eq!(format_minor(0, currency("EUR")), "0.00");
        assert_eq!(format_minor(1000, currency("JPY")), "1000");
        assert_eq!(format_minor(1234, currency("KWD")), "1.234");
    }

    #[test]
    fn the_default_credit_converts_to_every_currency() {
        let credit = DefaultCredit::default();
        assert_eq!(credit.in_minor_units(currency("EUR")), 100_000);
        assert_eq!(credit.in_minor_units(currency("JPY")), 1000);
        assert_eq!(credit.in_minor_units(currency("KWD")), 1_000_000);
        assert_eq!(DefaultCredit::parse("1000.00"), Ok(credit));
        assert_eq!(DefaultCredit::parse("0").unwrap().in_minor_units(currency("EUR")), 0);
        assert_eq!(DefaultCredit::parse("10.555").unwrap().in_minor_units(currency("EUR")), 1055);
        assert!(DefaultCredit::parse("-1").is_err());
    }
}
