//! Inventory's values with `parse` constructors, so nothing unchecked reaches
//! the database: skus, order ids and the lines of a reservation.

use std::collections::BTreeMap;

use contracts::inventory::v1::ReservationLine;
use uuid::Uuid;

/// The longest sku, in characters.
pub const MAX_SKU_CHARS: usize = 64;

/// A stock-keeping unit: 1 to [`MAX_SKU_CHARS`] characters, no control
/// characters: the rule Orders applies to the lines it accepts, so that no
/// command for an order it took is refused here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sku(String);

impl Sku {
    /// The sku, or why not (the text reads after the field's name).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        let chars = raw.chars().count();
        if chars > MAX_SKU_CHARS {
            return Err(format!("must be at most {MAX_SKU_CHARS} characters, got {chars}"));
        }
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A required UUID (`order_id`).
pub fn parse_uuid(raw: &str) -> Result<Uuid, String> {
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    Uuid::try_parse(raw).map_err(|_| format!("must be a UUID, got {raw:?}"))
}

/// The lines of a reservation: one quantity per sku, duplicates summed, in
/// sku order (the order stock rows are locked in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines(BTreeMap<Sku, i64>);

impl Lines {
    /// Every line checked (at least one; each sku valid, each quantity above
    /// zero); each problem names its line, e.g. `lines[1].sku: must not be empty`.
    pub fn parse(lines: &[ReservationLine]) -> Result<Self, Vec<String>> {
        if lines.is_empty() {
            return Err(vec!["lines: must hold at least one line".into()]);
        }
        let mut problems = Vec::new();
        let mut merged = BTreeMap::new();
        for (index, line) in lines.iter().enumerate() {
            let sku = Sku::parse(&line.sku).map_err(|e| problems.push(format!("lines[{index}].sku: {e}")));
            if line.quantity == 0 {
                problems.push(format!("lines[{index}].quantity: must be at least 1"));
            }
            if let Ok(sku) = sku {
                *merged.entry(sku).or_insert(0) += i64::from(line.quantity);
            }
        }
        if problems.is_empty() { Ok(Self(merged)) } else { Err(problems) }
    }

    /// Each sku and its summed quantity, in sku order.
    pub fn iter(&self) -> impl Iterator<Item = (&Sku, i64)> {
        self.0.iter().map(|(sku, quantity)| (sku, *quantity))
    }

    /// The skus, in order, as text.
    pub fn skus(&self) -> Vec<String> {
        self.0.keys().map(|sku| sku.0.clone()).collect()
    }

    /// The quantities, in the order of [`Self::skus`].
    pub fn quantities(&self) -> Vec<i64> {
        self.0.values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: u32) -> ReservationLine {
        ReservationLine { sku: sku.into(), quantity }
    }

    #[test]
    fn skus_are_one_to_sixty_four_characters_without_control_characters() {
        for ok in ["A", "ABC-1", "é", "A B", &"é".repeat(64)] {
            assert!(Sku::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "A\n", "\u{7}", "\t", &"x".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn duplicate_skus_are_summed_in_sku_order() {
        let lines = Lines::parse(&[line("B", 2), line("A", 1), line("B", 3)]).unwrap();
        assert_eq!(lines.skus(), ["A", "B"]);
        assert_eq!(lines.quantities(), [1, 5]);
    }

    #[test]
    fn each_bad_line_is_named() {
        let problems = Lines::parse(&[line("A", 0), line("", 1)]).unwrap_err();
        assert_eq!(problems, ["lines[0].quantity: must be at least 1", "lines[1].sku: must not be empty"]);
        assert_eq!(Lines::parse(&[]).unwrap_err(), ["lines: must hold at least one line"]);
    }

    #[test]
    fn order_ids_are_uuids() {
        assert!(parse_uuid(&Uuid::new_v4().to_string()).is_ok());
        assert!(parse_uuid("").is_err() && parse_uuid("42").is_err());
    }
}
