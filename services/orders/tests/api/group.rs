//! Group commit: concurrent CreateOrders share transactions, and each order
//! still commits with its own event and nobody else's failure.

use std::{collections::HashSet, time::Duration};

use contracts::{events::v1::OrderCreated, orders::v1::CreateOrderRequest};
use prost::Message;
use sqlx::PgPool;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{Options, TestApp, all_at_once, order, spawn_app};

/// One writer, so that calls arriving together must wait for it and share its transactions.
async fn one_writer(pool: &PgPool) -> TestApp {
    spawn_app(pool, Options { writers: Some(1), ..Options::default() }).await
}

#[sqlx::test(migrations = false)]
async fn concurrent_orders_share_transactions_each_with_its_own_event(pool: PgPool) {
    let app = one_writer(&pool).await;
    const CALLS: usize = 64;
    let requests = (0..CALLS).map(|i| order(&format!("c-{i}"), &format!("{i}.25"), "EUR")).collect();
    let ids: Vec<String> = all_at_once(&app, requests).await.into_iter().map(|r| r.expect("created")).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), CALLS, "every call got an order of its own");

    // Each order and its event, with the transaction (xmin) that wrote each.
    let rows: Vec<(Uuid, String, String, Vec<u8>, String, String)> = sqlx::query_as(
        "SELECT o.order_id, o.customer_id, o.amount::text, m.payload, o.xmin::text, m.xmin::text
         FROM orders o JOIN outbox_messages m ON m.event_id = o.event_id AND m.aggregate_id = o.order_id::text",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), CALLS, "every order has its event");
    assert_eq!(app.events().await, CALLS as i64, "and no other event exists");
    // Each order's saga and ProcessPayment, committed with it.
    let saga_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o JOIN sagas s ON s.order_id = o.order_id AND s.xmin = o.xmin
         JOIN outbox_messages m ON m.aggregate_id = o.order_id::text AND m.routing_key = 'payment.process'
         AND m.xmin = o.xmin",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(saga_rows, CALLS as i64, "every order has its saga and first command in its transaction");
    for (order_id, customer, amount, payload, order_tx, event_tx) in &rows {
        assert!(ids.contains(&order_id.to_string()), "{order_id} is an order a caller was given");
        assert_eq!(order_tx, event_tx, "{order_id} committed with its own event");
        let event = OrderCreated::decode(payload.as_slice()).unwrap();
        assert_eq!((&event.order_id, &event.customer_id, &event.amount), (&order_id.to_string(), customer, amount));
    }
    let transactions: HashSet<&String> = rows.iter().map(|row| &row.4).collect();
    assert!(transactions.len() < CALLS, "{CALLS} calls at once took {} transactions", transactions.len());
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn retries_in_one_group_get_the_same_order(pool: PgPool) {
    let app = one_writer(&pool).await;
    let request_id = Uuid::new_v4().to_string();
    let retry = CreateOrderRequest { request_id: request_id.clone(), ..order("c-retry", "10.00", "EUR") };
    let mut requests = vec![retry; 16];
    // Others in the same groups, so the retries are not alone.
    requests.extend((0..16).map(|i| order(&format!("c-{i}"), "1.00", "EUR")));
    let outcomes = all_at_once(&app, requests).await;
    let ids: Vec<String> = outcomes.into_iter().map(|r| r.expect("created or replayed")).collect();
    assert_eq!(ids[..16].iter().collect::<HashSet<_>>().len(), 1, "every retry got the same order: {ids:?}");
    let (orders, events): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM orders WHERE request_id = $1::uuid),
                (SELECT count(*) FROM outbox_messages WHERE aggregate_id = $2 AND routing_key = 'order.created')",
    )
    .bind(&request_id)
    .bind(&ids[0])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((orders, events), (1, 1), "one order and one event for the request_id");
    assert_eq!(app.count("orders").await, 17);
    assert_eq!(app.events().await, 17);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_order_the_database_refuses_fails_alone(pool: PgPool) {
    let app = one_writer(&pool).await;
    // A rule the service does not know of, so the grouped statement fails in the database.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.customer_id = 'poison' THEN RAISE EXCEPTION 'poison order'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut requests: Vec<CreateOrderRequest> = (0..31).map(|i| order(&format!("c-{i}"), "2.00", "EUR")).collect();
    requests.insert(15, order("poison", "2.00", "EUR"));
    let outcomes = all_at_once(&app, requests).await;
    let status = outcomes[15].as_ref().expect_err("the refused order fails");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let created = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(created, 31, "every other call succeeded: {outcomes:?}");
    assert_eq!(app.count("orders").await, 31);
    assert_eq!(app.events().await, 31, "and only their events exist");
    app.stop().await;
}

/// A caller whose deadline passes while its group fails and is written order
/// by order gets no order: nothing is written for a caller who gave up.
#[sqlx::test(migrations = false)]
async fn a_caller_gone_before_its_group_is_retried_gets_no_order(pool: PgPool) {
    let app = one_writer(&pool).await;
    // 'slow' orders take 400 ms to insert; 'poison' ones fail their statement.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_or_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.customer_id LIKE 'slow%' THEN PERFORM pg_sleep(0.4); END IF;
             IF NEW.customer_id = 'poison' THEN RAISE EXCEPTION 'poison order'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER slow_or_poison BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION slow_or_poison();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let send = |request: CreateOrderRequest, timeout: Option<Duration>| {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            let mut request = tonic::Request::new(request);
            if let Some(timeout) = timeout {
                request.set_timeout(timeout);
            }
            client.create_order(request).await.map(|r| r.into_inner().order_id)
        })
    };
    // The writer is busy with this one while the next three queue up behind
    // it, in this order, and form one group.
    let busy = send(order("slow-busy", "1.00", "EUR"), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let slow = send(order("slow-grouped", "1.00", "EUR"), None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let poison = send(order("poison", "1.00", "EUR"), None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Alive when its group is taken (at about 400 ms), gone by the time the
    // group has failed (its slow order alone takes 400 ms).
    let gone = send(order("gave-up", "1.00", "EUR"), Some(Duration::from_millis(600)));

    busy.await.unwrap().expect("the first order is created");
    slow.await.unwrap().expect("the slow order in the failed group is created alone");
    let refused = poison.await.unwrap().expect_err("the poison order fails");
    assert_eq!(refused.code(), Code::Internal, "{refused:?}");
    let gave_up = gone.await.unwrap().expect_err("the caller's deadline passed");
    assert!(matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled), "{gave_up:?}");

    // Time for a write the caller no longer waits for, were one made.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id = 'gave-up'").fetch_one(&pool).await.unwrap();
    assert_eq!(written, 0, "no order for the caller who gave up");
    assert_eq!(app.count("orders").await, 2);
    assert_eq!(app.events().await, 2, "and no event for it either");
    app.stop().await;
}
