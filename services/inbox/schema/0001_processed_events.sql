-- The inbox: generic, knows nothing of the service using it.
-- Applied by `inbox::schema::apply`. Every statement is idempotent: databases
-- that got this table from a service's own migrations take this version as a
-- no-op.
--
-- One row per event whose effect has committed, written in the same
-- transaction as the effect. A copy of an event whose id is here is
-- acknowledged without effect. Rows older than the inbox's dedup window
-- (default 7 days, always longer than the whole retry schedule) are pruned in
-- small batches.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     uuid        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The pruner looks for the oldest rows.
CREATE INDEX IF NOT EXISTS processed_events_processed_at ON processed_events (processed_at);
