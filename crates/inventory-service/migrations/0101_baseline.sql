-- The stock a product started with: what its last PUT said plus what it held for orders then. No stock
-- move creates or destroys units, so available + reserved + sold must always equal it; `orderflow
-- verify` checks that, and a gap is a unit lost or invented. The DEFAULT is only there because SQLite
-- cannot add a NOT NULL column without one: every write of a product sets the baseline itself.
-- Rows from before this column are taken to have started with what they hold now.
ALTER TABLE products ADD COLUMN baseline BIGINT NOT NULL DEFAULT 0 CHECK (baseline >= 0);
UPDATE products SET baseline = available + reserved + sold;
