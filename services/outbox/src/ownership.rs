//! Partition ownership: a relay's own database connection, the advisory locks
//! it holds on it, and the queries it runs on it.
//!
//! Every relay holds a presence lock (class [`PRESENCE_CLASS`], a random key)
//! so relays can count each other in `pg_locks`, and one lock (class
//! [`PARTITION_CLASS`], key = partition) per partition it owns. Each aims at
//! `ceil(PARTITIONS / relays)` partitions: between batches it reads the lock
//! table, repairs what its session holds but does not claim from, releases
//! extras completely and takes free ones, never one it already holds (see
//! [`crate::partitions`]). Locks vanish with the connection, so a crashed
//! relay's partitions pass to the others, which then republish whatever it
//! had not marked (at-least-once; consumers deduplicate).
//!
//! Claims run on the connection that holds the locks: a claim that returns
//! rows proves the locks were still held, and the relay publishes those rows
//! right away, with no other database call between. A relay whose lock
//! connection died finds out at its next claim or mark and drops everything
//! it claimed and had not yet published.

mod queries;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions, types::Json};
use uuid::Uuid;

use self::queries::{claim_on, mark_on};
use crate::{
    message::{Appended, LocalRelay, OutboxMessage, PARTITIONS},
    partitions::{self, LockTable},
};

/// Advisory-lock class of partition locks ("PULS").
pub(crate) const PARTITION_CLASS: i32 = 0x5055_4c53;
/// Advisory-lock class of relay presence locks.
pub(crate) const PRESENCE_CLASS: i32 = PARTITION_CLASS + 1;

/// A claimed outbox row, ready to publish.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PendingRow {
    pub(crate) id: i64,
    pub(crate) event_id: Uuid,
    pub(crate) aggregate_id: String,
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) message_type: String,
    pub(crate) content_type: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: Json<std::collections::BTreeMap<String, String>>,
    pub(crate) created_at: DateTime<Utc>,
    /// Set until [`Self::stamped`] has added `created_at` to the payload as
    /// this protobuf field ([`crate::WithEvents::occurred_at`]).
    pub(crate) occurred_at_field: Option<i16>,
}

impl PendingRow {
    /// The row `appended` wrote for `message`, as a claim would read it.
    pub(crate) fn of(appended: &Appended, message: &OutboxMessage) -> Self {
        Self {
            id: appended.id,
            event_id: message.event_id,
            aggregate_id: message.aggregate_id.clone(),
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            message_type: message.message_type.clone(),
            content_type: message.content_type.clone(),
            payload: message.payload.clone(),
            headers: Json(message.headers.clone()),
            created_at: appended.created_at,
            occurred_at_field: appended.occurred_at_field,
        }
        .stamped()
    }

    /// The row with the payload the relay publishes: the stored one, then
    /// `created_at` in the row's `occurred_at_field`, if it has one.
    pub(crate) fn stamped(mut self) -> Self {
        if let Some(field) = self.occurred_at_field.take() {
            crate::occurred::append(&mut self.payload, field as u32, self.created_at);
        }
        self
    }

    /// A row with id `id` and nothing else, for the relay's unit tests.
    #[cfg(test)]
    pub(crate) fn blank(id: i64) -> Self {
        Self {
            id,
            event_id: Uuid::nil(),
            aggregate_id: String::new(),
            exchange: String::new(),
            routing_key: String::new(),
            message_type: String::new(),
            content_type: String::new(),
            payload: Vec::new(),
            headers: Json(Default::default()),
            created_at: Utc::now(),
            occurred_at_field: None,
        }
    }
}

/// Which rows to claim next: see [`Ownership::claim`].
#[derive(Debug, Default)]
pub(crate) struct Claim {
    pub(crate) limit: i64,
    /// Only rows with a higher id.
    pub(crate) after: i64,
    /// Rows to leave out (published, not yet marked).
    pub(crate) exclude: Vec<i64>,
}

pub(crate) struct Ownership {
    /// Holds the advisory locks; claims run on it.
    conn: PgConnection,
    /// Marks confirmed rows, so that a batch is marked while the next one is
    /// claimed; with `synchronous_commit` off (see [`Ownership::connect`]).
    marker: PgConnection,
    owned: BTreeSet<i16>,
    /// `owned`, as the writer and observers see it.
    local: LocalRelay,
    instance: i32,
}

impl Ownership {
    pub(crate) async fn connect(options: &PgConnectOptions, local: LocalRelay) -> Result<Self, sqlx::Error> {
        let mut conn = PgConnection::connect_with(options).await?;
        let instance = loop {
            let candidate: i32 = rand::random();
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(PRESENCE_CLASS)
                .bind(candidate)
                .fetch_one(&mut conn)
                .await?;
            if locked {
                break candidate;
            }
        };
        // Marks commit without waiting for their WAL flush. A mark lost in a
        // database crash only brings its rows back, to be published again, which
        // consumers deduplicate; a mark that is flushed implies every earlier one
        // is, so ordering holds. It spares the relay a flush wait per batch.
        let marker = PgConnection::connect_with(&options.clone().options([("synchronous_commit", "off")])).await?;
        local.set_owned([]);
        Ok(Self { conn, marker, owned: BTreeSet::new(), local, instance })
    }

    pub(crate) fn instance(&self) -> i32 {
        self.instance
    }

    pub(crate) fn owned(&self) -> usize {
        self.owned.len()
    }

    pub(crate) fn partitions(&self) -> &BTreeSet<i16> {
        &self.owned
    }

    /// Repairs, gives back or takes partitions so that each live relay owns
    /// its share and claims from exactly the partitions its session holds
    /// (see [`crate::partitions`]). Runs with nothing in flight. Returns
    /// whether this relay still owns fewer than its share.
    pub(crate) async fn rebalance(&mut self) -> Result<bool, sqlx::Error> {
        let table = self.lock_table().await?;
        let start = self.instance.rem_euclid(i32::from(PARTITIONS)) as i16;
        let plan = partitions::plan(&self.owned, &table, start);
        for &partition in &plan.repair {
            self.release(partition).await?;
            tracing::error!(partition, "outbox partition was locked but not claimed from; released it");
        }
        for &partition in &plan.forget {
            self.disown(partition);
            tracing::error!(partition, "outbox partition is no longer locked by this relay; stopped claiming from it");
        }
        for &partition in &plan.release {
            self.disown(partition);
            self.release(partition).await?;
            tracing::info!(partition, "released outbox partition");
        }
        let mut taken = Vec::new();
        for partition in plan.candidates {
            if taken.len() == plan.wanted {
                break;
            }
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(PARTITION_CLASS)
                .bind(i32::from(partition))
                .fetch_one(&mut self.conn)
                .await?;
            if locked {
                self.owned.insert(partition);
                self.local.own(partition);
                taken.push(partition);
            }
        }
        if !taken.is_empty() {
            tracing::info!(partitions = ?taken, "took outbox partitions");
        }
        Ok(self.owned.len() < partitions::share(table.relays))
    }

    /// Stops claiming from `partition` (before its lock goes).
    fn disown(&mut self, partition: i16) {
        self.owned.remove(&partition);
        self.local.disown(partition);
    }

    /// This database's relays and partition locks, from `pg_locks`.
    async fn lock_table(&mut self) -> Result<LockTable, sqlx::Error> {
        let rows: Vec<(i64, i64, bool)> = sqlx::query_as(&format!(
            "SELECT classid::int8, objid::int8, pid = pg_backend_pid()
             FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2
               AND classid IN ({PARTITION_CLASS}, {PRESENCE_CLASS})
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ))
        .fetch_all(&mut self.conn)
        .await?;
        let mut table = LockTable::default();
        for (class, key, mine) in rows {
            if class == i64::from(PRESENCE_CLASS) {
                table.relays += 1;
            } else if let Ok(partition @ 0..PARTITIONS) = i16::try_from(key) {
                let side = if mine { &mut table.mine } else { &mut table.others };
                side.insert(partition);
            }
        }
        table.relays = table.relays.max(1);
        Ok(table)
    }

    /// Unlocks `partition` as many times as this session holds it, so that no
    /// other relay is left unable to take it.
    async fn release(&mut self, partition: i16) -> Result<(), sqlx::Error> {
        // CASE runs the unlock first, then asks whether a level is left; a
        // plain loop until the unlock fails would make Postgres log a warning.
        let still_held = format!(
            "SELECT CASE WHEN pg_advisory_unlock({PARTITION_CLASS}, $1) THEN EXISTS (
                 SELECT 1 FROM pg_locks
                 WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND objsubid = 2
                   AND classid = {PARTITION_CLASS} AND objid::int8 = $2)
             ELSE false END"
        );
        for _ in 0..u16::MAX {
            let held: bool = sqlx::query_scalar(&still_held)
                .bind(i32::from(partition))
                .bind(i64::from(partition))
                .fetch_one(&mut self.conn)
                .await?;
            if !held {
                break;
            }
        }
        Ok(())
    }

    /// The oldest pending rows of the owned partitions with an id above
    /// `claim.after`, at most `claim.limit`, in id order, leaving out `claim.exclude`.
    ///
    /// It walks the primary key in id order from `after` and skips other
    /// relays' partitions: aggregates hash evenly, so with `n` relays it reads
    /// about `n * limit` rows, and never sorts the backlog. While batches are
    /// in flight the relay passes the last id it claimed as `after` and no
    /// exclusions (checking each row against a list of thousands costs the
    /// server more than the walk); from time to time it passes 0 and the list,
    /// to pick up rows that committed late with a lower id, and rows refused before.
    pub(crate) async fn claim(&mut self, claim: &Claim) -> Result<Vec<PendingRow>, sqlx::Error> {
        claim_on(&mut self.conn, &self.owned, claim).await
    }

    /// Marks `confirmed` rows published and meanwhile, on the claiming
    /// connection, claims `next`: the database works on both at once. Marking
    /// deletes the rows, copying them into the archive when `archive` is set.
    pub(crate) async fn mark_and_claim(
        &mut self,
        confirmed: &[i64],
        archive: bool,
        next: Option<&Claim>,
    ) -> (Result<u64, sqlx::Error>, Result<Vec<PendingRow>, sqlx::Error>) {
        let marking =
            async { if confirmed.is_empty() { Ok(0) } else { mark_on(&mut self.marker, confirmed, archive).await } };
        let claiming = async {
            match next {
                Some(claim) => claim_on(&mut self.conn, &self.owned, claim).await,
                None => Ok(Vec::new()),
            }
        };
        tokio::join!(marking, claiming)
    }

    /// Records a failed publish on rows that stay pending.
    pub(crate) async fn record_failure(&mut self, ids: &[i64], error: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE outbox_messages SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)")
            .bind(ids)
            .bind(error)
            .execute(&mut self.marker)
            .await?;
        Ok(())
    }

    /// Gives every lock back (closing the connection would too).
    pub(crate) async fn close(self) {
        self.local.set_owned([]);
        let _ = self.marker.close().await;
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests;
