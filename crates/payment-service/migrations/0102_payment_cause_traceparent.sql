-- The traceparent of the span that handed the payment to the worker (the event in cause_event_id):
-- the worker's gateway calls and the events they lead to join the order's trace under it.
ALTER TABLE payments ADD COLUMN cause_traceparent TEXT;
