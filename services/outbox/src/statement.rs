//! One statement that writes the caller's rows and their outbox messages, so
//! a caller that creates a row and its event pays one round trip (one
//! statement is one transaction), with every value bound by name of its
//! column instead of by a parameter number the caller has to count.

use sqlx::{FromRow, PgConnection, Postgres, QueryBuilder, Row, postgres::PgRow};

use crate::{
    handover::{SEEN_MAX, Seen},
    message::{Appended, OutboxMessage, partition_of},
    occurred,
};

/// The outbox's columns every message binds, as a literal for [`COLUMNS`] and [`STAMPED_COLUMNS`].
macro_rules! message_columns {
    () => {
        "event_id, aggregate_type, aggregate_id, partition, exchange, routing_key, message_type, content_type, payload, \
         headers"
    };
}

/// The outbox's columns, in the order [`push_values`] binds them.
pub(crate) const COLUMNS: &str = message_columns!();
/// [`COLUMNS`] and those a [`Stamp`] writes.
const STAMPED_COLUMNS: &str = concat!(message_columns!(), ", created_at, occurred_at_field");

/// The time a statement writes as its rows' `created_at`, which the relay
/// adds to their payloads as protobuf field `field` ([`WithEvents::occurred_at`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    field: i16,
    at: &'static str,
}

/// The columns a statement writes, with or without `stamp`.
pub(crate) fn columns(stamp: Option<Stamp>) -> &'static str {
    if stamp.is_some() { STAMPED_COLUMNS } else { COLUMNS }
}

/// The newest outbox rows the statement's snapshot holds (rows the statement
/// itself inserts are not among them), one more than [`SEEN_MAX`] at most, as
/// `outbox_seen`: see [`crate::handover`]. Rows visible to a snapshot got their
/// ids before it was taken, and the statement's own rows after.
const SEEN: &str = "ARRAY(SELECT id FROM outbox_messages ORDER BY id DESC LIMIT 9) AS outbox_seen";
const _: () = assert!(SEEN_MAX + 1 == 9);
/// `outbox_seen` of a statement whose rows are not handed over: it reads nothing.
const UNSEEN: &str = "NULL::int8[] AS outbox_seen";

/// [`SEEN`] when the rows may be handed over, else [`UNSEEN`].
pub(crate) fn seen(hand_over: bool) -> &'static str {
    if hand_over { SEEN } else { UNSEEN }
}

/// A statement being built: first the caller's common table expressions
/// (through [`Self::caller`]), then the outbox rows for the rows one of them
/// returns ([`Self::event`] or [`Self::events`]).
///
/// ```text
/// WITH <caller's CTEs, the last one named `source`>,
///      event AS (INSERT INTO outbox_messages (...) SELECT ... FROM source ... RETURNING ...)
/// SELECT source.*, event.id AS outbox_id, event.partition AS outbox_partition FROM source ... event
/// ```
pub struct WithEvents<'args> {
    query: QueryBuilder<'args, Postgres>,
    /// See [`Self::occurred_at`].
    stamp: Option<Stamp>,
    /// Whether the rows may be handed over, see [`Self::handing_over`].
    hand_over: bool,
}

impl Default for WithEvents<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'args> WithEvents<'args> {
    pub fn new() -> Self {
        Self { query: QueryBuilder::new("WITH "), stamp: None, hand_over: true }
    }

    /// Whether the rows may be given to [`crate::OutboxWriter::hand_over`]
    /// (the default): the statement then also reads the newest outbox rows its
    /// snapshot holds, which the handover needs to keep an aggregate's events
    /// in order. A writer whose process runs no relay owning any partition
    /// ([`crate::OutboxWriter::hands_over`]) has nothing to hand them to and
    /// can skip that read; its rows are claimed by a relay, as they would be anyway.
    pub fn handing_over(&mut self, hand_over: bool) -> &mut Self {
        self.hand_over = hand_over;
        self
    }

    /// Stamps every message this statement writes with a time only the
    /// database knows when it writes them, such as the time it stamps on the
    /// caller's rows: `at` is SQL giving one `timestamptz`, an expression or
    /// a query of one row (it is written in parentheses, once per message,
    /// and may read the caller's CTEs), written as the rows' `created_at`, and the relay
    /// publishes each payload followed by protobuf field `field` holding that
    /// time as a `google.protobuf.Timestamp` (the message's `occurred_at`,
    /// left unset by the caller; protobuf readers take fields in any order).
    /// The rows store the payload as given, with the field number beside it.
    ///
    /// # Panics
    /// If `field` is 0 or above 32,767.
    pub fn occurred_at(&mut self, field: u32, at: &'static str) -> &mut Self {
        assert!((1..=occurred::MAX_FIELD).contains(&field), "protobuf field {field} is out of 1..=32767");
        self.stamp = Some(Stamp { field: field as i16, at });
        self
    }

    /// Where the caller writes its own CTEs (`name AS (...)`, comma-separated),
    /// binding its values with `push_bind`. The one the outbox rows follow
    /// must return an `event_id` column when several events are appended.
    pub fn caller(&mut self) -> &mut QueryBuilder<'args, Postgres> {
        &mut self.query
    }

    /// One outbox row carrying `message` per row `source` returns (none when
    /// it returns none, e.g. after `ON CONFLICT DO NOTHING`).
    pub fn event(mut self, source: &str, message: &'args OutboxMessage) -> Ready<'args> {
        self.query.push(format_args!(", event AS (INSERT INTO outbox_messages ({}) SELECT ", columns(self.stamp)));
        push_values(&mut self.query, message, self.stamp);
        self.query.push(format_args!(
            " FROM {source} RETURNING id, partition, created_at) \
             SELECT {source}.*, event.id AS outbox_id, event.partition AS outbox_partition, \
             event.created_at AS outbox_created_at, {} FROM {source} CROSS JOIN event",
            seen(self.hand_over)
        ));
        Ready { query: self.query, stamp: self.stamp }
    }

    /// One outbox row per message in `messages` whose `event_id` is among
    /// those `source` returns, written in the order of `messages`, each
    /// answered with the `source` row of the same `event_id`.
    pub fn events(mut self, source: &str, messages: &[&'args OutboxMessage]) -> Ready<'args> {
        let q = &mut self.query;
        q.push(format_args!(", event AS (INSERT INTO outbox_messages ({}) ", columns(self.stamp)));
        push_rows(q, messages, self.stamp);
        q.push(format_args!(
            " WHERE m.event_id IN (SELECT event_id FROM {source}) ORDER BY m.n \
             RETURNING id, partition, created_at, event_id) \
             SELECT {source}.*, event.id AS outbox_id, event.partition AS outbox_partition, \
             event.created_at AS outbox_created_at, {} FROM {source} JOIN event USING (event_id)",
            seen(self.hand_over)
        ));
        Ready { query: self.query, stamp: self.stamp }
    }
}

/// `SELECT <the outbox's columns> FROM unnest(<one array per column>) WITH
/// ORDINALITY AS m(<columns>, n)`: every message as a row, in one statement
/// whatever their number, `m.n` numbering them in the order of `messages`;
/// then `stamp`'s columns ([`columns`]).
pub(crate) fn push_rows<'args>(
    q: &mut QueryBuilder<'args, Postgres>,
    messages: &[&'args OutboxMessage],
    stamp: Option<Stamp>,
) {
    match stamp {
        None => q.push(format_args!("SELECT {COLUMNS} FROM unnest(")),
        Some(Stamp { field, at }) => q.push(format_args!("SELECT {COLUMNS}, ({at}), {field}::int2 FROM unnest(")),
    };
    let text = |f: fn(&'args OutboxMessage) -> &'args str| messages.iter().map(|m| f(m)).collect::<Vec<_>>();
    q.push_bind(messages.iter().map(|m| m.event_id).collect::<Vec<_>>()).push("::uuid[], ");
    q.push_bind(text(|m| &m.aggregate_type)).push("::text[], ");
    q.push_bind(text(|m| &m.aggregate_id)).push("::text[], ");
    q.push_bind(messages.iter().map(|m| partition_of(&m.aggregate_id)).collect::<Vec<_>>()).push("::int2[], ");
    q.push_bind(text(|m| &m.exchange)).push("::text[], ");
    q.push_bind(text(|m| &m.routing_key)).push("::text[], ");
    q.push_bind(text(|m| &m.message_type)).push("::text[], ");
    q.push_bind(text(|m| &m.content_type)).push("::text[], ");
    q.push_bind(messages.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>()).push("::bytea[], ");
    q.push_bind(messages.iter().map(|m| m.headers_json()).collect::<Vec<_>>()).push("::jsonb[]");
    q.push(format_args!(") WITH ORDINALITY AS m({COLUMNS}, n)"));
}

/// Binds `message`'s column values, in the order of [`COLUMNS`], then
/// `stamp`'s ([`columns`]).
pub(crate) fn push_values<'args>(
    q: &mut QueryBuilder<'args, Postgres>,
    message: &'args OutboxMessage,
    stamp: Option<Stamp>,
) {
    let mut values = q.separated(", ");
    values.push_bind(message.event_id);
    values.push_bind(message.aggregate_type.as_str());
    values.push_bind(message.aggregate_id.as_str());
    values.push_bind(partition_of(&message.aggregate_id));
    values.push_bind(message.exchange.as_str());
    values.push_bind(message.routing_key.as_str());
    values.push_bind(message.message_type.as_str());
    values.push_bind(message.content_type.as_str());
    values.push_bind(message.payload.as_slice());
    values.push_bind(message.headers_json());
    if let Some(Stamp { field, at }) = stamp {
        values.push(format_args!("({at}), {field}::int2"));
    }
}

/// A built statement, run once.
pub struct Ready<'args> {
    query: QueryBuilder<'args, Postgres>,
    stamp: Option<Stamp>,
}

impl Ready<'_> {
    /// Runs the statement: each caller row written, with the receipt of its outbox row.
    pub async fn fetch_all<R>(mut self, conn: &mut PgConnection) -> Result<Vec<(R, Appended)>, sqlx::Error>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let rows = self.query.build_query_as::<WithAppended<R>>().fetch_all(conn).await?;
        Ok(rows.into_iter().map(|row| (row.row, self.stamped(row.appended))).collect())
    }

    /// [`Self::fetch_all`] for a statement that writes at most one caller row.
    pub async fn fetch_optional<R>(mut self, conn: &mut PgConnection) -> Result<Option<(R, Appended)>, sqlx::Error>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let row = self.query.build_query_as::<WithAppended<R>>().fetch_optional(conn).await?;
        Ok(row.map(|row| (row.row, self.stamped(row.appended))))
    }

    /// The receipt of a row this statement wrote, with the field its payload gets.
    fn stamped(&self, mut appended: Appended) -> Appended {
        appended.occurred_at_field = self.stamp.map(|stamp| stamp.field);
        appended
    }

    /// The statement's text, for tests and logs.
    pub fn sql(&self) -> &str {
        self.query.sql()
    }
}

/// A caller row and the receipt of its outbox row, read by column name.
struct WithAppended<R> {
    row: R,
    appended: Appended,
}

impl<'r, R: FromRow<'r, PgRow>> FromRow<'r, PgRow> for WithAppended<R> {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let appended = Appended {
            id: row.try_get("outbox_id")?,
            partition: row.try_get("outbox_partition")?,
            created_at: row.try_get("outbox_created_at")?,
            seen: Seen::of_column(row.try_get::<Option<Vec<i64>>, _>("outbox_seen")?.as_deref()),
            occurred_at_field: None,
        };
        Ok(Self { row: R::from_row(row)?, appended })
    }
}
