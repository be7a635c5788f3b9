CREATE TABLE orders (
    order_id       uuid          PRIMARY KEY,
    customer_id    text          NOT NULL CHECK (char_length(customer_id) BETWEEN 1 AND 128),
    amount         numeric(20,2) NOT NULL CHECK (amount > 0),
    currency       char(3)       NOT NULL,
    status         text          NOT NULL DEFAULT 'CREATED',
    -- The client's idempotency key: a retry with the same request_id finds
    -- this row instead of creating a second order and a second event.
    request_id     uuid          UNIQUE,
    event_id       uuid          NOT NULL,
    correlation_id text          NOT NULL,
    created_at     timestamptz   NOT NULL DEFAULT clock_timestamp()
);
