CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
    cancel_reason TEXT,
    total_cents BIGINT CHECK (total_cents >= 0),
    correlation_id TEXT NOT NULL,
    deadline_at_us BIGINT NOT NULL,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
-- The saga-timeout sweep looks for pending orders past their deadline.
CREATE INDEX orders_pending_deadline ON orders (deadline_at_us) WHERE status = 'pending';

CREATE TABLE order_items (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    line_no BIGINT NOT NULL,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, product_id)
);

-- `request` is the canonical JSON of the validated request: the same key with another body is refused.
-- `order_id` stays NULL while the first request with this key is still being processed.
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    order_id TEXT,
    created_at_us BIGINT NOT NULL
);

-- Every event of a saga that order-service published or consumed, for GET /orders/{id}/events.
CREATE TABLE order_timeline (
    event_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    occurred_at_us BIGINT NOT NULL,
    recorded_at_us BIGINT NOT NULL
);
CREATE INDEX order_timeline_by_order ON order_timeline (order_id, occurred_at_us);
