//! The lane against the real Postgres: connections come back only when the
//! caller says their statement finished; anything else is closed, never reused.

use std::time::Duration;

use infra::{lane::Lane, pg::PoolSettings};
use sqlx::{PgConnection, PgPool};

fn settings(min: u32, max: u32) -> PoolSettings {
    PoolSettings { max_connections: max, min_connections: min, acquire_timeout: Duration::from_millis(300) }
}

async fn lane(pool: &PgPool, min: u32, max: u32) -> Lane {
    let options = pool.connect_options().as_ref().clone().application_name(LANE_APP);
    Lane::open(options, &settings(min, max)).await.unwrap()
}

async fn backend(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(conn).await.unwrap()
}

/// The lanes' `application_name`, to tell their backends from the test pool's.
const LANE_APP: &str = "pulse-lane-test";

/// The lane's backends on this test's database.
async fn backends(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 ORDER BY pid",
    )
    .bind(LANE_APP)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn opens_its_minimum_at_start_and_reuses_a_connection_handed_back(pool: PgPool) {
    let lane = lane(&pool, 3, 8).await;
    assert_eq!(lane.idle_count(), 3);
    assert_eq!(backends(&pool).await.len(), 3, "three connections open before any request");

    let mut conn = lane.acquire().await.unwrap();
    let first = backend(&mut conn).await;
    conn.done();
    let mut conn = lane.acquire().await.unwrap();
    assert_eq!(backend(&mut conn).await, first, "the connection handed back is the next one out");
    conn.done();
    assert_eq!(backends(&pool).await.len(), 3, "no connection was opened or lost");
    lane.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_statement_the_server_rejected_keeps_its_connection(pool: PgPool) {
    let lane = lane(&pool, 1, 1).await;
    let mut conn = lane.acquire().await.unwrap();
    let first = backend(&mut conn).await;
    let rejected = sqlx::query_scalar::<_, i32>("SELECT 1 / 0").fetch_one(&mut *conn).await;
    assert!(matches!(rejected, Err(sqlx::Error::Database(_))), "{rejected:?}");
    conn.settle(&rejected);
    let mut conn = lane.acquire().await.unwrap();
    assert_eq!(backend(&mut conn).await, first);
    conn.done();
    lane.close().await;
}

/// A request cancelled in the middle of its statement (the client went away)
/// leaves its connection mid-response: it is closed, and the next request gets
/// a fresh one that works.
#[sqlx::test(migrations = false)]
async fn a_connection_dropped_mid_statement_is_closed_not_reused(pool: PgPool) {
    let lane = lane(&pool, 1, 1).await;
    let mut conn = lane.acquire().await.unwrap();
    let first = backend(&mut conn).await;
    let cancelled =
        tokio::time::timeout(Duration::from_millis(200), sqlx::query("SELECT pg_sleep(3)").execute(&mut *conn)).await;
    assert!(cancelled.is_err(), "the statement was still running");
    drop(conn);

    let mut conn = lane.acquire().await.unwrap();
    let second = backend(&mut conn).await;
    assert_ne!(second, first, "a new connection, not the one left mid-statement");
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(one, 1);
    conn.done();
    // The abandoned backend goes away once its sleep ends and it finds the socket closed.
    let gone = async {
        loop {
            if !backends(&pool).await.contains(&first) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the abandoned backend exits");
    lane.close().await;
}

#[sqlx::test(migrations = false)]
async fn never_more_than_its_maximum_and_a_full_lane_times_out(pool: PgPool) {
    let lane = lane(&pool, 0, 2).await;
    let a = lane.acquire().await.unwrap();
    let b = lane.acquire().await.unwrap();
    let started = std::time::Instant::now();
    let third = lane.acquire().await;
    assert!(matches!(third, Err(sqlx::Error::PoolTimedOut)), "{:?}", third.err());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(backends(&pool).await.len(), 2);
    a.done();
    let c = lane.acquire().await.expect("a slot came back");
    drop((b, c));
    lane.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_closed_lane_refuses_checkouts_and_closes_its_connections(pool: PgPool) {
    let lane = lane(&pool, 2, 4).await;
    let out = lane.acquire().await.unwrap();
    lane.close().await;
    assert!(matches!(lane.acquire().await, Err(sqlx::Error::PoolClosed)));
    out.done();
    assert_eq!(lane.idle_count(), 0, "a connection handed back after close is not kept");
    let gone = async {
        while !backends(&pool).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone).await.expect("every connection closes");
}

/// Many more callers than connections: every statement runs, the lane never
/// holds more than its maximum, and connections opened for callers that were
/// served by a handed-back one end up idle rather than lost.
#[sqlx::test(migrations = false)]
async fn many_callers_share_at_most_max_connections_and_none_is_lost(pool: PgPool) {
    let lane = lane(&pool, 0, 4).await;
    let callers = (0..32).map(|_| {
        let lane = lane.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let mut conn = lane.acquire().await.unwrap();
                assert!(lane.size() <= 4, "{} connections", lane.size());
                let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await.unwrap();
                conn.settle(&Ok::<_, sqlx::Error>(one));
            }
        })
    });
    for caller in futures::future::join_all(callers).await {
        caller.unwrap();
    }
    let settled = async {
        while lane.idle_count() != lane.size() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled).await.expect("every connection is idle or closed");
    assert!((1..=4).contains(&lane.size()));
    assert_eq!(backends(&pool).await.len(), lane.size(), "the lane's count matches the server's");
    lane.close().await;
    assert_eq!(lane.size(), 0);
}

/// A checkout cancelled while its connection is being opened (the caller
/// went away) does not lose that connection's place: it opens in the
/// background, waits idle, and the next checkout gets it.
#[sqlx::test(migrations = false)]
async fn a_checkout_cancelled_while_connecting_does_not_lose_the_place(pool: PgPool) {
    let lane = lane(&pool, 0, 1).await;
    for _ in 0..5 {
        let cancelled = tokio::time::timeout(Duration::from_micros(50), lane.acquire()).await;
        if let Ok(conn) = cancelled {
            conn.unwrap().done();
        }
    }
    let mut conn = lane.acquire().await.expect("the only place is free again");
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await.unwrap();
    assert_eq!(one, 1);
    conn.done();
    assert_eq!(lane.size(), 1);
    lane.close().await;
}

/// Ends the lane's sessions on this test's database, as a restart of the
/// server does (`57P01` admin_shutdown), and waits until they are gone.
async fn end_sessions(pool: &PgPool) {
    let ended: Vec<i32> = backends(pool).await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
        .bind(&ended)
        .execute(pool)
        .await
        .unwrap();
    let gone = async {
        while backends(pool).await.iter().any(|pid| ended.contains(pid)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone).await.expect("the ended backends exit");
}

/// A connection whose session the server ended fails its next statement with
/// the server's `57P01`, a database error like a rejected statement; unlike
/// one, it is closed, and the next checkout gets a new, working connection.
#[sqlx::test(migrations = false)]
async fn a_connection_whose_session_was_ended_is_not_reused(pool: PgPool) {
    let lane = lane(&pool, 1, 1).await;
    let mut conn = lane.acquire().await.unwrap();
    let first = backend(&mut conn).await;
    conn.done();
    end_sessions(&pool).await;

    let mut conn = lane.acquire().await.unwrap();
    let failed = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut *conn).await;
    let err = failed.as_ref().expect_err("the session is gone");
    assert!(infra::pg::is_session_gone(err), "{err:?}");
    conn.settle(&failed);
    assert_eq!((lane.size(), lane.idle_count(), lane.losses()), (0, 0, 1), "closed, not handed back");

    let mut conn = lane.acquire().await.unwrap();
    let second = backend(&mut conn).await;
    assert_ne!(second, first, "a new connection");
    conn.done();
    assert_eq!(backends(&pool).await, vec![second]);
    lane.close().await;
}

/// Every idle connection dead at once, as after a restart of the server:
/// reads through [`Lane::read`] all succeed, the first on each dead
/// connection retried on a live one, and no dead connection serves twice.
#[sqlx::test(migrations = false)]
async fn after_every_session_ended_each_read_succeeds(pool: PgPool) {
    let lane = lane(&pool, 3, 3).await;
    end_sessions(&pool).await;

    let read = |lane: Lane, i: i32| async move {
        lane.read(|conn| Box::pin(sqlx::query_scalar::<_, i32>("SELECT $1").bind(i).fetch_one(conn))).await
    };
    for i in 0..5 {
        assert_eq!(read(lane.clone(), i).await.expect("read after the restart"), i);
    }
    assert_eq!(lane.losses(), 1, "only the first read met a dead connection; the others were checked and closed");
    end_sessions(&pool).await;
    let reads = futures::future::join_all((0..12).map(|i| read(lane.clone(), i))).await;
    for (i, read) in reads.into_iter().enumerate() {
        assert_eq!(read.expect("concurrent read after the restart"), i as i32);
    }
    // Connections the reads opened in the background may still be logging in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while backends(&pool).await.len() != lane.size() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backends(&pool).await.len(), lane.size(), "only live connections are left");
    lane.close().await;
}

/// Checkouts cancelled while they ping a connection idle since a loss (or
/// open a new one) do not lose its place: afterwards the lane's count
/// matches the server's and every place serves.
#[sqlx::test(migrations = false)]
async fn a_checkout_cancelled_while_checking_a_connection_does_not_lose_its_place(pool: PgPool) {
    let lane = lane(&pool, 2, 2).await;
    for _ in 0..15 {
        // One of two sessions ended and found gone: the other, live, is pinged at its next checkout.
        let (mut live, mut dead) = (lane.acquire().await.unwrap(), lane.acquire().await.unwrap());
        let (_, ended) = (backend(&mut live).await, backend(&mut dead).await);
        live.done();
        dead.done();
        sqlx::query("SELECT pg_terminate_backend($1)").bind(ended).execute(&pool).await.unwrap();
        while backends(&pool).await.contains(&ended) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut conn = lane.acquire().await.unwrap();
        let failed = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut *conn).await;
        assert!(failed.is_err(), "the connection handed back last is the one whose session ended");
        conn.settle(&failed);
        // Cut short at different points of the ping (or of an opening).
        for micros in [20, 60, 150, 400] {
            if let Ok(conn) = tokio::time::timeout(Duration::from_micros(micros), lane.acquire()).await {
                conn.unwrap().done();
            }
        }
    }
    let settled = async {
        while lane.idle_count() != lane.size() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled).await.expect("every connection is idle or closed");
    let (mut a, mut b) = (lane.acquire().await.unwrap(), lane.acquire().await.unwrap());
    assert_ne!(backend(&mut a).await, backend(&mut b).await);
    a.done();
    b.done();
    assert_eq!(backends(&pool).await.len(), lane.size(), "the lane's count matches the server's");
    lane.close().await;
}
