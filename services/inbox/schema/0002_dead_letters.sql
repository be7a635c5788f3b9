-- The dead-letter console of the inbox: generic, knows nothing of the
-- service using it.
-- Applied by `inbox::schema::apply`. Every statement is idempotent: databases
-- that got this table from a service's own migrations take this version as a
-- no-op.
--
-- One row per message taken from the dead-letter queue. Rows are never
-- deleted by the console: a replayed row is marked `replayed` once the broker
-- confirmed its copy, a purged one `purged` with who, why and when.
CREATE TABLE IF NOT EXISTS dead_letters (
    id               uuid        PRIMARY KEY,
    -- Message id, dead-lettering time and attempts: a copy taken twice (the
    -- ack of the first take was lost) is stored once.
    fingerprint      text        NOT NULL UNIQUE,
    message_id       text        NOT NULL DEFAULT '',
    message_type     text        NOT NULL DEFAULT '',
    correlation_id   text        NOT NULL DEFAULT '',
    reason           text        NOT NULL,
    error            text        NOT NULL DEFAULT '',
    -- Failed attempts, counted on across earlier replays (see replay_of).
    attempts         integer     NOT NULL,
    source_queue     text        NOT NULL DEFAULT '',
    dead_lettered_at timestamptz NOT NULL,
    ingested_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- AMQP headers and properties as JSON, to show and to republish.
    headers          jsonb       NOT NULL,
    properties       jsonb       NOT NULL,
    payload          bytea       NOT NULL,
    -- The dead letter this one is a replayed copy of.
    replay_of        uuid        REFERENCES dead_letters (id),
    state            text        NOT NULL DEFAULT 'dead' CHECK (state IN ('dead', 'replayed', 'purged')),
    replayed_at      timestamptz,
    purged_at        timestamptz,
    purged_by        text,
    purge_reason     text
);

-- Listing pages newest first within a state.
CREATE INDEX IF NOT EXISTS dead_letters_state_time ON dead_letters (state, dead_lettered_at DESC, id DESC);
