-- One row per order: the join of its payment intent (orders.created) and its amount (inventory.reserved),
-- then the charge's progress. A row may exist with neither input: a cancellation that arrived first leaves
-- a 'cancelled' tombstone so that late inputs never lead to a charge.
CREATE TABLE payments (
    order_id TEXT PRIMARY KEY,
    payment_method TEXT,
    amount_cents BIGINT CHECK (amount_cents >= 0),
    deadline_at_us BIGINT,
    status TEXT NOT NULL CHECK (status IN ('waiting', 'charging', 'succeeded', 'declined', 'failed',
        'cancelled', 'refunding', 'refunded')),
    charge_id TEXT,
    -- Gateway calls started for this payment; counted before each call, so a crash mid-call still counts.
    attempts BIGINT NOT NULL DEFAULT 0,
    -- When the charge worker may next call the gateway for this row (backoff, or a lease while calling).
    next_attempt_at_us BIGINT NOT NULL,
    correlation_id TEXT NOT NULL,
    -- The event the worker's events are caused by: the one that completed the join, or the cancellation
    -- that asked for a refund.
    cause_event_id TEXT,
    last_error TEXT,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
CREATE INDEX payments_due ON payments (next_attempt_at_us) WHERE status IN ('charging', 'refunding');
