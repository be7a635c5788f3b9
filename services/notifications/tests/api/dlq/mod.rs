//! The dead-letter console: dead letters of several reasons taken from the
//! queue into the table, listed, filtered, grouped, shown, replayed (and
//! processed) and purged, over gRPC with the bearer token, and through the
//! real `notifications dlq` command line.

use std::{path::PathBuf, process::Command};

use chrono::{SecondsFormat, Utc};
use contracts::events::v1::{ORDER_CREATED_TYPE, OrderCreated};
use inbox::{
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
async fn dead_letter_directly(
    broker: &Broker,
    topology: &inbox::Topology,
    correlation_id: &str,
) -> (Uuid, OrderCreated) {
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

#[sqlx::test(migrations = false)]
async fn dead_letters_are_listed_grouped_shown_replayed_and_purged(_: PgPoolOptions, db: PgConnectOptions) {
    let token = TokenFile::new(TOKEN);
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.admin_token_file = Some(token.0.clone());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let ex = topology.exchange.as_str();
    let fresh = || Uuid::new_v4().to_string();
    broker.publish_raw(ex, properties(Some(&fresh()), Some(ORDER_CREATED_TYPE), "corr-garbage"), b"\xff\xff\xff").await;
    let (_, shipped) = order_created("corr-unknown");
    let unknown = properties(Some(&fresh()), Some("pulse.events.v1.OrderShipped"), "corr-unknown");
    broker.publish_raw(ex, unknown, &shipped.encode_to_vec()).await;
    let (bad_id, mut bad) = order_created("corr-invalid");
    bad.order_id = "not-an-order".into();
    let mut invalid_headers = FieldTable::default();
    invalid_headers.insert(ShortString::from(headers::CORRELATION_ID), AMQPValue::LongString("corr-invalid".into()));
    invalid_headers.insert(ShortString::from("traceparent"), AMQPValue::LongString(TRACEPARENT.into()));
    let invalid = properties(Some(&bad_id.to_string()), Some(ORDER_CREATED_TYPE), "corr-invalid")
        .with_correlation_id(ShortString::from("corr-invalid"))
        .with_headers(invalid_headers);
    broker.publish_raw(ex, invalid, &bad.encode_to_vec()).await;
    let (fixed_id, fixed) = dead_letter_directly(&broker, &topology, "corr-fixed").await;

    let mut console = Console::connect(&app, Some(TOKEN)).await;
    let all = console.wait_for(DeadLetterFilter::default(), 4).await;
    assert_eq!(broker.ready(&topology.dead_letter).await, 0, "the queue was taken into the table");
    let mut reasons: Vec<&str> = all.iter().map(|d| d.reason.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["decode_error", "max_attempts_exceeded", "unknown_type", "validation_failed"]);

    // Filters: reason, type, correlation id, time range; paging.
    let garbage = console.list(by_reason("decode_error")).await;
    assert_eq!((garbage.len(), garbage[0].correlation_id.as_str()), (1, "corr-garbage"));
    let of_type = DeadLetterFilter { message_type: "pulse.events.v1.OrderShipped".into(), ..Default::default() };
    assert_eq!(console.list(of_type).await[0].reason, "unknown_type");
    let correlated = DeadLetterFilter { correlation_id: "corr-fixed".into(), ..Default::default() };
    let fixed_row = console.list(correlated).await.pop().expect("the fixed event is listed");
    assert_eq!((fixed_row.message_id.as_str(), fixed_row.attempts), (fixed_id.to_string().as_str(), 3));
    let future = prost_types::Timestamp { seconds: Utc::now().timestamp() + 3600, nanos: 0 };
    assert!(console.list(DeadLetterFilter { since: Some(future), ..Default::default() }).await.is_empty());
    assert_eq!(console.list(DeadLetterFilter { until: Some(future), ..Default::default() }).await.len(), 4);
    let request = console.request(ListDeadLettersRequest { filter: None, page_size: 3, page_token: String::new() });
    let first = console.client.list_dead_letters(request).await.unwrap().into_inner();
    assert_eq!(first.dead_letters.len(), 3);
    let request =
        console.request(ListDeadLettersRequest { filter: None, page_size: 3, page_token: first.next_page_token });
    let second = console.client.list_dead_letters(request).await.unwrap().into_inner();
    assert_eq!((second.dead_letters.len(), second.next_page_token.as_str()), (1, ""));
    let mut seen: Vec<String> = first.dead_letters.iter().chain(&second.dead_letters).map(|d| d.id.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "pages neither repeat nor skip");

    // Groups by reason and type.
    let groups =
        console.client.get_dead_letter_groups(console.request(GetDeadLetterGroupsRequest { filter: None })).await;
    let groups = groups.unwrap().into_inner().groups;
    assert_eq!(groups.len(), 4);
    assert!(groups.iter().all(|g| g.count == 1));
    assert!(groups.iter().any(|g| g.reason == "unknown_type" && g.message_type == "pulse.events.v1.OrderShipped"));

    // Show: headers, the payload as JSON, the attempts; an undecodable body says why.
    let shown =
        console.client.get_dead_letter(console.request(GetDeadLetterRequest { id: fixed_row.id.clone() })).await;
    let shown = shown.unwrap().into_inner();
    let payload: serde_json::Value = serde_json::from_str(&shown.payload_json).expect("the payload is JSON");
    assert_eq!(payload["order_id"], fixed.order_id.as_str());
    assert_eq!(payload["amount"], "77.50");
    assert_eq!(shown.headers.get("traceparent").map(String::as_str), Some(TRACEPARENT));
    assert_eq!(shown.history.len(), 1);
    assert_eq!(shown.history[0].error, "retryable: database unavailable");
    let garbage_id = garbage[0].id.clone();
    let shown = console.client.get_dead_letter(console.request(GetDeadLetterRequest { id: garbage_id })).await;
    let shown = shown.unwrap().into_inner();
    assert!(shown.payload_json.is_empty() && !shown.decode_error.is_empty());
    assert_eq!(shown.payload, b"\xff\xff\xff");
    let missing = console.client.get_dead_letter(console.request(GetDeadLetterRequest { id: fresh() })).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);

    // A dry run says what would move and moves nothing.
    let would = console.replay(&[], by_reason("max_attempts_exceeded"), true).await;
    assert_eq!(would, std::slice::from_ref(&fixed_row.id));
    assert_eq!(console.list(by_reason("max_attempts_exceeded")).await.len(), 1);
    assert_eq!(broker.ready(&topology.main).await, 0);
    assert!(app.list(&fixed.order_id).await.unwrap().is_empty());

    // Replay by id: processed, with its correlation id kept.
    assert_eq!(
        console.replay(&[&fixed_row.id], DeadLetterFilter::default(), false).await,
        std::slice::from_ref(&fixed_row.id)
    );
    let (app_ref, order_id) = (&app, fixed.order_id.as_str());
    eventually(|| async move { !app_ref.list(order_id).await.unwrap().is_empty() }).await;
    assert_eq!(app.list(order_id).await.unwrap()[0].correlation_id, "corr-fixed");
    let replayed = console.list(in_state(DeadLetterState::Replayed)).await;
    assert_eq!(replayed.len(), 1);
    assert!(replayed[0].replayed_at.is_some());
    assert!(console.replay(&[&fixed_row.id], DeadLetterFilter::default(), false).await.is_empty(), "only once");

    // Replay by filter of one that fails again: back in the console with its
    // attempts counted on, its message id, correlation id and trace context kept.
    let before = console.list(by_reason("validation_failed")).await.pop().unwrap();
    assert_eq!(console.replay(&[], by_reason("validation_failed"), false).await, std::slice::from_ref(&before.id));
    let again = console.wait_for(by_reason("validation_failed"), 1).await.pop().unwrap();
    assert_ne!(again.id, before.id);
    assert_eq!(again.replay_of, before.id);
    assert_eq!(again.attempts, before.attempts + 1);
    assert_eq!(
        (again.message_id.as_str(), again.correlation_id.as_str()),
        (bad_id.to_string().as_str(), "corr-invalid")
    );
    let shown = console.client.get_dead_letter(console.request(GetDeadLetterRequest { id: again.id.clone() })).await;
    let shown = shown.unwrap().into_inner();
    assert_eq!(shown.headers.get("traceparent").map(String::as_str), Some(TRACEPARENT));
    assert_eq!(shown.headers.get(inbox::admin::REPLAY_OF).map(String::as_str), Some(before.id.as_str()));
    assert_eq!(
        shown.history.iter().map(|a| a.dead_letter_id.as_str()).collect::<Vec<_>>(),
        [before.id.as_str(), again.id.as_str()]
    );

    // Purge: a dry run changes nothing; a purge is recorded, not forgotten.
    let unknown_row = console.list(by_reason("unknown_type")).await.pop().unwrap();
    let purge = |dry_run| PurgeDeadLettersRequest {
        ids: vec![unknown_row.id.clone()],
        filter: None,
        dry_run,
        by: "ops@example.com".into(),
        reason: "OrderShipped is not ours".into(),
        limit: 0,
    };
    let dry = console.client.purge_dead_letters(console.request(purge(true))).await.unwrap().into_inner();
    assert_eq!((dry.ids.len(), dry.dry_run), (1, true));
    assert_eq!(console.list(by_reason("unknown_type")).await.len(), 1);
    let done = console.client.purge_dead_letters(console.request(purge(false))).await.unwrap().into_inner();
    assert_eq!(done.ids, std::slice::from_ref(&unknown_row.id));
    assert!(console.list(by_reason("unknown_type")).await.is_empty());
    let purged = console.list(in_state(DeadLetterState::Purged)).await;
    assert_eq!(purged.len(), 1);
    assert_eq!(
        (purged[0].purged_by.as_str(), purged[0].purge_reason.as_str()),
        ("ops@example.com", "OrderShipped is not ours")
    );
    assert!(purged[0].purged_at.is_some());
    let pool = pool(&db).await;
    assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 5, "every round is kept");

    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn the_console_needs_the_configured_token(_: PgPoolOptions, db: PgConnectOptions) {
    let token = TokenFile::new(TOKEN);
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    config.admin_token_file = Some(token.0.clone());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let app = spawn_app(config.clone()).await;
    for (token, want) in
        [(None, Code::Unauthenticated), (Some("wrong"), Code::Unauthenticated), (Some(TOKEN), Code::Ok)]
    {
        let mut console = Console::connect(&app, token).await;
        let request = console.request(GetDeadLetterGroupsRequest { filter: None });
        let got = console.client.get_dead_letter_groups(request).await.map_or_else(|s| s.code(), |_| Code::Ok);
        assert_eq!(got, want, "token {token:?}");
    }
    app.stop().await;

    config.admin_token_file = None;
    let app = spawn_app(config).await;
    let mut console = Console::connect(&app, Some(TOKEN)).await;
    let request = console.request(ListDeadLettersRequest::default());
    assert_eq!(console.client.list_dead_letters(request).await.unwrap_err().code(), Code::PermissionDenied);
    app.stop().await;
    Broker::connect().await.delete(&topology).await;
}

/// `notifications dlq …` run as a process against the running server, logging
/// at `RUST_LOG` level `log`.
fn cli(token_file: &std::path::Path, addr: std::net::SocketAddr, log: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_notifications"))
        .env_clear()
        .env("NOTIFICATIONS_ADMIN_TOKEN_FILE", token_file)
        .env("RUST_LOG", log)
        .arg("dlq")
        .args(args)
        .args(["--addr", &addr.to_string()])
        .output()
        .expect("the notifications binary runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[sqlx::test(migrations = false)]
async fn the_dlq_command_lists_shows_replays_and_purges(_: PgPoolOptions, db: PgConnectOptions) {
    let token = TokenFile::new(TOKEN);
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.admin_token_file = Some(token.0.clone());
    let topology = config.inbox.topology();
    let _sweep = Sweep(topology.clone());
    let mut app = spawn_app(config).await;
    app.wait_connected(true).await;
    let broker = Broker::connect().await;
    let (_, fixed) = dead_letter_directly(&broker, &topology, "corr-cli-fixed").await;
    let (_, other) = dead_letter_directly(&broker, &topology, "corr-cli-other").await;
    let addr = app.addr;
    let run = move |path: PathBuf, args: Vec<&'static str>| {
        tokio::task::spawn_blocking(move || cli(&path, addr, "info", &args))
    };
    let run_owned = move |path: PathBuf, args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            cli(&path, addr, "info", &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };

    let (ok, out, err) = run(token.0.clone(), vec!["list", "--json"]).await.unwrap();
    assert!(ok, "dlq list failed: {err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    let rows = listed["dead_letters"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let id_of =
        |corr: &str| rows.iter().find(|r| r["correlation_id"] == corr).unwrap()["id"].as_str().unwrap().to_owned();
    let (fixed_id, other_id) = (id_of("corr-cli-fixed"), id_of("corr-cli-other"));

    let (ok, out, _) = run(token.0.clone(), vec!["groups"]).await.unwrap();
    assert!(ok && out.contains("max_attempts_exceeded") && out.contains(ORDER_CREATED_TYPE), "groups: {out}");
    let (ok, out, _) =
        run_owned(token.0.clone(), vec!["show".into(), fixed_id.clone(), "--json".into()]).await.unwrap();
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["payload"]["order_id"], fixed.order_id.as_str());
    assert_eq!(shown["headers"]["traceparent"], TRACEPARENT);

    let (ok, out, _) =
        run(token.0.clone(), vec!["replay", "--correlation-id", "corr-cli-fixed", "--dry-run"]).await.unwrap();
    assert!(ok && out.starts_with("would replay 1 dead letter(s)") && out.contains(&fixed_id), "dry run: {out}");
    assert!(app.list(&fixed.order_id).await.unwrap().is_empty(), "a dry run moves nothing");
    let (ok, out, _) =
        run_owned(token.0.clone(), vec!["replay".into(), fixed_id.clone(), "--json".into()]).await.unwrap();
    assert!(ok);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["ids"][0], fixed_id.as_str());
    let (app_ref, order_id) = (&app, fixed.order_id.as_str());
    eventually(|| async move { !app_ref.list(order_id).await.unwrap().is_empty() }).await;

    let purge = vec![
        "purge".into(),
        other_id.clone(),
        "--by".into(),
        "cli-test".into(),
        "--reason-text".into(),
        "duplicate order".into(),
    ];
    let (ok, out, err) = run_owned(token.0.clone(), purge).await.unwrap();
    assert!(ok && out.contains(&other_id), "purge: {out} {err}");
    assert!(app.list(&other.order_id).await.unwrap().is_empty(), "a purged message is not processed");
    let pool = pool(&db).await;
    let recorded: (String, String, String) =
        sqlx::query_as("SELECT state, purged_by, purge_reason FROM dead_letters WHERE id::text = $1")
            .bind(&other_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, ("purged".into(), "cli-test".into(), "duplicate order".into()));

    // A wrong token is refused, and the token is not printed, even at trace level.
    let wrong = TokenFile::new("not-the-token");
    let path = wrong.0.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(&path, addr, "trace", &["list"])).await.unwrap();
    assert!(!ok, "a wrong token lists nothing: {out}");
    assert!(err.contains("Unauthenticated"), "stderr: {err}");
    assert!(!err.contains("not-the-token") && !out.contains("not-the-token"));

    app.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn reflection_describes_the_console(_: PgPoolOptions, db: PgConnectOptions) {
    let mut config = test_config(&database_url(&db), &testkit::amqp_url());
    config.consumer_enabled = false;
    let app = spawn_app(config).await;
    let mut command = Command::new(testkit::grpcurl());
    command.args([
        "-plaintext",
        "-max-time",
        "10",
        &app.addr.to_string(),
        "describe",
        "pulse.admin.v1.DeadLetterService",
    ]);
    let output = tokio::task::spawn_blocking(move || command.output().expect("grpcurl runs")).await.unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "grpcurl: {}", String::from_utf8_lossy(&output.stderr));
    assert!(out.contains("rpc ReplayDeadLetters"), "{out}");
    app.stop().await;
}
