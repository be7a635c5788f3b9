//! Queue names and their idempotent declaration.
//!
//! For a main queue `Q` bound to exchange `E`:
//! * `Q` — quorum queue bound to `E` with each routing key. Deliveries the
//!   broker hands out more than [`POISON_DELIVERY_LIMIT`] times (a message that
//!   crashes every consumer before its ack) are dead-lettered by the broker, at
//!   least once, to `Q.poison`.
//! * `Q.poison` — quorum queue the inbox consumes: it moves each message to
//!   `Q.dlq` with the same headers as its own dead letters (reason
//!   `delivery_limit`), since the broker's copy carries only `x-death`, which
//!   the console cannot group by.
//! * `Q.retry.<delay>` per tier, e.g. `Q.retry.1s`, `Q.retry.2m` — quorum queues
//!   with that message TTL whose expired messages the broker dead-letters (at
//!   least once) back to `Q` through the default exchange. Nothing consumes them.
//! * `Q.dlq` — quorum queue holding what could not be processed, until replayed.
//!
//! `Q.poison` and `Q.dlq` have nowhere further to dead-letter to, so they set a
//! delivery limit no reader reaches ([`KEEP_DELIVERY_LIMIT`]): RabbitMQ 4 gives
//! a quorum queue declared without one a limit of 20 and drops what exceeds
//! it, where 3.x has none.

use std::time::Duration;

use lapin::{
    Channel, Connection, ErrorKind, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

/// Broker-side deliveries of one message before the broker itself dead-letters it.
pub const POISON_DELIVERY_LIMIT: i64 = 20;

/// The delivery limit of the poison and dead-letter queues: explicit, so
/// that RabbitMQ 4's default of 20 does not apply, and too high for any
/// reader that returns a message (a console that crashes on it) to reach.
pub const KEEP_DELIVERY_LIMIT: i64 = 1_000_000;

/// The names an inbox declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub routing_keys: Vec<String>,
    pub main: String,
    /// One queue per retry tier, in tier order, with its delay.
    pub retries: Vec<(Duration, String)>,
    pub dead_letter: String,
    /// Where the broker dead-letters a message over the delivery limit; the
    /// inbox moves it on to [`Self::dead_letter`] with its reason.
    pub poison: String,
}

/// `1500ms`, `1s`, `30s`, `2m`, `1h`: the shortest exact spelling of a delay.
pub fn delay_label(delay: Duration) -> String {
    let ms = delay.as_millis();
    match ms {
        _ if ms > 0 && ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms > 0 && ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms > 0 && ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

impl Topology {
    pub fn new(exchange: &str, main: &str, routing_keys: &[String], delays: &[Duration]) -> Self {
        Self {
            exchange: exchange.to_owned(),
            routing_keys: routing_keys.to_vec(),
            main: main.to_owned(),
            retries: delays.iter().map(|d| (*d, format!("{main}.retry.{}", delay_label(*d)))).collect(),
            dead_letter: format!("{main}.dlq"),
            poison: format!("{main}.poison"),
        }
    }

    /// Every queue declared: main, retry tiers, poison, dead letters.
    pub fn queues(&self) -> Vec<&str> {
        let mut names = vec![self.main.as_str()];
        names.extend(self.retries.iter().map(|(_, name)| name.as_str()));
        names.extend([self.poison.as_str(), self.dead_letter.as_str()]);
        names
    }

    /// The retry tier named `queue`, if it is one of ours.
    pub(crate) fn is_retry_queue(&self, queue: &str) -> bool {
        self.retries.iter().any(|(_, name)| name == queue)
    }

    /// Declares the exchange, every queue and the bindings, on a channel of
    /// its own on `connection`. Safe to repeat and to race with other replicas.
    /// A poison or dead-letter queue declared before it had its delivery limit
    /// is taken as it is, with a warning (a redeclare with other arguments
    /// fails); any other queue that exists with other arguments fails it.
    pub async fn declare(&self, connection: &Connection) -> Result<(), lapin::Error> {
        let mut channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                ShortString::from(self.exchange.as_str()),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        for queue in [&self.dead_letter, &self.poison] {
            channel = declare_kept(connection, channel, queue).await?;
        }
        let channel = &channel;
        for (delay, name) in &self.retries {
            let mut args = quorum_args();
            args.insert(ShortString::from("x-message-ttl"), AMQPValue::LongLongInt(delay.as_millis() as i64));
            args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
            args.insert(ShortString::from("x-dead-letter-routing-key"), text(&self.main));
            // Quorum queues dead-letter at most once unless asked otherwise, and
            // at-least-once needs reject-publish overflow.
            args.insert(ShortString::from("x-dead-letter-strategy"), text("at-least-once"));
            args.insert(ShortString::from("x-overflow"), text("reject-publish"));
            declare_quorum(channel, name, args).await?;
        }
        let mut args = quorum_args();
        args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(POISON_DELIVERY_LIMIT));
        args.insert(ShortString::from("x-dead-letter-exchange"), text(""));
        args.insert(ShortString::from("x-dead-letter-routing-key"), text(&self.poison));
        // At least once, as for the tiers: the broker keeps the message until
        // the poison queue has confirmed it. No length limit, so the overflow
        // setting this requires never refuses a publish.
        args.insert(ShortString::from("x-dead-letter-strategy"), text("at-least-once"));
        args.insert(ShortString::from("x-overflow"), text("reject-publish"));
        declare_quorum(channel, &self.main, args).await?;
        for key in &self.routing_keys {
            channel
                .queue_bind(
                    ShortString::from(self.main.as_str()),
                    ShortString::from(self.exchange.as_str()),
                    ShortString::from(key.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        channel.close(200, ShortString::from("topology declared")).await
    }
}

/// Declares `name` with [`KEEP_DELIVERY_LIMIT`]; when it exists without
/// one, takes it as it is on a fresh channel (the refusal closed `channel`).
async fn declare_kept(connection: &Connection, channel: Channel, name: &str) -> Result<Channel, lapin::Error> {
    let mut args = quorum_args();
    args.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongLongInt(KEEP_DELIVERY_LIMIT));
    match declare_quorum(&channel, name, args).await {
        Ok(()) => Ok(channel),
        Err(err) if is_precondition_failed(&err) => {
            tracing::warn!(
                queue = name,
                "the queue was declared without its delivery limit and is used as it is; on RabbitMQ 4 set one with a policy (docs/operations.md, RabbitMQ versions)"
            );
            let channel = connection.create_channel().await?;
            declare_quorum(&channel, name, quorum_args()).await?;
            Ok(channel)
        }
        Err(err) => Err(err),
    }
}

fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-queue-type"), text("quorum"));
    args
}

async fn declare_quorum(channel: &Channel, name: &str, args: FieldTable) -> Result<(), lapin::Error> {
    channel.queue_declare(ShortString::from(name), QueueDeclareOptions::durable(), args).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_derive_from_the_main_queue() {
        let delays = [Duration::from_millis(200), Duration::from_secs(5), Duration::from_secs(120)];
        let topology = Topology::new("pulse.events", "pulse.notifications", &["order.created".into()], &delays);
        assert_eq!(topology.dead_letter, "pulse.notifications.dlq");
        assert_eq!(topology.poison, "pulse.notifications.poison");
        assert_eq!(topology.queues().len(), 6);
        assert!(topology.is_retry_queue("pulse.notifications.retry.5s"));
        assert!(!topology.is_retry_queue("pulse.notifications"));
        let names: Vec<&str> = topology.retries.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            ["pulse.notifications.retry.200ms", "pulse.notifications.retry.5s", "pulse.notifications.retry.2m"]
        );
        assert_eq!(delay_label(Duration::from_secs(7200)), "2h");
        assert_eq!(delay_label(Duration::from_millis(1500)), "1500ms");
    }

    proptest! {
        #[test]
        fn labels_are_exact_and_distinct(a in 1u64..100_000_000, b in 1u64..100_000_000) {
            let (la, lb) = (delay_label(Duration::from_millis(a)), delay_label(Duration::from_millis(b)));
            prop_assert_eq!(la == lb, a == b);
        }
    }
}
