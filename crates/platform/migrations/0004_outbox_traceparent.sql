-- The W3C traceparent of the span that made the event, sent in the message's `traceparent` header so
-- that every event of a saga joins one trace. NULL: the event is published without one.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
