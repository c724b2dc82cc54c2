-- Failed attempts at handling one message, counted by the consumer runtime itself: only a failure of
-- the message counts (an outage of the service's own database never does), and the broker's delivery
-- count is not used because it also grows when an ack wait runs out while the message waits its turn.
-- A row goes when its message is applied or dead-lettered; the retention sweep removes forgotten ones.
CREATE TABLE consumer_failures (
    consumer TEXT NOT NULL,
    stream_sequence BIGINT NOT NULL,
    failures BIGINT NOT NULL CHECK (failures > 0),
    first_failed_at_us BIGINT NOT NULL,
    last_failed_at_us BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    PRIMARY KEY (consumer, stream_sequence)
);
CREATE INDEX consumer_failures_by_age ON consumer_failures (last_failed_at_us);

-- The retention sweeps delete the oldest rows first, in small batches.
CREATE INDEX outbox_published ON outbox (published_at_us) WHERE published_at_us IS NOT NULL;
CREATE INDEX inbox_by_age ON inbox (processed_at_us);
