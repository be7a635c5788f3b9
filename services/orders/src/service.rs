//! What the RPCs do, apart from their wire format.

use anyhow::anyhow;
use chrono::{DurationRound, TimeDelta, Utc};
use infra::lane::Lane;
use outbox::OutboxWriter;
use telemetry::{DbTarget, correlation::CorrelationId, tracecontext::TraceParent};
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::{
    db::{self, OrderRow},
    domain::{Amount, Currency, FieldViolation, NewOrder},
    error::OrdersError,
    group::GroupWriter,
    messaging,
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
}

impl Orders {
    /// Starts `writers` writers for CreateOrder's inserts (see [`crate::group`]);
    /// call it inside the runtime.
    pub fn new(lane: Lane, outbox: OutboxWriter, writers: usize) -> Self {
        let db = DbTarget::new(lane.options());
        let group = GroupWriter::spawn(lane.clone(), writers, db.clone(), outbox);
        Self { lane, group, db }
    }

    /// Stores the order and its `OrderCreated` event in one transaction
    /// (shared with other calls' orders under load), or returns the order an
    /// earlier call with the same `request_id` created.
    pub async fn create(
        &self,
        customer_id: &str,
        amount: &str,
        currency: &str,
        request_id: &str,
        correlation: &CorrelationId,
        trace: TraceParent,
    ) -> Result<OrderRow, OrdersError> {
        let order = NewOrder::parse(customer_id, amount, currency, request_id).map_err(|violations| {
            tracing::info!(fields = ?violations.iter().map(|v| v.field).collect::<Vec<_>>(), "order rejected");
            OrdersError::InvalidArgument(violations)
        })?;
        let draft = OrderRow {
            order_id: Uuid::now_v7(),
            customer_id: order.customer_id.as_str().to_owned(),
            amount: order.amount.to_string(),
            currency: order.currency.code().to_owned(),
            status: db::STATUS_CREATED.to_owned(),
            request_id: order.request_id,
            event_id: Uuid::now_v7(),
            correlation_id: correlation.as_str().to_owned(),
            // Postgres keeps microseconds: truncate so the event's occurred_at equals the row's created_at.
            created_at: Utc::now().duration_trunc(TimeDelta::microseconds(1)).map_err(anyhow::Error::from)?,
        };
        let event = messaging::outbox_message(&draft, trace);
        // The writer has already woken the relay.
        let Some(row) = self.group.insert(draft, event).await? else {
            return self.replay(&order).await;
        };
        tracing::info!(order_id = %row.order_id, event_id = %row.event_id, "order created");
        Ok(row)
    }

    /// The answer to a retry: the stored order, if the retry asks for the same thing.
    async fn replay(&self, order: &NewOrder) -> Result<OrderRow, OrdersError> {
        let request_id = order.request_id.ok_or_else(|| anyhow!("insert conflicted without a request_id"))?;
        let found = self
            .lane
            .read(|conn| Box::pin(db::find_by_request_id(conn, request_id).instrument(self.statement("SELECT"))))
            .await;
        let existing = found?.ok_or_else(|| anyhow!("request_id {request_id} conflicted but no order has it"))?;
        let same = existing.customer_id == order.customer_id.as_str()
            && Amount::parse_with_decimals(&existing.amount, Currency::MAX_MINOR_UNIT)
                .is_ok_and(|stored| stored.same_value(order.amount))
            && existing.currency == order.currency.code();
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
