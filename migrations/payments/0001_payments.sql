-- Customers' credit, one row per (customer, currency). A row with no
-- limit_minor follows PAYMENTS_DEFAULT_CREDIT: ProcessPayment creates it
-- only to lock it, so that payments of one customer and currency are
-- decided one at a time.
CREATE TABLE customer_credit (
    customer_id  text        NOT NULL CHECK (char_length(customer_id) BETWEEN 1 AND 128),
    currency     text        NOT NULL CHECK (char_length(currency) = 3),
    -- In the currency's minor units (cents for EUR, yen for JPY).
    limit_minor  bigint      CHECK (limit_minor >= 0),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (customer_id, currency)
);

-- One payment per order. A RefundPayment that arrives before the order's
-- ProcessPayment leaves a DECLINED row with cancelled_by_refund set and no
-- customer, currency or amount yet: the late ProcessPayment fills them in and
-- is declined.
CREATE TABLE payments (
    payment_id           uuid        PRIMARY KEY,
    order_id             uuid        NOT NULL UNIQUE,
    customer_id          text,
    currency             text,
    amount_minor         bigint      CHECK (amount_minor > 0),
    status               text        NOT NULL CHECK (status IN ('CAPTURED', 'DECLINED', 'REFUNDED')),
    -- Why a payment was declined.
    detail               text,
    cancelled_by_refund  boolean     NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((customer_id IS NULL) = (currency IS NULL) AND (currency IS NULL) = (amount_minor IS NULL)),
    CHECK (customer_id IS NOT NULL OR cancelled_by_refund)
);

-- What a customer has used of a credit: the sum of its CAPTURED payments.
CREATE INDEX payments_captured ON payments (customer_id, currency) INCLUDE (amount_minor)
    WHERE status = 'CAPTURED';
