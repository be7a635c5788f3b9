//! `orders outbox status` and `orders outbox maintain-archive`, the real
//! binary against a real orders database: the backlog, each partition's owner
//! as the relays' advisory locks show it, the last errors, and exit statuses.

use std::{process::Output, time::Duration};

use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool, postgres::PgConnectOptions};

use crate::helpers::database_url;

/// The lock classes the relays use (see the outbox's ownership module).
const PARTITION_CLASS: i32 = 0x5055_4c53;
const PRESENCE_CLASS: i32 = PARTITION_CLASS + 1;

async fn orders(args: &[&str], database_url: &str, env: &[(&str, &str)]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_orders"))
            .args(args)
            .env("ORDERS_DATABASE_URL", database_url)
            .envs(env.iter().copied())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("orders exits by itself")
    .expect("orders runs")
}

/// Inserts a pending row in `partition`, created `age_secs` ago, with `error` as its last error.
async fn pending_row(pool: &PgPool, partition: i16, age_secs: f64, error: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox_messages (event_id, aggregate_type, aggregate_id, partition, exchange, routing_key,
             message_type, content_type, payload, created_at, attempts, last_error)
         VALUES (gen_random_uuid(), 'order', $1, $2, 'pulse.events', 'order.created', 'OrderCreated',
             'application/x-protobuf', '\\x00', clock_timestamp() - make_interval(secs => $3), $4, $5)
         RETURNING id",
    )
    .bind(format!("order-{partition}"))
    .bind(partition)
    .bind(age_secs)
    .bind(i32::from(error.is_some()) * 3)
    .bind(error)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn status_shows_the_backlog_the_owners_and_the_last_errors(pool: PgPool) {
    orders::db::migrate(&pool).await.unwrap();
    let url = database_url(&pool, None);
    pending_row(&pool, 5, 60.0, None).await;
    pending_row(&pool, 5, 30.0, Some("broker returned the message: NO_ROUTE")).await;
    pending_row(&pool, 5, 1.0, None).await;
    let second_error = pending_row(&pool, 9, 2.0, Some("no confirm within 30 s")).await;
    let newest_error = pending_row(&pool, 9, 1.0, Some("channel closed")).await;
    pending_row(&pool, 20, 5.0, None).await;
    // A relay's session, as the relays hold it: a presence lock, one lock per owned partition.
    let options: PgConnectOptions = url.parse::<PgConnectOptions>().unwrap().application_name("pulse-relay-under-test");
    let mut relay = PgConnection::connect_with(&options).await.unwrap();
    let relay_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut relay).await.unwrap();
    for (class, key) in [(PRESENCE_CLASS, 4242), (PARTITION_CLASS, 5), (PARTITION_CLASS, 9)] {
        sqlx::query("SELECT pg_advisory_lock($1, $2)").bind(class).bind(key).execute(&mut relay).await.unwrap();
    }

    let out = orders(&["outbox", "status", "--json", "--errors", "2"], &url, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(status["pending"], 6);
    assert!(status["oldest_pending_age_seconds"].as_f64().unwrap() >= 60.0, "{status}");
    let relays = status["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 1, "{status}");
    assert_eq!(relays[0]["pid"], relay_pid);
    assert_eq!(relays[0]["application_name"], "pulse-relay-under-test");
    assert_eq!(relays[0]["client_addr"], "127.0.0.1");
    assert_eq!(relays[0]["partitions"], 2);
    let unowned: Vec<i64> =
        status["unowned_partitions"].as_array().unwrap().iter().map(|p| p.as_i64().unwrap()).collect();
    assert_eq!(unowned.len(), 62);
    assert!(unowned.contains(&20) && !unowned.contains(&5) && !unowned.contains(&9), "{unowned:?}");
    let partitions = status["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 64);
    assert_eq!(partitions[5]["pending"], 3);
    assert!(partitions[5]["oldest_pending_age_seconds"].as_f64().unwrap() >= 60.0);
    assert_eq!(partitions[5]["owner"]["pid"], relay_pid);
    assert_eq!(partitions[9]["pending"], 2);
    assert_eq!(partitions[20]["pending"], 1);
    assert!(partitions[20]["owner"].is_null(), "{}", partitions[20]);
    assert_eq!(partitions[0]["pending"], 0);
    assert!(partitions[0]["oldest_pending_age_seconds"].is_null());
    let errors = status["last_errors"].as_array().unwrap();
    let ids: Vec<i64> = errors.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [newest_error, second_error], "newest first, at most --errors: {errors:?}");
    assert_eq!(errors[0]["error"], "channel closed");
    assert_eq!(errors[0]["partition"], 9);
    assert_eq!(errors[0]["attempts"], 3);

    let out = orders(&["outbox", "status"], &url, &[]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in ["pending: 6", "relays: 1", &format!("pid {relay_pid} (pulse-relay-under-test, 127.0.0.1) owns 2")] {
        assert!(text.contains(line), "{line} missing from {text}");
    }
    assert!(text.contains("broker returned the message: NO_ROUTE"), "{text}");
    relay.close().await.unwrap();

    // Once the relay's session is gone, nothing owns the partitions.
    let out = orders(&["outbox", "status", "--json"], &url, &[]).await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["relays"].as_array().unwrap().len(), 0);
    assert_eq!(status["unowned_partitions"].as_array().unwrap().len(), 64);
    assert_eq!(status["last_errors"].as_array().unwrap().len(), 3, "ten by default, three there are");
}

#[sqlx::test(migrations = false)]
async fn maintain_archive_creates_the_hourly_partitions(pool: PgPool) {
    orders::db::migrate(&pool).await.unwrap();
    let url = database_url(&pool, None);
    let partitions = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'outbox_archive'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(partitions().await, 1, "the default partition only");
    let out = orders(&["outbox", "maintain-archive"], &url, &[("OUTBOX_RETENTION_HOURS", "2")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(partitions().await, 6, "one hour back to three ahead, and the default");
    let out = orders(&["outbox", "maintain-archive"], &url, &[]).await;
    assert_eq!(out.status.code(), Some(2), "without retention nothing is archived");
    assert!(String::from_utf8_lossy(&out.stderr).contains("OUTBOX_RETENTION_HOURS"));
}

#[tokio::test]
async fn outbox_commands_exit_1_without_the_database_and_2_on_usage() {
    let unreachable = "postgres://postgres@127.0.0.1:1/pulse_orders";
    let out = orders(&["outbox", "status"], unreachable, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the orders database"));
    // Each usage error exits 2 and names on stderr what was wrong.
    let usage: [(&[&str], &str); 4] = [
        (&["outbox"], "usage: orders outbox"),
        (&["outbox", "stats"], "'stats'"),
        (&["outbox", "status", "--errors", "x"], "--errors"),
        (&["outbox", "status", "--jsn"], "'--jsn'"),
    ];
    for (args, named) in usage {
        let out = orders(args, unreachable, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let out = orders(&["outbox", "--help"], unreachable, &[]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("maintain-archive"));
}
