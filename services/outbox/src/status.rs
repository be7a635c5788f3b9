//! What an operator asks of a stuck or slow outbox, read from the database
//! alone (no relay needs to answer): the backlog and its age, per partition
//! with the relay session that owns it (from the advisory locks in
//! `pg_locks`, joined to `pg_stat_activity`), the relays present, the
//! partitions nobody owns, and the last publish errors.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    message::PARTITIONS,
    ownership::{PARTITION_CLASS, PRESENCE_CLASS},
};

/// The outbox as one read sees it.
#[derive(Debug, Clone)]
pub struct OutboxStatus {
    /// Rows waiting to be published.
    pub pending: i64,
    /// Age of the oldest pending row, in seconds; None when nothing is pending.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Every partition, in order.
    pub partitions: Vec<PartitionStatus>,
    /// Live relay sessions (presence locks).
    pub relays: Vec<RelaySession>,
    /// Partitions no session holds: their rows wait until a relay takes them.
    pub unowned_partitions: Vec<i16>,
    /// Pending rows whose last publish attempt failed, newest row first.
    pub last_errors: Vec<PublishError>,
}

#[derive(Debug, Clone)]
pub struct PartitionStatus {
    pub partition: i16,
    pub pending: i64,
    pub oldest_pending_age_seconds: Option<f64>,
    /// The session holding the partition's lock.
    pub owner: Option<Session>,
}

/// A database session, as `pg_stat_activity` shows it (the application name
/// and client address are empty to a role that may not see other roles'
/// sessions: grant it `pg_read_all_stats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The backend process id (`pg_terminate_backend` takes it).
    pub pid: i32,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RelaySession {
    pub session: Session,
    /// Partitions it owns.
    pub partitions: usize,
}

#[derive(Debug, Clone)]
pub struct PublishError {
    pub id: i64,
    pub event_id: Uuid,
    pub partition: i16,
    pub aggregate_id: String,
    pub message_type: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub error: String,
}

/// An advisory lock of the relays: class, key and the holding session (pid, application name, client address).
type LockRow = (i64, i64, i32, Option<String>, Option<String>);

/// Reads the status in one transaction (one snapshot of the rows), with at
/// most `errors` last errors.
pub async fn read_status(conn: &mut PgConnection, errors: i64) -> Result<OutboxStatus, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let counts: Vec<(i16, i64, Option<f64>)> = sqlx::query_as(
        "SELECT partition, count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(created_at))::float8
         FROM outbox_messages GROUP BY partition",
    )
    .fetch_all(&mut *tx)
    .await?;
    let locks: Vec<LockRow> = sqlx::query_as(&format!(
        "SELECT l.classid::int8, l.objid::int8, l.pid, a.application_name, host(a.client_addr)
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
           AND l.classid IN ({PARTITION_CLASS}, {PRESENCE_CLASS})
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY l.pid"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let last_errors = sqlx::query_as::<_, (i64, Uuid, i16, String, String, i32, DateTime<Utc>, String)>(
        "SELECT id, event_id, partition, aggregate_id, message_type, attempts, created_at, last_error
         FROM outbox_messages WHERE last_error IS NOT NULL ORDER BY id DESC LIMIT $1",
    )
    .bind(errors)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, event_id, partition, aggregate_id, message_type, attempts, created_at, error)| PublishError {
        id,
        event_id,
        partition,
        aggregate_id,
        message_type,
        attempts,
        created_at,
        error,
    })
    .collect();
    tx.commit().await?;
    Ok(assemble(counts, locks, last_errors))
}

fn assemble(counts: Vec<(i16, i64, Option<f64>)>, locks: Vec<LockRow>, last_errors: Vec<PublishError>) -> OutboxStatus {
    let mut partitions: Vec<PartitionStatus> = (0..PARTITIONS)
        .map(|partition| PartitionStatus { partition, pending: 0, oldest_pending_age_seconds: None, owner: None })
        .collect();
    for (partition, pending, age) in counts {
        if let Some(status) = partitions.get_mut(partition as usize) {
            status.pending = pending;
            status.oldest_pending_age_seconds = age;
        }
    }
    let mut relays: Vec<RelaySession> = Vec::new();
    for (class, key, pid, application_name, client_addr) in &locks {
        let session =
            Session { pid: *pid, application_name: application_name.clone(), client_addr: client_addr.clone() };
        if *class == i64::from(PRESENCE_CLASS) {
            relays.push(RelaySession { session, partitions: 0 });
        } else if let Some(status) = usize::try_from(*key).ok().and_then(|key| partitions.get_mut(key)) {
            status.owner = Some(session);
        }
    }
    for relay in &mut relays {
        relay.partitions =
            partitions.iter().filter(|p| p.owner.as_ref().map(|o| o.pid) == Some(relay.session.pid)).count();
    }
    let pending = partitions.iter().map(|p| p.pending).sum();
    let oldest_pending_age_seconds = partitions.iter().filter_map(|p| p.oldest_pending_age_seconds).reduce(f64::max);
    let unowned_partitions = partitions.iter().filter(|p| p.owner.is_none()).map(|p| p.partition).collect();
    OutboxStatus { pending, oldest_pending_age_seconds, partitions, relays, unowned_partitions, last_errors }
}

impl Session {
    fn to_json(&self) -> Value {
        json!({ "pid": self.pid, "application_name": self.application_name, "client_addr": self.client_addr })
    }

    fn describe(&self) -> String {
        let name = self.application_name.as_deref().filter(|n| !n.is_empty()).unwrap_or("-");
        let client = self.client_addr.as_deref().unwrap_or("local");
        format!("pid {} ({name}, {client})", self.pid)
    }
}

impl OutboxStatus {
    /// The status as JSON; its keys are part of the interface (docs/operations.md, "Outbox status").
    pub fn to_json(&self) -> Value {
        json!({
            "pending": self.pending,
            "oldest_pending_age_seconds": self.oldest_pending_age_seconds,
            "relays": self.relays.iter().map(|r| {
                let mut session = r.session.to_json();
                session["partitions"] = json!(r.partitions);
                session
            }).collect::<Vec<_>>(),
            "unowned_partitions": self.unowned_partitions,
            "partitions": self.partitions.iter().map(|p| json!({
                "partition": p.partition,
                "pending": p.pending,
                "oldest_pending_age_seconds": p.oldest_pending_age_seconds,
                "owner": p.owner.as_ref().map(Session::to_json),
            })).collect::<Vec<_>>(),
            "last_errors": self.last_errors.iter().map(|e| json!({
                "id": e.id,
                "event_id": e.event_id.to_string(),
                "partition": e.partition,
                "aggregate_id": e.aggregate_id,
                "message_type": e.message_type,
                "attempts": e.attempts,
                "created_at": e.created_at.to_rfc3339(),
                "error": e.error,
            })).collect::<Vec<_>>(),
        })
    }

    /// The status as lines of text for a terminal.
    pub fn to_text(&self) -> String {
        let age = |seconds: Option<f64>| seconds.map_or_else(|| "-".to_owned(), |s| format!("{s:.1} s"));
        let mut out = format!(
            "pending: {}\noldest pending: {}\nrelays: {}\n",
            self.pending,
            age(self.oldest_pending_age_seconds),
            self.relays.len()
        );
        for relay in &self.relays {
            out += &format!("  {} owns {} partition(s)\n", relay.session.describe(), relay.partitions);
        }
        let unowned: Vec<String> = self.unowned_partitions.iter().map(i16::to_string).collect();
        out += &format!(
            "unowned partitions: {}\n",
            if unowned.is_empty() { "none".to_owned() } else { unowned.join(",") }
        );
        out += "partition  pending  oldest      owner\n";
        for p in &self.partitions {
            let owner = p.owner.as_ref().map_or_else(|| "-".to_owned(), Session::describe);
            out +=
                &format!("{:>9}  {:>7}  {:>10}  {owner}\n", p.partition, p.pending, age(p.oldest_pending_age_seconds));
        }
        out += &format!("last errors: {}\n", self.last_errors.len());
        for e in &self.last_errors {
            out += &format!(
                "  row {} event {} partition {} attempts {} created {}: {}\n",
                e.id,
                e.event_id,
                e.partition,
                e.attempts,
                e.created_at.to_rfc3339(),
                e.error
            );
        }
        out
    }
}
