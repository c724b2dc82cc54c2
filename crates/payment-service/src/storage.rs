//! All of payment-service's SQL: the `payments` table.
//!
//! Concurrency without `FOR UPDATE`: every write that depends on what a row held is a conditional UPDATE
//! (`WHERE status = ... AND attempts = ...`), and `attempts` doubles as the row's version, because the
//! worker bumps it before each gateway call. On PostgreSQL the upserts and the cancel path's first
//! UPDATE also take the row lock, so the rest of their transaction sees the row as it stays.

use crate::domain::{Join, Status};
use contracts::events::OrderCreated;
use contracts::{EventMeta, OrderId, Priority};
use platform::db::to_us;
use platform::db::{Backend, Db, Executor, SqlError, Tx, query};

/// One row of `payments`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Payment {
    pub order_id: OrderId,
    pub payment_method: Option<String>,
    pub amount_cents: Option<i64>,
    pub deadline_at_us: Option<i64>,
    pub status: Status,
    pub charge_id: Option<String>,
    pub attempts: i64,
    pub correlation_id: String,
    pub cause_event_id: Option<String>,
    /// The `traceparent` of the span that handled the cause event.
    pub cause_traceparent: Option<String>,
    pub last_error: Option<String>,
    /// `None` for an order from before orders named a currency: US dollars.
    pub currency: Option<String>,
    /// The order's lane: the worker takes express payments first.
    pub priority: Priority,
}

/// A status change the worker makes after a gateway answer. It applies only if the row still is in
/// `from` with `attempts` calls, i.e. nobody (a cancellation, another worker) moved it meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub from: Status,
    pub to: Status,
    pub attempts: i64,
    /// Kept when `None`: a charge id, once learned, is never forgotten.
    pub charge_id: Option<&'a str>,
    pub last_error: Option<&'a str>,
}

/// Leases due payments (see [`lease_due`]); `$lock` ends the SELECT of the rows to lease, which runs
/// once: as a subquery, PostgreSQL may run it again for the UPDATE and, skipping other rows on the
/// second run, lease more than the limit. What leasing sets: the lease's end (`$5`), and one more call
/// counted (`$6` = 1) unless the step will make none: a charge whose deadline comes before a call made
/// now could be answered (`$4`) gives up without one.
macro_rules! lease_statement {
    ($lock:literal) => {
        concat!(
            "WITH due AS MATERIALIZED (SELECT order_id FROM payments \
             WHERE status IN ('charging', 'refunding') AND next_attempt_at_us <= $1 \
             AND ($3 IS NULL OR priority = $3) \
             ORDER BY priority = 'express' DESC, next_attempt_at_us, order_id LIMIT $2",
            $lock,
            ") UPDATE payments SET attempts = attempts + CASE WHEN status = 'charging' \
             AND (deadline_at_us IS NULL OR deadline_at_us < $4) THEN 0 ELSE $6 END, \
             next_attempt_at_us = $5, updated_at_us = $1 \
             WHERE status IN ('charging', 'refunding') AND next_attempt_at_us <= $1 \
             AND order_id IN (SELECT order_id FROM due) RETURNING ",
            payment_columns!()
        )
    };
}

/// The columns a [`Payment`] is read from, as a literal so queries stay `&'static str`.
macro_rules! payment_columns {
    () => {
        "order_id, payment_method, amount_cents, deadline_at_us, status, charge_id, attempts, \
         correlation_id, cause_event_id, cause_traceparent, last_error, currency, priority"
    };
}

/// Records the payment intent of `orders.created` (method, currency, deadline); the first intent
/// recorded stays.
pub async fn record_intent(
    tx: &mut Tx,
    meta: &EventMeta,
    created: &OrderCreated,
    now: i64,
) -> Result<Join, SqlError> {
    let row: JoinRow = query(
        "INSERT INTO payments (order_id, payment_method, deadline_at_us, status, attempts, \
         next_attempt_at_us, correlation_id, created_at_us, updated_at_us, currency, priority) \
         VALUES ($1, $2, $3, 'waiting', 0, $4, $5, $4, $4, $6, $7) \
         ON CONFLICT (order_id) DO UPDATE SET \
         payment_method = COALESCE(payments.payment_method, excluded.payment_method), \
         deadline_at_us = COALESCE(payments.deadline_at_us, excluded.deadline_at_us), \
         currency = COALESCE(payments.currency, excluded.currency), \
         updated_at_us = excluded.updated_at_us \
         RETURNING status, payment_method, amount_cents",
    )
    .bind(meta.order_id.to_string())
    .bind(created.payment_method.as_str().to_owned())
    .bind(to_us(created.deadline_at))
    .bind(now)
    .bind(meta.correlation_id.as_str().to_owned())
    .bind(created.currency.as_str().to_owned())
    .bind(meta.priority.as_str())
    .fetch_one(tx.conn())
    .await?;
    Ok(row.into())
}

/// Records the amount of `inventory.reserved`; the first amount recorded stays.
pub async fn record_amount(
    tx: &mut Tx,
    meta: &EventMeta,
    amount_cents: i64,
    now: i64,
) -> Result<Join, SqlError> {
    let row: JoinRow = query(
        "INSERT INTO payments (order_id, amount_cents, status, attempts, next_attempt_at_us, \
         correlation_id, created_at_us, updated_at_us, priority) \
         VALUES ($1, $2, 'waiting', 0, $3, $4, $3, $3, $5) \
         ON CONFLICT (order_id) DO UPDATE SET \
         amount_cents = COALESCE(payments.amount_cents, excluded.amount_cents), \
         updated_at_us = excluded.updated_at_us \
         RETURNING status, payment_method, amount_cents",
    )
    .bind(meta.order_id.to_string())
    .bind(amount_cents)
    .bind(now)
    .bind(meta.correlation_id.as_str().to_owned())
    .bind(meta.priority.as_str())
    .fetch_one(tx.conn())
    .await?;
    Ok(row.into())
}

/// Hands a completed join to the charge worker, due now. `cause` is the event that completed it.
pub async fn start_charging(tx: &mut Tx, cause: &EventMeta, now: i64) -> Result<bool, SqlError> {
    let updated = query(
        "UPDATE payments SET status = 'charging', cause_event_id = $2, cause_traceparent = $4, \
         next_attempt_at_us = $3, updated_at_us = $3 WHERE order_id = $1 AND status = 'waiting' \
         AND payment_method IS NOT NULL AND amount_cents IS NOT NULL",
    )
    .bind(cause.order_id.to_string())
    .bind(cause.event_id.to_string())
    .bind(now)
    .bind(cause.trace.map(|trace| trace.to_string()))
    .execute(tx.conn())
    .await?;
    Ok(updated == 1)
}

/// Leaves a `cancelled` row for an order not seen yet; `false` if the order already has a row.
pub async fn insert_tombstone(tx: &mut Tx, meta: &EventMeta, now: i64) -> Result<bool, SqlError> {
    let inserted = query(
        "INSERT INTO payments (order_id, status, attempts, next_attempt_at_us, correlation_id, \
         cause_event_id, created_at_us, updated_at_us, priority) \
         VALUES ($1, 'cancelled', 0, $2, $3, $4, $2, $2, $5) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(meta.order_id.to_string())
    .bind(now)
    .bind(meta.correlation_id.as_str().to_owned())
    .bind(meta.event_id.to_string())
    .bind(meta.priority.as_str())
    .execute(tx.conn())
    .await?;
    Ok(inserted == 1)
}

/// The row's status and attempts, locked for the rest of the transaction on PostgreSQL (the UPDATE
/// takes the row lock that `SELECT ... FOR UPDATE` would, on both backends).
pub async fn lock(
    tx: &mut Tx,
    order_id: OrderId,
    now: i64,
) -> Result<Option<(Status, i64)>, SqlError> {
    query("UPDATE payments SET updated_at_us = $2 WHERE order_id = $1 RETURNING status, attempts")
        .bind(order_id.to_string())
        .bind(now)
        .fetch_optional(tx.conn())
        .await
}

/// Ends a payment that never reached the gateway.
pub async fn cancel(tx: &mut Tx, order_id: OrderId, now: i64) -> Result<bool, SqlError> {
    let updated = query(
        "UPDATE payments SET status = 'cancelled', updated_at_us = $2 \
         WHERE order_id = $1 AND (status = 'waiting' OR (status = 'charging' AND attempts = 0))",
    )
    .bind(order_id.to_string())
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(updated == 1)
}

/// Asks the worker to refund what was (or may have been) charged; `cause` is the cancellation. A call
/// in flight keeps its lease: the worker picks the row up again once that call is over.
pub async fn start_refund(tx: &mut Tx, cause: &EventMeta, now: i64) -> Result<bool, SqlError> {
    let updated = query(
        "UPDATE payments SET status = 'refunding', cause_event_id = $2, cause_traceparent = $4, \
         updated_at_us = $3, \
         next_attempt_at_us = CASE WHEN next_attempt_at_us > $3 THEN next_attempt_at_us ELSE $3 END \
         WHERE order_id = $1 AND status IN ('charging', 'succeeded')",
    )
    .bind(cause.order_id.to_string())
    .bind(cause.event_id.to_string())
    .bind(now)
    .bind(cause.trace.map(|trace| trace.to_string()))
    .execute(tx.conn())
    .await?;
    Ok(updated == 1)
}

pub async fn find(db: &Db, order_id: OrderId) -> Result<Option<Payment>, SqlError> {
    query(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE order_id = $1"
    ))
    .bind(order_id.to_string())
    .fetch_optional(db.pool())
    .await
}

/// What [`lease_due`] leases, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub now: i64,
    /// When a call started now would be answered at the latest: a charge whose deadline comes
    /// earlier gets no call (its step gives up), so its lease counts none.
    pub answered_by: i64,
    /// The rows stay the worker's until then: no other lane or instance takes them meanwhile, and
    /// a process that dies mid-call leaves them due again after it.
    pub until: i64,
    /// At most this many payments.
    pub limit: usize,
    /// Only payments of this priority, if given; otherwise express ones first.
    pub only: Option<Priority>,
    /// Whether each leased payment that gets a call has it counted (`attempts + 1`, the row's
    /// version): only when the breaker gave a permit for every payment leased.
    pub count_calls: bool,
}

/// Leases the longest-due payments the worker owns (express ones first) for one step each, in one
/// statement, and returns them as leased. A payment that will get a gateway call has the call counted
/// before it is made, so a crash during it leaves a payment that may have charged, which a cancellation
/// then settles by lookup (ADR 5). On PostgreSQL rows another instance is leasing are skipped, and the
/// outer conditions are checked again on the row as it is once its lock is taken: a row leased by
/// someone else meanwhile is no longer due and is left out.
pub async fn lease_due(on: Executor<'_>, lease: Lease) -> Result<Vec<Payment>, SqlError> {
    let sql = match on.backend() {
        Backend::Sqlite => lease_statement!(""),
        Backend::Postgres => lease_statement!(" FOR UPDATE SKIP LOCKED"),
    };
    let mut leased: Vec<Payment> = query(sql)
        .bind(lease.now)
        .bind(i64::try_from(lease.limit).unwrap_or(i64::MAX))
        .bind(lease.only.map(|priority| priority.as_str()))
        .bind(lease.answered_by)
        .bind(lease.until)
        .bind(i64::from(lease.count_calls))
        .fetch_all(on)
        .await?;
    // RETURNING follows no ORDER BY: express ones first, then by order id (time-ordered), the order
    // the calls start in.
    leased.sort_by_key(|payment| (payment.priority != Priority::Express, payment.order_id));
    Ok(leased)
}

#[derive(serde::Deserialize)]
struct Waiting {
    waiting: i64,
}

/// Payments of `lane` waiting for the worker (to be charged or refunded), counted up to `at_most`:
/// the length of the worker's queue, as far as the consumers need to know it.
pub async fn payments_waiting(db: &Db, lane: Priority, at_most: i64) -> Result<i64, SqlError> {
    let counted: Waiting = query(
        "SELECT COUNT(*) AS waiting FROM (SELECT 1 FROM payments \
         WHERE status IN ('charging', 'refunding') AND priority = $1 LIMIT $2) AS queue",
    )
    .bind(lane.as_str())
    .bind(at_most)
    .fetch_one(db.pool())
    .await?;
    Ok(counted.waiting)
}

/// Applies `change` if the row is still as the worker left it; `true` if it was applied.
pub async fn apply(
    tx: &mut Tx,
    order_id: OrderId,
    change: Change<'_>,
    now: i64,
) -> Result<bool, SqlError> {
    let updated = query(
        "UPDATE payments SET status = $4, charge_id = COALESCE($5, charge_id), last_error = $6, \
         next_attempt_at_us = $7, updated_at_us = $7 \
         WHERE order_id = $1 AND status = $2 AND attempts = $3",
    )
    .bind(order_id.to_string())
    .bind(change.from.as_str())
    .bind(change.attempts)
    .bind(change.to.as_str())
    .bind(change.charge_id.map(str::to_owned))
    .bind(change.last_error.map(str::to_owned))
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(updated == 1)
}

/// Schedules the next call after a failed one, whatever the worker-owned status is now (a cancellation
/// may have turned `charging` into `refunding` during the call; the pause applies to that too).
pub async fn schedule_retry(
    tx: &mut Tx,
    order_id: OrderId,
    attempts: i64,
    next_attempt_at_us: i64,
    error: &str,
    now: i64,
) -> Result<bool, SqlError> {
    let updated = query(
        "UPDATE payments SET last_error = $3, next_attempt_at_us = $4, updated_at_us = $5 \
         WHERE order_id = $1 AND attempts = $2 AND status IN ('charging', 'refunding')",
    )
    .bind(order_id.to_string())
    .bind(attempts)
    .bind(error.to_owned())
    .bind(next_attempt_at_us)
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(updated == 1)
}

/// Makes a payment due again at `next_attempt_at_us` without counting a call, because none was made
/// (the gateway's breaker is open); `false` if the row changed since it was read.
pub async fn postpone(
    tx: &mut Tx,
    payment: &Payment,
    next_attempt_at_us: i64,
    now: i64,
) -> Result<bool, SqlError> {
    let updated = query(
        "UPDATE payments SET next_attempt_at_us = $4, updated_at_us = $5 \
         WHERE order_id = $1 AND status = $2 AND attempts = $3",
    )
    .bind(payment.order_id.to_string())
    .bind(payment.status.as_str())
    .bind(payment.attempts)
    .bind(next_attempt_at_us)
    .bind(now)
    .execute(tx.conn())
    .await?;
    Ok(updated == 1)
}

/// What recording an input returns: enough to tell whether the join is complete.
#[derive(serde::Deserialize)]
struct JoinRow {
    status: Status,
    payment_method: Option<String>,
    amount_cents: Option<i64>,
}

impl From<JoinRow> for Join {
    fn from(row: JoinRow) -> Join {
        Join {
            status: row.status,
            has_intent: row.payment_method.is_some(),
            has_amount: row.amount_cents.is_some(),
        }
    }
}

/// A payment as `orderflow verify` judges it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PaymentOutcome {
    pub order_id: String,
    pub status: Status,
    pub amount_cents: Option<i64>,
}

/// Every payment's outcome.
pub async fn payment_outcomes(db: &Db) -> Result<Vec<PaymentOutcome>, SqlError> {
    query("SELECT order_id, status, amount_cents FROM payments")
        .fetch_all(db.pool())
        .await
}
