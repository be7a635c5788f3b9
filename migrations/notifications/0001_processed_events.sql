-- The inbox (crate `inbox`): generic, knows nothing of notifications.
--
-- One row per event whose effect has committed, written in the same
-- transaction as the effect. A copy of an event whose id is here is
-- acknowledged without effect. Rows older than the inbox's dedup window
-- (default 7 days, always longer than the whole retry schedule) are pruned in
-- small batches.
CREATE TABLE processed_events (
    event_id     uuid        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The pruner looks for the oldest rows.
CREATE INDEX processed_events_processed_at ON processed_events (processed_at);
