//! The latency floor: what one order's unavoidable work takes on this machine,
//! with no Pulse code. A raw client, at a fixed rate, one order at a time per
//! tick: commits an order row and an outbox row (one transaction), publishes
//! an event-shaped message (see [`crate::ceilings::Shape::Event`]) and waits
//! for its confirm; a raw consumer, one delivery at a time per task, commits a
//! processed-event row and a notification row (one transaction) and acks.
//! Nothing waits for anything else: no batching, no polling, no linger.
//!
//! Latency is measured as Pulse's end to end is ([`crate::latency`]): from the
//! order row's `created_at` to the notification row's, both `clock_timestamp()`
//! defaults of the same tables, migrated with Pulse's own migrations.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::ceilings::{self, Shape};

/// The floor's two databases, dropped with the others between phases.
pub(crate) const ORDERS_DB: &str = "pulse_bench_floor_orders";
pub(crate) const NOTIFICATIONS_DB: &str = "pulse_bench_floor_notifications";

/// Connections of each side's pool: enough that no order waits for another's
/// transaction at 1,000 orders/s, few enough for a shared server.
const CONNECTIONS: u32 = 8;

/// The header carrying the order id, as an `OrderCreated` carries it
/// (`x-aggregate-id`, docs/ports-and-queues.md "Messages"); the consumer reads it instead of
/// decoding a protobuf body, which is not part of the unavoidable work.
const AGGREGATE_HEADER: &str = "x-aggregate-id";

/// The floor's client and consumer, set up once and measured over one or
/// more windows ([`Floor::window`]), which can alternate with Pulse's.
pub(crate) struct Floor {
    orders_url: String,
    notifications_url: String,
    orders: PgPool,
    notifications: PgPool,
    publisher: Connection,
    subscriber: Connection,
    channel: Channel,
    queue: String,
    consumer: tokio::task::JoinHandle<anyhow::Result<()>>,
    seq: i64,
    ids: Vec<Uuid>,
}

impl Floor {
    /// Creates the floor's databases and queue and starts its consumer.
    pub(crate) async fn start(server: &str, amqp: &str) -> anyhow::Result<Self> {
        let orders_url = format!("{server}/{ORDERS_DB}");
        let notifications_url = format!("{server}/{NOTIFICATIONS_DB}");
        let orders = pool(&orders_url).await?;
        orders::db::migrate(&orders).await?;
        let notifications = pool(&notifications_url).await?;
        notifications::migrate(&notifications).await?;
        let publisher = Connection::connect(amqp, ConnectionProperties::default()).await?;
        let channel = publisher.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let queue = ceilings::declare_quorum_queue(&channel, Shape::Event).await?;
        let subscriber = Connection::connect(amqp, ConnectionProperties::default()).await?;
        let consumer = tokio::spawn(consume(subscriber.create_channel().await?, queue.clone(), notifications.clone()));
        Ok(Self {
            orders_url,
            notifications_url,
            orders,
            notifications,
            publisher,
            subscriber,
            channel,
            queue,
            consumer,
            seq: 0,
            ids: Vec::new(),
        })
    }

    /// `rate` orders a second for `duration`; returns once each of them has
    /// its notification, `settle` at most.
    pub(crate) async fn window(
        &mut self,
        rate: f64,
        duration: Duration,
        settle: Duration,
        progress: &ProgressBar,
    ) -> anyhow::Result<()> {
        let ids = publish(&self.orders, &self.channel, rate, duration, &mut self.seq, progress).await?;
        self.ids.extend(ids);
        wait_delivered(&self.notifications, self.ids.len() as i64, settle).await
    }

    /// Stops the consumer, deletes the queue and returns the latency of every
    /// order of every window, in microseconds.
    pub(crate) async fn finish(self) -> anyhow::Result<Histogram<u64>> {
        self.consumer.abort();
        let _ = self.subscriber.close(200, ShortString::from("done")).await;
        ceilings::delete_queue(&self.channel, &self.queue, Shape::Event).await?;
        let _ = self.publisher.close(200, ShortString::from("done")).await;
        self.orders.close().await;
        self.notifications.close().await;
        crate::latency::order_to_notification(&self.orders_url, &self.notifications_url, &self.ids).await
    }
}

async fn pool(url: &str) -> anyhow::Result<PgPool> {
    platform::db::create_database_if_missing(&url.parse()?).await?;
    Ok(PgPoolOptions::new().min_connections(CONNECTIONS).max_connections(CONNECTIONS).connect(url).await?)
}

/// Starts one order every `1 / rate` seconds for `duration`, each in a task
/// of its own, whether or not earlier ones have finished (as the end-to-end
/// phase's open loop does); returns the ids of the orders whose message was
/// confirmed.
async fn publish(
    pool: &PgPool,
    channel: &Channel,
    rate: f64,
    duration: Duration,
    seq: &mut i64,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Uuid>> {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        ticker.tick().await;
        let (pool, channel, ids, progress) = (pool.clone(), channel.clone(), Arc::clone(&ids), progress.clone());
        let seq = std::mem::replace(seq, *seq + 1);
        tasks.spawn(async move {
            let order_id = one_order(&pool, &channel, seq).await?;
            ids.lock().await.push(order_id);
            progress.inc(1);
            anyhow::Ok(())
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let ids = std::mem::take(&mut *ids.lock().await);
    Ok(ids)
}

/// One order: its row and its outbox row in one transaction (the statement
/// of the two-insert ceiling), then its message published and confirmed.
async fn one_order(pool: &PgPool, channel: &Channel, seq: i64) -> anyhow::Result<Uuid> {
    let (order_id, event_id) = (Uuid::now_v7(), Uuid::now_v7());
    ceilings::two_inserts_of(pool, order_id, event_id).await?;
    let properties = ceilings::event_properties(seq, event_id, order_id);
    channel
        .basic_publish(
            ShortString::from(ceilings::EVENT_EXCHANGE),
            ShortString::from(ceilings::EVENT_ROUTING_KEY),
            BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
            &[b'x'; 250],
            properties,
        )
        .await?
        .await?;
    Ok(order_id)
}

/// Consumes `queue` until aborted: each delivery handled in a task of its own
/// as soon as it arrives.
async fn consume(channel: Channel, queue: String, pool: PgPool) -> anyhow::Result<()> {
    channel.basic_qos(1_000, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("floor"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = deliveries.next().await {
        let (delivery, pool) = (delivery?, pool.clone());
        tokio::spawn(async move {
            if let Err(err) = handle(&pool, delivery).await {
                eprintln!("bench: latency floor consumer: {err:#}");
            }
        });
    }
    Ok(())
}

/// The consumer's unavoidable work for one event: the processed-event row and
/// the notification row in one transaction, then the ack.
async fn handle(pool: &PgPool, delivery: Delivery) -> anyhow::Result<()> {
    let properties: &BasicProperties = &delivery.properties;
    let event_id: Uuid =
        properties.message_id().as_ref().ok_or_else(|| anyhow::anyhow!("no message id"))?.as_str().parse()?;
    let order_id: Uuid = match properties.headers().as_ref().and_then(|h| h.inner().get(AGGREGATE_HEADER)) {
        Some(AMQPValue::LongString(id)) => std::str::from_utf8(id.as_bytes())?.parse()?,
        _ => anyhow::bail!("no {AGGREGATE_HEADER} header"),
    };
    let mut tx = pool.begin().await?;
    sqlx::query(
        "WITH p AS (INSERT INTO processed_events (event_id) VALUES ($2) RETURNING event_id)
         INSERT INTO notifications (notification_id, order_id, event_id, message, correlation_id)
         SELECT $1, $3, p.event_id, 'order created', $4 FROM p",
    )
    .bind(Uuid::now_v7())
    .bind(event_id)
    .bind(order_id)
    .bind(order_id.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

/// Waits until `orders` notifications exist, `limit` at most.
async fn wait_delivered(pool: &PgPool, orders: i64, limit: Duration) -> anyhow::Result<()> {
    let since = tokio::time::Instant::now();
    loop {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(pool).await?;
        if count >= orders {
            return Ok(());
        }
        anyhow::ensure!(since.elapsed() < limit, "latency floor: {count} of {orders} notifications within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
