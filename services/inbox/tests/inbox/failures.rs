//! Retry tiers, the dead-letter queue, and replay.

use std::{sync::atomic::Ordering, time::Duration};

use inbox::headers;
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{amqp::*, support::*};

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn retryable_failures_climb_the_tiers_then_dead_letter(pool: PgPool) {
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    let recorder = Recorder::default();
    let mut running = start(&pool, recorder.clone(), config);
    running.wait_connected(true).await;
    let id = Uuid::new_v4();
    let thing = Thing { name: "doomed".into(), fail: "retryable".into() };
    broker.publish(&topology.exchange, id, &thing).await;

    let dead = broker.take_n(&topology.dead_letter, 1).await.remove(0);
    assert_eq!(header(&dead, headers::REASON).as_deref(), Some("max_attempts_exceeded"));
    assert_eq!(attempt_header(&dead), 3);
    assert!(header(&dead, headers::ERROR).unwrap().contains("dependency busy"));
    assert_eq!(header(&dead, headers::SOURCE_QUEUE).as_deref(), Some(topology.main.as_str()));
    assert!(chrono::DateTime::parse_from_rfc3339(&header(&dead, headers::DEAD_LETTERED_AT).unwrap()).is_ok());
    assert_eq!(header(&dead, headers::CORRELATION_ID).as_deref(), Some("corr-test"));
    let properties = &dead.delivery.properties;
    assert_eq!(properties.message_id().as_ref().map(|m| m.to_string()), Some(id.to_string()));
    assert_eq!(properties.kind().as_ref().map(|k| k.to_string()).as_deref(), Some(TYPE));
    assert_eq!(Thing::decode(dead.delivery.data.as_slice()).unwrap(), thing, "body kept as published");

    let attempts = recorder.attempts.lock().unwrap().clone();
    let numbers: Vec<u32> = attempts.iter().map(|a| a.1).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let first_wait = attempts[1].2 - attempts[0].2;
    let second_wait = attempts[2].2 - attempts[1].2;
    assert!(first_wait >= Duration::from_millis(200), "first retry after {first_wait:?}");
    assert!(second_wait >= Duration::from_millis(400), "second retry after {second_wait:?}");
    assert!(second_wait > first_wait, "delays grow: {first_wait:?} then {second_wait:?}");
    let seen = running.stats.snapshot();
    assert_eq!((seen.retried, seen.dead_lettered, seen.processed), (2, 1, 0));
    assert_eq!(count(&pool, "SELECT count(*) FROM processed_events").await, 0);
    for (_, retry_queue) in &topology.retries {
        assert_eq!(broker.ready(retry_queue).await, 0);
    }
    running.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn a_permanent_failure_is_dead_lettered_at_once_without_holding_back_its_batch(pool: PgPool) {
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    // Published before the consumer starts, so the three arrive in one batch.
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("before")).await;
    let bad = Uuid::new_v4();
    broker.publish(&topology.exchange, bad, &Thing { name: "bad".into(), fail: "permanent".into() }).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("after")).await;

    let recorder = Recorder::default();
    let running = start(&pool, recorder.clone(), config);
    let dead = broker.take_n(&topology.dead_letter, 1).await.remove(0);
    assert_eq!(header(&dead, headers::REASON).as_deref(), Some("handler_rejected"));
    assert_eq!(attempt_header(&dead), 1);
    assert!(header(&dead, headers::ERROR).unwrap().contains("cannot ever work"));
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM things ORDER BY name").fetch_all(&pool).await.unwrap();
    assert_eq!(names, ["after", "before"]);
    let recorded: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM processed_events").fetch_all(&pool).await.unwrap();
    assert_eq!(recorded.len(), 2);
    assert!(!recorded.contains(&bad), "a dead-lettered event is not marked processed, so a replay can apply it");
    assert_eq!(running.stats.snapshot().retried, 0);
    running.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn a_batch_failing_as_a_whole_is_redone_message_by_message(pool: PgPool) {
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("one")).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing { name: "bad".into(), fail: "permanent".into() }).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("two")).await;

    let recorder = Recorder { set_based: true, ..Recorder::default() };
    let running = start(&pool, recorder, config);
    let dead = broker.take_n(&topology.dead_letter, 1).await.remove(0);
    assert_eq!(header(&dead, headers::REASON).as_deref(), Some("handler_rejected"));
    let pool_ref = &pool;
    eventually(|| async move { count(pool_ref, "SELECT count(*) FROM things").await == 2 }).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM things ORDER BY name").fetch_all(&pool).await.unwrap();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(count(&pool, "SELECT count(*) FROM processed_events").await, 2);
    running.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn malformed_messages_are_dead_lettered_with_their_reason(pool: PgPool) {
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    let ex = topology.exchange.as_str();
    let good = Thing::named("good").encode_to_vec();
    let id = || Some(Uuid::new_v4().to_string());

    broker.publish(ex, Uuid::new_v4(), &Thing::named("first")).await;
    broker.publish_raw(ex, properties(None, Some(TYPE)), &good).await;
    broker.publish_raw(ex, properties(Some("not-a-uuid"), Some(TYPE)), &good).await;
    broker.publish_raw(ex, properties(id().as_deref(), Some("test.v1.Other")), &good).await;
    broker.publish_raw(ex, properties(id().as_deref(), None), &good).await;
    broker.publish_raw(ex, properties(id().as_deref(), Some(TYPE)), b"\xff\xff\xff garbage").await;
    broker.publish_raw(ex, properties(id().as_deref(), Some(TYPE)), &Thing::named("").encode_to_vec()).await;
    broker.publish(ex, Uuid::new_v4(), &Thing::named("last")).await;

    let running = start(&pool, Recorder::default(), config);
    let dead = broker.take_n(&topology.dead_letter, 6).await;
    let mut reasons: Vec<String> = dead.iter().map(|m| header(m, headers::REASON).unwrap()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "decode_error",
            "invalid_message_id",
            "invalid_message_id",
            "unknown_type",
            "unknown_type",
            "validation_failed"
        ]
    );
    for message in &dead {
        assert_eq!(attempt_header(message), 1);
        assert_eq!(header(message, headers::CORRELATION_ID).as_deref(), Some("corr-test"));
        assert!(!header(message, headers::ERROR).unwrap().is_empty());
    }
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM things ORDER BY name").fetch_all(&pool).await.unwrap();
    assert_eq!(names, ["first", "last"]);
    running.stop().await;
    assert_eq!(broker.ready(&topology.main).await, 0);
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = "../../migrations/notifications")]
async fn replay_moves_dead_letters_back_with_fresh_attempts(pool: PgPool) {
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    let recorder = Recorder::default();
    recorder.broken.store(true, Ordering::SeqCst);
    let mut running = start(&pool, recorder.clone(), config.clone());
    running.wait_connected(true).await;
    for name in ["a", "b", "c"] {
        broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named(name)).await;
    }
    let stats = &running.stats;
    eventually(|| async move { stats.snapshot().dead_lettered == 3 }).await;
    recorder.broken.store(false, Ordering::SeqCst);

    let moved = inbox::replay_dead_letters(&config.amqp_url, &topology, Some(2)).await.unwrap();
    assert_eq!(moved, 2);
    let pool_ref = &pool;
    eventually(|| async move { count(pool_ref, "SELECT count(*) FROM things").await == 2 }).await;
    assert_eq!(broker.ready(&topology.dead_letter).await, 1);
    let moved = inbox::replay_dead_letters(&config.amqp_url, &topology, None).await.unwrap();
    assert_eq!(moved, 1);
    eventually(|| async move { count(pool_ref, "SELECT count(*) FROM things").await == 3 }).await;
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempt FROM things").fetch_all(&pool).await.unwrap();
    assert_eq!(attempts, [1, 1, 1], "a replayed message starts again at attempt 1");
    assert_eq!(broker.ready(&topology.dead_letter).await, 0);
    running.stop().await;
    broker.delete(&topology).await;
}
