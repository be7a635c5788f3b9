//! What the hardware allows, measured in the same run: raw sqlx transactions
//! doing CreateOrder's two inserts, and raw lapin publishing with pipelined confirms.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

/// Transactions per second of [`two_inserts`]
/// at `concurrency` connections for `duration`, on a database migrated like Orders'.
pub(crate) async fn pg_two_inserts(url: &str, concurrency: usize, duration: Duration) -> anyhow::Result<f64> {
    let pool = PgPoolOptions::new().max_connections(concurrency as u32).connect(url).await?;
    sqlx::migrate!("../../migrations/orders").run(&pool).await?;
    sqlx::query("TRUNCATE orders, outbox_messages").execute(&pool).await?;
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
    pool.close().await;
    Ok(tps)
}

/// The transaction `LIMITS.md` measured with pgbench (`create_order.sql`):
/// BEGIN; one statement inserting the order and its outbox row; COMMIT.
async fn two_inserts(pool: &PgPool) -> anyhow::Result<()> {
    let (order_id, event_id) = (Uuid::now_v7(), Uuid::now_v7());
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

/// Messages per second published persistent (250 bytes) to a quorum queue
/// through the default exchange, with up to 1,000 confirms in flight.
pub(crate) async fn amqp_publish_confirm(url: &str, messages: usize) -> anyhow::Result<f64> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
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
    let payload = vec![b'x'; 250];
    let properties = BasicProperties::default().with_delivery_mode(2);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..messages {
        if in_flight.len() >= 1_000 {
            in_flight.next().await.expect("non-empty")?;
        }
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue.as_str()),
                BasicPublishOptions::default(),
                &payload,
                properties.clone(),
            )
            .await?;
        in_flight.push(confirm);
    }
    while let Some(confirmed) = in_flight.next().await {
        confirmed?;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    channel.queue_delete(ShortString::from(queue.as_str()), QueueDeleteOptions::default()).await?;
    connection.close(200, ShortString::from("done")).await?;
    Ok(rate)
}
