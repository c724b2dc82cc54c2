//! Every SQL statement of order-service. Rows come back as the `*Row` structs below; `api` turns them
//! into what the HTTP API shows.

use crate::domain::{NewOrder, OrderStatus};
use contracts::events::CancelReason;
use contracts::{CorrelationId, Envelope, EventId, Money, OrderId, Priority, TraceContext};
use platform::db::{Db, InsertAtCommit, SqlError, Tx, now_us, query, to_us};
use platform::retention::Expiring;
use std::time::Duration;

/// One row of `orders`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct OrderRow {
    pub order_id: String,
    pub customer_id: String,
    pub payment_method: String,
    pub status: String,
    pub cancel_reason: Option<String>,
    pub total_cents: Option<i64>,
    pub correlation_id: String,
    pub traceparent: Option<String>,
    pub priority: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

/// One line of an order.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ItemRow {
    pub product_id: String,
    pub quantity: i64,
}

/// One event of an order's timeline.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TimelineRow {
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub occurred_at_us: i64,
    pub recorded_at_us: i64,
}

/// A claim on an idempotency key: only the request holding it may complete or release the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(String);

/// What a stored idempotency key says about a repeated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// First use (or the first request was abandoned): the caller now owns the key and must create
    /// the order, completing the key with this token.
    Claimed(ClaimToken),
    /// Used before with this body, and the order exists.
    Completed(OrderId),
    /// Used before with another body.
    Mismatch,
    /// The first request with this key has not finished yet.
    InFlight,
}

/// A claim on a key whose request has not completed within this long is considered abandoned (its
/// process died) and may be taken over.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize)]
struct KeyRow {
    request: String,
    order_id: Option<String>,
    created_at_us: i64,
    claim_token: String,
}

/// Idempotency keys are forgotten `ttl` after they were claimed (`ORDERFLOW_IDEMPOTENCY_KEY_TTL`).
pub fn expiring_idempotency_keys(ttl: Duration) -> Expiring {
    Expiring {
        table: "idempotency_keys",
        key: &["idempotency_key"],
        age_column: "created_at_us",
        keep: ttl,
    }
}

/// Stores `key` as used by `request` for `order_id`, in the order's own transaction: the common case
/// of a key never seen before costs no transaction of its own. `false` when the key is already
/// stored (used before, or claimed by a request still in flight): nothing was written, and the
/// caller must roll back and ask [`claim_idempotency_key`] what the stored key says. A concurrent
/// request with the same key waits for this transaction and then finds the key completed.
pub async fn store_new_idempotency_key(
    tx: &mut Tx,
    key: &str,
    request: &str,
    order_id: OrderId,
    now: i64,
) -> Result<bool, SqlError> {
    let inserted = query(
        "INSERT INTO idempotency_keys (idempotency_key, request, order_id, created_at_us) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(key.to_owned())
    .bind(request.to_owned())
    .bind(order_id.to_string())
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(inserted == 1)
}

/// Claims `key` for `request` at `now` (Unix µs) in its own short transaction, for a key already
/// stored (see [`store_new_idempotency_key`]): it answers what the stored key says, or takes over a
/// claim abandoned by a request that died before completing it.
pub async fn claim_idempotency_key(
    db: &Db,
    key: &str,
    request: &str,
    now: i64,
) -> Result<KeyState, SqlError> {
    let token = uuid::Uuid::new_v4().to_string();
    let inserted = query(
        "INSERT INTO idempotency_keys (idempotency_key, request, order_id, created_at_us, claim_token) \
         VALUES ($1, $2, NULL, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(key.to_owned())
    .bind(request.to_owned())
    .bind(now)
    .bind(token.clone())
    .execute(db.pool())
    .await?;
    if inserted == 1 {
        return Ok(KeyState::Claimed(ClaimToken(token)));
    }
    let stored: KeyRow = query(
        "SELECT request, order_id, created_at_us, claim_token FROM idempotency_keys \
         WHERE idempotency_key = $1",
    )
    .bind(key.to_owned())
    .fetch_one(db.pool())
    .await?;
    if stored.request != request {
        return Ok(KeyState::Mismatch);
    }
    let abandoned_after = platform::db::duration_us(ABANDONED_AFTER);
    match stored.order_id.as_deref().map(OrderId::parse) {
        Some(Ok(order_id)) => Ok(KeyState::Completed(order_id)),
        Some(Err(_)) => Err(SqlError::Decode("stored order id is not a UUID".into())),
        None if now - stored.created_at_us > abandoned_after => {
            // Taking over replaces the token: the abandoned request, should it wake up after all,
            // can then neither complete nor release the key.
            let taken = query(
                "UPDATE idempotency_keys SET created_at_us = $1, claim_token = $2 \
                 WHERE idempotency_key = $3 AND order_id IS NULL AND claim_token = $4",
            )
            .bind(now)
            .bind(token.clone())
            .bind(key.to_owned())
            .bind(stored.claim_token)
            .execute(db.pool())
            .await?;
            Ok(if taken == 1 {
                KeyState::Claimed(ClaimToken(token))
            } else {
                KeyState::InFlight
            })
        }
        None => Ok(KeyState::InFlight),
    }
}

/// What a key stands for, without claiming it: `None` when it was never used (or its first request
/// gave it back), else `Completed`, `Mismatch` or `InFlight` as [`claim_idempotency_key`] would
/// answer. For a request that may not create anything (admission control refuses new orders).
pub async fn look_up_idempotency_key(
    db: &Db,
    key: &str,
    request: &str,
) -> Result<Option<KeyState>, SqlError> {
    let stored: Option<KeyRow> = query(
        "SELECT request, order_id, created_at_us, claim_token FROM idempotency_keys \
         WHERE idempotency_key = $1",
    )
    .bind(key.to_owned())
    .fetch_optional(db.pool())
    .await?;
    let Some(stored) = stored else {
        return Ok(None);
    };
    if stored.request != request {
        return Ok(Some(KeyState::Mismatch));
    }
    match stored.order_id.as_deref().map(OrderId::parse) {
        Some(Ok(order_id)) => Ok(Some(KeyState::Completed(order_id))),
        Some(Err(_)) => Err(SqlError::Decode("stored order id is not a UUID".into())),
        None => Ok(Some(KeyState::InFlight)),
    }
}

/// Gives a claimed key back after the order could not be created, so the caller may retry. Only the
/// claim's own request can: a request that took the key over keeps it.
pub async fn release_idempotency_key(
    db: &Db,
    key: &str,
    token: &ClaimToken,
) -> Result<(), SqlError> {
    query(
        "DELETE FROM idempotency_keys \
         WHERE idempotency_key = $1 AND claim_token = $2 AND order_id IS NULL",
    )
    .bind(key.to_owned())
    .bind(token.0.clone())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Records the order created under a claimed key, in the order's own transaction. `false` when the
/// claim is no longer this request's (another request took it over): the caller must roll back.
pub async fn complete_idempotency_key(
    tx: &mut Tx,
    key: &str,
    token: &ClaimToken,
    order_id: OrderId,
) -> Result<bool, SqlError> {
    let completed = query(
        "UPDATE idempotency_keys SET order_id = $1 \
         WHERE idempotency_key = $2 AND claim_token = $3 AND order_id IS NULL",
    )
    .bind(order_id.to_string())
    .bind(key.to_owned())
    .bind(token.0.clone())
    .execute(tx.conn())
    .await?;
    Ok(completed == 1)
}

/// The orders' lines, inserted as the transaction commits: the lines of every order accepted together
/// in one statement. Nothing reads them inside the transaction that writes them.
static ORDER_ITEMS: InsertAtCommit<4> = InsertAtCommit::new(
    "order_items",
    ["order_id", "line_no", "product_id", "quantity"],
    "",
);

/// Inserts a new order; its lines go in as the transaction commits.
pub async fn insert_order(
    tx: &mut Tx,
    order_id: OrderId,
    order: &NewOrder,
    correlation_id: &CorrelationId,
    trace: TraceContext,
    deadline_at_us: i64,
) -> Result<(), SqlError> {
    let now = now_us();
    query(
        "INSERT INTO orders (order_id, customer_id, payment_method, status, correlation_id, \
         traceparent, deadline_at_us, created_at_us, updated_at_us, priority) \
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $7, $8)",
    )
    .bind(order_id.to_string())
    .bind(order.customer_id.as_str().to_owned())
    .bind(order.payment_method.as_str().to_owned())
    .bind(correlation_id.as_str().to_owned())
    .bind(trace.to_string())
    .bind(deadline_at_us)
    .bind(now)
    .bind(order.priority.as_str())
    .execute(tx.conn())
    .await?;
    for (line_no, line) in order.items.iter().enumerate() {
        tx.insert_at_commit(
            &ORDER_ITEMS,
            [
                order_id.to_string().into(),
                (line_no as i64).into(),
                line.product_id.as_str().to_owned().into(),
                line.quantity.get().into(),
            ],
        );
    }
    Ok(())
}

/// The status of an order, read inside the transaction that will change it.
pub async fn status(tx: &mut Tx, order_id: OrderId) -> Result<Option<OrderStatus>, SqlError> {
    let raw: Option<String> = query("SELECT status FROM orders WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_optional(tx.conn())
        .await?;
    raw.map(|raw| {
        OrderStatus::parse(&raw)
            .ok_or_else(|| SqlError::Decode(format!("unknown order status '{raw}'")))
    })
    .transpose()
}

/// `pending`, bound as a parameter in the writes that find one order by its id and check it is
/// pending. Written into the SQL, `status = 'pending'` matches the predicate of the partial index
/// `orders_pending_deadline`, and on PostgreSQL a plan made while the table's statistics were those
/// of a young table scanned that index, every pending order, for the one (over a third of these
/// updates in a 20 s run from an empty database, at a cost that grows with the backlog). A
/// parameter's value is unknown to the plan PostgreSQL keeps, which then can only take the primary
/// key.
const PENDING_BOUND: &str = OrderStatus::Pending.as_str();

/// Records the order's total while it is pending; returns `false` if it was not (ended, or unknown).
/// The status is checked by the write itself: on PostgreSQL the two consumers run concurrent
/// transactions, and an order cancelled by the other one must keep the time it ended (`orderflow
/// verify` compares it with the gateway's charges).
pub async fn record_total(tx: &mut Tx, order_id: OrderId, total: Money) -> Result<bool, SqlError> {
    let changed = query(
        "UPDATE orders SET total_cents = $1, updated_at_us = $2 \
         WHERE order_id = $3 AND status = $4",
    )
    .bind(total.cents())
    .bind(now_us())
    .bind(order_id.to_string())
    .bind(PENDING_BOUND)
    .execute(tx.conn())
    .await?;
    Ok(changed == 1)
}

/// Moves a pending order to its final status. Returns how long its saga took (from acceptance), or
/// `None` if it was not pending (ended, or unknown). `updated_at_us` then records when the order ended, which `orderflow verify` relies on.
pub async fn finish(
    tx: &mut Tx,
    order_id: OrderId,
    status: OrderStatus,
    total: Option<Money>,
    reason: Option<CancelReason>,
) -> Result<Option<Duration>, SqlError> {
    let now = now_us();
    let accepted_at_us: Option<i64> = query(
        "UPDATE orders SET status = $1, cancel_reason = $2, total_cents = COALESCE($3, total_cents), \
         updated_at_us = $4 WHERE order_id = $5 AND status = $6 RETURNING created_at_us",
    )
    .bind(status.as_str())
    .bind(reason.map(|r| r.as_str()))
    .bind(total.map(|t| t.cents()))
    .bind(now)
    .bind(order_id.to_string())
    .bind(PENDING_BOUND)
    .fetch_optional(tx.conn())
    .await?;
    Ok(accepted_at_us
        .map(|accepted| Duration::from_micros(u64::try_from(now - accepted).unwrap_or(0))))
}

/// The orders' timelines, their entries inserted as the transaction commits; recording the same
/// event twice changes nothing.
static TIMELINE: InsertAtCommit<6> = InsertAtCommit::new(
    "order_timeline",
    [
        "event_id",
        "order_id",
        "event_type",
        "source",
        "occurred_at_us",
        "recorded_at_us",
    ],
    "ON CONFLICT DO NOTHING",
);

/// Adds events to their orders' timelines when the transaction commits, with every other entry the
/// transaction records (a batch of events, and the events they caused, in one statement). Nothing
/// reads a timeline inside the transactions that write it.
pub fn record_timeline(tx: &mut Tx, events: &[&Envelope]) {
    let now = now_us();
    for envelope in events {
        tx.insert_at_commit(
            &TIMELINE,
            [
                envelope.meta.event_id.to_string().into(),
                envelope.meta.order_id.to_string().into(),
                envelope.event.event_type().into(),
                envelope.event.producer().into(),
                to_us(envelope.meta.occurred_at).into(),
                now.into(),
            ],
        );
    }
}

/// The order and its lines, if it exists.
pub async fn find_order(
    db: &Db,
    order_id: OrderId,
) -> Result<Option<(OrderRow, Vec<ItemRow>)>, SqlError> {
    let Some(order) = query(
        "SELECT order_id, customer_id, payment_method, status, cancel_reason, total_cents, \
         correlation_id, traceparent, priority, created_at_us, updated_at_us FROM orders \
         WHERE order_id = $1",
    )
    .bind(order_id.to_string())
    .fetch_optional(db.pool())
    .await?
    else {
        return Ok(None);
    };
    let items =
        query("SELECT product_id, quantity FROM order_items WHERE order_id = $1 ORDER BY line_no")
            .bind(order_id.to_string())
            .fetch_all(db.pool())
            .await?;
    Ok(Some((order, items)))
}

/// Whether the order exists.
pub async fn order_exists(db: &Db, order_id: OrderId) -> Result<bool, SqlError> {
    let found: Option<String> = query("SELECT order_id FROM orders WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_optional(db.pool())
        .await?;
    Ok(found.is_some())
}

/// The order's timeline, oldest first (by the time each event happened, then by arrival).
pub async fn timeline(db: &Db, order_id: OrderId) -> Result<Vec<TimelineRow>, SqlError> {
    query(
        "SELECT event_id, event_type, source, occurred_at_us, recorded_at_us FROM order_timeline \
         WHERE order_id = $1 ORDER BY occurred_at_us, recorded_at_us",
    )
    .bind(order_id.to_string())
    .fetch_all(db.pool())
    .await
}

/// A pending order whose saga deadline has passed.
#[derive(Debug, Clone)]
pub struct Overdue {
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    /// The order's `orders.created` event: what the timeout cancellation is caused by.
    pub created_event_id: Option<EventId>,
    /// The span of the request that placed the order.
    pub placed_by: Option<TraceContext>,
    /// The order's lane, which its cancellation travels in.
    pub priority: Priority,
}

#[derive(serde::Deserialize)]
struct OverdueRow {
    order_id: String,
    correlation_id: String,
    event_id: Option<String>,
    traceparent: Option<String>,
    priority: String,
}

/// Pending orders past their deadline, most overdue first.
pub async fn overdue_orders(db: &Db, now_us: i64, limit: i64) -> Result<Vec<Overdue>, SqlError> {
    let rows: Vec<OverdueRow> = query(
        "SELECT o.order_id, o.correlation_id, t.event_id, o.traceparent, o.priority FROM orders o \
         LEFT JOIN order_timeline t ON t.order_id = o.order_id AND t.event_type = 'orders.created' \
         WHERE o.status = 'pending' AND o.deadline_at_us <= $1 ORDER BY o.deadline_at_us LIMIT $2",
    )
    .bind(now_us)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter()
        .map(|row| {
            let corrupt = |e: contracts::ValueError| SqlError::Decode(e.to_string());
            Ok(Overdue {
                order_id: OrderId::parse(&row.order_id).map_err(corrupt)?,
                // Orders stored before correlation ids were checked everywhere may hold any text;
                // such an order still gets its cancellation, under a fresh id.
                correlation_id: CorrelationId::parse(&row.correlation_id).unwrap_or_default(),
                created_event_id: row.event_id.as_deref().and_then(EventId::parse),
                placed_by: row
                    .traceparent
                    .as_deref()
                    .and_then(|traceparent| TraceContext::parse(traceparent).ok()),
                priority: row.priority.parse().map_err(corrupt)?,
            })
        })
        .collect()
}

/// The earliest deadline of any pending order, to know how long the sweeper may sleep.
pub async fn next_deadline(db: &Db) -> Result<Option<i64>, SqlError> {
    query("SELECT MIN(deadline_at_us) FROM orders WHERE status = 'pending'")
        .fetch_one(db.pool())
        .await
}

/// An order as `orderflow verify` judges it: how it stands, for what total, and when it last changed
/// (for a final order, when it ended: nothing changes it after).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct OrderOutcome {
    pub order_id: String,
    pub status: OrderStatus,
    pub total_cents: Option<i64>,
    pub updated_at_us: i64,
}

/// Every order's outcome, by id.
pub async fn order_outcomes(db: &Db) -> Result<Vec<OrderOutcome>, SqlError> {
    query("SELECT order_id, status, total_cents, updated_at_us FROM orders ORDER BY order_id")
        .fetch_all(db.pool())
        .await
}

/// How many events of one type an order's timeline holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct TimelineCount {
    pub order_id: String,
    pub event_type: String,
    pub count: i64,
}

/// Every order's events counted by type. Every event of every saga passes order-service (it
/// publishes the orders.* ones and consumes the others) and stays in the timeline, which retention
/// leaves alone: the record of what each saga saw.
pub async fn timeline_counts(db: &Db) -> Result<Vec<TimelineCount>, SqlError> {
    query(
        "SELECT order_id, event_type, COUNT(*) AS count FROM order_timeline \
         GROUP BY order_id, event_type",
    )
    .fetch_all(db.pool())
    .await
}
