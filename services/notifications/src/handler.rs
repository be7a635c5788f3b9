//! Turns OrderCreated events into notifications, inside the inbox's transaction.

use contracts::events::v1::{ORDER_CREATED_TYPE, OrderCreated};
use inbox::{BatchError, Handler, HandlerError, MessageContext};
use platform::values::{Amount, Currency, CustomerId};
use sqlx::PgConnection;
use telemetry::{DbTarget, correlation::CorrelationId};
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::db::{self, NewNotification};

/// The inbox handler of `pulse.events.v1.OrderCreated`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderCreatedHandler;

impl Handler for OrderCreatedHandler {
    type Event = OrderCreated;
    const MESSAGE_TYPES: &'static [&'static str] = &[ORDER_CREATED_TYPE];

    fn decode(_: &str, payload: &[u8]) -> Result<OrderCreated, inbox::DecodeError> {
        inbox::decode_as(payload)
    }

    fn event_id(event: &OrderCreated) -> &str {
        &event.event_id
    }

    /// The rules `CreateOrder` applies to its request (the same parsers), so
    /// an event no API call could have produced is never notified; each
    /// problem names its field.
    fn validate(event: &OrderCreated) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut check = |field: &str, raw: &str, parsed: Result<(), String>| {
            if let Err(problem) = parsed {
                problems.push(format!("{field}: {raw:?} {problem}"));
            }
        };
        check(
            "order_id",
            &event.order_id,
            Uuid::try_parse(&event.order_id).map(drop).map_err(|_| "is not a UUID".into()),
        );
        check("customer_id", &event.customer_id, CustomerId::parse(&event.customer_id).map(drop));
        let currency = Currency::parse(&event.currency);
        check("amount", &event.amount, Amount::parse_in(&event.amount, currency.as_ref().ok().copied()).map(drop));
        check("currency", &event.currency, currency.map(drop));
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// The fields as the proto names them, `occurred_at` in RFC 3339.
    fn describe(event: &OrderCreated) -> serde_json::Value {
        let occurred_at = event
            .occurred_at
            .as_ref()
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        serde_json::json!({
            "event_id": event.event_id,
            "order_id": event.order_id,
            "customer_id": event.customer_id,
            "amount": event.amount,
            "currency": event.currency,
            "occurred_at": occurred_at,
            "correlation_id": event.correlation_id,
        })
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        event: &OrderCreated,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let new = notification_for(event, ctx)?;
        let span = statement_spans(std::iter::once(ctx)).pop().unwrap_or_else(Span::none);
        let inserted = db::insert(tx, std::slice::from_ref(&new)).instrument(span).await?;
        log_inserted(&new, inserted.contains(&new.event_id));
        Ok(())
    }

    /// One INSERT for the whole batch: at thousands of events a second the
    /// round trip per row is what would cost most.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[(&OrderCreated, &MessageContext)],
    ) -> Result<(), BatchError> {
        let new = events
            .iter()
            .enumerate()
            .map(|(index, (event, ctx))| {
                notification_for(event, ctx).map_err(|error| BatchError { index: Some(index), error })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spans = statement_spans(events.iter().map(|(_, ctx)| *ctx));
        let inserted = db::insert(tx, &new).await?;
        drop(spans);
        for (notification, (_, ctx)) in new.iter().zip(events) {
            ctx.span.in_scope(|| log_inserted(notification, inserted.contains(&notification.event_id)));
        }
        Ok(())
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

fn notification_for(event: &OrderCreated, ctx: &MessageContext) -> Result<NewNotification, HandlerError> {
    // validate() has checked it; a failure here would be a bug, not worth retrying.
    let order_id = Uuid::parse_str(&event.order_id).map_err(|err| HandlerError::Permanent(err.into()))?;
    Ok(NewNotification {
        order_id,
        event_id: ctx.event_id,
        message: message_for(order_id, &event.amount, &event.currency),
        correlation_id: correlation_of(event, ctx).to_string(),
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
fn correlation_of(event: &OrderCreated, ctx: &MessageContext) -> CorrelationId {
    CorrelationId::parse(&event.correlation_id)
        .or_else(|| ctx.correlation_id.as_deref().and_then(CorrelationId::parse))
        .unwrap_or_else(CorrelationId::generate)
}

fn message_for(order_id: Uuid, amount: &str, currency: &str) -> String {
    format!("Order {order_id} for {amount} {currency} has been received")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> OrderCreated {
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
        assert!(OrderCreatedHandler::validate(&event()).is_ok());
        let mut bad = event();
        bad.order_id.clear();
        bad.currency = "euro".into();
        let error = OrderCreatedHandler::validate(&bad).unwrap_err();
        assert!(error.contains("order_id") && error.contains("currency"), "{error}");
    }

    #[test]
    fn validation_refuses_what_create_order_refuses() {
        let refused = |tweak: fn(&mut OrderCreated), field: &str| {
            let mut bad = event();
            tweak(&mut bad);
            let error = OrderCreatedHandler::validate(&bad).unwrap_err();
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
    fn correlation_comes_from_the_event_then_the_header() {
        assert_eq!(correlation_of(&event(), &ctx(Some("corr-header"))).as_str(), "corr-event");
        let mut bare = event();
        bare.correlation_id.clear();
        assert_eq!(correlation_of(&bare, &ctx(Some("corr-header"))).as_str(), "corr-header");
        assert!(Uuid::parse_str(correlation_of(&bare, &ctx(Some("bad header"))).as_str()).is_ok());
    }

    #[test]
    fn the_notification_reads_well() {
        let (event, ctx) = (event(), ctx(None));
        let new = notification_for(&event, &ctx).unwrap();
        assert_eq!(new.message, format!("Order {} for 77.50 EUR has been received", event.order_id));
        assert_eq!((new.event_id, new.correlation_id.as_str()), (ctx.event_id, "corr-event"));
    }
}
