//! Turns ProcessPayment and RefundPayment commands into payments and their
//! replies, inside the inbox's transaction: the effect, the reply's outbox
//! row and the record that the command was processed commit together.

use contracts::{
    Routed,
    payments::v1::{ProcessPayment, RefundPayment},
};
use inbox::{BatchError, Handler, HandlerError, MessageContext};
use outbox::{OutboxMessage, ReplyWriter};
use platform::values::{Currency, CustomerId};
use sqlx::PgConnection;
use telemetry::correlation::CorrelationId;
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    commands::{self, Payment},
    db,
    metrics::Counters,
    money::{self, DefaultCredit},
    replies::{self, Envelope},
};

/// A command on the payments queue.
#[derive(Debug, Clone)]
pub enum Command {
    Process(ProcessPayment),
    Refund(RefundPayment),
}

/// The inbox handler of the payments queue.
#[derive(Clone)]
pub struct CommandHandler {
    /// Where the replies are published.
    exchange: String,
    default_credit: DefaultCredit,
    /// Appends the replies; the relays wake once they are committed.
    replies: ReplyWriter,
    counters: Counters,
}

impl CommandHandler {
    /// A handler replying on `exchange`, with `default_credit` for customers never set.
    pub fn new(
        exchange: String,
        default_credit: DefaultCredit,
        notify_channel: Option<String>,
        registry: &telemetry::metrics::Registry,
    ) -> Self {
        Self { exchange, default_credit, replies: ReplyWriter::new(notify_channel), counters: Counters::new(registry) }
    }
}

impl Handler for CommandHandler {
    type Event = Command;
    const MESSAGE_TYPES: &'static [&'static str] = &[ProcessPayment::MESSAGE_TYPE, RefundPayment::MESSAGE_TYPE];

    fn decode(message_type: &str, payload: &[u8]) -> Result<Command, inbox::DecodeError> {
        if message_type == RefundPayment::MESSAGE_TYPE {
            inbox::decode_as(payload).map(Command::Refund)
        } else {
            inbox::decode_as(payload).map(Command::Process)
        }
    }

    fn event_id(event: &Command) -> &str {
        match event {
            Command::Process(command) => &command.event_id,
            Command::Refund(command) => &command.event_id,
        }
    }

    /// The rules of the API (the same parsers); each problem names its field.
    fn validate(event: &Command) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut check = |field: &str, raw: &str, parsed: Result<(), String>| {
            if let Err(problem) = parsed {
                problems.push(format!("{field}: {raw:?} {problem}"));
            }
        };
        match event {
            Command::Process(command) => {
                check("order_id", &command.order_id, parse_order_id(&command.order_id).map(drop));
                check("customer_id", &command.customer_id, CustomerId::parse(&command.customer_id).map(drop));
                let currency = Currency::parse(&command.currency);
                let amount = money::parse_amount(&command.amount, currency.as_ref().ok().copied());
                check("amount", &command.amount, amount.map(drop));
                check("currency", &command.currency, currency.map(drop));
            }
            Command::Refund(command) => {
                check("order_id", &command.order_id, parse_order_id(&command.order_id).map(drop));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// The fields as the proto names them, and which command it is.
    fn describe(event: &Command) -> serde_json::Value {
        match event {
            Command::Process(c) => serde_json::json!({
                "type": ProcessPayment::MESSAGE_TYPE,
                "event_id": c.event_id,
                "order_id": c.order_id,
                "customer_id": c.customer_id,
                "amount": c.amount,
                "currency": c.currency,
                "correlation_id": c.correlation_id,
            }),
            Command::Refund(c) => serde_json::json!({
                "type": RefundPayment::MESSAGE_TYPE,
                "event_id": c.event_id,
                "order_id": c.order_id,
                "correlation_id": c.correlation_id,
            }),
        }
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Command, ctx: &MessageContext) -> Result<(), HandlerError> {
        let limits = db::lock_credits(tx, &credits_of([event])).await?;
        let reply = self.apply(tx, event, ctx, &limits).await?;
        self.replies.append(tx, &reply).await?;
        Ok(())
    }

    /// Locks the credit rows of every payment in the batch first, in one
    /// order (customer, then currency), then applies the commands in turn
    /// and appends their replies at once: two replicas' batches over the same
    /// customers queue up instead of deadlocking, and a command costs the
    /// round trips of its own rows only.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[(&Command, &MessageContext)],
    ) -> Result<(), BatchError> {
        let limits = db::lock_credits(tx, &credits_of(events.iter().map(|(event, _)| *event))).await?;
        let mut replies = Vec::with_capacity(events.len());
        for (index, (event, ctx)) in events.iter().enumerate() {
            let reply = self
                .apply(tx, event, ctx, &limits)
                .instrument(ctx.span.clone())
                .await
                .map_err(|error| BatchError { index: Some(index), error })?;
            replies.push(reply);
        }
        self.replies.append_all(tx, &replies.iter().collect::<Vec<_>>()).await?;
        Ok(())
    }
}

/// The (customer, currency) credit rows `events` draw on.
fn credits_of<'a>(events: impl IntoIterator<Item = &'a Command>) -> Vec<(&'a str, &'a str)> {
    events
        .into_iter()
        .filter_map(|event| match event {
            Command::Process(c) => Some((c.customer_id.as_str(), c.currency.as_str())),
            Command::Refund(_) => None,
        })
        .collect()
}

impl CommandHandler {
    /// Applies one command, its customer's credit row locked with `limits`,
    /// and returns its reply.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &Command,
        ctx: &MessageContext,
        limits: &db::Limits,
    ) -> Result<OutboxMessage, HandlerError> {
        let permanent = |err: String| HandlerError::Permanent(anyhow::anyhow!(err));
        let (order_id, correlation, (outcome, fresh)) = match event {
            Command::Process(command) => {
                // validate() has checked these; a failure here would be a bug, not worth retrying.
                let currency = Currency::parse(&command.currency).map_err(permanent)?;
                let payment = Payment {
                    order_id: parse_order_id(&command.order_id).map_err(permanent)?,
                    customer_id: command.customer_id.clone(),
                    currency,
                    amount_minor: money::parse_amount(&command.amount, Some(currency)).map_err(permanent)?,
                };
                let key = (payment.customer_id.clone(), currency.code().to_owned());
                let Some(limit) = limits.get(&key) else {
                    return Err(permanent(format!("the credit of {key:?} was not locked")));
                };
                let limit = limit.unwrap_or_else(|| self.default_credit.in_minor_units(currency));
                let decided = commands::process(tx, &payment, limit).await?;
                (payment.order_id, correlation_of(&command.correlation_id, ctx), decided)
            }
            Command::Refund(command) => {
                let order_id = parse_order_id(&command.order_id).map_err(permanent)?;
                (order_id, correlation_of(&command.correlation_id, ctx), commands::refund(tx, order_id).await?)
            }
        };
        let envelope = Envelope {
            exchange: &self.exchange,
            order_id,
            correlation_id: correlation.as_str(),
            traceparent: telemetry::propagation::traceparent_of(&ctx.span),
        };
        self.counters.record(&outcome, fresh);
        Ok(replies::outbox_message(&envelope, &outcome))
    }
}

fn parse_order_id(raw: &str) -> Result<Uuid, String> {
    Uuid::try_parse(raw).map_err(|_| "is not a UUID".to_owned())
}

/// The command's own correlation id, else the message header's, else a new one.
fn correlation_of(own: &str, ctx: &MessageContext) -> CorrelationId {
    CorrelationId::parse(own)
        .or_else(|| ctx.correlation_id.as_deref().and_then(CorrelationId::parse))
        .unwrap_or_else(CorrelationId::generate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> ProcessPayment {
        ProcessPayment {
            event_id: Uuid::new_v4().to_string(),
            order_id: Uuid::new_v4().to_string(),
            customer_id: "c-1".into(),
            amount: "77.50".into(),
            currency: "EUR".into(),
            occurred_at: None,
            correlation_id: "corr-1".into(),
        }
    }

    #[test]
    fn validation_names_each_field() {
        assert!(CommandHandler::validate(&Command::Process(process())).is_ok());
        let refused = |tweak: fn(&mut ProcessPayment), field: &str| {
            let mut bad = process();
            tweak(&mut bad);
            let error = CommandHandler::validate(&Command::Process(bad)).unwrap_err();
            assert!(error.starts_with(&format!("{field}: ")), "{error}");
        };
        refused(|c| c.order_id = "42".into(), "order_id");
        refused(|c| c.customer_id.clear(), "customer_id");
        refused(|c| c.amount = "-1".into(), "amount");
        refused(|c| c.amount = "1.234".into(), "amount");
        refused(|c| c.currency = "euro".into(), "currency");
        let refund = RefundPayment { order_id: "nope".into(), ..Default::default() };
        assert!(CommandHandler::validate(&Command::Refund(refund)).unwrap_err().starts_with("order_id: "));
    }

    #[test]
    fn commands_decode_by_their_type() {
        use prost::Message as _;
        let bytes = RefundPayment { order_id: "o".into(), ..Default::default() }.encode_to_vec();
        assert!(matches!(CommandHandler::decode(RefundPayment::MESSAGE_TYPE, &bytes), Ok(Command::Refund(_))));
        let bytes = process().encode_to_vec();
        assert!(matches!(CommandHandler::decode(ProcessPayment::MESSAGE_TYPE, &bytes), Ok(Command::Process(_))));
    }
}
