//! The inbox handler of Inventory's commands (ReserveInventory and
//! ReleaseInventory on one queue): the effect on stock and the reply's
//! outbox row, both in the inbox's transaction.

use contracts::{
    Routed,
    inventory::v1::{ReleaseInventory, ReserveInventory},
};
use inbox::{BatchError, Handler, HandlerError, MessageContext};
use outbox::{OutboxMessage, ReplyWriter};
use sqlx::PgConnection;
use telemetry::{
    correlation::CorrelationId,
    metrics::{self, IntCounterVec, Name, Registry},
    tracecontext::TraceParent,
};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    domain::{Lines, parse_uuid},
    replies::{self, Addressed},
    saga::{self, Outcome},
};

/// A command Inventory consumes.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Reserve(ReserveInventory),
    Release(ReleaseInventory),
}

impl Command {
    fn label(&self) -> &'static str {
        match self {
            Self::Reserve(_) => "reserve",
            Self::Release(_) => "release",
        }
    }

    fn order_id(&self) -> &str {
        match self {
            Self::Reserve(c) => &c.order_id,
            Self::Release(c) => &c.order_id,
        }
    }

    fn correlation_id(&self) -> &str {
        match self {
            Self::Reserve(c) => &c.correlation_id,
            Self::Release(c) => &c.correlation_id,
        }
    }
}

/// Applies commands and writes their replies to the outbox.
#[derive(Clone)]
pub struct CommandHandler {
    /// Where replies are published.
    exchange: String,
    /// Appends the replies; the relays wake once they are committed (or at
    /// their next poll when there is no channel to notify).
    replies: ReplyWriter,
    commands: IntCounterVec,
}

impl CommandHandler {
    /// Replies go to `exchange`; relays are woken on `notify_channel`;
    /// `inventory_commands_total` is recorded into `registry`.
    pub fn new(exchange: impl Into<String>, notify_channel: Option<String>, registry: &Registry) -> Self {
        let known: Vec<[&str; 2]> = [("reserve", ["reserved", "failed"]), ("release", ["released", "nothing_held"])]
            .iter()
            .flat_map(|(command, outcomes)| outcomes.iter().map(move |outcome| [*command, *outcome]))
            .collect();
        let known: Vec<&[&str]> = known.iter().map(|labels| labels.as_slice()).collect();
        let commands = metrics::counter_vec(
            registry,
            Name { prometheus: "inventory_commands", otel: "inventory.commands", unit: "{command}" },
            "Commands applied, by command and outcome (an attempt rolled back and retried counts again)",
            &["command", "outcome"],
            &known,
        );
        Self { exchange: exchange.into(), replies: ReplyWriter::new(notify_channel), commands }
    }
}

impl Handler for CommandHandler {
    type Event = Command;
    const MESSAGE_TYPES: &'static [&'static str] = &[ReserveInventory::MESSAGE_TYPE, ReleaseInventory::MESSAGE_TYPE];

    fn decode(message_type: &str, payload: &[u8]) -> Result<Command, inbox::DecodeError> {
        if message_type == ReleaseInventory::MESSAGE_TYPE {
            inbox::decode_as(payload).map(Command::Release)
        } else {
            inbox::decode_as(payload).map(Command::Reserve)
        }
    }

    fn event_id(event: &Command) -> &str {
        match event {
            Command::Reserve(c) => &c.event_id,
            Command::Release(c) => &c.event_id,
        }
    }

    /// An order id that is a UUID and, for a reservation, at least one line,
    /// each with a valid sku and a quantity of at least 1; every problem named.
    fn validate(event: &Command) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Err(problem) = parse_uuid(event.order_id()) {
            problems.push(format!("order_id: {problem}"));
        }
        if let Command::Reserve(command) = event
            && let Err(lines) = Lines::parse(&command.lines)
        {
            problems.extend(lines);
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// The fields as the proto names them.
    fn describe(event: &Command) -> serde_json::Value {
        let lines = |c: &ReserveInventory| {
            c.lines.iter().map(|l| serde_json::json!({ "sku": l.sku, "quantity": l.quantity })).collect::<Vec<_>>()
        };
        match event {
            Command::Reserve(c) => serde_json::json!({
                "type": ReserveInventory::MESSAGE_TYPE,
                "event_id": c.event_id,
                "order_id": c.order_id,
                "lines": lines(c),
                "correlation_id": c.correlation_id,
            }),
            Command::Release(c) => serde_json::json!({
                "type": ReleaseInventory::MESSAGE_TYPE,
                "event_id": c.event_id,
                "order_id": c.order_id,
                "correlation_id": c.correlation_id,
            }),
        }
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Command, ctx: &MessageContext) -> Result<(), HandlerError> {
        let reply = self.apply(tx, event, ctx).await?;
        self.replies.append(tx, &reply).await?;
        Ok(())
    }

    /// The commands one by one, after locking every stock row they may touch
    /// in sku order first (a batch holds its locks until it commits, and two
    /// batches taking them in their own orders could deadlock), then their
    /// replies appended at once.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[(&Command, &MessageContext)],
    ) -> Result<(), BatchError> {
        if events.len() > 1 {
            let mut lines = Vec::new();
            let mut releases = Vec::new();
            for (event, _) in events {
                match event {
                    Command::Reserve(command) => lines.extend(Lines::parse(&command.lines).ok()),
                    Command::Release(command) => releases.extend(parse_uuid(&command.order_id).ok()),
                }
            }
            saga::lock_batch(tx, &lines, &releases).await?;
        }
        let mut replies = Vec::with_capacity(events.len());
        for (index, (event, ctx)) in events.iter().enumerate() {
            let reply = self
                .apply(tx, event, ctx)
                .instrument(ctx.span.clone())
                .await
                .map_err(|error| BatchError { index: Some(index), error })?;
            replies.push(reply);
        }
        self.replies.append_all(tx, &replies.iter().collect::<Vec<_>>()).await?;
        Ok(())
    }
}

impl CommandHandler {
    /// Applies one command and returns its reply.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &Command,
        ctx: &MessageContext,
    ) -> Result<OutboxMessage, HandlerError> {
        // validate() has checked both; a failure here would be a bug, not worth retrying.
        let permanent = |problem: String| HandlerError::Permanent(anyhow::anyhow!(problem));
        let order_id = parse_uuid(event.order_id()).map_err(permanent)?;
        let correlation_id = correlation_of(event.correlation_id(), ctx);
        let outcome = match event {
            Command::Reserve(command) => {
                let lines = Lines::parse(&command.lines).map_err(|p| permanent(p.join("; ")))?;
                saga::reserve(tx, order_id, &lines, correlation_id.as_str()).await?
            }
            Command::Release(_) => saga::release(tx, order_id, correlation_id.as_str()).await?,
        };
        let trace = telemetry::traceparent_of(&ctx.span)
            .and_then(|own| TraceParent::parse(&own))
            .unwrap_or_else(TraceParent::new_root);
        let to = Addressed { exchange: &self.exchange, order_id, correlation_id: correlation_id.as_str(), trace };
        log_outcome(order_id, &outcome);
        self.commands.with_label_values(&[event.label(), outcome.label()]).inc();
        Ok(replies::outbox_message(&outcome, &to))
    }
}

fn log_outcome(order_id: Uuid, outcome: &Outcome) {
    match outcome {
        Outcome::Reserved { reservation_id } => tracing::info!(%order_id, %reservation_id, "stock reserved"),
        Outcome::Failed { reservation_id, detail } => {
            tracing::info!(%order_id, %reservation_id, detail, "reservation failed")
        }
        Outcome::Released { reservation_id, was_reserved } => {
            tracing::info!(%order_id, %reservation_id, was_reserved, "reservation released")
        }
    }
}

/// The command's own correlation id, else the message header's, else a new one.
fn correlation_of(own: &str, ctx: &MessageContext) -> CorrelationId {
    CorrelationId::parse(own)
        .or_else(|| ctx.correlation_id.as_deref().and_then(CorrelationId::parse))
        .unwrap_or_else(CorrelationId::generate)
}

#[cfg(test)]
mod tests {
    use contracts::inventory::v1::ReservationLine;
    use prost::Message as _;

    use super::*;

    fn reserve(order_id: &str, lines: Vec<ReservationLine>) -> Command {
        Command::Reserve(ReserveInventory {
            event_id: Uuid::new_v4().to_string(),
            order_id: order_id.into(),
            lines,
            occurred_at: None,
            correlation_id: "corr".into(),
        })
    }

    #[test]
    fn validation_names_each_problem() {
        let ok = reserve(&Uuid::new_v4().to_string(), vec![ReservationLine { sku: "A".into(), quantity: 1 }]);
        assert!(CommandHandler::validate(&ok).is_ok());
        let bad = reserve("42", vec![ReservationLine { sku: String::new(), quantity: 0 }]);
        let error = CommandHandler::validate(&bad).unwrap_err();
        assert!(
            error.contains("order_id") && error.contains("lines[0].sku") && error.contains("lines[0].quantity"),
            "{error}"
        );
        let release = Command::Release(ReleaseInventory { order_id: "nope".into(), ..Default::default() });
        assert!(CommandHandler::validate(&release).unwrap_err().starts_with("order_id: "));
    }

    #[test]
    fn the_type_picks_the_command() {
        let payload = ReleaseInventory { order_id: "o".into(), ..Default::default() }.encode_to_vec();
        assert!(matches!(
            CommandHandler::decode(ReleaseInventory::MESSAGE_TYPE, &payload),
            Ok(Command::Release(c)) if c.order_id == "o"
        ));
    }
}
