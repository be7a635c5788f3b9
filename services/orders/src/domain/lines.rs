//! An order's lines as CreateOrder accepts them: at most [`MAX_LINES`], each
//! a sku ([`Sku`]) and a quantity above zero.

use std::sync::LazyLock;

use platform::{errors::FieldViolation, values::Sku};

use crate::db::OrderLine;

/// The most lines one order may have.
pub const MAX_LINES: usize = 100;

/// `lines[i].sku` and `lines[i].quantity` for every line an order may have,
/// made once: a violation names its field with a `&'static str`.
static FIELDS: LazyLock<Vec<(String, String)>> =
    LazyLock::new(|| (0..MAX_LINES).map(|i| (format!("lines[{i}].sku"), format!("lines[{i}].quantity"))).collect());

/// Validates every line and reports all violations at once; more than
/// [`MAX_LINES`] lines is one violation naming `lines`.
pub fn parse_lines<'a>(
    lines: impl ExactSizeIterator<Item = (&'a str, u32)>,
) -> Result<Vec<OrderLine>, Vec<FieldViolation>> {
    if lines.len() > MAX_LINES {
        return Err(vec![FieldViolation::new(
            "lines",
            format!("must have at most {MAX_LINES} lines, got {}", lines.len()),
        )]);
    }
    let mut violations = Vec::new();
    let mut parsed = Vec::with_capacity(lines.len());
    for (i, (sku, quantity)) in lines.enumerate() {
        let (sku_field, quantity_field) = &FIELDS[i];
        if let Err(problem) = Sku::parse(sku) {
            violations.push(FieldViolation::new(sku_field.as_str(), problem));
        }
        if quantity == 0 {
            violations.push(FieldViolation::new(quantity_field.as_str(), "must be greater than zero"));
        }
        parsed.push(OrderLine { sku: sku.to_owned(), quantity });
    }
    if violations.is_empty() { Ok(parsed) } else { Err(violations) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(lines: &[(&str, u32)]) -> Vec<&'static str> {
        parse_lines(lines.iter().copied()).err().unwrap_or_default().iter().map(|v| v.field).collect()
    }

    #[test]
    fn every_bad_line_is_named() {
        assert!(fields(&[("ABC-1", 3), ("é", 1)]).is_empty());
        assert_eq!(
            fields(&[("", 1), ("ok", 0), (" x", 1), ("a\u{7}", 2)]),
            ["lines[0].sku", "lines[1].quantity", "lines[2].sku", "lines[3].sku"]
        );
        let long = "x".repeat(65);
        assert_eq!(fields(&[(&"x".repeat(64), 1), (&long, 1)]), ["lines[1].sku"]);
    }

    #[test]
    fn at_most_a_hundred_lines() {
        let hundred = vec![("a", 1); 100];
        assert!(fields(&hundred).is_empty());
        let more = vec![("a", 1); 101];
        assert_eq!(fields(&more), ["lines"]);
    }
}
