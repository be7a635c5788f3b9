//! The caller's row and its event in one statement: the outbox row lands with
//! every column, and both commit or roll back together.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox::{Appended, OutboxMessage, WithEvents};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The protobuf field the tests' stamps name.
const STAMP_FIELD: u32 = 6;

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Thing {
    id: Uuid,
    name: String,
    event_id: Uuid,
}

async fn setup(pool: &PgPool) -> PgConnection {
    let mut conn = pool.acquire().await.unwrap().detach();
    outbox::schema::apply(&mut conn).await.unwrap();
    sqlx::query("CREATE TABLE things (id uuid PRIMARY KEY, name text NOT NULL CHECK (name <> ''), event_id uuid)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

fn message(event_id: Uuid, aggregate_id: &str) -> OutboxMessage {
    OutboxMessage {
        event_id,
        aggregate_type: "thing".into(),
        aggregate_id: aggregate_id.into(),
        exchange: "things".into(),
        routing_key: "thing.made".into(),
        message_type: "test.ThingMade".into(),
        content_type: "application/x-protobuf".into(),
        payload: vec![1, 2, 3],
        headers: BTreeMap::from([("x-correlation-id".to_owned(), "corr-1".to_owned())]),
    }
}

/// Writes `thing` with `event`, stamped with the time `at` reads in field
/// [`STAMP_FIELD`] ([`WithEvents::occurred_at`]) if given.
async fn insert_one(
    conn: &mut PgConnection,
    thing: (Uuid, &str, Uuid),
    event: &OutboxMessage,
    at: Option<&'static str>,
) -> Result<Option<(Thing, Appended)>, sqlx::Error> {
    let mut statement = WithEvents::new();
    if let Some(at) = at {
        statement.occurred_at(STAMP_FIELD, at);
    }
    let query = statement.caller();
    query.push("made AS (INSERT INTO things (id, name, event_id) VALUES (");
    query.push_bind(thing.0).push(", ").push_bind(thing.1.to_owned()).push(", ").push_bind(thing.2);
    query.push(") ON CONFLICT (id) DO NOTHING RETURNING id, name, event_id)");
    statement.event("made", event).fetch_optional(conn).await
}

/// Writes a thing per entry of `things`, each with the event of the same
/// index in `events`, in one statement after the caller's own `ctes` (each
/// followed by a comma); `at` as for [`insert_one`].
async fn insert_many(
    conn: &mut PgConnection,
    things: &[(Uuid, &str)],
    events: &[OutboxMessage],
    ctes: &str,
    at: Option<&'static str>,
) -> Vec<(Thing, Appended)> {
    let mut statement = WithEvents::new();
    if let Some(at) = at {
        statement.occurred_at(STAMP_FIELD, at);
    }
    let query = statement.caller();
    query.push(ctes).push("made AS (INSERT INTO things (id, name, event_id) SELECT * FROM unnest(");
    query.push_bind(things.iter().map(|t| t.0).collect::<Vec<_>>()).push("::uuid[], ");
    query.push_bind(things.iter().map(|t| t.1.to_owned()).collect::<Vec<_>>()).push("::text[], ");
    query.push_bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>()).push("::uuid[])");
    query.push(" ON CONFLICT (id) DO NOTHING RETURNING id, name, event_id)");
    let refs: Vec<&OutboxMessage> = events.iter().collect();
    statement.events("made", &refs).fetch_all(conn).await.unwrap()
}

async fn outbox_rows(conn: &mut PgConnection) -> Vec<(i64, Uuid, String, String, i16, String, String, String, String)> {
    sqlx::query_as(
        "SELECT id, event_id, aggregate_type, aggregate_id, partition, exchange, routing_key, message_type,
                content_type FROM outbox_messages ORDER BY id",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_row_and_its_event_land_together_with_every_column(pool: PgPool) {
    let mut conn = setup(&pool).await;
    let (id, event_id) = (Uuid::new_v4(), Uuid::new_v4());
    let event = message(event_id, &id.to_string());
    let (thing, appended) =
        insert_one(&mut conn, (id, "first", event_id), &event, None).await.unwrap().expect("written");
    assert_eq!(thing, Thing { id, name: "first".into(), event_id });

    let rows = outbox_rows(&mut conn).await;
    let partition = outbox::partition_of(&id.to_string());
    assert_eq!((appended.id, appended.partition), (rows[0].0, partition));
    assert_eq!(
        rows,
        [(
            appended.id,
            event_id,
            "thing".to_owned(),
            id.to_string(),
            partition,
            "things".to_owned(),
            "thing.made".to_owned(),
            "test.ThingMade".to_owned(),
            "application/x-protobuf".to_owned()
        )]
    );
    let (payload, headers): (Vec<u8>, serde_json::Value) =
        sqlx::query_as("SELECT payload, headers FROM outbox_messages").fetch_one(&mut conn).await.unwrap();
    assert_eq!(payload, [1, 2, 3]);
    assert_eq!(headers, serde_json::json!({"x-correlation-id": "corr-1"}));

    // The caller's row is not written again: neither is its event.
    let again =
        insert_one(&mut conn, (id, "first", Uuid::new_v4()), &message(Uuid::new_v4(), "x"), None).await.unwrap();
    assert!(again.is_none());
    assert_eq!(outbox_rows(&mut conn).await.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn the_row_and_its_event_roll_back_together(pool: PgPool) {
    let mut conn = setup(&pool).await;
    let mut tx = conn.begin().await.unwrap();
    let event_id = Uuid::new_v4();
    let written = insert_one(&mut tx, (Uuid::new_v4(), "rolled back", event_id), &message(event_id, "a"), None).await;
    assert!(written.unwrap().is_some());
    tx.rollback().await.unwrap();

    // A caller row the database refuses takes its event with it.
    let refused = insert_one(&mut conn, (Uuid::new_v4(), "", event_id), &message(event_id, "a"), None).await;
    assert!(refused.is_err());

    let things: i64 = sqlx::query_scalar("SELECT count(*) FROM things").fetch_one(&mut conn).await.unwrap();
    assert_eq!((things, outbox_rows(&mut conn).await.len()), (0, 0));
}

#[sqlx::test(migrations = false)]
async fn many_rows_each_get_their_own_event_in_order_and_a_skipped_row_none(pool: PgPool) {
    let mut conn = setup(&pool).await;
    let taken = Uuid::new_v4();
    insert_one(&mut conn, (taken, "taken", Uuid::new_v4()), &message(Uuid::new_v4(), "t"), None).await.unwrap();
    let before = outbox_rows(&mut conn).await.len();

    let things = [(Uuid::new_v4(), "a"), (taken, "b"), (Uuid::new_v4(), "c")];
    let events: Vec<OutboxMessage> = things.iter().map(|(id, _)| message(Uuid::new_v4(), &id.to_string())).collect();
    let written = insert_many(&mut conn, &things, &events, "", None).await;

    let mut names: Vec<&str> = written.iter().map(|(thing, _)| thing.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "c"], "the row whose id was taken is skipped");
    let rows = outbox_rows(&mut conn).await;
    assert_eq!(rows.len(), before + 2, "and so is its event");
    for (thing, appended) in &written {
        let row = rows.iter().find(|row| row.0 == appended.id).expect("receipt names a row");
        assert_eq!((row.1, row.4), (thing.event_id, appended.partition), "each receipt is its own row's event");
        assert_eq!(row.3, thing.id.to_string());
    }
    let new_events: Vec<Uuid> = rows[before..].iter().map(|row| row.1).collect();
    assert_eq!(new_events, [events[0].event_id, events[2].event_id], "written in the order given");
}

/// The stored payload, `created_at` and `occurred_at_field` of `event_id`'s row.
async fn stamp_of(conn: &mut PgConnection, event_id: Uuid) -> (Vec<u8>, DateTime<Utc>, Option<i16>) {
    sqlx::query_as("SELECT payload, created_at, occurred_at_field FROM outbox_messages WHERE event_id = $1")
        .bind(event_id)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// A time the database computes in the statement (a constant, then one of
/// the caller's own CTEs) is every row's `created_at`, with the stamp's field
/// beside the payload stored as given, of one event as of many; without a
/// stamp, `created_at` is the insert's own time and there is no field.
#[sqlx::test(migrations = false)]
async fn a_stamp_is_every_rows_created_at_with_its_field_beside_the_payload(pool: PgPool) {
    let mut conn = setup(&pool).await;
    let (id, event_id) = (Uuid::new_v4(), Uuid::new_v4());
    let event = message(event_id, &id.to_string());
    let at = "SELECT '2030-01-02 03:04:05.000001+00'::timestamptz";
    let (_, appended) = insert_one(&mut conn, (id, "one", event_id), &event, Some(at)).await.unwrap().unwrap();
    let expected: DateTime<Utc> = "2030-01-02T03:04:05.000001Z".parse().unwrap();
    assert_eq!(stamp_of(&mut conn, event_id).await, (vec![1, 2, 3], expected, Some(STAMP_FIELD as i16)));
    assert_eq!(appended.created_at, expected);

    let things = [(Uuid::new_v4(), "a"), (Uuid::new_v4(), "b")];
    let events: Vec<OutboxMessage> = things.iter().map(|(id, _)| message(Uuid::new_v4(), &id.to_string())).collect();
    let clock = "clock AS MATERIALIZED (SELECT clock_timestamp() - interval '1 day' AS at), ";
    let written = insert_many(&mut conn, &things, &events, clock, Some("SELECT at FROM clock")).await;
    assert_eq!(written.len(), 2);
    let (_, first, _) = stamp_of(&mut conn, events[0].event_id).await;
    assert!(first < Utc::now() - chrono::Duration::hours(23), "{first}");
    for (event, (_, appended)) in events.iter().zip(&written) {
        assert_eq!(stamp_of(&mut conn, event.event_id).await, (vec![1, 2, 3], first, Some(STAMP_FIELD as i16)));
        assert_eq!(appended.created_at, first, "one time for every row");
    }

    let (id, event_id) = (Uuid::new_v4(), Uuid::new_v4());
    let (_, appended) =
        insert_one(&mut conn, (id, "plain", event_id), &message(event_id, "p"), None).await.unwrap().unwrap();
    let (payload, created_at, field) = stamp_of(&mut conn, event_id).await;
    assert_eq!((payload, field), (vec![1, 2, 3], None));
    assert!(created_at > Utc::now() - chrono::Duration::minutes(1), "{created_at}");
    assert_eq!(appended.created_at, created_at);
}

#[test]
#[should_panic(expected = "protobuf field 0 is out of 1..=32767")]
fn a_stamp_needs_a_protobuf_field_number() {
    WithEvents::new().occurred_at(0, "SELECT now()");
}

#[sqlx::test(migrations = false)]
async fn a_batch_of_replies_lands_in_order_with_one_wake_up_at_commit(pool: PgPool) {
    let mut conn = setup(&pool).await;
    let channel = format!("replies_{}", Uuid::new_v4().simple());
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    listener.listen(&channel).await.unwrap();
    let replies = outbox::ReplyWriter::new(Some(channel.clone()));
    let events: Vec<OutboxMessage> = (0..3).map(|i| message(Uuid::new_v4(), &format!("agg-{i}"))).collect();
    let refs: Vec<&OutboxMessage> = events.iter().collect();

    // Rolled back: no row, no wake-up.
    let mut tx = conn.begin().await.unwrap();
    replies.append_all(&mut tx, &refs).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(outbox_rows(&mut conn).await.is_empty());
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), listener.recv()).await;
    assert!(early.is_err(), "no wake-up for a rolled-back batch");

    let mut tx = conn.begin().await.unwrap();
    replies.append_all(&mut tx, &refs).await.unwrap();
    replies.append_all(&mut tx, &[]).await.unwrap();
    tx.commit().await.unwrap();
    let rows = outbox_rows(&mut conn).await;
    let written: Vec<Uuid> = rows.iter().map(|row| row.1).collect();
    assert_eq!(written, events.iter().map(|e| e.event_id).collect::<Vec<_>>(), "in the order given");
    let woken = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv()).await;
    assert_eq!(woken.expect("woken at commit").unwrap().channel(), channel);
}
