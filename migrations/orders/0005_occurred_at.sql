-- The database stamps an order: the statement that writes it reads the
-- clock once (clock_timestamp(), as it starts writing) for the order's
-- created_at and the saga's times, one clock for every replica, and appends
-- the same instant to the payload of each message it writes as their
-- occurred_at (field 6 of OrderCreated and ProcessPayment, a
-- google.protobuf.Timestamp), which the service encodes without it. Protobuf
-- readers accept fields in any order. The service encodes the same bytes
-- (orders' messaging::stamp) for the rows it hands to its relay.

-- A non-negative integer as a protobuf varint: seven bits a byte, low first.
CREATE OR REPLACE FUNCTION protobuf_varint(v bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    out bytea := '';
BEGIN
    LOOP
        IF v < 128 THEN
            RETURN out || set_byte('\x00'::bytea, 0, v::int);
        END IF;
        out := out || set_byte('\x00'::bytea, 0, ((v & 127) | 128)::int);
        v := v >> 7;
    END LOOP;
END
$$;

-- Field `field` (1 to 15) holding `at` as a google.protobuf.Timestamp: the
-- key, the length, then seconds (1) and nanos (2), each left out when 0, as
-- protobuf encoders write them. `at` is after 1970 (seconds not negative).
-- PL/pgSQL, whose plans last the session: an SQL function of this shape is
-- planned again by every statement calling it, ten times the cost.
CREATE OR REPLACE FUNCTION protobuf_timestamp_field(field int, at timestamptz) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    epoch numeric := extract(epoch FROM at);
    seconds bigint := floor(epoch);
    nanos bigint := (epoch - floor(epoch)) * 1000000000;
    body bytea := '';
BEGIN
    IF seconds > 0 THEN
        body := body || '\x08'::bytea || protobuf_varint(seconds);
    END IF;
    IF nanos > 0 THEN
        body := body || '\x10'::bytea || protobuf_varint(nanos);
    END IF;
    RETURN set_byte(set_byte('\x0000'::bytea, 0, field * 8 + 2), 1, length(body)) || body;
END
$$;
