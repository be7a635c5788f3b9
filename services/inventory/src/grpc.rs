//! `pulse.inventory.v1.InventoryService`: proto in, rows out. Reservations
//! are only read here; the saga's commands make them (see [`crate::saga`]).

use contracts::inventory::v1::{
    GetReservationRequest, GetReservationResponse, GetStockRequest, GetStockResponse, Reservation, ReservationLine,
    ReservationStatus, SetStockRequest, SetStockResponse, Stock, inventory_service_server::InventoryService,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{
    db::{self, StockRow},
    domain::{Sku, parse_uuid},
    error::InventoryError,
};

pub(crate) struct InventoryApi {
    pool: PgPool,
}

impl InventoryApi {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn set_stock(&self, request: Request<SetStockRequest>) -> Result<Response<SetStockResponse>, Status> {
        let body = request.into_inner();
        let stock = self.set(&body).await?;
        Ok(Response::new(SetStockResponse { stock: Some(stock) }))
    }

    async fn get_stock(&self, request: Request<GetStockRequest>) -> Result<Response<GetStockResponse>, Status> {
        let sku = parse_sku(&request.get_ref().sku)?;
        let mut conn = self.pool.acquire().await.map_err(InventoryError::from)?;
        let row = db::stock(&mut conn, sku.as_str()).await.map_err(InventoryError::from)?;
        // An unknown sku has no stock: zeros, not NOT_FOUND.
        let row = row.unwrap_or(StockRow { sku: sku.to_string(), on_hand: 0, reserved: 0 });
        Ok(Response::new(GetStockResponse { stock: Some(to_stock(&row)) }))
    }

    async fn get_reservation(
        &self,
        request: Request<GetReservationRequest>,
    ) -> Result<Response<GetReservationResponse>, Status> {
        let raw = &request.get_ref().order_id;
        let order_id = parse_uuid(raw).map_err(|e| InventoryError::field("order_id", e))?;
        let reservation = self.reservation(order_id).await?;
        Ok(Response::new(GetReservationResponse { reservation: Some(reservation) }))
    }
}

impl InventoryApi {
    /// Sets what is on hand; never below what is reserved.
    async fn set(&self, body: &SetStockRequest) -> Result<Stock, InventoryError> {
        let sku = parse_sku(&body.sku)?;
        let on_hand = i64::from(body.on_hand);
        let mut tx = self.pool.begin().await?;
        if let Some(row) = db::stock_for_update(&mut tx, sku.as_str()).await?
            && on_hand < row.reserved
        {
            return Err(below_reserved(row.reserved));
        }
        let row = match db::set_on_hand(&mut tx, sku.as_str(), on_hand).await {
            Ok(row) => row,
            // A row created and reserved from since the check above.
            Err(sqlx::Error::Database(err)) if err.constraint() == Some(db::RESERVED_WITHIN_ON_HAND) => {
                drop(tx);
                let mut conn = self.pool.acquire().await?;
                let reserved = db::stock(&mut conn, sku.as_str()).await?.map_or(0, |row| row.reserved);
                return Err(below_reserved(reserved));
            }
            Err(err) => return Err(err.into()),
        };
        tx.commit().await?;
        tracing::info!(sku = %sku, on_hand, reserved = row.reserved, "stock set");
        Ok(to_stock(&row))
    }

    async fn reservation(&self, order_id: uuid::Uuid) -> Result<Reservation, InventoryError> {
        let mut conn = self.pool.acquire().await?;
        let row = db::reservation(&mut conn, order_id).await?.ok_or(InventoryError::NotFound("reservation"))?;
        let lines = db::lines(&mut conn, row.reservation_id).await?;
        let status = match row.status() {
            db::Status::Reserved => ReservationStatus::Reserved,
            db::Status::Rejected => ReservationStatus::Rejected,
            db::Status::Released => ReservationStatus::Released,
        };
        Ok(Reservation {
            reservation_id: row.reservation_id.to_string(),
            order_id: row.order_id.to_string(),
            lines: lines
                .into_iter()
                .map(|(sku, quantity)| ReservationLine { sku, quantity: clamp_u32(quantity) })
                .collect(),
            status: status.into(),
            created_at: Some(db::timestamp(row.created_at)),
            updated_at: Some(db::timestamp(row.updated_at)),
        })
    }
}

fn parse_sku(raw: &str) -> Result<Sku, InventoryError> {
    Sku::parse(raw).map_err(|e| InventoryError::field("sku", e))
}

fn below_reserved(reserved: i64) -> InventoryError {
    InventoryError::field("on_hand", format!("must not be below the {reserved} reserved"))
}

fn to_stock(row: &StockRow) -> Stock {
    Stock {
        sku: row.sku.clone(),
        on_hand: clamp_u32(row.on_hand),
        reserved: clamp_u32(row.reserved),
        available: clamp_u32(row.on_hand - row.reserved),
    }
}

/// A stored count as the proto's `uint32`: never negative (the table's checks
/// keep it within range; SetStock takes a `uint32`).
fn clamp_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_is_never_negative() {
        let stock = to_stock(&StockRow { sku: "A".into(), on_hand: 3, reserved: 5 });
        assert_eq!((stock.on_hand, stock.reserved, stock.available), (3, 5, 0));
    }

    #[test]
    fn bad_skus_name_the_field() {
        match parse_sku("") {
            Err(InventoryError::InvalidArgument(v)) => assert_eq!(v[0].field, "sku"),
            other => panic!("{other:?}"),
        }
    }
}
