//! Partition ownership: a relay's own database connection, the advisory locks
//! it holds on it, and the queries it runs on it.
//!
//! Every relay holds a presence lock (class [`PRESENCE_CLASS`], a random key)
//! so relays can count each other in `pg_locks`, and one lock (class
//! [`PARTITION_CLASS`], key = partition) per partition it owns. Each aims at
//! `ceil(PARTITIONS / relays)` partitions: it releases extras between batches
//! and takes free ones. Locks vanish with the connection, so a crashed relay's
//! partitions pass to the others, which then republish whatever it had not
//! marked (at-least-once; consumers deduplicate).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions, types::Json};
use uuid::Uuid;

use crate::message::PARTITIONS;

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
    instance: i32,
}

impl Ownership {
    pub(crate) async fn connect(options: &PgConnectOptions) -> Result<Self, sqlx::Error> {
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
        Ok(Self { conn, marker, owned: BTreeSet::new(), instance })
    }

    pub(crate) fn instance(&self) -> i32 {
        self.instance
    }

    pub(crate) fn owned(&self) -> usize {
        self.owned.len()
    }

    pub(crate) fn partitions(&self) -> impl Iterator<Item = i16> + '_ {
        self.owned.iter().copied()
    }

    /// Takes or gives back partitions so that each live relay owns its share.
    /// Returns whether this relay still owns fewer than its share.
    pub(crate) async fn rebalance(&mut self) -> Result<bool, sqlx::Error> {
        let relays: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND classid = {PRESENCE_CLASS}
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ))
        .fetch_one(&mut self.conn)
        .await?;
        let relays = relays.max(1) as usize;
        let share = (PARTITIONS as usize).div_ceil(relays);

        while self.owned.len() > share {
            let partition = *self.owned.iter().next_back().expect("non-empty");
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(PARTITION_CLASS)
                .bind(i32::from(partition))
                .execute(&mut self.conn)
                .await?;
            self.owned.remove(&partition);
            tracing::info!(partition, "released outbox partition");
        }
        if self.owned.len() < share {
            let owned: Vec<i16> = self.owned.iter().copied().collect();
            // Start at a point of our own so relays do not all probe partition 0 first.
            // Without ORDER BY the filter runs only on the rows LIMIT pulls, so
            // every lock taken is a row returned.
            let offset = self.instance.rem_euclid(i32::from(PARTITIONS));
            let taken: Vec<i16> = sqlx::query_scalar(&format!(
                "SELECT part::int2 FROM (SELECT (g + $3) % {PARTITIONS} AS part FROM generate_series(0, {PARTITIONS} - 1) g) s
                 WHERE NOT (part::int2 = ANY($1)) AND pg_try_advisory_lock({PARTITION_CLASS}, part)
                 LIMIT $2"
            ))
            .bind(&owned)
            .bind((share - self.owned.len()) as i64)
            .bind(offset)
            .fetch_all(&mut self.conn)
            .await?;
            if !taken.is_empty() {
                tracing::info!(partitions = ?taken, "took outbox partitions");
            }
            self.owned.extend(taken);
        }
        Ok(self.owned.len() < share)
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
        let _ = self.marker.close().await;
        let _ = self.conn.close().await;
    }
}

async fn claim_on(
    conn: &mut PgConnection,
    owned: &BTreeSet<i16>,
    claim: &Claim,
) -> Result<Vec<PendingRow>, sqlx::Error> {
    let owned: Vec<i16> = owned.iter().copied().collect();
    let sql = if claim.exclude.is_empty() {
        "SELECT id, event_id, aggregate_id, exchange, routing_key, message_type, content_type, payload,
                headers, created_at
         FROM outbox_messages
         WHERE partition = ANY($1) AND id > $3
         ORDER BY id
         LIMIT $2"
    } else {
        "SELECT id, event_id, aggregate_id, exchange, routing_key, message_type, content_type, payload,
                headers, created_at
         FROM outbox_messages
         WHERE partition = ANY($1) AND id > $3 AND NOT (id = ANY($4))
         ORDER BY id
         LIMIT $2"
    };
    let mut query = sqlx::query_as(sql).bind(owned).bind(claim.limit).bind(claim.after);
    if !claim.exclude.is_empty() {
        query = query.bind(&claim.exclude);
    }
    query.fetch_all(conn).await
}

async fn mark_on(conn: &mut PgConnection, ids: &[i64], archive: bool) -> Result<u64, sqlx::Error> {
    let sql = if archive {
        "WITH done AS (DELETE FROM outbox_messages WHERE id = ANY($1) RETURNING *)
         INSERT INTO outbox_archive (id, event_id, aggregate_type, aggregate_id, exchange, routing_key,
             message_type, content_type, payload, headers, created_at, attempts, published_at)
         SELECT id, event_id, aggregate_type, aggregate_id, exchange, routing_key,
             message_type, content_type, payload, headers, created_at, attempts + 1, now()
         FROM done"
    } else {
        "DELETE FROM outbox_messages WHERE id = ANY($1)"
    };
    Ok(sqlx::query(sql).bind(ids).execute(conn).await?.rows_affected())
}
