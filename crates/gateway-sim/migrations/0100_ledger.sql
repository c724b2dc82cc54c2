-- Every charge attempt the gateway answered, declined ones included: the idempotency key makes a retried
-- request return this row instead of charging again.
CREATE TABLE charges (
    charge_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    payment_method TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('succeeded', 'declined')),
    decline_code TEXT,
    order_id TEXT,
    created_at_us BIGINT NOT NULL
);
CREATE INDEX charges_by_order ON charges (order_id);
CREATE INDEX charges_by_time ON charges (created_at_us);

-- Full refunds; UNIQUE (charge_id) is what makes "a charge is refunded at most once" hold under races.
CREATE TABLE refunds (
    refund_id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    charge_id TEXT NOT NULL UNIQUE REFERENCES charges (charge_id),
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    created_at_us BIGINT NOT NULL
);
CREATE INDEX refunds_by_time ON refunds (created_at_us);
