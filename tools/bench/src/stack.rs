//! The system under test: its databases and its processes (orders and
//! notifications; payments and inventory too for the saga), reset between
//! phases so each phase starts from empty tables and queues.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::procs::Service;

const ORDERS_DB: &str = "pulse_bench_orders";
const NOTIFICATIONS_DB: &str = "pulse_bench_notifications";
const PAYMENTS_DB: &str = "pulse_bench_payments";
const INVENTORY_DB: &str = "pulse_bench_inventory";
pub(crate) const CEILING_DB: &str = "pulse_bench_ceiling";
/// The notifications consumer's queues get this prefix so a bench never
/// touches the queues of a Pulse running on the same broker.
pub(crate) const QUEUE_PREFIX: &str = "bench";

pub(crate) struct Stack {
    server: String,
    pub(crate) amqp: String,
    pub(crate) orders: Option<Service>,
    pub(crate) notifications: Option<Service>,
    /// The saga's participants, running only in the saga phase.
    participants: Vec<Service>,
    pub(crate) peak_rss_orders: f64,
    pub(crate) peak_rss_notifications: f64,
    /// The bench's own connections for progress checks, opened once: a fresh
    /// connection per check forks a backend every 25 ms, CPU the measured
    /// system would be charged for on a two-core machine.
    probe: Option<Probe>,
}

struct Probe {
    orders: PgConnection,
    notifications: PgConnection,
}

impl Stack {
    pub(crate) fn new(server: String, amqp: String) -> Self {
        Self {
            server,
            amqp,
            orders: None,
            notifications: None,
            participants: Vec::new(),
            peak_rss_orders: 0.0,
            peak_rss_notifications: 0.0,
            probe: None,
        }
    }

    /// The Postgres server's URL, without a database.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    pub(crate) fn url(&self, database: &str) -> String {
        format!("{}/{database}", self.server)
    }

    pub(crate) fn orders_url(&self) -> String {
        self.url(ORDERS_DB)
    }

    pub(crate) fn notifications_url(&self) -> String {
        self.url(NOTIFICATIONS_DB)
    }

    /// Stops both services, drops both databases and the consumer's queues.
    pub(crate) async fn reset(&mut self) -> anyhow::Result<()> {
        self.reset_keeping(false).await
    }

    /// The last [`Self::reset`] of a run: with `BENCH_KEEP_DATABASES` set, the
    /// services' databases stay, to be inspected (the next run drops them).
    pub(crate) async fn finish(&mut self) -> anyhow::Result<()> {
        self.reset_keeping(std::env::var_os("BENCH_KEEP_DATABASES").is_some()).await
    }

    async fn reset_keeping(&mut self, keep_databases: bool) -> anyhow::Result<()> {
        self.stop_orders().await?;
        self.stop_notifications().await?;
        for participant in self.participants.drain(..) {
            participant.stop().await?;
        }
        if let Some(probe) = self.probe.take() {
            probe.orders.close().await.ok();
            probe.notifications.close().await.ok();
        }
        let mut admin = PgConnection::connect(&self.url("postgres")).await?;
        for db in [
            ORDERS_DB,
            NOTIFICATIONS_DB,
            PAYMENTS_DB,
            INVENTORY_DB,
            CEILING_DB,
            crate::floor::ORDERS_DB,
            crate::floor::NOTIFICATIONS_DB,
        ] {
            if keep_databases && db != CEILING_DB {
                continue;
            }
            sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&mut admin).await?;
        }
        admin.close().await?;
        crate::queues::delete_consumer_queues(&self.amqp).await
    }

    /// Orders in `role`, without the saga: every phase but the saga's
    /// measures the one hop from an order to its notification.
    pub(crate) async fn start_orders(&mut self, role: &str) -> anyhow::Result<()> {
        self.start_orders_with(role, false).await
    }

    async fn start_orders_with(&mut self, role: &str, saga: bool) -> anyhow::Result<()> {
        let env = [
            ("ORDERS_DATABASE_URL", self.orders_url()),
            ("AMQP_URL", self.amqp.clone()),
            ("ORDERS_ROLE", role.to_owned()),
            ("ORDERS_DB_MAX_CONNECTIONS", "40".to_owned()),
            ("ORDERS_QUEUE_PREFIX", QUEUE_PREFIX.to_owned()),
            ("SAGA_ENABLED", saga.to_string()),
        ];
        self.orders = Some(Service::start("orders", &env).await?);
        Ok(())
    }

    /// The four services of the saga, `sku` stocked for far more orders than
    /// a run makes and every customer's credit as large.
    pub(crate) async fn start_saga(&mut self, sku: &str) -> anyhow::Result<()> {
        self.start_notifications().await?;
        let payments = [
            ("PAYMENTS_DATABASE_URL", self.url(PAYMENTS_DB)),
            ("AMQP_URL", self.amqp.clone()),
            ("PAYMENTS_QUEUE_PREFIX", QUEUE_PREFIX.to_owned()),
            ("PAYMENTS_DEFAULT_CREDIT", "100000000000.00".to_owned()),
        ];
        self.participants.push(Service::start("payments", &payments).await?);
        let inventory = [
            ("INVENTORY_DATABASE_URL", self.url(INVENTORY_DB)),
            ("AMQP_URL", self.amqp.clone()),
            ("INVENTORY_QUEUE_PREFIX", QUEUE_PREFIX.to_owned()),
        ];
        let inventory = Service::start("inventory", &inventory).await?;
        let mut client = contracts::inventory::v1::inventory_service_client::InventoryServiceClient::connect(format!(
            "http://{}",
            inventory.addr
        ))
        .await?;
        let stock = contracts::inventory::v1::SetStockRequest { sku: sku.to_owned(), on_hand: 1_000_000_000 };
        client.set_stock(stock).await?;
        self.participants.push(inventory);
        for queue in [crate::queues::PAYMENTS_QUEUE, crate::queues::INVENTORY_QUEUE] {
            crate::queues::wait_consumer_of(&self.amqp, queue, Duration::from_secs(30)).await?;
        }
        self.start_orders_with("all", true).await
    }

    /// Waits until none of `ids` is still CREATED (its saga running).
    pub(crate) async fn wait_sagas_ended(&mut self, ids: &[uuid::Uuid], limit: Duration) -> anyhow::Result<()> {
        let since = Instant::now();
        loop {
            let probe = self.probe().await?;
            let running: i64 =
                sqlx::query_scalar("SELECT count(*) FROM orders WHERE order_id = ANY($1) AND status = 'CREATED'")
                    .bind(ids)
                    .fetch_one(&mut probe.orders)
                    .await?;
            if running == 0 {
                return Ok(());
            }
            if since.elapsed() > limit {
                anyhow::bail!("{running} sagas still running after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts the notifications service and waits until its consumer is subscribed.
    pub(crate) async fn start_notifications(&mut self) -> anyhow::Result<()> {
        self.start_notifications_with(&[]).await
    }

    /// [`Self::start_notifications`] with `extra` in its environment too.
    pub(crate) async fn start_notifications_with(&mut self, extra: &[(&str, String)]) -> anyhow::Result<()> {
        let mut env = vec![
            ("NOTIFICATIONS_DATABASE_URL", self.notifications_url()),
            ("AMQP_URL", self.amqp.clone()),
            ("NOTIFICATIONS_QUEUE_PREFIX", QUEUE_PREFIX.to_owned()),
            ("NOTIFICATIONS_RETRY_DELAYS_MS", crate::queues::RETRY_DELAYS_MS.to_owned()),
        ];
        env.extend(extra.iter().map(|(key, value)| (*key, value.clone())));
        self.notifications = Some(Service::start("notifications", &env).await?);
        crate::queues::wait_consumer(&self.amqp, Duration::from_secs(30)).await
    }

    pub(crate) fn sample_rss(&mut self) {
        if let Some(orders) = &self.orders {
            self.peak_rss_orders = self.peak_rss_orders.max(orders.peak_rss_mib());
        }
        if let Some(notifications) = &self.notifications {
            self.peak_rss_notifications = self.peak_rss_notifications.max(notifications.peak_rss_mib());
        }
    }

    pub(crate) async fn stop_orders(&mut self) -> anyhow::Result<()> {
        self.sample_rss();
        if let Some(orders) = self.orders.take() {
            orders.stop().await?;
        }
        Ok(())
    }

    pub(crate) async fn stop_notifications(&mut self) -> anyhow::Result<()> {
        self.sample_rss();
        if let Some(notifications) = self.notifications.take() {
            notifications.stop().await?;
        }
        Ok(())
    }

    pub(crate) fn orders_addr(&self) -> std::net::SocketAddr {
        self.orders.as_ref().expect("orders is running").addr
    }

    pub(crate) fn notifications_addr(&self) -> std::net::SocketAddr {
        self.notifications.as_ref().expect("notifications is running").addr
    }

    /// The probe connections, opened on first use (after the services have
    /// created their databases).
    async fn probe(&mut self) -> anyhow::Result<&mut Probe> {
        if self.probe.is_none() {
            let orders = PgConnection::connect(&self.orders_url()).await?;
            let notifications = PgConnection::connect(&self.notifications_url()).await?;
            self.probe = Some(Probe { orders, notifications });
        }
        Ok(self.probe.as_mut().expect("just opened"))
    }

    /// Rows still pending in the outbox.
    pub(crate) async fn pending(&mut self) -> anyhow::Result<i64> {
        let probe = self.probe().await?;
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox_messages").fetch_one(&mut probe.orders).await?)
    }

    /// Whether the outbox is empty; stops at the first pending row instead of counting them all.
    async fn outbox_empty(&mut self) -> anyhow::Result<bool> {
        let probe = self.probe().await?;
        Ok(sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM outbox_messages)").fetch_one(&mut probe.orders).await?)
    }

    pub(crate) async fn notification_count(&mut self) -> anyhow::Result<i64> {
        let probe = self.probe().await?;
        Ok(sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(&mut probe.notifications).await?)
    }

    /// Waits until the outbox is empty; returns how long that took from `since`.
    pub(crate) async fn wait_outbox_empty(&mut self, since: Instant, limit: Duration) -> anyhow::Result<Duration> {
        loop {
            self.sample_rss();
            if self.outbox_empty().await? {
                return Ok(since.elapsed());
            }
            if since.elapsed() > limit {
                anyhow::bail!("outbox not empty within {limit:?}: {} pending", self.pending().await?);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the outbox is empty and `orders` notifications exist;
    /// returns the two moments, measured from `since`.
    pub(crate) async fn wait_delivered(
        &mut self,
        orders: i64,
        since: Instant,
        limit: Duration,
    ) -> anyhow::Result<(Duration, Duration)> {
        let mut outbox_empty = None;
        loop {
            self.sample_rss();
            if outbox_empty.is_none() && self.outbox_empty().await? {
                outbox_empty = Some(since.elapsed());
            }
            if let Some(empty) = outbox_empty
                && self.notification_count().await? >= orders
            {
                return Ok((empty, since.elapsed()));
            }
            if since.elapsed() > limit {
                anyhow::bail!(
                    "not delivered within {limit:?}: {} pending, {} of {orders} notifications",
                    self.pending().await?,
                    self.notification_count().await?
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Every order has exactly one notification. Notifications of orders this
    /// bench did not make (another publisher on the same broker) are ignored.
    pub(crate) async fn verify(&self) -> anyhow::Result<u64> {
        let mut orders_db = PgConnection::connect(&self.orders_url()).await?;
        let mut notifications_db = PgConnection::connect(&self.notifications_url()).await?;
        let orders: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT order_id FROM orders").fetch_all(&mut orders_db).await?;
        let counts: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as("SELECT order_id, count(*) FROM notifications WHERE order_id = ANY($1) GROUP BY order_id")
                .bind(&orders)
                .fetch_all(&mut notifications_db)
                .await?;
        let duplicated = counts.iter().filter(|(_, n)| *n > 1).count();
        let missing = orders.len() - counts.len();
        if missing > 0 || duplicated > 0 {
            anyhow::bail!(
                "CORRECTNESS FAILURE: {} orders: {missing} without a notification, {duplicated} with more than one",
                orders.len()
            );
        }
        Ok(orders.len() as u64)
    }
}
