//! A test event, a handler whose behaviour each test steers, running an
//! inbox in the background, and waiting with a deadline.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use inbox::{BatchError, Fault, Handler, HandlerError, Inbox, InboxConfig, InboxStats, MessageContext, Topology};
use sqlx::{PgConnection, PgPool};
use testkit::consumer::Sweep;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::Broker;

pub(crate) const TYPE: &str = "test.v1.Thing";
pub(crate) const ROUTING_KEY: &str = "thing.happened";
pub(crate) const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Thing {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    /// `"retryable"` or `"permanent"` make the handler fail that way; `"slow"` takes 300 ms.
    #[prost(string, tag = "2")]
    pub(crate) fail: String,
    /// The event id the payload carries; [`crate::amqp::Broker::publish`] sets it.
    #[prost(string, tag = "3")]
    pub(crate) event_id: String,
}

impl Thing {
    pub(crate) fn named(name: &str) -> Self {
        Self { name: name.to_owned(), ..Self::default() }
    }

    /// This thing as event `id`: the payload's event id set.
    pub(crate) fn as_event(&self, id: Uuid) -> Self {
        Self { event_id: id.to_string(), ..self.clone() }
    }
}

/// Writes one row per event into `things`; fails when asked to; notes every attempt.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) attempts: Arc<Mutex<Vec<(String, u32, Instant)>>>,
    /// While set, every event fails permanently.
    pub(crate) broken: Arc<std::sync::atomic::AtomicBool>,
    /// Handle batches with one statement, failing the whole batch without
    /// naming the culprit, as a set-based handler would.
    pub(crate) set_based: bool,
}

impl Handler for Recorder {
    type Event = Thing;
    const MESSAGE_TYPES: &'static [&'static str] = &[TYPE];

    fn decode(_: &str, payload: &[u8]) -> Result<Thing, inbox::DecodeError> {
        inbox::decode_as(payload)
    }

    fn event_id(event: &Thing) -> &str {
        &event.event_id
    }

    fn validate(event: &Thing) -> Result<(), String> {
        if event.name.is_empty() { Err("name is required".into()) } else { Ok(()) }
    }

    async fn handle(&self, tx: &mut PgConnection, event: &Thing, ctx: &MessageContext) -> Result<(), HandlerError> {
        self.attempts.lock().unwrap().push((event.name.clone(), ctx.attempt, Instant::now()));
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(HandlerError::Permanent(anyhow::anyhow!("handler is broken")));
        }
        match event.fail.as_str() {
            "retryable" => return Err(HandlerError::Retryable(anyhow::anyhow!("dependency busy"))),
            "permanent" => return Err(HandlerError::Permanent(anyhow::anyhow!("cannot ever work"))),
            "slow" => tokio::time::sleep(Duration::from_millis(300)).await,
            _ => {}
        }
        sqlx::query("INSERT INTO things (event_id, name, attempt) VALUES ($1, $2, $3)")
            .bind(ctx.event_id)
            .bind(&event.name)
            .bind(ctx.attempt as i32)
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        events: &[(&Thing, &MessageContext)],
    ) -> Result<(), BatchError> {
        if !self.set_based {
            for (index, (event, ctx)) in events.iter().enumerate() {
                self.handle(tx, event, ctx).await.map_err(|error| BatchError { index: Some(index), error })?;
            }
            return Ok(());
        }
        if events.iter().any(|(event, _)| !event.fail.is_empty()) {
            return Err(HandlerError::Retryable(anyhow::anyhow!("something in the batch failed")).into());
        }
        let ids: Vec<Uuid> = events.iter().map(|(_, ctx)| ctx.event_id).collect();
        let names: Vec<&str> = events.iter().map(|(event, _)| event.name.as_str()).collect();
        sqlx::query("INSERT INTO things (event_id, name, attempt) SELECT id, name, 1 FROM unnest($1::uuid[], $2::text[]) AS t(id, name)")
            .bind(&ids)
            .bind(&names)
            .execute(tx)
            .await?;
        Ok(())
    }
}

pub(crate) async fn create_things(pool: &PgPool) {
    sqlx::query("CREATE TABLE things (event_id uuid NOT NULL, name text NOT NULL, attempt int NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

pub(crate) async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// An isolated exchange and queue, with short retry tiers (200 ms, 400 ms; 3 attempts).
pub(crate) fn config() -> InboxConfig {
    config_for(&testkit::amqp_url())
}

pub(crate) fn config_for(amqp_url: &str) -> InboxConfig {
    testkit::consumer::short_retry_config(amqp_url, "inbox", ROUTING_KEY)
}

/// What a test starts from: the `things` table, the topology of `config`
/// (removed again should the test panic) and a broker handle. Declaring the
/// topology is left to the test: some must see the consumer declare it.
pub(crate) async fn setup(pool: &PgPool, config: InboxConfig) -> (InboxConfig, Topology, Broker, Sweep) {
    create_things(pool).await;
    let topology = config.topology();
    let sweep = Sweep(topology.clone());
    (config, topology, Broker::connect().await, sweep)
}

/// An inbox running in the background.
pub(crate) struct Running {
    pub(crate) stats: Arc<InboxStats>,
    pub(crate) connected: watch::Receiver<bool>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub(crate) fn start(pool: &PgPool, handler: Recorder, config: InboxConfig) -> Running {
    let inbox = Inbox::new(pool.clone(), handler, config).expect("valid config");
    let (stats, connected, stop) = (inbox.stats(), inbox.connected(), CancellationToken::new());
    let task = tokio::spawn(inbox.run(stop.clone()));
    Running { stats, connected, stop, task }
}

impl Running {
    pub(crate) async fn wait_connected(&mut self, up: bool) {
        assert!(testkit::wait_for_flag(&mut self.connected, up, WAIT).await, "the inbox stopped");
    }

    /// Stops the inbox and waits for it to return.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task).await.expect("inbox stops in time").unwrap();
    }

    /// Waits for an inbox that ends on its own (an injected crash).
    pub(crate) async fn finished(self) {
        tokio::time::timeout(WAIT, self.task).await.expect("inbox ends in time").unwrap();
    }
}

pub(crate) fn crashing(mut config: InboxConfig) -> InboxConfig {
    config.fault = Fault::CrashAfterCommit;
    config
}

/// Polls `check` every 50 ms until it holds; fails the test after [`WAIT`].
pub(crate) async fn eventually<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(testkit::eventually(WAIT, check).await, "condition not met within {WAIT:?}");
}
