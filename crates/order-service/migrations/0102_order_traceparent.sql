-- The traceparent of the request that placed the order: a cancellation by the saga deadline, which no
-- event causes, joins the order's trace through it. NULL for orders placed before it was kept.
ALTER TABLE orders ADD COLUMN traceparent TEXT;
