//! Every SQL statement of the inventory. The same text runs on SQLite and PostgreSQL.
//!
//! Stock never goes negative because each move is one conditional `UPDATE` (`... WHERE available >=
//! $1`): the database applies it atomically against the row's latest committed value (PostgreSQL
//! locks the row until our commit; SQLite has one writer), so two orders can never both take the last
//! unit. The `CHECK (... >= 0)` constraints back that up.

use crate::domain::{Product, ProductDraft, ReservationStatus};
use contracts::events::PricedLine;
use contracts::{Money, OrderId, ProductId};
use platform::db::{Db, SqlError, Tx, query};

/// A line held by a reservation, as commit and release need it. The quantity is the product's sum
/// over the order, which may exceed one order line's limit if the order repeats a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLine {
    pub product_id: ProductId,
    pub quantity: i64,
}

/// A stored value that our own writes could not have produced (the schema's CHECKs forbid it).
fn corrupt(what: String) -> SqlError {
    SqlError::Decode(what)
}

fn product_id(raw: String) -> Result<ProductId, SqlError> {
    ProductId::parse(&raw).map_err(|error| corrupt(format!("stored product id '{raw}': {error}")))
}

fn money(cents: i64) -> Result<Money, SqlError> {
    Money::from_cents(cents).map_err(|error| corrupt(format!("stored price {cents}: {error}")))
}

pub async fn reservation_status(
    tx: &mut Tx,
    order_id: &OrderId,
) -> Result<Option<ReservationStatus>, SqlError> {
    let raw: Option<String> = query("SELECT status FROM reservations WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_optional(tx.conn())
        .await?;
    raw.map(|raw| {
        ReservationStatus::parse(&raw)
            .ok_or_else(|| corrupt(format!("unknown reservation status '{raw}'")))
    })
    .transpose()
}

/// Moves `quantity` units from available to reserved if that many are available. Returns the unit
/// price at this moment, or `None` if the product is unknown or short (see [`available`]).
pub async fn hold(
    tx: &mut Tx,
    product_id: &ProductId,
    quantity: i64,
    now_us: i64,
) -> Result<Option<Money>, SqlError> {
    let price: Option<i64> = query(
        "UPDATE products SET available = available - $1, reserved = reserved + $1, \
         updated_at_us = $3 WHERE product_id = $2 AND available >= $1 RETURNING price_cents",
    )
    .bind(quantity)
    .bind(product_id.as_str())
    .bind(now_us)
    .fetch_optional(tx.conn())
    .await?;
    price.map(money).transpose()
}

/// Units available now; `None` if the product does not exist.
pub async fn available(tx: &mut Tx, product_id: &ProductId) -> Result<Option<i64>, SqlError> {
    query("SELECT available FROM products WHERE product_id = $1")
        .bind(product_id.as_str())
        .fetch_optional(tx.conn())
        .await
}

/// Moves held units back to available: undoes a [`hold`] of a rejected order, or releases a
/// cancelled one. `false` if no row matched (the product vanished, which nothing does).
pub async fn unhold(
    tx: &mut Tx,
    product_id: &ProductId,
    quantity: i64,
    now_us: i64,
) -> Result<bool, SqlError> {
    let done = query(
        "UPDATE products SET available = available + $1, reserved = reserved - $1, \
         updated_at_us = $3 WHERE product_id = $2",
    )
    .bind(quantity)
    .bind(product_id.as_str())
    .bind(now_us)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// Moves held units to sold when the order is confirmed. `false` if no row matched.
pub async fn sell(
    tx: &mut Tx,
    product_id: &ProductId,
    quantity: i64,
    now_us: i64,
) -> Result<bool, SqlError> {
    let done = query(
        "UPDATE products SET reserved = reserved - $1, sold = sold + $1, updated_at_us = $3 \
         WHERE product_id = $2",
    )
    .bind(quantity)
    .bind(product_id.as_str())
    .bind(now_us)
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// Records a successful reservation and its priced lines.
///
/// A plain `INSERT` (no `ON CONFLICT`): if another instance decided this order meanwhile, the
/// unique violation fails the transaction and the redelivery sees that decision.
pub async fn insert_reserved(
    tx: &mut Tx,
    order_id: &OrderId,
    total: Money,
    lines: &[PricedLine],
    now_us: i64,
) -> Result<(), SqlError> {
    query(
        "INSERT INTO reservations (order_id, status, total_cents, reason, created_at_us, updated_at_us) \
         VALUES ($1, $2, $3, NULL, $4, $4)",
    )
    .bind(order_id.to_string())
    .bind(ReservationStatus::Reserved.as_str())
    .bind(total.cents())
    .bind(now_us)
    .execute(tx.conn())
    .await?;
    for line in lines {
        // An order that repeats a product holds the sum; the unit price is the same for both lines
        // because our first `hold` keeps the product row locked until commit.
        query(
            "INSERT INTO reservation_lines (order_id, product_id, quantity, unit_price_cents) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (order_id, product_id) \
             DO UPDATE SET quantity = reservation_lines.quantity + excluded.quantity",
        )
        .bind(order_id.to_string())
        .bind(line.product_id.as_str())
        .bind(line.quantity.get())
        .bind(line.unit_price_cents.cents())
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

/// Records an order that holds no stock: `Rejected` (nothing was reserved, and `reason` says why) or
/// `Tombstone` (a cancel came before the order, so a late `orders.created` reserves nothing).
///
/// A plain `INSERT` on purpose, as in [`insert_reserved`]: if a concurrent instance reserved the order
/// meanwhile, the unique violation makes this event retry, and the retry sees that reservation (and,
/// for a cancel, releases it instead of leaving its stock held forever).
pub async fn insert_without_stock(
    tx: &mut Tx,
    order_id: &OrderId,
    status: ReservationStatus,
    reason: Option<&str>,
    now_us: i64,
) -> Result<(), SqlError> {
    query(
        "INSERT INTO reservations (order_id, status, total_cents, reason, created_at_us, updated_at_us) \
         VALUES ($1, $2, NULL, $3, $4, $4)",
    )
    .bind(order_id.to_string())
    .bind(status.as_str())
    .bind(reason)
    .bind(now_us)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Moves the reservation from `from` to `to` if it is still in `from`. Returns `false` when another
/// transaction got there first, so the caller must not move stock a second time.
pub async fn set_status(
    tx: &mut Tx,
    order_id: &OrderId,
    from: ReservationStatus,
    to: ReservationStatus,
    now_us: i64,
) -> Result<bool, SqlError> {
    let done = query(
        "UPDATE reservations SET status = $1, updated_at_us = $2 WHERE order_id = $3 AND status = $4",
    )
    .bind(to.as_str())
    .bind(now_us)
    .bind(order_id.to_string())
    .bind(from.as_str())
    .execute(tx.conn())
    .await?;
    Ok(done == 1)
}

/// The lines a reservation holds, in product order (the same lock order as reserving).
pub async fn held_lines(tx: &mut Tx, order_id: &OrderId) -> Result<Vec<HeldLine>, SqlError> {
    let rows: Vec<(String, i64)> = query(
        "SELECT product_id, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY product_id",
    )
    .bind(order_id.to_string())
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter()
        .map(|(id, quantity)| {
            Ok(HeldLine {
                product_id: product_id(id)?,
                quantity,
            })
        })
        .collect()
}

/// One row of `products`, as stored.
#[derive(serde::Deserialize)]
struct ProductRow {
    product_id: String,
    name: String,
    price_cents: i64,
    available: i64,
    reserved: i64,
    sold: i64,
}

impl TryFrom<ProductRow> for Product {
    type Error = SqlError;

    fn try_from(row: ProductRow) -> Result<Product, SqlError> {
        Ok(Product {
            product_id: product_id(row.product_id)?,
            name: row.name,
            price_cents: money(row.price_cents)?,
            available: row.available,
            reserved: row.reserved,
            sold: row.sold,
        })
    }
}

/// Creates the product (reserved and sold start at 0) or replaces its name, price and available
/// stock (reserved and sold stay: they belong to orders in flight or done), and restarts its stock
/// baseline from there. Returns the product and whether it was created.
pub async fn put_product(
    db: &Db,
    product_id: &ProductId,
    draft: &ProductDraft,
    now_us: i64,
) -> Result<(Product, bool), SqlError> {
    // Insert-then-update in one transaction tells "created" from "replaced" on both backends; on
    // PostgreSQL a concurrent insert of the same id makes ours wait and then take the update path.
    let mut tx = db.begin().await?;
    let inserted: Option<ProductRow> = query(
        "INSERT INTO products (product_id, name, price_cents, available, reserved, sold, baseline, \
         created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, 0, 0, $4, $5, $5) \
         ON CONFLICT (product_id) DO NOTHING \
         RETURNING product_id, name, price_cents, available, reserved, sold",
    )
    .bind(product_id.as_str())
    .bind(draft.name.as_str())
    .bind(draft.price.cents())
    .bind(draft.stock)
    .bind(now_us)
    .fetch_optional(tx.conn())
    .await?;
    let (row, created) = match inserted {
        Some(row) => (row, true),
        None => {
            // The new stock is what is available from now on, on top of the units that orders
            // already hold or bought: those stay counted in the product's baseline.
            let row: ProductRow = query(
                "UPDATE products SET name = $2, price_cents = $3, available = $4, \
                 baseline = $4 + reserved + sold, updated_at_us = $5 WHERE product_id = $1 \
                 RETURNING product_id, name, price_cents, available, reserved, sold",
            )
            .bind(product_id.as_str())
            .bind(draft.name.as_str())
            .bind(draft.price.cents())
            .bind(draft.stock)
            .bind(now_us)
            .fetch_one(tx.conn())
            .await?;
            (row, false)
        }
    };
    let product = Product::try_from(row)?;
    tx.commit().await?;
    Ok((product, created))
}

pub async fn product(db: &Db, product_id: &ProductId) -> Result<Option<Product>, SqlError> {
    let row: Option<ProductRow> = query(
        "SELECT product_id, name, price_cents, available, reserved, sold FROM products \
         WHERE product_id = $1",
    )
    .bind(product_id.as_str())
    .fetch_optional(db.pool())
    .await?;
    row.map(Product::try_from).transpose()
}

/// The whole catalog, by product id.
pub async fn products(db: &Db) -> Result<Vec<Product>, SqlError> {
    let rows: Vec<ProductRow> = query(
        "SELECT product_id, name, price_cents, available, reserved, sold FROM products \
         ORDER BY product_id",
    )
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(Product::try_from).collect()
}

/// Units in stock across the catalog, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct StockTotals {
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// The catalog's stock totals: one statement over `products`, which holds one row per product.
pub async fn stock_totals(db: &Db) -> Result<StockTotals, SqlError> {
    // The CASTs keep PostgreSQL's SUM of BIGINT, a NUMERIC, readable as an integer (and give 0 for
    // an empty catalog on both backends).
    query(
        "SELECT CAST(COALESCE(SUM(available), 0) AS BIGINT) AS available, \
         CAST(COALESCE(SUM(reserved), 0) AS BIGINT) AS reserved, \
         CAST(COALESCE(SUM(sold), 0) AS BIGINT) AS sold FROM products",
    )
    .fetch_one(db.pool())
    .await
}

/// A product's stock with what it started from: what `orderflow verify` checks is conserved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct StockLedger {
    pub product_id: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// The stock as last set by `PUT /products/{id}`: available + reserved + sold must equal it.
    pub baseline: i64,
}

/// Every product's stock ledger, by id.
pub async fn stock_ledgers(db: &Db) -> Result<Vec<StockLedger>, SqlError> {
    query(
        "SELECT product_id, available, reserved, sold, baseline FROM products ORDER BY product_id",
    )
    .fetch_all(db.pool())
    .await
}

/// A reservation as `orderflow verify` judges it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ReservationOutcome {
    pub order_id: String,
    pub status: ReservationStatus,
    pub total_cents: Option<i64>,
}

/// Every reservation's outcome.
pub async fn reservation_outcomes(db: &Db) -> Result<Vec<ReservationOutcome>, SqlError> {
    query("SELECT order_id, status, total_cents FROM reservations")
        .fetch_all(db.pool())
        .await
}

/// How many units of a product the reservations in one status hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct HeldStock {
    pub product_id: String,
    pub status: ReservationStatus,
    pub quantity: i64,
}

/// Units held by product and reservation status, summed in the database (a catalog's lines outnumber
/// its products).
pub async fn held_stock(db: &Db) -> Result<Vec<HeldStock>, SqlError> {
    // The CAST keeps PostgreSQL's SUM of BIGINT, a NUMERIC, readable as an integer.
    query(
        "SELECT l.product_id, r.status, CAST(SUM(l.quantity) AS BIGINT) AS quantity \
         FROM reservation_lines l JOIN reservations r ON r.order_id = l.order_id \
         GROUP BY l.product_id, r.status",
    )
    .fetch_all(db.pool())
    .await
}
