//! The database half of a batch: record event ids and apply the handler, all
//! in one transaction, so an effect exists if and only if its event id is recorded.
//!
//! The fast path hands every new event to [`Handler::handle_batch`] in one
//! transaction with no savepoints (one fsync per batch, and as few round trips
//! as the handler manages). Should it fail, the transaction is rolled back,
//! the failed message keeps its error when the handler could say which one it
//! was, and the rest runs again one message at a time, each under a
//! savepoint, so any failure stays with its own message.
//!
//! With OpenTelemetry on, every message's span gets a client span for each
//! statement that wrote it, shared statements included (see
//! `telemetry`), and handlers run inside [`DbTarget::scope`] so
//! theirs can say where the connection leads. With it off, none of this runs.

use std::collections::HashSet;

use sqlx::{Connection, Executor, PgConnection, PgPool, Row};
use telemetry::DbTarget;
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::{
    handler::{BatchError, Handler, HandlerError},
    headers::DeadLetterReason,
    message::{Item, Outcome},
};

/// Why a pass over the batch stopped.
enum Stop {
    /// The fast path failed: run again with savepoints, without item `.0` when known.
    HandlerFailed(Option<usize>, HandlerError),
    /// The transaction is lost (database unreachable, commit failed): nothing
    /// of this pass committed, every message is retried.
    Database(String),
}

/// Applies every pending item on the connection in `slot`, taking one from
/// `pool` when it is empty; each item ends `Processed`, `Duplicate`, `Retry` or
/// `DeadLetter`. Returns whether anything was committed. A lost database
/// empties the slot.
pub(crate) async fn apply<H: Handler>(
    pool: &PgPool,
    slot: &mut Option<PgConnection>,
    handler: &H,
    items: &mut [Item<H::Event>],
) -> bool {
    let mut pending: Vec<usize> = (0..items.len()).filter(|i| items[*i].outcome == Outcome::Pending).collect();
    if pending.is_empty() {
        return false;
    }
    let conn = match slot {
        Some(conn) => conn,
        // Out of the pool for good, so its release check never runs; a failure
        // to get one waits the pool's acquire timeout, as every batch did.
        None => match open(pool).await {
            Ok(conn) => slot.insert(conn),
            Err(err) => {
                let error = format!("database: {err}");
                for i in &pending {
                    items[*i].outcome = Outcome::Retry(error.clone());
                }
                return false;
            }
        },
    };
    let db = DbTarget::of(pool);
    let mut result = run(conn, handler, items, &pending, false, &db).await;
    if let Err(Stop::HandlerFailed(failed, error)) = result {
        match failed {
            Some(failed) => {
                items[failed].outcome = failure(error);
                pending.retain(|i| *i != failed);
            }
            None => tracing::debug!(error = %error, "batch failed, applying its messages one by one"),
        }
        for i in &pending {
            items[*i].outcome = Outcome::Pending;
        }
        result = run(conn, handler, items, &pending, true, &db).await;
    }
    match result {
        Ok(()) => {
            let committed: Vec<_> = pending
                .iter()
                .filter(|i| items[**i].outcome == Outcome::Processed)
                .filter_map(|i| items[*i].parsed.as_ref().map(|(event, ctx)| (event, ctx)))
                .collect();
            if !committed.is_empty() {
                handler.committed(&committed);
            }
            !committed.is_empty()
        }
        Err(stop) => {
            // Whatever state it is in, the next batch starts on a new connection.
            *slot = None;
            let error = match stop {
                Stop::Database(error) => error,
                Stop::HandlerFailed(..) => unreachable!("savepoint runs keep handler failures"),
            };
            for i in &pending {
                items[*i].outcome = Outcome::Retry(error.clone());
            }
            false
        }
    }
}

fn failure(err: HandlerError) -> Outcome {
    match err {
        HandlerError::Retryable(e) => Outcome::Retry(format!("{e:#}")),
        HandlerError::Permanent(e) => Outcome::DeadLetter(DeadLetterReason::HandlerRejected, format!("{e:#}")),
    }
}

async fn run<H: Handler>(
    conn: &mut PgConnection,
    handler: &H,
    items: &mut [Item<H::Event>],
    pending: &[usize],
    savepoints: bool,
    db: &DbTarget,
) -> Result<(), Stop> {
    if savepoints {
        return run_with_savepoints(conn, handler, items, pending, db).await;
    }
    // The transaction opens with the statement that records the ids: one
    // round trip for both, where sqlx's `begin` would take one of its own.
    // sqlx does not know of this transaction; handlers never open their own.
    let recorded = record(conn, items, pending, db, "BEGIN; ").await?;
    let fresh = fresh(items, pending, &recorded);
    let batch: Vec<_> = fresh
        .iter()
        .map(|i| {
            let (event, ctx) = items[*i].parsed.as_ref().expect("pending items are parsed");
            (event, ctx)
        })
        .collect();
    match db.clone().scope(handler.handle_batch(conn, &batch)).await {
        Ok(()) => {}
        Err(BatchError { error, .. }) if connection_lost(&error) => return Err(Stop::Database(error.to_string())),
        Err(BatchError { index, error }) => {
            execute(conn, "ROLLBACK").await?;
            return Err(Stop::HandlerFailed(index.and_then(|k| fresh.get(k).copied()), error));
        }
    }
    for i in fresh {
        items[i].outcome = Outcome::Processed;
    }
    execute(conn, "COMMIT").await
}

/// The one-message-at-a-time pass: each handler call under a savepoint.
async fn run_with_savepoints<H: Handler>(
    conn: &mut PgConnection,
    handler: &H,
    items: &mut [Item<H::Event>],
    pending: &[usize],
    db: &DbTarget,
) -> Result<(), Stop> {
    let mut tx = conn.begin().await.map_err(lost)?;
    let recorded = record(&mut tx, items, pending, db, "").await?;
    for i in fresh(items, pending, &recorded) {
        let item = &mut items[i];
        let (event, ctx) = item.parsed.as_ref().expect("pending items are parsed");
        execute(&mut tx, "SAVEPOINT inbox_message").await?;
        match db.clone().scope(handler.handle(&mut tx, event, ctx)).instrument(item.span.clone()).await {
            Ok(()) => {
                execute(&mut tx, "RELEASE SAVEPOINT inbox_message").await?;
                item.outcome = Outcome::Processed;
            }
            Err(err) if connection_lost(&err) => return Err(Stop::Database(err.to_string())),
            Err(err) => {
                execute(&mut tx, "ROLLBACK TO SAVEPOINT inbox_message").await?;
                // Forget the id too, so a later copy (a retry, a replay) is applied.
                sqlx::query("DELETE FROM processed_events WHERE event_id = $1")
                    .bind(ctx.event_id)
                    .execute(&mut *tx)
                    .instrument(db.span(&item.span, "DELETE", TABLE, 1))
                    .await
                    .map_err(lost)?;
                item.outcome = failure(err);
            }
        }
    }
    tx.commit().await.map_err(lost)
}

/// The statement that records event ids, prepared on each connection the
/// inbox takes ([`open`]). Sorted, so that two consumers holding the same ids
/// lock them in the same order and wait for each other instead of deadlocking.
const PREPARE_RECORD: &str = "PREPARE inbox_record (uuid[]) AS
     INSERT INTO processed_events (event_id)
     SELECT id FROM unnest($1) AS t(id) ORDER BY id
     ON CONFLICT (event_id) DO NOTHING
     RETURNING event_id";

/// A connection of `pool`'s, out of the pool for good (so its release check
/// never runs), with [`PREPARE_RECORD`] prepared on it.
async fn open(pool: &PgPool) -> Result<PgConnection, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    conn.execute(sqlx::raw_sql(PREPARE_RECORD)).await?;
    Ok(conn)
}

/// Records the pending items' event ids, after `prefix` (statements sent in
/// the same round trip), and returns those not recorded before. A simple
/// query is what carries `prefix`, so the ids are spelled out in its text
/// (UUIDs, nothing to escape) and it executes the statement prepared when the
/// connection was opened: planned once, not on every batch.
async fn record<E>(
    conn: &mut PgConnection,
    items: &[Item<E>],
    pending: &[usize],
    db: &DbTarget,
    prefix: &str,
) -> Result<HashSet<Uuid>, Stop> {
    let ids: Vec<String> = pending.iter().filter_map(|i| items[*i].event_id()).map(|id| id.to_string()).collect();
    let sql = format!("{prefix}EXECUTE inbox_record('{{{}}}')", ids.join(","));
    let spans = statement_spans(db, items, pending, "INSERT", ids.len());
    let rows = conn.fetch_all(sqlx::raw_sql(&sql)).await.map_err(lost)?;
    drop(spans);
    rows.iter().map(|row| row.try_get::<Uuid, _>(0).map_err(lost)).collect()
}

/// The pending items whose ids were just `recorded`, in order; the others
/// are marked duplicates. A second copy within the batch is as much a
/// duplicate as one committed earlier.
fn fresh<E>(items: &mut [Item<E>], pending: &[usize], recorded: &HashSet<Uuid>) -> Vec<usize> {
    let mut claimed = HashSet::new();
    let mut fresh = Vec::with_capacity(pending.len());
    for &i in pending {
        match items[i].event_id() {
            Some(id) if recorded.contains(&id) && claimed.insert(id) => fresh.push(i),
            _ => items[i].outcome = Outcome::Duplicate,
        }
    }
    fresh
}

/// The table of recorded event ids.
const TABLE: &str = "processed_events";

/// A span per item in `which`, child of the item's span, for one `operation`
/// on [`TABLE`] applying `batch_size` rows; they last while the caller holds
/// them ([`Span::none`]s while spans are not exported).
fn statement_spans<E>(
    db: &DbTarget,
    items: &[Item<E>],
    which: &[usize],
    operation: &'static str,
    batch_size: usize,
) -> Vec<Span> {
    which.iter().map(|i| db.span(&items[*i].span, operation, TABLE, batch_size)).collect()
}

async fn execute(conn: &mut PgConnection, statement: &str) -> Result<(), Stop> {
    conn.execute(sqlx::raw_sql(statement)).await.map(|_| ()).map_err(lost)
}

fn lost(err: sqlx::Error) -> Stop {
    Stop::Database(format!("database: {err}"))
}

/// A handler error that means the connection, and so the transaction, is gone.
fn connection_lost(err: &HandlerError) -> bool {
    let HandlerError::Retryable(source) = err else { return false };
    source.downcast_ref::<sqlx::Error>().is_some_and(infra::pg::is_unavailable)
}
