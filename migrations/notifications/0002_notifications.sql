-- One notification per consumed OrderCreated event.
CREATE TABLE notifications (
    notification_id uuid        PRIMARY KEY,
    order_id        uuid        NOT NULL,
    -- The event the notification was made from: a second copy of the event
    -- cannot make a second notification, even past the inbox's dedup window.
    event_id        uuid        NOT NULL UNIQUE,
    message         text        NOT NULL,
    correlation_id  text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- ListNotifications reads one order's notifications, oldest first.
CREATE INDEX notifications_order_id_created_at ON notifications (order_id, created_at);
