use std::{sync::Arc, time::Duration};

use tokio::{sync::Mutex, time::Instant};

use crate::support::{
    api, db,
    postgres::OwnPostgres,
    process::Spec,
    scratch::{self, Scratch},
};

/// Calls a second, each with its own deadline, for `LOAD`; the restart comes after `BEFORE`.
const RATE: u64 = 50;
const LOAD: Duration = Duration::from_secs(14);
const BEFORE: Duration = Duration::from_secs(4);
/// Calls sent this long after the server is back must all succeed.
const GRACE: Duration = Duration::from_secs(1);

/// When a CreateOrder call was sent, and the order id if it succeeded.
type Calls = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// A real restart of the orders database (`pg_ctl restart -m fast`, on a
/// server of the test's own) under a steady stream of CreateOrder calls:
/// calls fail while the server is down, none sent from a second after it is
/// back, and every acknowledged order ends with exactly one notification.
#[tokio::test(flavor = "multi_thread")]
async fn no_call_fails_a_second_after_a_real_database_restart() {
    let postgres = tokio::task::spawn_blocking(OwnPostgres::start).await.expect("start a Postgres of our own");
    let scratch = Scratch::new().await;
    let orders_url = postgres.url("pulse_orders");
    let _notifications = Spec::notifications(&scratch).start().await;
    let orders = Spec::orders(&scratch).env("ORDERS_DATABASE_URL", &orders_url).start().await;

    let calls: Calls = Arc::default();
    let addr = orders.addr();
    let load = {
        let calls = Arc::clone(&calls);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1_000 / RATE));
            let until = Instant::now() + LOAD;
            let mut sent = Vec::new();
            while Instant::now() < until {
                tick.tick().await;
                let calls = Arc::clone(&calls);
                sent.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let mut request = tonic::Request::new(api::order_request("restart"));
                    request.set_timeout(Duration::from_secs(5));
                    let created = api::orders(addr).create_order(request).await;
                    calls.lock().await.push((started, created.ok().map(|r| r.into_inner().order_id)));
                }));
            }
            for call in sent {
                call.await.expect("call task");
            }
        })
    };
    tokio::time::sleep(BEFORE).await;
    let restarting = Instant::now();
    let restarted = {
        let postgres = &postgres;
        tokio::task::block_in_place(move || postgres.restart());
        Instant::now()
    };
    load.await.expect("load task");

    let calls = calls.lock().await;
    let failed = |from: Instant| calls.iter().filter(|(at, id)| *at >= from && id.is_none()).count();
    let after = calls.iter().filter(|(at, _)| *at >= restarted + GRACE).count();
    eprintln!(
        "{} calls; restart took {:?}; {} failed in all, {} of the {after} sent from a second after it",
        calls.len(),
        restarted - restarting,
        failed(Instant::now() - Duration::from_secs(3600)),
        failed(restarted + GRACE),
    );
    assert!(after >= 300, "the load went on after the restart: {after} calls");
    assert_eq!(failed(restarted + GRACE), 0, "calls failed a second after the database was back");

    let acknowledged: Vec<&String> = calls.iter().filter_map(|(_, id)| id.as_ref()).collect();
    let notifications_db = scratch.notifications_pool().await;
    db::assert_one_notification_each(&notifications_db, &db::uuids(acknowledged), Duration::from_secs(60)).await;
    let orders_db = scratch::pool(&orders_url).await;
    assert!(db::outbox_drains(&orders_db, Duration::from_secs(10)).await, "the outbox drains");
    orders_db.close().await;
}
