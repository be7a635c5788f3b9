//! Exactly one effect per event, however many copies arrive and whoever takes them.

use std::time::Duration;

use inbox::headers;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{amqp::header, support::*};

const THINGS: &str = "SELECT count(*) FROM things";
const PROCESSED: &str = "SELECT count(*) FROM processed_events";

#[sqlx::test(migrations = false)]
async fn the_same_event_five_times_has_one_effect(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    let id = Uuid::new_v4();
    for _ in 0..5 {
        broker.publish(&topology.exchange, id, &Thing::named("once")).await;
    }

    let running = start(&pool, Recorder::default(), config);
    let stats = &running.stats;
    eventually(|| async move { stats.snapshot().processed + stats.snapshot().duplicates == 5 }).await;
    let seen = stats.snapshot();
    assert_eq!((seen.processed, seen.duplicates, seen.retried, seen.dead_lettered), (1, 4, 0, 0));
    assert_eq!(count(&pool, THINGS).await, 1);
    assert_eq!(count(&pool, PROCESSED).await, 1);
    running.stop().await;
    assert_eq!(broker.ready(&topology.main).await, 0, "every copy was acknowledged");
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn two_consumers_apply_each_event_once(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    let mut first = start(&pool, Recorder::default(), config.clone());
    let mut second = start(&pool, Recorder::default(), config);
    first.wait_connected(true).await;
    second.wait_connected(true).await;

    // The broker hands copies to both consumers in turn, so both hold the
    // same event id in concurrent transactions.
    let repeated = Uuid::new_v4();
    for i in 0..40 {
        if i % 8 == 0 {
            broker.publish(&topology.exchange, repeated, &Thing::named("repeated")).await;
        } else {
            broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("single")).await;
        }
    }
    let (a, b) = (&first.stats, &second.stats);
    let settled = || async move {
        let (a, b) = (a.snapshot(), b.snapshot());
        a.processed + a.duplicates + b.processed + b.duplicates == 40
    };
    eventually(settled).await;
    let (a, b) = (first.stats.snapshot(), second.stats.snapshot());
    assert_eq!(a.processed + b.processed, 36);
    assert_eq!(a.duplicates + b.duplicates, 4);
    assert!(a.processed > 0 && b.processed > 0, "both consumers took part: {a:?} {b:?}");
    assert_eq!(count(&pool, THINGS).await, 36);
    assert_eq!(count(&pool, "SELECT count(*) FROM things WHERE name = 'repeated'").await, 1);
    assert_eq!(count(&pool, PROCESSED).await, 36);
    first.stop().await;
    second.stop().await;
    assert_eq!(broker.ready(&topology.main).await, 0);
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_crash_between_commit_and_ack_is_acked_as_a_duplicate(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("survivor")).await;

    // Commits, then drops its connection without acknowledging, like a killed process.
    let crashed = start(&pool, Recorder::default(), crashing(config.clone()));
    crashed.finished().await;
    assert_eq!(count(&pool, THINGS).await, 1);
    let (broker_ref, main) = (&broker, &topology.main);
    eventually(|| async move { broker_ref.ready(main).await == 1 }).await;

    let recorder = Recorder::default();
    let restarted = start(&pool, recorder.clone(), config);
    let stats = &restarted.stats;
    eventually(|| async move { stats.snapshot().duplicates == 1 }).await;
    assert_eq!(restarted.stats.snapshot().processed, 0);
    assert!(recorder.attempts.lock().unwrap().is_empty(), "the handler never ran again");
    assert_eq!(count(&pool, THINGS).await, 1);
    assert_eq!(count(&pool, PROCESSED).await, 1);
    restarted.stop().await;
    assert_eq!(broker.ready(&topology.main).await, 0, "the redelivery was acknowledged");
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn pruning_forgets_only_ids_past_the_window(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    sqlx::query(
        "INSERT INTO processed_events (event_id, processed_at)
         SELECT gen_random_uuid(), now() - interval '8 days' FROM generate_series(1, 2500)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO processed_events (event_id) SELECT gen_random_uuid() FROM generate_series(1, 10)")
        .execute(&pool)
        .await
        .unwrap();
    let deleted = inbox::prune_processed_events(&pool, Duration::from_secs(7 * 24 * 3600)).await.unwrap();
    assert_eq!(deleted, 2500);
    assert_eq!(count(&pool, PROCESSED).await, 10);
}

#[sqlx::test(migrations = false)]
async fn the_same_event_under_another_message_id_has_one_effect_and_the_copy_is_refused(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    let event = Uuid::new_v4();
    broker.publish(&topology.exchange, event, &Thing::named("original")).await;
    // Republished under a new message id (a manual replay, a shovel, another relay version).
    let other = Uuid::new_v4();
    broker.publish_as(&topology.exchange, other, event, &Thing::named("original")).await;

    let running = start(&pool, Recorder::default(), config);
    let dead = broker.take_n(&topology.dead_letter, 1).await.remove(0);
    assert_eq!(header(&dead, headers::REASON).as_deref(), Some("event_id_mismatch"));
    let error = header(&dead, headers::ERROR).unwrap();
    assert!(error.contains(&other.to_string()) && error.contains(&event.to_string()), "{error}");
    let stats = &running.stats;
    eventually(|| async move { stats.snapshot().processed == 1 }).await;
    let recorded: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM things").fetch_all(&pool).await.unwrap();
    assert_eq!(recorded, [event], "one effect, under the payload's event id");
    let processed: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM processed_events").fetch_all(&pool).await.unwrap();
    assert_eq!(processed, [event]);
    running.stop().await;
    assert_eq!(broker.ready(&topology.main).await, 0);
    broker.delete(&topology).await;
}
