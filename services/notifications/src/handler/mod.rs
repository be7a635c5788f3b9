//! Turns order events (created, completed, failed) into notifications,
//! inside the inbox's transaction.

mod event;

pub(crate) use event::{Common, MESSAGE_TYPES};
pub use event::{OrderEvent, routing_keys};
use inbox::{BatchError, Handler, HandlerError, MessageContext};
use platform::values::{Amount, Currency, CustomerId};
use sqlx::PgConnection;
use telemetry::{DbTarget, correlation::CorrelationId};
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::{
    db::{self, Inserted, NewNotification},
    delivery::Handoff,
};

/// The inbox handler of `pulse.events.v1.OrderCreated`, `OrderCompleted` and
/// `OrderFailed`, all on one queue so an order's notifications keep its order.
/// With a [`Handoff`] (this replica dispatches), the deliveries it writes are
/// claimed for the local dispatcher and handed to it at the commit.
#[derive(Debug, Clone, Default)]
pub struct OrderEventsHandler {
    handoff: Option<Handoff>,
}

impl OrderEventsHandler {
    pub(crate) fn new(handoff: Option<Handoff>) -> Self {
        Self { handoff }
    }

    async fn insert(&self, tx: &mut PgConnection, new: &[NewNotification]) -> Result<Inserted, sqlx::Error> {
        let Some(handoff) = &self.handoff else { return db::insert(tx, new, None).await };
        let claim = handoff.claim();
        let mut inserted = db::insert(tx, new, claim.as_ref()).await?;
        // Every event, even with nothing claimed this time: what an earlier,
        // rolled-back attempt at it claimed must never be handed over.
        for notification in new {
            handoff.written(notification.event_id, inserted.claimed.remove(&notification.event_id).unwrap_or_default());
        }
        Ok(inserted)
    }
}

impl Handler for OrderEventsHandler {
    type Event = OrderEvent;
    const MESSAGE_TYPES: &'static [&'static str] = MESSAGE_TYPES;

    fn decode(message_type: &str, payload: &[u8]) -> Result<OrderEvent, inbox::DecodeError> {
        OrderEvent::decode(message_type, payload)
    }

    fn event_id(event: &OrderEvent) -> &str {
        event.common().event_id
    }

    /// The rules `CreateOrder` applies to its request (the same parsers), so
    /// an event no API call could have produced is never notified; each
    /// problem names its field.
    fn validate(event: &OrderEvent) -> Result<(), String> {
        let event = event.common();
        let mut problems = Vec::new();
        let mut check = |field: &str, raw: &str, parsed: Result<(), String>| {
            if let Err(problem) = parsed {
                problems.push(format!("{field}: {raw:?} {problem}"));
            }
        };
        check(
            "order_id",
            event.order_id,
            Uuid::try_parse(event.order_id).map(drop).map_err(|_| "is not a UUID".into()),
        );
        check("customer_id", event.customer_id, CustomerId::parse(event.customer_id).map(drop));
        let currency = Currency::parse(event.currency);
        check("amount", event.amount, Amount::parse_in(event.amount, currency.as_ref().ok().copied()).map(drop));
        check("currency", event.currency, currency.map(drop));
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// The fields as the proto names them, `occurred_at` in RFC 3339, and
    /// the event's routing key as `type`.
    fn describe(event: &OrderEvent) -> serde_json::Value {
        let common = event.common();
        let occurred_at = common
            .occurred_at
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        let mut described = serde_json::json!({
            "type": event.kind(),
            "event_id": common.event_id,
            "order_id": common.order_id,
            "customer_id": common.customer_id,
            "amount": common.amount,
            "currency": common.currency,
            "occurred_at": occurred_at,
            "correlation_id": common.correlation_id,
        });
        if let OrderEvent::Failed(failed) = event {
            described["reason"] = event::reason_name(failed.reason).into();
            described["detail"] = failed.detail.clone().into();
        }
        described
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &OrderEvent,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let new = notification_for(event, ctx)?;
        let span = statement_spans(std::iter::once(ctx)).pop().unwrap_or_else(Span::none);
        let inserted = self.insert(tx, std::slice::from_ref(&new)).instrument(span).await?;
        log_inserted(&new, inserted.events.contains(&new.event_id));
        Ok(())
    }

    /// One INSERT for the whole batch: at thousands of events a second the
    /// round trip per row is what would cost most.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[(&OrderEvent, &MessageContext)],
    ) -> Result<(), BatchError> {
        let new = events
            .iter()
            .enumerate()
            .map(|(index, (event, ctx))| {
                notification_for(event, ctx).map_err(|error| BatchError { index: Some(index), error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spans = statement_spans(events.iter().map(|(_, ctx)| *ctx));
        let inserted = self.insert(tx, &new).await?;
        drop(spans);
        for (notification, (_, ctx)) in new.iter().zip(events) {
            ctx.span.in_scope(|| log_inserted(notification, inserted.events.contains(&notification.event_id)));
        }
        Ok(())
    }

    fn committed(&self, events: &[(&OrderEvent, &MessageContext)]) {
        if let Some(handoff) = &self.handoff {
            handoff.committed(events.iter().map(|(_, ctx)| ctx.event_id));
        }
    }
}

/// A span per message, child of its span, for the one INSERT that writes all
/// of their notifications ([`Span::none`]s while spans are not exported);
/// nothing outside the inbox's [`DbTarget`] scope.
fn statement_spans<'a>(messages: impl ExactSizeIterator<Item = &'a MessageContext>) -> Vec<Span> {
    let Some(db) = DbTarget::current() else { return Vec::new() };
    let batch_size = messages.len();
    messages.map(|ctx| db.span(&ctx.span, "INSERT", db::TABLE, batch_size)).collect()
}

fn notification_for(event: &OrderEvent, ctx: &MessageContext) -> Result<NewNotification, HandlerError> {
    // validate() has checked it; a failure here would be a bug, not worth retrying.
    let order_id = Uuid::parse_str(event.common().order_id).map_err(|err| HandlerError::Permanent(err.into()))?;
    Ok(NewNotification {
        order_id,
        event_id: ctx.event_id,
        message: event.message(order_id),
        correlation_id: correlation_of(&event.common(), ctx).to_string(),
        event_type: event.kind(),
        data: OrderEventsHandler::describe(event).to_string(),
        traceparent: telemetry::propagation::traceparent_of(&ctx.span),
    })
}

fn log_inserted(notification: &NewNotification, inserted: bool) {
    if inserted {
        tracing::debug!(order_id = %notification.order_id, "notification created");
    } else {
        tracing::info!(order_id = %notification.order_id, "a notification for this event already exists");
    }
}

/// The event's own correlation id, else the message header's, else a new one.
fn correlation_of(event: &Common<'_>, ctx: &MessageContext) -> CorrelationId {
    CorrelationId::parse(event.correlation_id)
        .or_else(|| ctx.correlation_id.as_deref().and_then(CorrelationId::parse))
        .unwrap_or_else(CorrelationId::generate)
}

#[cfg(test)]
mod tests {
    use contracts::{
        events::v1::{OrderCompleted, OrderCreated, OrderFailed},
        orders::v1::FailureReason,
    };

    use super::*;

    fn created() -> OrderCreated {
        OrderCreated {
            event_id: Uuid::new_v4().to_string(),
            order_id: Uuid::new_v4().to_string(),
            customer_id: "c-1".into(),
            amount: "77.50".into(),
            currency: "EUR".into(),
            occurred_at: None,
            correlation_id: "corr-event".into(),
        }
    }

    fn failed(reason: FailureReason, detail: &str) -> OrderEvent {
        let c = created();
        OrderEvent::Failed(OrderFailed {
            event_id: c.event_id,
            order_id: c.order_id,
            customer_id: c.customer_id,
            amount: c.amount,
            currency: c.currency,
            occurred_at: None,
            correlation_id: c.correlation_id,
            reason: reason as i32,
            detail: detail.into(),
        })
    }

    fn ctx(header: Option<&str>) -> MessageContext {
        MessageContext {
            event_id: Uuid::new_v4(),
            correlation_id: header.map(str::to_owned),
            attempt: 1,
            redelivered: false,
            span: tracing::Span::none(),
        }
    }

    #[test]
    fn validation_names_each_problem() {
        assert!(OrderEventsHandler::validate(&OrderEvent::Created(created())).is_ok());
        let mut bad = created();
        bad.order_id.clear();
        bad.currency = "euro".into();
        let error = OrderEventsHandler::validate(&OrderEvent::Created(bad)).unwrap_err();
        assert!(error.contains("order_id") && error.contains("currency"), "{error}");
    }

    #[test]
    fn validation_refuses_what_create_order_refuses() {
        let refused = |tweak: fn(&mut OrderCreated), field: &str| {
            let mut bad = created();
            tweak(&mut bad);
            let error = OrderEventsHandler::validate(&OrderEvent::Created(bad)).unwrap_err();
            assert!(error.starts_with(&format!("{field}: ")), "{error}");
        };
        refused(|e| e.amount = "NaN".into(), "amount");
        refused(|e| e.amount = "-1".into(), "amount");
        refused(|e| e.amount = "1.234".into(), "amount");
        refused(|e| e.amount = "0".into(), "amount");
        refused(|e| e.customer_id.clear(), "customer_id");
        refused(|e| e.customer_id = " c-1".into(), "customer_id");
        refused(|e| e.currency = "XYZ".into(), "currency");
        refused(|e| e.currency = "eur".into(), "currency");
        refused(|e| e.order_id = "42".into(), "order_id");
    }

    #[test]
    fn outcomes_are_checked_like_the_order_they_end() {
        assert!(OrderEventsHandler::validate(&failed(FailureReason::OutOfStock, "")).is_ok());
        let OrderEvent::Failed(mut bad) = failed(FailureReason::OutOfStock, "") else { unreachable!() };
        bad.amount = "-3".into();
        let error = OrderEventsHandler::validate(&OrderEvent::Failed(bad)).unwrap_err();
        assert!(error.starts_with("amount: "), "{error}");
    }

    #[test]
    fn each_type_decodes_into_its_own_variant() {
        use prost::Message as _;
        let c = created();
        let body = c.encode_to_vec();
        let decode = |t: &str| OrderEventsHandler::decode(t, &body).unwrap();
        assert!(matches!(decode("pulse.events.v1.OrderCreated"), OrderEvent::Created(_)));
        assert!(matches!(decode("pulse.events.v1.OrderCompleted"), OrderEvent::Completed(_)));
        // The shared fields have the same numbers in all three messages.
        assert_eq!(decode("pulse.events.v1.OrderFailed").common().order_id, c.order_id);
    }

    #[test]
    fn correlation_comes_from_the_event_then_the_header() {
        let event = OrderEvent::Created(created());
        assert_eq!(correlation_of(&event.common(), &ctx(Some("corr-header"))).as_str(), "corr-event");
        let mut bare = created();
        bare.correlation_id.clear();
        let bare = OrderEvent::Created(bare);
        assert_eq!(correlation_of(&bare.common(), &ctx(Some("corr-header"))).as_str(), "corr-header");
        assert!(Uuid::parse_str(correlation_of(&bare.common(), &ctx(Some("bad header"))).as_str()).is_ok());
    }

    #[test]
    fn the_notifications_read_well() {
        let (event, ctx) = (created(), ctx(None));
        let order = event.order_id.clone();
        let new = notification_for(&OrderEvent::Created(event.clone()), &ctx).unwrap();
        assert_eq!(new.message, format!("Order {order} for 77.50 EUR has been received"));
        assert_eq!((new.event_id, new.correlation_id.as_str()), (ctx.event_id, "corr-event"));
        let completed = OrderEvent::Completed(OrderCompleted {
            event_id: event.event_id,
            order_id: event.order_id,
            customer_id: event.customer_id,
            amount: event.amount,
            currency: event.currency,
            occurred_at: None,
            correlation_id: event.correlation_id,
        });
        let message = |e: &OrderEvent| notification_for(e, &ctx).unwrap().message;
        assert_eq!(
            message(&completed),
            format!("Order {order} for 77.50 EUR is complete: paid and its items reserved")
        );
        let declined = message(&failed(FailureReason::PaymentDeclined, "credit limit 50.00 EUR"));
        assert!(declined.ends_with("has failed: the payment was declined (credit limit 50.00 EUR)"), "{declined}");
        let timed_out = message(&failed(FailureReason::TimedOut, ""));
        assert!(timed_out.ends_with("has failed: a step did not answer in time"), "{timed_out}");
        assert!(message(&failed(FailureReason::OutOfStock, "sku A")).contains("an item is out of stock (sku A)"));
    }
}
