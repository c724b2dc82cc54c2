-- The catalog and its stock. Every unit is in exactly one bucket: available (can be reserved),
-- reserved (held for an order in flight) or sold. The CHECKs are the last line of defence against
-- overselling: a conditional UPDATE that would drive a bucket negative fails instead.
-- COLLATE "C": product ids sort byte by byte, as on SQLite and in Rust, so listing order and the
-- row-lock order of reservations are the same everywhere whatever the database's locale.
CREATE TABLE products (
    product_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    available BIGINT NOT NULL CHECK (available >= 0),
    reserved BIGINT NOT NULL CHECK (reserved >= 0),
    sold BIGINT NOT NULL CHECK (sold >= 0),
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);

-- One row per order this service has decided about. A 'tombstone' records a cancel that arrived
-- before the order, so a late orders.created reserves nothing.
CREATE TABLE reservations (
    order_id TEXT NOT NULL PRIMARY KEY,
    status TEXT NOT NULL
        CHECK (status IN ('reserved', 'rejected', 'committed', 'released', 'tombstone')),
    total_cents BIGINT CHECK (total_cents >= 0),
    reason TEXT,
    created_at_us BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);

-- What a reservation holds, at the unit price in force when it was made; commit and release move
-- exactly these quantities.
CREATE TABLE reservation_lines (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    product_id TEXT COLLATE "C" NOT NULL REFERENCES products (product_id),
    quantity BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);
