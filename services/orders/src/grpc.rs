//! The gRPC face of the service: proto ⇄ domain. The call's span, trace
//! context and correlation id come from [`platform::rpc::RpcLayer`].

use contracts::orders::v1::{
    CreateOrderRequest, CreateOrderResponse, FailureReason, GetOrderRequest, GetOrderResponse, Order, OrderLine,
    OrderStatus, order_service_server::OrderService,
};
use platform::rpc::CallContext;
use tonic::{Request, Response, Status};

use crate::{
    db::{self, OrderRow},
    domain::{FieldViolation, parse_uuid},
    error::OrdersError,
    service::Orders,
};

pub struct OrdersApi {
    orders: Orders,
}

impl OrdersApi {
    pub fn new(orders: Orders) -> Self {
        Self { orders }
    }
}

#[tonic::async_trait]
impl OrderService for OrdersApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        // The outbox row carries the correlation id and this call's trace context.
        let CallContext { correlation, trace } = CallContext::of(&request);
        let body = request.into_inner();
        let row = self.orders.create(&body, &correlation, trace).await?;
        Ok(Response::new(CreateOrderResponse {
            order_id: row.order_id.to_string(),
            event_id: row.event_id.to_string(),
            correlation_id: row.correlation_id.clone(),
            order: Some(order(row)),
        }))
    }

    async fn get_order(&self, request: Request<GetOrderRequest>) -> Result<Response<GetOrderResponse>, Status> {
        let order_id = parse_uuid(&request.into_inner().order_id)
            .map_err(|e| OrdersError::InvalidArgument(vec![FieldViolation::new("order_id", e)]))?;
        let row = self.orders.get(order_id).await?;
        Ok(Response::new(GetOrderResponse { order: Some(order(row)) }))
    }
}

fn order(row: OrderRow) -> Order {
    Order {
        order_id: row.order_id.to_string(),
        customer_id: row.customer_id,
        amount: row.amount,
        currency: row.currency,
        status: OrderStatus::from_str_name(&format!("ORDER_STATUS_{}", row.status)).unwrap_or(OrderStatus::Unspecified)
            as i32,
        correlation_id: row.correlation_id,
        created_at: Some(db::timestamp(row.created_at)),
        request_id: row.request_id.map(|id| id.to_string()).unwrap_or_default(),
        lines: row.lines.into_iter().map(|l| OrderLine { sku: l.sku, quantity: l.quantity }).collect(),
        failure: row
            .failure_reason
            .and_then(|reason| FailureReason::from_str_name(&format!("FAILURE_REASON_{reason}")))
            .unwrap_or(FailureReason::Unspecified) as i32,
        updated_at: Some(db::timestamp(row.updated_at)),
    }
}
