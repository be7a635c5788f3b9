-- Version 4: versions 1 and 3 were the inbox's tables, which databases of the
-- earlier layout still list (see db::schemas), so 3 cannot be reused.

-- Delivery channels: where notifications are delivered (webhook endpoints and
-- email addresses), one delivery per notification and matching endpoint, and
-- every attempt made to send it.

-- A time-ordered (version 7) UUID, so delivery ids sort by creation.
CREATE FUNCTION delivery_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(
        set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
            PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
            FROM 1 FOR 6), 52, 1), 53, 1),
        'hex')::uuid
$$;

CREATE TABLE delivery_endpoints (
    endpoint_id                uuid        PRIMARY KEY,
    kind                       text        NOT NULL CHECK (kind IN ('webhook', 'email')),
    url                        text,
    email_address              text,
    -- Empty: every event type.
    event_types                text[]      NOT NULL DEFAULT '{}',
    description                text        NOT NULL DEFAULT '',
    enabled                    boolean     NOT NULL DEFAULT true,
    disabled_reason            text        NOT NULL DEFAULT '',
    -- A webhook's signing secret, AES-256-GCM: 12-byte nonce then ciphertext.
    secret                     bytea,
    -- The secret before the last rotation, signing until it expires.
    previous_secret            bytea,
    previous_secret_expires_at timestamptz,
    -- Since when every attempt to this endpoint has failed; NULL after a success.
    failing_since              timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((kind = 'webhook') = (url IS NOT NULL AND secret IS NOT NULL)),
    CHECK ((kind = 'email') = (email_address IS NOT NULL))
);

CREATE INDEX delivery_endpoints_created_at ON delivery_endpoints (created_at, endpoint_id);

CREATE TABLE deliveries (
    delivery_id      uuid        PRIMARY KEY,
    endpoint_id      uuid        NOT NULL REFERENCES delivery_endpoints ON DELETE CASCADE,
    notification_id  uuid        NOT NULL,
    order_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    -- The body's "data": the event's fields.
    data             jsonb       NOT NULL,
    -- The notification's text (an email's body).
    message          text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    -- Attempts started (a claim counts one, so an attempt cut short by a crash counts too).
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The lease of the replica sending it; past it, another replica may.
    claimed_until    timestamptz,
    last_error       text        NOT NULL DEFAULT '',
    last_status_code integer     NOT NULL DEFAULT 0,
    -- The span of the consumer that made it, parent of every attempt's span.
    traceparent      text,
    correlation_id   text        NOT NULL,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The dispatcher's claim: pending deliveries by due time.
CREATE INDEX deliveries_pending_due ON deliveries (next_attempt_at) WHERE status = 'pending';
-- ListDeliveries by order and by endpoint, oldest first.
CREATE INDEX deliveries_order_id ON deliveries (order_id, created_at, delivery_id);
CREATE INDEX deliveries_endpoint_id ON deliveries (endpoint_id, created_at, delivery_id);

CREATE TABLE delivery_attempts (
    delivery_id uuid        NOT NULL REFERENCES deliveries ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    -- The HTTP status or the SMTP reply code; NULL when none came.
    status_code integer,
    error       text        NOT NULL DEFAULT '',
    PRIMARY KEY (delivery_id, attempt)
);
