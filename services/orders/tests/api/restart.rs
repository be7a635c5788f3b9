//! A database restart seen from the service: every connection's session
//! ends at once, and no call after it fails; an insert whose answer was lost
//! with its connection is answered with the order it committed.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use contracts::orders::v1::{CreateOrderRequest, GetOrderRequest};
use sqlx::PgPool;
use testkit::FaultProxy;
use uuid::Uuid;

use crate::helpers::{Options, TestApp, all_at_once, order, spawn_app};

/// Ends every other session on the test's database, as a restart of Postgres
/// does (`57P01` admin_shutdown), and waits until they are gone.
async fn restart_sessions(pool: &PgPool) {
    let ended: Vec<i32> = sqlx::query_scalar(
        "WITH others AS MATERIALIZED (
             SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
         )
         SELECT pid FROM others WHERE pg_terminate_backend(pid)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(ended.len() > 1, "the service had connections open: {ended:?}");
    let gone = async {
        loop {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&ended)
                .fetch_one(pool)
                .await
                .unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone).await.expect("the ended backends exit");
}

/// The calls that failed among `outcomes`.
fn failures<T: std::fmt::Debug>(outcomes: &[Result<T, tonic::Status>]) -> Vec<String> {
    outcomes.iter().filter_map(|outcome| outcome.as_ref().err()).map(|status| format!("{status:?}")).collect()
}

async fn get_all(app: &TestApp, ids: &[String]) -> Vec<Result<String, tonic::Status>> {
    let calls = ids.iter().map(|id| {
        let mut client = app.client.clone();
        let request = GetOrderRequest { order_id: id.clone() };
        tokio::spawn(
            async move { client.get_order(request).await.map(|r| r.into_inner().order.expect("order").order_id) },
        )
    });
    futures::future::join_all(calls).await.into_iter().map(|joined| joined.expect("call task")).collect()
}

/// The restart lands while the service holds idle connections, all of them
/// dead from then on. CreateOrder in groups and alone, GetOrder and a retry
/// by `request_id` all succeed afterwards: the first statement on each dead
/// connection is retried on a live one, and none is written twice.
#[sqlx::test(migrations = false)]
async fn no_call_fails_after_a_database_restart(pool: PgPool) {
    let app = spawn_app(&pool, Options { min_connections: Some(4), ..Options::default() }).await;
    let retried = CreateOrderRequest { request_id: Uuid::new_v4().to_string(), ..order("c-retry", "3.00", "EUR") };
    let mut warm: Vec<CreateOrderRequest> = (0..31).map(|i| order(&format!("warm-{i}"), "1.00", "EUR")).collect();
    warm.push(retried.clone());
    let warm: Vec<String> = all_at_once(&app, warm).await.into_iter().map(|r| r.expect("created")).collect();

    restart_sessions(&pool).await;
    let created = all_at_once(&app, (0..32).map(|i| order(&format!("after-{i}"), "2.00", "EUR")).collect()).await;
    assert_eq!(failures(&created), Vec::<String>::new(), "creates right after the restart");

    restart_sessions(&pool).await;
    let fetched = get_all(&app, &warm).await;
    assert_eq!(failures(&fetched), Vec::<String>::new(), "gets right after the restart");
    assert_eq!(fetched.into_iter().map(Result::unwrap).collect::<Vec<_>>(), warm);

    restart_sessions(&pool).await;
    let mut client = app.client.clone();
    let again = client.create_order(retried).await.expect("a retry right after the restart");
    assert_eq!(&again.into_inner().order_id, warm.last().unwrap(), "the retry gets its order");
    let alone = client.create_order(order("alone", "4.00", "EUR")).await;
    assert_eq!(failures(&[alone]), Vec::<String>::new(), "a lone create right after the restart");

    let ids: HashSet<String> = created.into_iter().map(Result::unwrap).collect();
    assert_eq!(ids.len(), 32, "every create got an order of its own");
    assert_eq!(app.count("orders").await, 65, "each order written once");
    assert_eq!(app.events().await, 65, "with one event each");
    app.stop().await;
}

/// The connection dies after the server committed an insert but before its
/// answer arrived: the order exists though the service saw only the
/// connection's end. The caller is answered with that order (read back),
/// and it is not written a second time.
#[sqlx::test(migrations = false)]
async fn an_insert_whose_answer_was_lost_is_answered_with_its_order(pool: PgPool) {
    let proxy = FaultProxy::start(testkit::socket_addr_of(&testkit::database_url())).await;
    let app =
        spawn_app(&pool, Options { database_addr: Some(proxy.addr()), writers: Some(1), ..Options::default() }).await;
    app.client.clone().create_order(order("before", "1.00", "EUR")).await.expect("created");

    proxy.mute();
    let mut client = app.client.clone();
    let call = tokio::spawn(async move { client.create_order(order("lost-answer", "12.50", "EUR")).await });
    let committed = testkit::eventually(Duration::from_secs(5), || async {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id = 'lost-answer'")
            .fetch_one(&pool)
            .await
            .unwrap();
        stored == 1
    })
    .await;
    assert!(committed, "the insert committed on the server");
    // Let the rest of the server's answer reach the proxy (and be dropped).
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.reset();

    let answer = call.await.unwrap().expect("answered with the order, not an error").into_inner();
    let stored: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT o.order_id, (SELECT count(*) FROM outbox_messages m WHERE m.aggregate_id = o.order_id::text AND m.routing_key = 'order.created')
         FROM orders o WHERE o.customer_id = 'lost-answer'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 1, "written once: {stored:?}");
    assert_eq!(answer.order_id, stored[0].0.to_string(), "the caller got the stored order");
    assert_eq!(stored[0].1, 1, "with its one event");
    let order = answer.order.expect("order");
    assert_eq!((order.customer_id.as_str(), order.amount.as_str()), ("lost-answer", "12.50"));
    assert_eq!(app.count("orders").await, 2);
    app.stop().await;
}

/// Restarts landing while CreateOrder calls are in flight, some of them
/// mid-statement: no call fails, and every order is written exactly once.
#[sqlx::test(migrations = false)]
async fn no_call_fails_when_restarts_land_under_load(pool: PgPool) {
    let app = spawn_app(&pool, Options { min_connections: Some(4), ..Options::default() }).await;
    let running = Arc::new(AtomicBool::new(true));
    let clients = (0..8).map(|client| {
        let (mut grpc, running) = (app.client.clone(), Arc::clone(&running));
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0.. {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                let customer = format!("load-{client}-{n}");
                let outcome = grpc.create_order(order(&customer, "5.00", "EUR")).await.map(|r| r.into_inner().order_id);
                outcomes.push((customer, outcome));
            }
            outcomes
        })
    });
    let clients: Vec<_> = clients.collect();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        restart_sessions(&pool).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    running.store(false, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for client in futures::future::join_all(clients).await {
        outcomes.extend(client.expect("client task"));
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(customer, outcome)| outcome.as_ref().err().map(|status| format!("{customer}: {status:?}")))
        .collect();
    assert_eq!(failed, Vec::<String>::new(), "{} calls", outcomes.len());

    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT customer_id, count(*) FROM orders GROUP BY customer_id").fetch_all(&pool).await.unwrap();
    assert!(stored.iter().all(|(_, count)| *count == 1), "an order written twice: {stored:?}");
    assert_eq!(stored.len(), outcomes.len(), "one order per call");
    assert_eq!(app.events().await, outcomes.len() as i64, "one event per order");
    app.stop().await;
}
