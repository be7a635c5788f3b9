//! The effects of the saga's commands on stock and reservations, inside the
//! caller's transaction, and the outcome each one is answered with.
//!
//! An order has at most one reservation, whichever command came first, so a
//! command is idempotent by order as well as by event id: a second
//! ReserveInventory for an order is answered with the first one's outcome
//! and holds nothing more.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    db::{self, NewReservation, ReservationRow, Status},
    domain::Lines,
};

/// The detail of a reservation a ReleaseInventory cancelled before it was made.
pub(crate) const RELEASED_FIRST: &str = "released before it was reserved";
/// The detail a ReserveInventory gets for a reservation already released.
pub(crate) const ALREADY_RELEASED: &str = "the reservation was released";

/// What a command is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every line is held.
    Reserved { reservation_id: Uuid },
    /// Nothing is held, and why.
    Failed { reservation_id: Uuid, detail: String },
    /// The order holds nothing; `was_reserved` when this release gave stock back.
    Released { reservation_id: Uuid, was_reserved: bool },
}

impl Outcome {
    /// The `outcome` label of the commands counter.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Reserved { .. } => "reserved",
            Self::Failed { .. } => "failed",
            Self::Released { was_reserved: true, .. } => "released",
            Self::Released { was_reserved: false, .. } => "nothing_held",
        }
    }
}

/// Holds every line of `order_id` or none: the stock rows are locked in sku
/// order, each line checked against what is available, and the reservation
/// recorded with its lines either way.
pub(crate) async fn reserve(
    tx: &mut PgConnection,
    order_id: Uuid,
    lines: &Lines,
    correlation_id: &str,
) -> Result<Outcome, sqlx::Error> {
    if let Some(existing) = db::reservation(tx, order_id).await? {
        return Ok(outcome_of_reserve(&existing));
    }
    let (skus, quantities) = (lines.skus(), lines.quantities());
    let stock = db::lock_stock(tx, &skus).await?;
    let detail = shortfalls(lines, &stock);
    let status = if detail.is_empty() { Status::Reserved } else { Status::Rejected };
    let new = NewReservation { order_id, status, detail: &detail, released_first: false, correlation_id };
    let Some(row) = db::insert_reservation_with_lines(tx, &new, &skus, &quantities).await? else {
        // A command for the order committed meanwhile: its outcome stands.
        let existing = db::reservation(tx, order_id).await?.ok_or(sqlx::Error::RowNotFound)?;
        return Ok(outcome_of_reserve(&existing));
    };
    Ok(outcome_of_reserve(&row))
}

/// Gives back what `order_id` holds; with no reservation yet, records a
/// rejected one so that a late ReserveInventory fails.
pub(crate) async fn release(
    tx: &mut PgConnection,
    order_id: Uuid,
    correlation_id: &str,
) -> Result<Outcome, sqlx::Error> {
    let existing = match db::reservation_for_update(tx, order_id).await? {
        Some(existing) => existing,
        None => {
            let new = NewReservation {
                order_id,
                status: Status::Rejected,
                detail: RELEASED_FIRST,
                released_first: true,
                correlation_id,
            };
            match db::insert_reservation(tx, &new).await? {
                Some(row) => return Ok(Outcome::Released { reservation_id: row.reservation_id, was_reserved: false }),
                // A ReserveInventory committed meanwhile: release what it made.
                None => db::reservation_for_update(tx, order_id).await?.ok_or(sqlx::Error::RowNotFound)?,
            }
        }
    };
    let reservation_id = existing.reservation_id;
    if existing.status() != Status::Reserved {
        return Ok(Outcome::Released { reservation_id, was_reserved: false });
    }
    let (skus, quantities): (Vec<String>, Vec<i64>) = db::lines(tx, reservation_id).await?.into_iter().unzip();
    // The same lock order as reserve, so the two never deadlock.
    db::lock_stock(tx, &skus).await?;
    let given_back: Vec<i64> = quantities.iter().map(|q| -q).collect();
    db::add_reserved(tx, &skus, &given_back).await?;
    db::set_status(tx, reservation_id, Status::Released).await?;
    Ok(Outcome::Released { reservation_id, was_reserved: true })
}

/// Locks, in sku order, every stock row the commands of a batch may touch:
/// the skus of its reservations (`lines`) and those its releases
/// (`releases`, by order) would give back. Each command then locks only rows
/// already held, so transactions of several batches at once take their locks
/// in one global order and never deadlock.
pub(crate) async fn lock_batch(tx: &mut PgConnection, lines: &[Lines], releases: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut skus: Vec<String> = lines.iter().flat_map(Lines::skus).collect();
    if !releases.is_empty() {
        skus.extend(db::skus_held_by(tx, releases).await?);
    }
    skus.sort_unstable();
    skus.dedup();
    if !skus.is_empty() {
        db::lock_stock(tx, &skus).await?;
    }
    Ok(())
}

/// The answer to a ReserveInventory for an order that has `row`.
fn outcome_of_reserve(row: &ReservationRow) -> Outcome {
    let reservation_id = row.reservation_id;
    match row.status() {
        Status::Reserved => Outcome::Reserved { reservation_id },
        Status::Rejected => Outcome::Failed { reservation_id, detail: row.detail.clone() },
        Status::Released => Outcome::Failed { reservation_id, detail: ALREADY_RELEASED.to_owned() },
    }
}

/// Each line that cannot be held, e.g. `sku ABC-1: 3 requested, 1 available;
/// sku XYZ: unknown`; empty when every line can. `stock` holds the rows of
/// the known skus.
fn shortfalls(lines: &Lines, stock: &[db::StockRow]) -> String {
    lines
        .iter()
        .filter_map(|(sku, requested)| match stock.iter().find(|row| row.sku == sku.as_str()) {
            None => Some(format!("sku {sku}: unknown")),
            Some(row) => {
                let available = (row.on_hand - row.reserved).max(0);
                (available < requested).then(|| format!("sku {sku}: {requested} requested, {available} available"))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use contracts::inventory::v1::ReservationLine;

    use super::*;

    #[test]
    fn shortfalls_name_each_short_or_unknown_sku() {
        let lines = Lines::parse(&[
            ReservationLine { sku: "ABC-1".into(), quantity: 3 },
            ReservationLine { sku: "OK".into(), quantity: 2 },
            ReservationLine { sku: "XYZ".into(), quantity: 1 },
        ])
        .unwrap();
        let stock = [
            db::StockRow { sku: "ABC-1".into(), on_hand: 5, reserved: 4 },
            db::StockRow { sku: "OK".into(), on_hand: 2, reserved: 0 },
        ];
        assert_eq!(shortfalls(&lines, &stock), "sku ABC-1: 3 requested, 1 available; sku XYZ: unknown");
        assert_eq!(
            shortfalls(&Lines::parse(&[ReservationLine { sku: "OK".into(), quantity: 2 }]).unwrap(), &stock),
            ""
        );
    }
}
