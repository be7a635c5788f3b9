//! The inventory tables (`stock`, `reservations`, `reservation_lines`): the
//! schema at start, and the queries of the gRPC API and of the saga's commands.

use chrono::{DateTime, Utc};
use platform::consumer::Schemas;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The outbox's schema, the inbox's, then this service's own migrations.
pub(crate) fn schemas() -> Schemas {
    Schemas { outbox: true, migrator: sqlx::migrate!("../../migrations/inventory"), retired: &[] }
}

/// Brings the database to the current [`schemas`].
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    platform::consumer::migrate(pool, schemas()).await
}

/// A sku's stock as stored; an unknown sku reads as all zeros.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct StockRow {
    pub(crate) sku: String,
    pub(crate) on_hand: i64,
    pub(crate) reserved: i64,
}

/// The stock rows' check that nothing reserved exceeds what is on hand.
pub(crate) const RESERVED_WITHIN_ON_HAND: &str = "stock_reserved_within_on_hand";

/// The stock of `sku`, None when it was never set.
pub(crate) async fn stock(conn: &mut PgConnection, sku: &str) -> Result<Option<StockRow>, sqlx::Error> {
    sqlx::query_as("SELECT sku, on_hand, reserved FROM stock WHERE sku = $1").bind(sku).fetch_optional(conn).await
}

/// [`stock`], locking the row until the transaction ends.
pub(crate) async fn stock_for_update(conn: &mut PgConnection, sku: &str) -> Result<Option<StockRow>, sqlx::Error> {
    sqlx::query_as("SELECT sku, on_hand, reserved FROM stock WHERE sku = $1 FOR UPDATE")
        .bind(sku)
        .fetch_optional(conn)
        .await
}

/// Sets what is on hand, creating the row if needed; the check constraint
/// [`RESERVED_WITHIN_ON_HAND`] refuses less than is reserved.
pub(crate) async fn set_on_hand(conn: &mut PgConnection, sku: &str, on_hand: i64) -> Result<StockRow, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO stock (sku, on_hand) VALUES ($1, $2)
         ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand, updated_at = now()
         RETURNING sku, on_hand, reserved",
    )
    .bind(sku)
    .bind(on_hand)
    .fetch_one(conn)
    .await
}

/// The stock rows of `skus` (sorted), locked in sku order so that two
/// reservations over the same skus never deadlock; unknown skus are absent.
pub(crate) async fn lock_stock(conn: &mut PgConnection, skus: &[String]) -> Result<Vec<StockRow>, sqlx::Error> {
    sqlx::query_as("SELECT sku, on_hand, reserved FROM stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE")
        .bind(skus)
        .fetch_all(conn)
        .await
}

/// The skus the RESERVED reservations of `order_ids` hold, sorted.
pub(crate) async fn skus_held_by(conn: &mut PgConnection, order_ids: &[Uuid]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT l.sku FROM reservations r JOIN reservation_lines l USING (reservation_id)
         WHERE r.order_id = ANY($1) AND r.status = 'RESERVED' ORDER BY l.sku",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await
}

/// Adds `delta[i]` (negative to give back) to what is reserved of `skus[i]`.
pub(crate) async fn add_reserved(conn: &mut PgConnection, skus: &[String], delta: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stock SET reserved = stock.reserved + t.delta, updated_at = now()
         FROM unnest($1::text[], $2::bigint[]) AS t(sku, delta) WHERE stock.sku = t.sku",
    )
    .bind(skus)
    .bind(delta)
    .execute(conn)
    .await?;
    Ok(())
}

/// A reservation's status as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Reserved,
    Rejected,
    Released,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "RESERVED",
            Self::Rejected => "REJECTED",
            Self::Released => "RELEASED",
        }
    }

    pub(crate) fn parse(raw: &str) -> Option<Self> {
        [Self::Reserved, Self::Rejected, Self::Released].into_iter().find(|s| s.as_str() == raw)
    }
}

/// A reservation as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ReservationRow {
    pub(crate) reservation_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) status: String,
    pub(crate) detail: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl ReservationRow {
    pub(crate) fn status(&self) -> Status {
        Status::parse(&self.status).unwrap_or(Status::Rejected)
    }
}

const RESERVATION_COLUMNS: &str = "reservation_id, order_id, status, detail, created_at, updated_at";

/// The reservation of `order_id`, if any command for the order has arrived.
pub(crate) async fn reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE order_id = $1"))
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

/// [`reservation`], locking the row until the transaction ends.
pub(crate) async fn reservation_for_update(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE order_id = $1 FOR UPDATE"))
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

/// A reservation to insert.
pub(crate) struct NewReservation<'a> {
    pub(crate) order_id: Uuid,
    pub(crate) status: Status,
    pub(crate) detail: &'a str,
    pub(crate) released_first: bool,
    pub(crate) correlation_id: &'a str,
}

/// Inserts the order's reservation, or returns None when the order has one
/// already (a concurrent command for it committed first: read that one).
pub(crate) async fn insert_reservation(
    conn: &mut PgConnection,
    new: &NewReservation<'_>,
) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO reservations (reservation_id, order_id, status, detail, released_first, correlation_id)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING RETURNING {RESERVATION_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.order_id)
    .bind(new.status.as_str())
    .bind(new.detail)
    .bind(new.released_first)
    .bind(new.correlation_id)
    .fetch_optional(conn)
    .await
}

/// Inserts the order's reservation with its lines (skus unique) and, when
/// it is RESERVED, adds them to what the stock rows (locked by the caller)
/// have reserved: one statement. Returns None, writing nothing, when the
/// order has a reservation already (a concurrent command for it committed
/// first: read that one).
pub(crate) async fn insert_reservation_with_lines(
    conn: &mut PgConnection,
    new: &NewReservation<'_>,
    skus: &[String],
    quantities: &[i64],
) -> Result<Option<ReservationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "WITH made AS (
             INSERT INTO reservations (reservation_id, order_id, status, detail, released_first, correlation_id)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING RETURNING {RESERVATION_COLUMNS}),
         wanted AS (SELECT * FROM unnest($7::text[], $8::bigint[]) AS t(sku, quantity)),
         lines AS (INSERT INTO reservation_lines (reservation_id, sku, quantity)
             SELECT made.reservation_id, wanted.sku, wanted.quantity FROM made, wanted),
         held AS (UPDATE stock SET reserved = stock.reserved + wanted.quantity, updated_at = now()
             FROM made, wanted WHERE stock.sku = wanted.sku AND made.status = 'RESERVED')
         SELECT * FROM made"
    ))
    .bind(Uuid::now_v7())
    .bind(new.order_id)
    .bind(new.status.as_str())
    .bind(new.detail)
    .bind(new.released_first)
    .bind(new.correlation_id)
    .bind(skus)
    .bind(quantities)
    .fetch_optional(conn)
    .await
}

/// The lines of a reservation, in sku order.
pub(crate) async fn lines(conn: &mut PgConnection, reservation_id: Uuid) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT sku, quantity FROM reservation_lines WHERE reservation_id = $1 ORDER BY sku")
        .bind(reservation_id)
        .fetch_all(conn)
        .await
}

/// Moves a reservation to `status`.
pub(crate) async fn set_status(
    conn: &mut PgConnection,
    reservation_id: Uuid,
    status: Status,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE reservations SET status = $2, updated_at = now() WHERE reservation_id = $1")
        .bind(reservation_id)
        .bind(status.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// A stored time as protobuf carries it.
pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}
