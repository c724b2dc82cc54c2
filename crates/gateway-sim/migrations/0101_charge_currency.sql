-- The currency of a charge; charges from before requests named one were in US dollars.
ALTER TABLE charges ADD COLUMN currency TEXT NOT NULL DEFAULT 'USD';
