-- Stock per sku, and the order saga's reservations of it.

-- How many of a sku are on hand, and how many of those RESERVED reservations hold.
CREATE TABLE stock (
    sku        text        PRIMARY KEY CHECK (char_length(sku) BETWEEN 1 AND 64),
    on_hand    bigint      NOT NULL CHECK (on_hand >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_reserved_within_on_hand CHECK (reserved <= on_hand)
);

-- One reservation per order, whatever came first: a ReserveInventory
-- (RESERVED when every line was held, REJECTED when one was short), or a
-- ReleaseInventory (REJECTED with released_first, so a late ReserveInventory
-- fails). A RESERVED one becomes RELEASED when released.
CREATE TABLE reservations (
    reservation_id uuid        PRIMARY KEY,
    order_id       uuid        NOT NULL UNIQUE,
    status         text        NOT NULL CHECK (status IN ('RESERVED', 'REJECTED', 'RELEASED')),
    -- Why a REJECTED reservation holds nothing; empty otherwise.
    detail         text        NOT NULL DEFAULT '',
    released_first boolean     NOT NULL DEFAULT false,
    correlation_id text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The lines a ReserveInventory asked for, one per sku (duplicates summed).
CREATE TABLE reservation_lines (
    reservation_id uuid   NOT NULL REFERENCES reservations (reservation_id) ON DELETE CASCADE,
    sku            text   NOT NULL,
    quantity       bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);
