//! The dead-letter console: dead letters of several reasons taken from the
//! queue into the table, listed, filtered, grouped, shown, replayed (and
//! processed) and purged, over gRPC with the bearer token, and through the
//! real `notifications dlq` command line.

mod command;
mod grpc;

use std::{path::PathBuf, process::Command};

use chrono::{SecondsFormat, Utc};
use contracts::events::v1::{ORDER_CREATED_TYPE, OrderCreated};
use inbox::{
    Topology,
    admin::v1::{
        DeadLetter, DeadLetterFilter, DeadLetterState, GetDeadLetterGroupsRequest, GetDeadLetterRequest,
        ListDeadLettersRequest, PurgeDeadLettersRequest, ReplayDeadLettersRequest,
        dead_letter_service_client::DeadLetterServiceClient,
    },
    headers,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use prost::Message;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::{Code, Request, transport::Channel as GrpcChannel};
use uuid::Uuid;

use crate::helpers::*;

const TOKEN: &str = "console-token-7f3a";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A file holding `token`, removed when dropped.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(token: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.token", testkit::unique("dlq")));
        std::fs::write(&path, format!("{token}\n")).unwrap();
        Self(path)
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Notifications consuming through `amqp_url` with the console behind
/// [`TOKEN`], connected to the broker; with its topology and what must live
/// as long as the test (the token's file, the sweep of its queues).
async fn console_app(db: &PgConnectOptions, amqp_url: &str) -> (TestApp, Topology, TokenFile, Sweep) {
    let token = TokenFile::new(TOKEN);
    let mut config = test_config(&database_url(db), amqp_url);
    config.admin_token_file = Some(token.0.clone());
    let topology = config.inbox.topology();
    let sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    (app, topology, token, sweep)
}

struct Console {
    client: DeadLetterServiceClient<GrpcChannel>,
    token: Option<String>,
}

impl Console {
    async fn connect(app: &TestApp, token: Option<&str>) -> Self {
        let client = DeadLetterServiceClient::connect(format!("http://{}", app.addr)).await.unwrap();
        Self { client, token: token.map(str::to_owned) }
    }

    fn request<T>(&self, body: T) -> Request<T> {
        let mut request = Request::new(body);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    async fn list(&mut self, filter: DeadLetterFilter) -> Vec<DeadLetter> {
        let request =
            self.request(ListDeadLettersRequest { filter: Some(filter), page_size: 100, page_token: String::new() });
        self.client.list_dead_letters(request).await.unwrap().into_inner().dead_letters
    }

    async fn wait_for(&mut self, filter: DeadLetterFilter, n: usize) -> Vec<DeadLetter> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = self.list(filter.clone()).await;
            if rows.len() >= n || tokio::time::Instant::now() > deadline {
                assert_eq!(rows.len(), n, "dead letters for {filter:?}");
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn replay(&mut self, ids: &[&str], filter: DeadLetterFilter, dry_run: bool) -> Vec<String> {
        let ids = ids.iter().map(|id| (*id).to_owned()).collect();
        let request = self.request(ReplayDeadLettersRequest { ids, filter: Some(filter), dry_run, limit: 0 });
        self.client.replay_dead_letters(request).await.unwrap().into_inner().ids
    }
}

fn by_reason(reason: &str) -> DeadLetterFilter {
    DeadLetterFilter { reason: reason.to_owned(), ..DeadLetterFilter::default() }
}

fn in_state(state: DeadLetterState) -> DeadLetterFilter {
    DeadLetterFilter { state: state.into(), ..DeadLetterFilter::default() }
}

/// A valid event already in the dead-letter queue, as the inbox left it after
/// its attempts ran out (a fault since fixed): replaying it must succeed.
async fn dead_letter_directly(broker: &Broker, topology: &Topology, correlation_id: &str) -> (Uuid, OrderCreated) {
    let (event_id, event) = order_created(correlation_id);
    let mut table = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    table.insert(ShortString::from(headers::CORRELATION_ID), text(correlation_id));
    table.insert(ShortString::from("traceparent"), text(TRACEPARENT));
    table.insert(ShortString::from(headers::ATTEMPT), AMQPValue::LongLongInt(3));
    table.insert(ShortString::from(headers::REASON), text("max_attempts_exceeded"));
    table.insert(ShortString::from(headers::ERROR), text("retryable: database unavailable"));
    table.insert(ShortString::from(headers::SOURCE_QUEUE), text(&topology.main));
    let at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    table.insert(ShortString::from(headers::DEAD_LETTERED_AT), text(&at));
    let props = properties(Some(&event_id.to_string()), Some(ORDER_CREATED_TYPE), correlation_id).with_headers(table);
    broker.publish_to("", &topology.dead_letter, props, &event.encode_to_vec()).await;
    (event_id, event)
}
