//! What the hardware allows, measured in the same run: raw sqlx transactions
//! doing CreateOrder's two inserts, and raw lapin publishing with pipelined
//! confirms, alone and with a raw consumer draining the queue, of bare
//! messages and of messages shaped as Pulse's events.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

use crate::cpu::CpuSnapshot;

/// Transactions per second of [`two_inserts`] at `concurrency` connections
/// for `duration`, on a database migrated like Orders', and the CPU each took
/// by process ([`CpuSnapshot::per_unit`]).
pub(crate) async fn pg_two_inserts(
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let pool = PgPoolOptions::new().max_connections(concurrency as u32).connect(url).await?;
    orders::db::migrate(&pool).await?;
    sqlx::query("TRUNCATE orders, outbox_messages CASCADE").execute(&pool).await?;
    let cpu_before = CpuSnapshot::take();
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            while started.elapsed() < duration {
                two_inserts(&pool).await?;
                done += 1;
            }
            anyhow::Ok(done)
        })
    });
    let mut total = 0;
    for worker in futures::future::join_all(workers).await {
        total += worker??;
    }
    let tps = total as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu_before.per_unit(&CpuSnapshot::take(), total);
    pool.close().await;
    Ok((tps, cpu))
}

/// The two-insert ceiling's transaction, CreateOrder's database work with no Pulse code:
/// BEGIN; one statement inserting the order and its outbox row; COMMIT.
async fn two_inserts(pool: &PgPool) -> anyhow::Result<()> {
    two_inserts_of(pool, Uuid::now_v7(), Uuid::now_v7()).await
}

/// [`two_inserts`] of a given order and event (the latency floor's order transaction).
pub(crate) async fn two_inserts_of(pool: &PgPool, order_id: Uuid, event_id: Uuid) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "WITH o AS (
             INSERT INTO orders (order_id, customer_id, amount, currency, request_id, event_id, correlation_id)
             VALUES ($1, 'ceiling', '12.34'::numeric, 'EUR', NULL, $2, 'ceiling') RETURNING order_id)
         INSERT INTO outbox_messages (event_id, aggregate_type, aggregate_id, partition, exchange, routing_key,
             message_type, content_type, payload, headers)
         SELECT $2, 'order', o.order_id::text, 0, 'pulse.events', 'order.created', 'pulse.events.v1.OrderCreated',
             'application/x-protobuf', $3, '{\"x-correlation-id\":\"ceiling\"}' FROM o",
    )
    .bind(order_id)
    .bind(event_id)
    .bind(vec![7u8; 150])
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What the ceiling publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// 250 persistent bytes and nothing else, through the default exchange
    /// straight to the queue: the broker's bare ceiling.
    Raw,
    /// The same 250 bytes as an `OrderCreated` goes out (docs/ports-and-queues.md, "Messages"):
    /// through a durable topic exchange bound with `order.created`,
    /// `mandatory`, with its properties and its five headers (two pinned by
    /// the contract, three the design adds). The broker routes, parses and stores more per message;
    /// this is what it allows for Pulse's messages.
    Event,
}

/// The topic exchange of [`Shape::Event`] ceilings, in the bench's own virtual host.
pub(crate) const EVENT_EXCHANGE: &str = "pulse.bench.ceiling";
pub(crate) const EVENT_ROUTING_KEY: &str = "order.created";

/// Messages per second published persistent (250 bytes) to a quorum queue,
/// shaped as `shape` says, with up to 1,000 confirms in flight.
pub(crate) async fn amqp_publish_confirm(url: &str, messages: usize, shape: Shape) -> anyhow::Result<f64> {
    let connection = infra::amqp::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = declare_quorum_queue(&channel, shape).await?;
    let started = Instant::now();
    publish_pipelined(&channel, &queue, messages, shape).await?;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    delete_queue(&channel, &queue, shape).await?;
    connection.close(200, ShortString::from("done")).await?;
    Ok(rate)
}

/// Messages per second through a quorum queue with a consumer running, as in
/// a drain while the notifications consumer is up: the same publisher as
/// [`amqp_publish_confirm`], and a raw consumer on its own connection
/// (prefetch 1,000, one multiple-ack per 100 deliveries). Timed until the last
/// message is both confirmed and consumed.
pub(crate) async fn amqp_publish_while_consuming(url: &str, messages: usize, shape: Shape) -> anyhow::Result<f64> {
    let publisher = infra::amqp::connect(url, ConnectionProperties::default()).await?;
    let channel = publisher.create_channel().await?;
    let queue = declare_quorum_queue(&channel, shape).await?;
    let consumer_connection = infra::amqp::connect(url, ConnectionProperties::default()).await?;
    let consumer_channel = consumer_connection.create_channel().await?;
    consumer_channel.basic_qos(1_000, BasicQosOptions::default()).await?;
    let mut deliveries = consumer_channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("ceiling"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consume = async {
        for n in 1..=messages {
            let delivery = deliveries.next().await.ok_or_else(|| anyhow::anyhow!("the consumer was cancelled"))??;
            if n % 100 == 0 || n == messages {
                delivery.ack(BasicAckOptions { multiple: true }).await?;
            }
        }
        anyhow::Ok(())
    };
    let started = Instant::now();
    let (published, consumed) = tokio::join!(publish_pipelined(&channel, &queue, messages, shape), consume);
    published?;
    consumed?;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    consumer_connection.close(200, ShortString::from("done")).await?;
    delete_queue(&channel, &queue, shape).await?;
    publisher.close(200, ShortString::from("done")).await?;
    Ok(rate)
}

/// A durable quorum queue of the bench's own, named at random; for
/// [`Shape::Event`], bound to [`EVENT_EXCHANGE`] (declared here).
pub(crate) async fn declare_quorum_queue(channel: &Channel, shape: Shape) -> anyhow::Result<String> {
    let queue = format!("pulse.bench.ceiling.{}", Uuid::new_v4().simple());
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-queue-type"), AMQPValue::LongString("quorum".into()));
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
            arguments,
        )
        .await?;
    if shape == Shape::Event {
        channel
            .exchange_declare(
                ShortString::from(EVENT_EXCHANGE),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(EVENT_EXCHANGE),
                ShortString::from(EVENT_ROUTING_KEY),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(queue)
}

/// Deletes what [`declare_quorum_queue`] declared.
pub(crate) async fn delete_queue(channel: &Channel, queue: &str, shape: Shape) -> anyhow::Result<()> {
    channel.queue_delete(ShortString::from(queue), QueueDeleteOptions::default()).await?;
    if shape == Shape::Event {
        channel.exchange_delete(ShortString::from(EVENT_EXCHANGE), ExchangeDeleteOptions::default()).await?;
    }
    Ok(())
}

/// The properties of a [`Shape::Event`] message: those of an `OrderCreated`
/// (docs/ports-and-queues.md, "Messages"), with values of the same sizes: `message_id` is the
/// event's id, `x-aggregate-id` the order's.
pub(crate) fn event_properties(seq: i64, event_id: Uuid, aggregate_id: Uuid) -> BasicProperties {
    let id = event_id.to_string();
    let aggregate = aggregate_id.to_string();
    let text = |value: &str| AMQPValue::LongString(LongString::from(value));
    let mut headers = FieldTable::default();
    headers.insert(ShortString::from(telemetry::correlation::HEADER), text(&id));
    headers.insert(
        ShortString::from(telemetry::tracecontext::HEADER),
        text("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    headers.insert(ShortString::from("x-aggregate-id"), text(&aggregate));
    headers.insert(ShortString::from("x-outbox-seq"), AMQPValue::LongLongInt(seq));
    headers.insert(ShortString::from("x-occurred-at"), AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/x-protobuf"))
        .with_type(ShortString::from("pulse.events.v1.OrderCreated"))
        .with_message_id(ShortString::from(id.as_str()))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id(ShortString::from("orders"))
        .with_correlation_id(ShortString::from(id.as_str()))
        .with_headers(headers)
}

/// Publishes `messages` persistent 250-byte messages to `queue`, shaped as
/// `shape` says, up to 1,000 confirms in flight; returns once every one is confirmed.
async fn publish_pipelined(channel: &Channel, queue: &str, messages: usize, shape: Shape) -> anyhow::Result<()> {
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let payload = vec![b'x'; 250];
    let raw = BasicProperties::default().with_delivery_mode(2);
    let (exchange, routing_key, options) = match shape {
        Shape::Raw => ("", queue, BasicPublishOptions::default()),
        Shape::Event => (
            EVENT_EXCHANGE,
            EVENT_ROUTING_KEY,
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
        ),
    };
    let mut in_flight = FuturesUnordered::new();
    for seq in 0..messages {
        if in_flight.len() >= 1_000 {
            in_flight.next().await.expect("non-empty")?;
        }
        let properties = match shape {
            Shape::Raw => raw.clone(),
            Shape::Event => event_properties(seq as i64, Uuid::now_v7(), Uuid::now_v7()),
        };
        let confirm = channel
            .basic_publish(ShortString::from(exchange), ShortString::from(routing_key), options, &payload, properties)
            .await?;
        in_flight.push(confirm);
    }
    while let Some(confirmed) = in_flight.next().await {
        confirmed?;
    }
    Ok(())
}
