//! Retry tiers, the dead-letter queue, and replay.

use std::{sync::atomic::Ordering, time::Duration};

use inbox::{InboxConfig, headers};
use lapin::{
    options::{BasicGetOptions, BasicRejectOptions},
    types::{AMQPValue, ShortString},
};
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{amqp::*, support::*};

#[sqlx::test(migrations = false)]
async fn retryable_failures_climb_the_tiers_then_dead_letter(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    let recorder = Recorder::default();
    let mut running = start(&pool, recorder.clone(), config);
    running.wait_connected(true).await;
    let id = Uuid::new_v4();
    let thing = Thing { name: "doomed".into(), fail: "retryable".into(), ..Thing::default() };
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
    assert_eq!(Thing::decode(dead.delivery.data.as_slice()).unwrap(), thing.as_event(id), "body kept as published");

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

#[sqlx::test(migrations = false)]
async fn a_permanent_failure_is_dead_lettered_at_once_without_holding_back_its_batch(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    // Published before the consumer starts, so the three arrive in one batch.
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("before")).await;
    let bad = Uuid::new_v4();
    broker
        .publish(&topology.exchange, bad, &Thing { name: "bad".into(), fail: "permanent".into(), ..Thing::default() })
        .await;
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

#[sqlx::test(migrations = false)]
async fn a_batch_failing_as_a_whole_is_redone_message_by_message(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    broker.publish(&topology.exchange, Uuid::new_v4(), &Thing::named("one")).await;
    broker
        .publish(
            &topology.exchange,
            Uuid::new_v4(),
            &Thing { name: "bad".into(), fail: "permanent".into(), ..Thing::default() },
        )
        .await;
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

#[sqlx::test(migrations = false)]
async fn malformed_messages_are_dead_lettered_with_their_reason(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let config = InboxConfig { max_message_bytes: 1024, ..config() };
    let (config, topology, broker, _sweep) = setup(&pool, config).await;
    broker.declare(&topology).await;
    let ex = topology.exchange.as_str();
    let fresh = || Uuid::new_v4().to_string();
    // A valid body carrying event id `id`.
    let good = |id: &str| Thing { event_id: id.to_owned(), ..Thing::named("good") }.encode_to_vec();
    let as_published = |id: &str| properties(Some(id), Some(TYPE));

    broker.publish(ex, Uuid::new_v4(), &Thing::named("first")).await;
    broker.publish_raw(ex, properties(None, Some(TYPE)), &good(&fresh())).await;
    broker.publish_raw(ex, properties(Some("not-a-uuid"), Some(TYPE)), &good("not-a-uuid")).await;
    let id = fresh();
    broker.publish_raw(ex, properties(Some(&id), Some("test.v1.Other")), &good(&id)).await;
    let id = fresh();
    broker.publish_raw(ex, properties(Some(&id), None), &good(&id)).await;
    broker.publish_raw(ex, as_published(&fresh()), b"\xff\xff\xff garbage").await;
    let id = fresh();
    let nameless = Thing { event_id: id.clone(), ..Thing::named("") };
    broker.publish_raw(ex, as_published(&id), &nameless.encode_to_vec()).await;
    // The payload carries no event id, or another one than the message id.
    broker.publish_raw(ex, as_published(&fresh()), &Thing::named("no id").encode_to_vec()).await;
    broker.publish_raw(ex, as_published(&fresh()), &good(&fresh())).await;
    let id = fresh();
    for content_type in ["application/json", "text/plain"] {
        let json = as_published(&id).with_content_type(content_type.into());
        broker.publish_raw(ex, json, &good(&id)).await;
    }
    // Larger than a frame of the inbox's connection (infra::amqp::DEFAULT_FRAME_MAX): it arrives in several.
    let huge = Thing { event_id: id.clone(), ..Thing::named(&"x".repeat(40 * 1024)) }.encode_to_vec();
    assert!(huge.len() > 2 * infra::amqp::DEFAULT_FRAME_MAX as usize);
    broker.publish_raw(ex, as_published(&id), &huge).await;
    broker.publish(ex, Uuid::new_v4(), &Thing::named("last")).await;

    let running = start(&pool, Recorder::default(), config);
    let dead = broker.take_n(&topology.dead_letter, 11).await;
    let mut reasons: Vec<String> = dead.iter().map(|m| header(m, headers::REASON).unwrap()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "decode_error",
            "event_id_mismatch",
            "invalid_message_id",
            "invalid_message_id",
            "too_large",
            "unknown_type",
            "unknown_type",
            "unsupported_content_type",
            "unsupported_content_type",
            "validation_failed",
            "validation_failed",
        ]
    );
    for message in &dead {
        assert_eq!(attempt_header(message), 1);
        assert_eq!(header(message, headers::CORRELATION_ID).as_deref(), Some("corr-test"));
        assert!(!header(message, headers::ERROR).unwrap().is_empty());
    }
    let error_of = |reason: &str| {
        dead.iter()
            .filter(|m| header(m, headers::REASON).as_deref() == Some(reason))
            .map(|m| header(m, headers::ERROR).unwrap())
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(error_of("validation_failed").contains("event_id"), "{}", error_of("validation_failed"));
    assert!(error_of("too_large").contains("1024"), "{}", error_of("too_large"));
    let too_large = dead.iter().find(|m| header(m, headers::REASON).as_deref() == Some("too_large")).unwrap();
    assert!(too_large.delivery.data == huge, "the large message is dead-lettered whole");
    assert!(error_of("unsupported_content_type").contains("application/json"));
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM things ORDER BY name").fetch_all(&pool).await.unwrap();
    assert_eq!(names, ["first", "last"]);
    running.stop().await;
    assert_eq!(broker.ready(&topology.main).await, 0);
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn replay_moves_dead_letters_back_with_fresh_attempts(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
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

#[sqlx::test(migrations = false)]
async fn a_forged_attempt_count_does_not_cut_the_retries_short(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    let recorder = Recorder::default();
    let mut running = start(&pool, recorder.clone(), config);
    running.wait_connected(true).await;
    let id = Uuid::new_v4();
    let thing = Thing { name: "forged".into(), fail: "retryable".into(), ..Thing::default() }.as_event(id);
    // Straight from a publisher, claiming the attempts are already used up.
    let mut table = properties(None, None).headers().clone().unwrap_or_default();
    table.insert(headers::ATTEMPT.into(), AMQPValue::LongLongInt(99));
    let forged = properties(Some(&id.to_string()), Some(TYPE)).with_headers(table);
    broker.publish_raw(&topology.exchange, forged, &thing.encode_to_vec()).await;

    let dead = broker.take_n(&topology.dead_letter, 1).await.remove(0);
    assert_eq!(header(&dead, headers::REASON).as_deref(), Some("max_attempts_exceeded"));
    assert_eq!(attempt_header(&dead), 3);
    let numbers: Vec<u32> = recorder.attempts.lock().unwrap().iter().map(|a| a.1).collect();
    assert_eq!(numbers, [1, 2, 3], "every attempt was made");
    let seen = running.stats.snapshot();
    assert_eq!((seen.retried, seen.dead_lettered), (2, 1));
    running.stop().await;
    broker.delete(&topology).await;
}

#[sqlx::test(migrations = false)]
async fn a_message_over_the_delivery_limit_reaches_the_dlq_with_its_reason(pool: PgPool) {
    inbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let (config, topology, broker, _sweep) = setup(&pool, config()).await;
    broker.declare(&topology).await;
    let id = Uuid::new_v4();
    broker.publish(&topology.exchange, id, &Thing::named("crasher")).await;
    // Every delivery comes back unacknowledged, as from a consumer that dies on it,
    // until the broker gives up and dead-letters it.
    let mut deliveries = 0u32;
    for _ in 0..400 {
        let main = ShortString::from(topology.main.as_str());
        match broker.channel.basic_get(main, BasicGetOptions::default()).await.unwrap() {
            Some(message) => {
                deliveries += 1;
                message.delivery.acker.reject(BasicRejectOptions { requeue: true }).await.unwrap();
            }
            None if broker.ready(&topology.poison).await == 1 => break,
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(deliveries, inbox::POISON_DELIVERY_LIMIT as u32 + 1, "the broker's delivery limit");
    assert_eq!(broker.ready(&topology.main).await, 0);

    let running = start(&pool, Recorder::default(), config);
    let dead = broker.take_n(&topology.dead_letter, 1).await.remove(0);
    assert_eq!(header(&dead, headers::REASON).as_deref(), Some("delivery_limit"));
    assert_eq!(attempt_header(&dead), deliveries, "each delivery was an attempt");
    assert_eq!(header(&dead, headers::SOURCE_QUEUE).as_deref(), Some(topology.main.as_str()));
    assert!(header(&dead, headers::ERROR).unwrap().contains("without an acknowledgement"));
    assert!(chrono::DateTime::parse_from_rfc3339(&header(&dead, headers::DEAD_LETTERED_AT).unwrap()).is_ok());
    assert_eq!(header(&dead, headers::CORRELATION_ID).as_deref(), Some("corr-test"));
    let kept = dead.delivery.properties.headers().clone().unwrap_or_default();
    assert!(!kept.contains_key("x-death"), "the broker's own headers are dropped: {kept:?}");
    assert_eq!(dead.delivery.properties.message_id().as_ref().map(|m| m.to_string()), Some(id.to_string()));
    assert_eq!(Thing::decode(dead.delivery.data.as_slice()).unwrap(), Thing::named("crasher").as_event(id));
    let stats = &running.stats;
    eventually(|| async move { stats.snapshot().dead_lettered == 1 }).await;
    assert_eq!(broker.ready(&topology.poison).await, 0, "moved, not copied");
    assert_eq!(count(&pool, "SELECT count(*) FROM things").await, 0, "never applied");
    running.stop().await;
    broker.delete(&topology).await;
}
