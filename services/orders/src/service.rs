//! What the RPCs do, apart from their wire format.

use std::time::Duration;

use anyhow::anyhow;
use chrono::DateTime;
use contracts::orders::v1::CreateOrderRequest;
use infra::lane::Lane;
use outbox::OutboxWriter;
use telemetry::{DbTarget, correlation::CorrelationId, tracecontext::TraceParent};
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::{
    db::{self, NewOrderRows, OrderRow},
    domain::{Amount, Currency, FieldViolation, NewOrder, parse_lines},
    error::OrdersError,
    group::GroupWriter,
    messaging,
    saga::{SagaMetrics, Store},
};

#[derive(Clone)]
pub struct Orders {
    /// Every call is one statement: connections come back without a ping.
    lane: Lane,
    /// CreateOrder's inserts, grouped into shared transactions under load.
    /// Its writers wake the relay after each commit.
    group: GroupWriter,
    /// Where the lane connects, for the statements' spans.
    db: DbTarget,
    /// How long the saga's first step (the payment) may take; None when the
    /// saga is off (`SAGA_ENABLED=false`) and an order writes only its event.
    step_timeout: Option<Duration>,
    /// Counts the sagas started.
    metrics: SagaMetrics,
    /// Where the order's messages are published (`ORDERS_EXCHANGE`).
    exchange: String,
}

impl Orders {
    /// Starts `writers` writers for CreateOrder's inserts (see [`crate::group`]);
    /// call it inside the runtime. `saga` gives how long a new order's
    /// payment may take, the exchange its messages go to and the metrics.
    pub fn new(lane: Lane, outbox: OutboxWriter, writers: usize, saga: &Store) -> Self {
        let db = DbTarget::new(lane.options());
        let group = GroupWriter::spawn(lane.clone(), writers, db.clone(), outbox);
        let (step_timeout, metrics, exchange) = (saga.timing.step_timeout, saga.metrics.clone(), saga.exchange.clone());
        Self { lane, group, db, step_timeout: Some(step_timeout), metrics, exchange }
    }

    /// Orders end at CREATED with their `OrderCreated` alone: no saga row, no
    /// `ProcessPayment` (`SAGA_ENABLED=false`).
    pub fn without_saga(self) -> Self {
        Self { step_timeout: None, ..self }
    }

    /// Stores the order, its lines, its saga and its `OrderCreated` event and
    /// `ProcessPayment` command in one transaction (shared with other calls'
    /// orders under load), or returns the order an earlier call with the
    /// same `request_id` created.
    pub async fn create(
        &self,
        request: &CreateOrderRequest,
        correlation: &CorrelationId,
        trace: TraceParent,
    ) -> Result<OrderRow, OrdersError> {
        let CreateOrderRequest { customer_id, amount, currency, request_id, lines } = request;
        let parsed = NewOrder::parse(customer_id, amount, currency, request_id);
        let lines = parse_lines(lines.iter().map(|l| (l.sku.as_str(), l.quantity)));
        let (order, lines) = match (parsed, lines) {
            (Ok(order), Ok(lines)) => (order, lines),
            (order, lines) => {
                let violations: Vec<FieldViolation> =
                    order.err().into_iter().flatten().chain(lines.err().into_iter().flatten()).collect();
                tracing::info!(fields = ?violations.iter().map(|v| v.field).collect::<Vec<_>>(), "order rejected");
                return Err(OrdersError::InvalidArgument(violations));
            }
        };
        // The statement stamps the order's times and its messages' occurred_at
        // with the database's clock: these two are not written.
        let unstamped = DateTime::UNIX_EPOCH;
        let draft = OrderRow {
            order_id: Uuid::now_v7(),
            customer_id: order.customer_id.as_str().to_owned(),
            amount: order.amount.to_string(),
            currency: order.currency.code().to_owned(),
            status: db::STATUS_CREATED.to_owned(),
            request_id: order.request_id,
            event_id: Uuid::now_v7(),
            correlation_id: correlation.as_str().to_owned(),
            created_at: unstamped,
            failure_reason: None,
            failure_detail: None,
            updated_at: unstamped,
            lines: lines.clone(),
        };
        let rows = NewOrderRows {
            created: messaging::outbox_message(&draft, &self.exchange, trace),
            saga: self.step_timeout.map(|step_timeout| db::SagaStart {
                process_payment: messaging::process_payment(&draft, &self.exchange, Uuid::now_v7(), trace),
                step_timeout,
            }),
            order: draft,
        };
        // The writer has already woken the relay.
        let Some(row) = self.group.insert(rows).await? else {
            return self.replay(&order, &lines).await;
        };
        if self.step_timeout.is_some() {
            self.metrics.started(1);
        }
        tracing::info!(order_id = %row.order_id, event_id = %row.event_id, "order created");
        Ok(row)
    }

    /// The answer to a retry: the stored order, if the retry asks for the same thing.
    async fn replay(&self, order: &NewOrder, lines: &[db::OrderLine]) -> Result<OrderRow, OrdersError> {
        let request_id = order.request_id.ok_or_else(|| anyhow!("insert conflicted without a request_id"))?;
        let found = self
            .lane
            .read(|conn| Box::pin(db::find_by_request_id(conn, request_id).instrument(self.statement("SELECT"))))
            .await;
        let existing = found?.ok_or_else(|| anyhow!("request_id {request_id} conflicted but no order has it"))?;
        let same = existing.customer_id == order.customer_id.as_str()
            && Amount::parse_with_decimals(&existing.amount, Currency::MAX_MINOR_UNIT)
                .is_ok_and(|stored| stored.same_value(order.amount))
            && existing.currency == order.currency.code()
            && existing.lines == lines;
        if !same {
            return Err(OrdersError::InvalidArgument(vec![FieldViolation::new(
                "request_id",
                "was already used for an order with other details",
            )]));
        }
        tracing::info!(order_id = %existing.order_id, %request_id, "retry answered with the existing order");
        Ok(existing)
    }

    pub async fn get(&self, order_id: Uuid) -> Result<OrderRow, OrdersError> {
        let found =
            self.lane.read(|conn| Box::pin(db::find(conn, order_id).instrument(self.statement("SELECT")))).await;
        found?.ok_or(OrdersError::NotFound)
    }

    /// The client span of one statement on the orders table, in the call's span.
    fn statement(&self, operation: &'static str) -> Span {
        self.db.span(&Span::current(), operation, db::TABLE, 1)
    }
}
