-- The order saga: what an order holds (its lines), how it ended (status,
-- failure, updated_at) and the saga that drives it (payment, then stock).
-- Orders written before the saga keep status CREATED and have no saga row;
-- their updated_at reads as created_at. Nothing here rewrites or scans the
-- existing rows (nullable columns without defaults, checks NOT VALID: every
-- existing row is CREATED without a failure), so the upgrade is instant.
ALTER TABLE orders
    ADD COLUMN failure_reason text,
    ADD COLUMN failure_detail text,
    ADD COLUMN updated_at     timestamptz,
    ADD CONSTRAINT orders_status_known CHECK (status IN ('CREATED', 'COMPLETED', 'FAILED')) NOT VALID,
    ADD CONSTRAINT orders_failure_reason_known
        CHECK (failure_reason IN ('PAYMENT_DECLINED', 'OUT_OF_STOCK', 'TIMED_OUT')) NOT VALID;

CREATE TABLE order_lines (
    order_id uuid    NOT NULL REFERENCES orders (order_id),
    line_no  int2    NOT NULL CHECK (line_no BETWEEN 0 AND 99),
    sku      text    NOT NULL CHECK (char_length(sku) BETWEEN 1 AND 64),
    quantity int8    NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, line_no)
);

-- One row per order created with the saga. `step` is where it stands;
-- `payment` and `stock` what each participant was asked and answered.
-- `deadline_at` is the step timer, `resend_at` the timer of the
-- compensations still unanswered: the timer sweep takes rows whose time passed.
CREATE TABLE sagas (
    order_id      uuid        PRIMARY KEY REFERENCES orders (order_id),
    step          text        NOT NULL,
    payment       text        NOT NULL,
    stock         text        NOT NULL,
    has_lines     boolean     NOT NULL,
    detail        text,
    deadline_at   timestamptz,
    resend_at     timestamptz,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX sagas_deadline_at ON sagas (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX sagas_resend_at ON sagas (resend_at) WHERE resend_at IS NOT NULL;
CREATE INDEX sagas_running ON sagas (started_at) WHERE ended_at IS NULL;
