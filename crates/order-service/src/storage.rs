//! Every SQL statement of order-service.

use crate::domain::{NewOrder, OrderStatus};
use contracts::events::CancelReason;
use contracts::{EventId, EventMeta, Money, OrderId};
use platform::db::{Db, Tx, format_us, now_us, to_us};
use serde::Serialize;
use sqlx::Row;

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<ItemView>,
    pub payment_method: String,
    pub status: String,
    pub cancel_reason: Option<String>,
    pub total_cents: Option<i64>,
    pub correlation_id: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    pub product_id: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: String,
    pub source: String,
}

/// What a stored idempotency key says about a repeated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// First use: the caller now owns the key and must create the order.
    Claimed,
    /// Used before with this body, and the order exists.
    Completed(OrderId),
    /// Used before with another body.
    Mismatch,
    /// The first request with this key has not finished yet.
    InFlight,
}

/// A claim on a key whose request has not completed within this long is considered abandoned (its
/// process died) and may be taken over.
const ABANDONED_AFTER_US: i64 = 30_000_000;

/// Claims `key` for `request` in its own short transaction, so a concurrent request with the same
/// key sees it in flight instead of waiting.
pub async fn claim_idempotency_key(
    db: &Db,
    key: &str,
    request: &str,
) -> Result<KeyState, sqlx::Error> {
    let now = now_us();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (idempotency_key, request, order_id, created_at_us) \
         VALUES ($1, $2, NULL, $3) ON CONFLICT DO NOTHING",
    )
    .bind(key)
    .bind(request)
    .bind(now)
    .execute(db.pool())
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(KeyState::Claimed);
    }
    let row = sqlx::query(
        "SELECT request, order_id, created_at_us FROM idempotency_keys WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_one(db.pool())
    .await?;
    let stored_request: String = row.try_get("request")?;
    let order_id: Option<String> = row.try_get("order_id")?;
    let created_at_us: i64 = row.try_get("created_at_us")?;
    if stored_request != request {
        return Ok(KeyState::Mismatch);
    }
    match order_id.as_deref().map(OrderId::parse) {
        Some(Ok(order_id)) => Ok(KeyState::Completed(order_id)),
        Some(Err(_)) => Err(sqlx::Error::Decode("stored order id is not a UUID".into())),
        None if now - created_at_us > ABANDONED_AFTER_US => {
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET created_at_us = $1 \
                 WHERE idempotency_key = $2 AND order_id IS NULL AND created_at_us = $3",
            )
            .bind(now)
            .bind(key)
            .bind(created_at_us)
            .execute(db.pool())
            .await?
            .rows_affected();
            Ok(if taken == 1 {
                KeyState::Claimed
            } else {
                KeyState::InFlight
            })
        }
        None => Ok(KeyState::InFlight),
    }
}

/// Gives a claimed key back after the order could not be created, so the caller may retry.
pub async fn release_idempotency_key(db: &Db, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE idempotency_key = $1 AND order_id IS NULL")
        .bind(key)
        .execute(db.pool())
        .await?;
    Ok(())
}

pub async fn complete_idempotency_key(
    tx: &mut Tx,
    key: &str,
    order_id: OrderId,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET order_id = $1 WHERE idempotency_key = $2")
        .bind(order_id.to_string())
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn insert_order(
    tx: &mut Tx,
    order_id: OrderId,
    order: &NewOrder,
    correlation_id: &str,
    deadline_at_us: i64,
) -> Result<(), sqlx::Error> {
    let now = now_us();
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, payment_method, status, correlation_id, \
         deadline_at_us, created_at_us, updated_at_us) VALUES ($1, $2, $3, 'pending', $4, $5, $6, $6)",
    )
    .bind(order_id.to_string())
    .bind(order.customer_id.as_str())
    .bind(order.payment_method.as_str())
    .bind(correlation_id)
    .bind(deadline_at_us)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    for (line_no, line) in order.items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, line_no, product_id, quantity) VALUES ($1, $2, $3, $4)",
        )
        .bind(order_id.to_string())
        .bind(line_no as i64)
        .bind(line.product_id.as_str())
        .bind(line.quantity.get())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The status of an order, read inside the transaction that will change it.
pub async fn status(tx: &mut Tx, order_id: OrderId) -> Result<Option<OrderStatus>, sqlx::Error> {
    let row = sqlx::query("SELECT status FROM orders WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let raw: String = row.try_get("status")?;
            OrderStatus::parse(&raw)
                .map(Some)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown order status '{raw}'").into()))
        }
    }
}

pub async fn record_total(tx: &mut Tx, order_id: OrderId, total: Money) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET total_cents = $1, updated_at_us = $2 WHERE order_id = $3")
        .bind(total.cents())
        .bind(now_us())
        .bind(order_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Moves a pending order to its final status. Returns `false` if it was no longer pending.
pub async fn finish(
    tx: &mut Tx,
    order_id: OrderId,
    status: OrderStatus,
    total: Option<Money>,
    reason: Option<CancelReason>,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE orders SET status = $1, cancel_reason = $2, total_cents = COALESCE($3, total_cents), \
         updated_at_us = $4 WHERE order_id = $5 AND status = 'pending'",
    )
    .bind(status.as_str())
    .bind(reason.map(|r| r.as_str()))
    .bind(total.map(|t| t.cents()))
    .bind(now_us())
    .bind(order_id.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Adds an event to the order's timeline; recording the same event twice changes nothing.
pub async fn record_timeline(
    tx: &mut Tx,
    meta: &EventMeta,
    event_type: &str,
    source: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_timeline (event_id, order_id, event_type, source, occurred_at_us, recorded_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(meta.event_id.to_string())
    .bind(meta.order_id.to_string())
    .bind(event_type)
    .bind(source)
    .bind(to_us(meta.occurred_at))
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn find_order(db: &Db, order_id: OrderId) -> Result<Option<OrderView>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT order_id, customer_id, payment_method, status, cancel_reason, total_cents, \
         correlation_id, created_at_us, updated_at_us FROM orders WHERE order_id = $1",
    )
    .bind(order_id.to_string())
    .fetch_optional(db.pool())
    .await?
    else {
        return Ok(None);
    };
    let items = sqlx::query(
        "SELECT product_id, quantity FROM order_items WHERE order_id = $1 ORDER BY line_no",
    )
    .bind(order_id.to_string())
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|item| {
        Ok(ItemView {
            product_id: item.try_get("product_id")?,
            quantity: item.try_get("quantity")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(OrderView {
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        items,
        payment_method: row.try_get("payment_method")?,
        status: row.try_get("status")?,
        cancel_reason: row.try_get("cancel_reason")?,
        total_cents: row.try_get("total_cents")?,
        correlation_id: row.try_get("correlation_id")?,
        created_at: format_us(row.try_get("created_at_us")?),
        updated_at: format_us(row.try_get("updated_at_us")?),
    }))
}

/// The order's timeline, oldest first (by the time each event happened, then by arrival).
pub async fn timeline(db: &Db, order_id: OrderId) -> Result<Vec<TimelineEntry>, sqlx::Error> {
    sqlx::query(
        "SELECT event_id, event_type, source, occurred_at_us FROM order_timeline \
         WHERE order_id = $1 ORDER BY occurred_at_us, recorded_at_us",
    )
    .bind(order_id.to_string())
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|row| {
        Ok(TimelineEntry {
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            occurred_at: format_us(row.try_get("occurred_at_us")?),
            source: row.try_get("source")?,
        })
    })
    .collect()
}

/// A pending order whose saga deadline has passed.
#[derive(Debug, Clone)]
pub struct Overdue {
    pub order_id: OrderId,
    pub correlation_id: String,
    /// The order's `orders.created` event: what the timeout cancellation is caused by.
    pub created_event_id: Option<EventId>,
}

/// Pending orders past their deadline, most overdue first.
pub async fn overdue_orders(db: &Db, now_us: i64, limit: i64) -> Result<Vec<Overdue>, sqlx::Error> {
    sqlx::query(
        "SELECT o.order_id, o.correlation_id, t.event_id FROM orders o \
         LEFT JOIN order_timeline t ON t.order_id = o.order_id AND t.event_type = 'orders.created' \
         WHERE o.status = 'pending' AND o.deadline_at_us <= $1 ORDER BY o.deadline_at_us LIMIT $2",
    )
    .bind(now_us)
    .bind(limit)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|row| {
        let order_id: String = row.try_get("order_id")?;
        let created: Option<String> = row.try_get("event_id")?;
        Ok(Overdue {
            order_id: OrderId::parse(&order_id)
                .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?,
            correlation_id: row.try_get("correlation_id")?,
            created_event_id: created.as_deref().and_then(EventId::parse),
        })
    })
    .collect()
}

/// The earliest deadline of any pending order, to know how long the sweeper may sleep.
pub async fn next_deadline(db: &Db) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query("SELECT MIN(deadline_at_us) AS next FROM orders WHERE status = 'pending'")
        .fetch_one(db.pool())
        .await?
        .try_get("next")
}
