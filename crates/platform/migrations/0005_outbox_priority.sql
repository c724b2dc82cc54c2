-- The lane of the event (1 express, 0 normal): the relay publishes express events first, so a backlog
-- of normal ones in the outbox never stands in front of them. Every event of one order is in the same
-- lane, so each order's events still leave in the order they were made.
ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (priority DESC, sequence) WHERE published_at_us IS NULL;
