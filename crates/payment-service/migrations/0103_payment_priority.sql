-- The order's lane (`normal` or `express`): the worker charges and refunds express payments first,
-- and the events it publishes for them travel in the express lane.
ALTER TABLE payments ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';
