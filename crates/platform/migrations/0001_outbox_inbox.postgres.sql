-- Events waiting to be published (and, once published_at_us is set, a record of what was sent).
CREATE TABLE outbox (
    sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    order_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at_us BIGINT NOT NULL,
    published_at_us BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (sequence) WHERE published_at_us IS NULL;

-- Events a consumer has already applied: the key that makes redelivery harmless.
CREATE TABLE inbox (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    order_id TEXT NOT NULL,
    processed_at_us BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
