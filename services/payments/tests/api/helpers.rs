//! Spawning the service in-process against a fresh database and an isolated
//! exchange and queue set, publishing commands the way the outbox relay does,
//! reading the replies, and waiting with deadlines.

use std::{future::Future, time::Duration};

use contracts::{
    Routed,
    payments::v1::{
        GetCustomerCreditRequest, PaymentDeclined, PaymentProcessed, PaymentRefunded, ProcessPayment, RefundPayment,
        payment_service_client::PaymentServiceClient,
    },
};
use lapin::{
    message::BasicGetMessage,
    options::{QueueBindOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};
use payments::{Config, money::DefaultCredit};
use prost::Message;
use sqlx::PgPool;
use tonic::transport::Channel as GrpcChannel;
use uuid::Uuid;

pub(crate) use testkit::consumer::{Sweep, header};

pub(crate) use testkit::service::{database_url, pool};

pub(crate) const WAIT: Duration = Duration::from_secs(25);

/// Port 0, an isolated exchange and queue, short retry tiers (200 ms, 400 ms; 3 attempts),
/// a relay publishing to the same exchange.
pub(crate) fn test_config(database_url: &str) -> Config {
    let (inbox, relay) = testkit::service::consumer_and_relay("payments", payments::config::routing_keys());
    Config {
        server: testkit::service::server_config(database_url, Duration::from_millis(1000)),
        inbox,
        relay,
        default_credit: DefaultCredit::default(),
        admin_token: None,
    }
}

/// The service, running in the background: its addresses, consumer stats
/// and connection flag are [`testkit::service::Running`]'s.
pub(crate) struct TestApp(testkit::service::Running);

impl std::ops::Deref for TestApp {
    type Target = testkit::service::Running;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

pub(crate) async fn spawn_app(config: Config) -> TestApp {
    let mut app = TestApp(testkit::service::Running::spawn(payments::build(config)).await);
    let _ = app.0.wait_connected(true, WAIT).await;
    app
}

impl TestApp {
    pub(crate) async fn client(&self) -> PaymentServiceClient<GrpcChannel> {
        PaymentServiceClient::connect(format!("http://{}", self.addr)).await.expect("connect to the service")
    }

    /// (limit, used) of a customer's credit.
    pub(crate) async fn credit(&self, customer_id: &str, currency: &str) -> (String, String) {
        let request = GetCustomerCreditRequest { customer_id: customer_id.into(), currency: currency.into() };
        let credit = self.client().await.get_customer_credit(request).await.unwrap().into_inner().credit.unwrap();
        (credit.limit, credit.used)
    }

    /// Fires the shutdown token and waits for a clean exit.
    pub(crate) async fn stop(self) {
        self.0.stop(WAIT).await;
    }
}

pub(crate) fn process_payment(customer_id: &str, amount: &str) -> ProcessPayment {
    ProcessPayment {
        event_id: Uuid::new_v4().to_string(),
        order_id: Uuid::new_v4().to_string(),
        customer_id: customer_id.to_owned(),
        amount: amount.to_owned(),
        currency: "EUR".into(),
        occurred_at: None,
        correlation_id: format!("corr-{}", Uuid::new_v4().simple()),
    }
}

pub(crate) fn refund_payment(order_id: &str) -> RefundPayment {
    RefundPayment {
        event_id: Uuid::new_v4().to_string(),
        order_id: order_id.to_owned(),
        occurred_at: None,
        correlation_id: format!("corr-{}", Uuid::new_v4().simple()),
    }
}

/// A reply as read off the test's queue.
#[derive(Debug)]
pub(crate) enum Reply {
    Processed(PaymentProcessed),
    Declined(PaymentDeclined),
    Refunded(PaymentRefunded),
}

impl Reply {
    pub(crate) fn order_id(&self) -> &str {
        match self {
            Self::Processed(r) => &r.order_id,
            Self::Declined(r) => &r.order_id,
            Self::Refunded(r) => &r.order_id,
        }
    }
}

/// The test broker, with a queue of the test's own bound to the three reply keys.
pub(crate) struct Broker {
    inner: testkit::consumer::Broker,
    pub(crate) exchange: String,
    pub(crate) replies: String,
}

impl std::ops::Deref for Broker {
    type Target = testkit::consumer::Broker;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Broker {
    /// Declares the service's topology and the replies queue (deleted by [`Self::delete`]).
    pub(crate) async fn connect(topology: &inbox::Topology) -> Self {
        let inner = testkit::consumer::Broker::connect(WAIT).await;
        inner.declare(topology).await;
        let replies = testkit::unique("test.payments.replies");
        inner
            .channel
            .queue_declare(ShortString::from(replies.as_str()), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
        for key in [PaymentProcessed::ROUTING_KEY, PaymentDeclined::ROUTING_KEY, PaymentRefunded::ROUTING_KEY] {
            inner
                .channel
                .queue_bind(
                    ShortString::from(replies.as_str()),
                    ShortString::from(topology.exchange.as_str()),
                    ShortString::from(key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        Self { inner, exchange: topology.exchange.clone(), replies }
    }

    /// Publishes `message` as the relay would (message id = event id, type, correlation header).
    pub(crate) async fn send<M: Routed>(&self, event_id: &str, correlation_id: &str, message: &M) {
        let properties = testkit::consumer::relay_properties(Some(event_id), Some(M::MESSAGE_TYPE), correlation_id);
        self.inner.publish_to(&self.exchange, M::ROUTING_KEY, properties, &message.encode_to_vec()).await;
    }

    pub(crate) async fn process(&self, command: &ProcessPayment) {
        self.send(&command.event_id, &command.correlation_id, command).await;
    }

    pub(crate) async fn refund(&self, command: &RefundPayment) {
        self.send(&command.event_id, &command.correlation_id, command).await;
    }

    /// Waits for `n` replies, takes them, and decodes each by its AMQP type,
    /// checking it is routed and identified as the relay sends it.
    pub(crate) async fn replies(&self, n: u32) -> Vec<Reply> {
        self.inner.take_n(&self.replies, n).await.iter().map(decode).collect()
    }

    /// Replies in the queue now, without waiting.
    pub(crate) async fn ready_replies(&self) -> u32 {
        self.inner.ready(&self.replies).await
    }

    pub(crate) async fn delete(&self, topology: &inbox::Topology) {
        let _ = self
            .inner
            .channel
            .queue_delete(ShortString::from(self.replies.as_str()), lapin::options::QueueDeleteOptions::default())
            .await;
        self.inner.delete(topology).await;
    }
}

fn decode(message: &BasicGetMessage) -> Reply {
    let properties = &message.delivery.properties;
    let kind = properties.kind().as_ref().map(|k| k.to_string()).expect("a reply has a type");
    let key = message.delivery.routing_key.to_string();
    let body = message.delivery.data.as_slice();
    assert_eq!(properties.content_type().as_ref().map(|c| c.to_string()).as_deref(), Some("application/x-protobuf"));
    let (event_id, correlation_id, reply) = match kind.as_str() {
        PaymentProcessed::MESSAGE_TYPE => {
            assert_eq!(key, PaymentProcessed::ROUTING_KEY);
            let r = PaymentProcessed::decode(body).unwrap();
            (r.event_id.clone(), r.correlation_id.clone(), Reply::Processed(r))
        }
        PaymentDeclined::MESSAGE_TYPE => {
            assert_eq!(key, PaymentDeclined::ROUTING_KEY);
            let r = PaymentDeclined::decode(body).unwrap();
            (r.event_id.clone(), r.correlation_id.clone(), Reply::Declined(r))
        }
        PaymentRefunded::MESSAGE_TYPE => {
            assert_eq!(key, PaymentRefunded::ROUTING_KEY);
            let r = PaymentRefunded::decode(body).unwrap();
            (r.event_id.clone(), r.correlation_id.clone(), Reply::Refunded(r))
        }
        other => panic!("unexpected reply type {other}"),
    };
    assert_eq!(properties.message_id().as_ref().map(|id| id.to_string()), Some(event_id.clone()));
    assert!(Uuid::parse_str(&event_id).is_ok(), "a fresh event id");
    assert_eq!(header(message, "x-correlation-id"), Some(correlation_id));
    reply
}

/// Removes the queues and exchange the service declared for a test.
pub(crate) async fn delete_topology(topology: &inbox::Topology) {
    testkit::consumer::Broker::connect(WAIT).await.delete(topology).await;
}

pub(crate) async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Polls `check` every 50 ms until it holds; fails the test after [`WAIT`].
pub(crate) async fn eventually<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(testkit::eventually(WAIT, check).await, "condition not met within {WAIT:?}");
}
