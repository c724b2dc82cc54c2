-- The currency the order is charged in, from orders.created v2 (NULL: an order from before orders named
-- one, charged in US dollars).
ALTER TABLE payments ADD COLUMN currency TEXT;
