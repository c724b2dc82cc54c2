-- The order's lane (`normal` or `express`): every event of its saga travels in it, the timeout
-- cancellation too.
ALTER TABLE orders ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';
