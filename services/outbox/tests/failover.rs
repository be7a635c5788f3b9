//! Partition ownership under fail-over, against the real Postgres and
//! RabbitMQ: three relays over one outbox, each crashed or stopped and started
//! again in turn under a steady stream of events, partitions changing hands
//! every few hundred milliseconds.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use outbox::{LocalRelay, OutboxMessage, OutboxWriter, PARTITIONS, Relay, RelayConfig};
use secrecy::SecretString;
use sqlx::{PgPool, postgres::PgConnectOptions};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long the stream runs; a relay is crashed or stopped every `TURN`.
const STREAM: Duration = Duration::from_secs(60);
const TURN: Duration = Duration::from_secs(3);
const RELAYS: usize = 3;
const AGGREGATES: usize = 40;

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    local: LocalRelay,
}

fn start(options: &PgConnectOptions, exchange: &str) -> Running {
    let mut config =
        RelayConfig::new(SecretString::from(testkit::amqp_url()), "outbox-failover", vec![exchange.to_owned()]);
    config.poll_interval = Duration::from_millis(50);
    config.rebalance_interval = Duration::from_millis(200);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(300);
    config.batch_size = 50;
    let local = LocalRelay::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(Relay::new(options.clone(), config, Some(local.clone())).run(stop.clone()));
    Running { stop, task, local }
}

/// The relays running now, by slot; a slot is emptied before its relay is
/// crashed, so that only relays that can still claim are compared.
type Live = Arc<Mutex<Vec<Option<LocalRelay>>>>;

/// Checks every 2 ms that no partition is in two running relays' sets; returns
/// how many checks found an overlap, and how many checks ran.
fn watch_owners(live: Live, done: CancellationToken) -> JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut overlaps, mut checks) = (0, 0);
        while !done.is_cancelled() {
            let sets: Vec<Vec<i16>> = live.lock().unwrap().iter().flatten().map(LocalRelay::partitions).collect();
            let mut seen = BTreeSet::new();
            if !sets.iter().flatten().all(|p| seen.insert(*p)) {
                overlaps += 1;
                eprintln!("overlap: {sets:?}");
            }
            checks += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (overlaps, checks)
    })
}

/// Writes one event every 5 ms, spread over the aggregates, each aggregate's
/// bodies `aggregate:seq` counting from 0, until `STREAM` has passed.
fn stream(pool: PgPool, exchange: String) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let writer = OutboxWriter::new();
        let mut next = vec![0usize; AGGREGATES];
        let until = Instant::now() + STREAM;
        let mut written = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while Instant::now() < until {
            tick.tick().await;
            let aggregate = written % AGGREGATES;
            let message = OutboxMessage {
                event_id: Uuid::new_v4(),
                aggregate_type: "test".into(),
                aggregate_id: format!("agg-{aggregate}"),
                exchange: exchange.clone(),
                routing_key: "seq.created".into(),
                message_type: "test.v1.Seq".into(),
                content_type: "text/plain".into(),
                payload: format!("agg-{aggregate}:{}", next[aggregate]).into_bytes(),
                headers: Default::default(),
            };
            let mut tx = pool.begin().await.unwrap();
            let _ = writer.append(&mut tx, &message).await.unwrap();
            tx.commit().await.unwrap();
            next[aggregate] += 1;
            written += 1;
        }
        written
    })
}

/// Partition locks in `pg_locks`, by holding backend.
async fn partition_locks(pool: &PgPool) -> Vec<(i32, i64)> {
    sqlx::query_as(
        "SELECT pid, objid::int8 FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = 1347767379
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn relays_crashed_and_restarted_in_turn_strand_no_partition_and_keep_aggregate_order(pool: PgPool) {
    outbox::schema::apply(&mut pool.acquire().await.unwrap()).await.unwrap();
    let options = pool.connect_options().as_ref().clone();
    let exchange = testkit::unique("test.failover");
    let amqp = testkit::amqp_connection().await;
    let mut consumer = testkit::subscribe(&amqp, &exchange, "seq.#").await;

    let mut relays: Vec<Running> = (0..RELAYS).map(|_| start(&options, &exchange)).collect();
    let live: Live = Arc::new(Mutex::new(relays.iter().map(|r| Some(r.local.clone())).collect()));
    let watching = CancellationToken::new();
    let watcher = watch_owners(Arc::clone(&live), watching.clone());
    let writer = stream(pool.clone(), exchange.clone());

    // Each relay in turn: crashed (its task dropped mid-work, as SIGKILL would
    // leave it: connections cut, nothing marked) or stopped, then started again.
    let mut turn = 0;
    while !writer.is_finished() {
        tokio::time::sleep(TURN).await;
        let slot = turn % RELAYS;
        let old = std::mem::replace(&mut relays[slot], start(&options, &exchange));
        if turn % 2 == 0 {
            live.lock().unwrap()[slot] = None;
            old.task.abort();
            let _ = old.task.await;
        } else {
            old.stop.cancel();
            old.task.await.unwrap();
        }
        live.lock().unwrap()[slot] = Some(relays[slot].local.clone());
        turn += 1;
    }
    let written = writer.await.unwrap();
    assert!(turn >= 10, "only {turn} fail-overs");

    // Every row leaves the outbox, and the partitions settle: each locked once,
    // by a running relay that claims from it, none left over.
    let drained = testkit::eventually(Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox_messages").fetch_one(&pool).await.unwrap() == 0
    })
    .await;
    assert!(drained, "rows stranded in the outbox");
    let settled = testkit::eventually(Duration::from_secs(10), || async {
        let locked: BTreeSet<i64> = partition_locks(&pool).await.into_iter().map(|(_, p)| p).collect();
        let shares: Vec<usize> = relays.iter().map(|r| r.local.partitions().len()).collect();
        locked.len() == PARTITIONS as usize
            && shares.iter().sum::<usize>() == PARTITIONS as usize
            && shares.iter().all(|share| *share <= 22)
    })
    .await;
    let shares: Vec<usize> = relays.iter().map(|r| r.local.partitions().len()).collect();
    assert!(settled, "partitions not settled: shares {shares:?}, locks {:?}", partition_locks(&pool).await);

    watching.cancel();
    let (overlaps, checks) = watcher.await.unwrap();
    assert_eq!(overlaps, 0, "a partition was in two relays' sets ({checks} checks)");

    // Every row was published; duplicates come only from rows a crashed relay
    // published and never marked, and the first copy of each event arrives in
    // its aggregate's order (what an inbox that drops repeats applies).
    let mut received = testkit::receive(&mut consumer, written, Duration::from_secs(30)).await;
    received.extend(testkit::receive(&mut consumer, usize::MAX, Duration::from_millis(700)).await);
    let mut ids = HashSet::new();
    let mut next: HashMap<String, usize> = HashMap::new();
    let mut repeats = 0;
    for delivery in &received {
        if !ids.insert(delivery.properties.message_id().as_ref().unwrap().to_string()) {
            repeats += 1;
            continue;
        }
        let body = String::from_utf8(delivery.data.clone()).unwrap();
        let (aggregate, seq) = body.split_once(':').unwrap();
        let expected = next.entry(aggregate.to_owned()).or_default();
        assert_eq!(seq.parse::<usize>().unwrap(), *expected, "events of {aggregate} out of order");
        *expected += 1;
    }
    assert_eq!(ids.len(), written, "every row is published");
    eprintln!("{written} rows, {turn} fail-overs, {repeats} republished after a crash, {checks} ownership checks");

    for relay in relays {
        relay.stop.cancel();
        relay.task.await.unwrap();
    }
    // The server ends a closed session's locks a moment after the close.
    let released = testkit::eventually(Duration::from_secs(5), || async { partition_locks(&pool).await.is_empty() });
    assert!(released.await, "stopped relays hold no lock");
    testkit::delete_exchange(&amqp, &exchange).await;
}
