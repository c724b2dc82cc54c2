-- The versions an event is published in when there is more than one (dual publishing during a rolling
-- upgrade, e.g. 'v1,v2'): the payload holds the first, the relay writes the others from it. NULL: the
-- payload is published as it is.
ALTER TABLE outbox ADD COLUMN publish_versions TEXT;
