-- Which request holds a key's claim: completing or releasing it checks the token, so a request that
-- stalled past the takeover age can no longer complete a key that another request took over.
ALTER TABLE idempotency_keys ADD COLUMN claim_token TEXT NOT NULL DEFAULT '';
-- Keys are forgotten after ORDERFLOW_IDEMPOTENCY_KEY_TTL; the sweep deletes the oldest first.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at_us);
