//! The gRPC face of the service: proto ⇄ domain, correlation and trace context
//! from metadata, one span per call.

use contracts::orders::v1::{
    CreateOrderRequest, CreateOrderResponse, GetOrderRequest, GetOrderResponse, Order, OrderStatus,
    order_service_server::OrderService,
};
use telemetry::{correlation::CorrelationId, tracecontext::TraceParent};
use tonic::{Request, Response, Status, metadata::MetadataValue};
use tracing::{Instrument, Span};

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

/// The server span of one call to `method` (a literal: span names are static),
/// with the OpenTelemetry RPC attributes; the status code and the trace
/// context are recorded as the call goes.
macro_rules! server_span {
    ($method:literal, $correlation:expr) => {
        tracing::info_span!(
            $method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = contracts::orders::v1::SERVICE_NAME,
            rpc.method = $method,
            rpc.grpc.status_code = tracing::field::Empty,
            correlation_id = %$correlation,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        )
    };
}

#[tonic::async_trait]
impl OrderService for OrdersApi {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        let correlation = CorrelationId::from_header(header(&request, telemetry::correlation::HEADER));
        let incoming = header(&request, telemetry::tracecontext::HEADER);
        let span = server_span!("CreateOrder", correlation);
        // The outbox row carries this call's trace context.
        let trace = continue_trace(&span, incoming);
        let body = request.into_inner();
        let result = self
            .orders
            .create(&body.customer_id, &body.amount, &body.currency, &body.request_id, &correlation, trace)
            .instrument(span.clone())
            .await
            .map(|row| CreateOrderResponse {
                order_id: row.order_id.to_string(),
                event_id: row.event_id.to_string(),
                correlation_id: row.correlation_id.clone(),
                order: Some(order(row)),
            });
        respond(result, &correlation, &span)
    }

    async fn get_order(&self, request: Request<GetOrderRequest>) -> Result<Response<GetOrderResponse>, Status> {
        let correlation = CorrelationId::from_header(header(&request, telemetry::correlation::HEADER));
        let span = server_span!("GetOrder", correlation);
        continue_trace(&span, header(&request, telemetry::tracecontext::HEADER));
        let order_id = request.into_inner().order_id;
        let result = async {
            let order_id = parse_uuid(&order_id)
                .map_err(|e| OrdersError::InvalidArgument(vec![FieldViolation::new("order_id", e)]))?;
            self.orders.get(order_id).await
        }
        .instrument(span.clone())
        .await
        .map(|row| GetOrderResponse { order: Some(order(row)) });
        respond(result, &correlation, &span)
    }
}

/// Joins `span` to the caller's trace and records the trace context its log
/// lines carry. With OpenTelemetry that is the span's own context; without
/// it, the caller's trace (or a new one) with a generated span id.
fn continue_trace(span: &Span, incoming: Option<&str>) -> TraceParent {
    telemetry::set_parent(span, incoming);
    let trace = telemetry::traceparent_of(span)
        .and_then(|own| TraceParent::parse(&own))
        .unwrap_or_else(|| TraceParent::continue_or_start(incoming));
    span.record("trace_id", trace.trace_id_hex());
    span.record("span_id", format!("{:016x}", trace.span_id));
    trace
}

fn header<'a, T>(request: &'a Request<T>, name: &str) -> Option<&'a str> {
    request.metadata().get(name).and_then(|value| value.to_str().ok())
}

/// Every answer, success or error, carries the call's correlation id in its
/// metadata; its status code goes on the call's span (an error is logged there).
fn respond<T>(result: Result<T, OrdersError>, correlation: &CorrelationId, span: &Span) -> Result<Response<T>, Status> {
    let value = MetadataValue::try_from(correlation.as_str()).expect("correlation ids are ASCII");
    let answer = match result {
        Ok(body) => {
            let mut response = Response::new(body);
            response.metadata_mut().insert(telemetry::correlation::HEADER, value);
            Ok(response)
        }
        Err(err) => {
            let mut status = span.in_scope(|| Status::from(err));
            status.metadata_mut().insert(telemetry::correlation::HEADER, value);
            Err(status)
        }
    };
    let code = answer.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
    span.record("rpc.grpc.status_code", code as i64);
    answer
}

fn order(row: OrderRow) -> Order {
    Order {
        order_id: row.order_id.to_string(),
        customer_id: row.customer_id,
        amount: row.amount,
        currency: row.currency,
        status: match row.status.as_str() {
            "CREATED" => OrderStatus::Created,
            _ => OrderStatus::Unspecified,
        } as i32,
        correlation_id: row.correlation_id,
        created_at: Some(db::timestamp(row.created_at)),
        request_id: row.request_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}
