-- A message's time the database stamps when it writes the row: the relay
-- publishes the payload followed by the row's created_at as this protobuf
-- field, a google.protobuf.Timestamp (`WithEvents::occurred_at`). NULL: the
-- payload is published as stored. The archive keeps the payload as stored
-- with the field beside it. Nullable without a default: no row is rewritten.
ALTER TABLE outbox_messages ADD COLUMN IF NOT EXISTS occurred_at_field smallint;
ALTER TABLE outbox_archive ADD COLUMN IF NOT EXISTS occurred_at_field smallint;
