-- The transactional outbox: generic, knows nothing of the service using it.
-- Applied by `outbox::schema::apply`. Every statement is idempotent: databases
-- that got these tables from a service's own migrations take this version
-- as a no-op.
--
-- outbox_messages holds only PENDING rows. The relay deletes a row once the
-- broker has confirmed it and, when retention is on, copies it into
-- outbox_archive in the same statement. The live table therefore stays as
-- small as the backlog, and the archive is partitioned by hour so that expired
-- rows leave by DROP TABLE (no mass DELETE, no vacuum debt).
CREATE TABLE IF NOT EXISTS outbox_messages (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    -- Stable hash of aggregate_id modulo the partition count: all events of an
    -- aggregate share a partition, and one relay at a time owns a partition,
    -- which is what keeps an aggregate's events in order across relays.
    partition      smallint    NOT NULL,
    exchange       text        NOT NULL,
    routing_key    text        NOT NULL,
    message_type   text        NOT NULL,
    content_type   text        NOT NULL,
    payload        bytea       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts       integer     NOT NULL DEFAULT 0,
    last_error     text
);

-- No index besides the primary key: relays walk it in id order, keeping their
-- own partitions, and every insert pays for each extra index.

-- Rows are inserted and deleted all day long: vacuum often, in small steps.
ALTER TABLE outbox_messages SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 50000,
    autovacuum_analyze_scale_factor = 0.02
);

CREATE TABLE IF NOT EXISTS outbox_archive (
    id             bigint      NOT NULL,
    event_id       uuid        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    exchange       text        NOT NULL,
    routing_key    text        NOT NULL,
    message_type   text        NOT NULL,
    content_type   text        NOT NULL,
    payload        bytea       NOT NULL,
    headers        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL,
    attempts       integer     NOT NULL,
    published_at   timestamptz NOT NULL
) PARTITION BY RANGE (published_at);

-- Catches rows should the relay's maintenance ever fall behind on creating
-- hourly partitions; the maintenance also prunes it.
CREATE TABLE IF NOT EXISTS outbox_archive_default PARTITION OF outbox_archive DEFAULT;

CREATE INDEX IF NOT EXISTS outbox_archive_event_id ON outbox_archive (event_id);
