//! Inventory's values with `parse` constructors, so nothing unchecked reaches
//! the database: skus, order ids and the lines of a reservation.

use std::collections::BTreeMap;

use contracts::inventory::v1::ReservationLine;
use uuid::Uuid;

/// The sku rule Orders applies to the lines it accepts, so that no command
/// for an order it took is refused here.
pub use platform::values::Sku;

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
        self.0.keys().map(|sku| sku.as_str().to_owned()).collect()
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
