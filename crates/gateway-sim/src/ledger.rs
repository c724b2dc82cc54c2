//! The ledger: every charge and refund the gateway has answered, persisted so a restarted gateway still
//! gives the same answer to a retried request. All of the simulator's SQL lives here.
//!
//! Idempotency is race-free by construction: a request inserts under its key with
//! `ON CONFLICT DO NOTHING` and then reads back whatever the key holds, so two concurrent requests with
//! one key agree on a single row without any locking.

use crate::domain::{ChargeRequest, ChargeStatus, Decision, IdempotencyKey};
use platform::db::{Db, now_us};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

/// One row of `charges`, with whether it has been refunded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub id: String,
    pub idempotency_key: String,
    pub amount_cents: i64,
    pub payment_method: String,
    pub status: ChargeStatus,
    pub decline_code: Option<String>,
    pub order_id: Option<String>,
    pub refunded: bool,
    pub created_at_us: i64,
}

/// One row of `refunds`, with the order of the refunded charge for searching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: String,
    pub idempotency_key: String,
    pub charge_id: String,
    pub amount_cents: i64,
    pub order_id: Option<String>,
    pub created_at_us: i64,
}

/// What storing a refund request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundRecorded {
    Created(Refund),
    /// The charge was refunded before (under this key or another one): the earlier refund stands.
    Existing(Refund),
    /// The key was used for a refund of a different charge.
    KeyReused,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    db: Db,
}

impl Ledger {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores a new charge under `key` unless the key already holds one, and returns the charge the key
    /// holds afterwards with `true` if it is the one just stored.
    pub async fn record_charge(
        &self,
        key: &IdempotencyKey,
        request: &ChargeRequest,
        decision: Decision,
    ) -> Result<(Charge, bool), sqlx::Error> {
        let (status, decline_code) = match decision {
            Decision::Succeed => (ChargeStatus::Succeeded, None),
            Decision::Decline { decline_code } => {
                (ChargeStatus::Declined, Some(decline_code.to_owned()))
            }
        };
        let inserted = sqlx::query(
            "INSERT INTO charges (charge_id, idempotency_key, amount_cents, payment_method, status, \
             decline_code, order_id, created_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(format!("ch_{}", Uuid::now_v7().simple()))
        .bind(key.as_str().to_owned())
        .bind(request.amount_cents)
        .bind(request.payment_method.as_str().to_owned())
        .bind(status.as_str())
        .bind(decline_code)
        .bind(request.order_id.clone())
        .bind(now_us())
        .execute(self.db.pool())
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query(
            "SELECT c.charge_id, c.idempotency_key, c.amount_cents, c.payment_method, c.status, \
             c.decline_code, c.order_id, c.created_at_us, r.refund_id \
             FROM charges c LEFT JOIN refunds r ON r.charge_id = c.charge_id \
             WHERE c.idempotency_key = $1",
        )
        .bind(key.as_str().to_owned())
        .fetch_one(self.db.pool())
        .await?;
        Ok((charge_from_row(&row)?, inserted))
    }

    pub async fn charge(&self, charge_id: &str) -> Result<Option<Charge>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT c.charge_id, c.idempotency_key, c.amount_cents, c.payment_method, c.status, \
             c.decline_code, c.order_id, c.created_at_us, r.refund_id \
             FROM charges c LEFT JOIN refunds r ON r.charge_id = c.charge_id \
             WHERE c.charge_id = $1",
        )
        .bind(charge_id.to_owned())
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(charge_from_row).transpose()
    }

    /// Refunds `charge` in full unless it already is refunded. The UNIQUE constraints on both the key
    /// and the charge make concurrent requests agree on one refund.
    pub async fn record_refund(
        &self,
        key: &IdempotencyKey,
        charge: &Charge,
    ) -> Result<RefundRecorded, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO refunds (refund_id, idempotency_key, charge_id, amount_cents, created_at_us) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(format!("re_{}", Uuid::now_v7().simple()))
        .bind(key.as_str().to_owned())
        .bind(charge.id.clone())
        .bind(charge.amount_cents)
        .bind(now_us())
        .execute(self.db.pool())
        .await?
        .rows_affected()
            == 1;
        let by_key = sqlx::query(
            "SELECT r.refund_id, r.idempotency_key, r.charge_id, r.amount_cents, c.order_id, \
             r.created_at_us FROM refunds r JOIN charges c ON c.charge_id = r.charge_id \
             WHERE r.idempotency_key = $1",
        )
        .bind(key.as_str().to_owned())
        .fetch_optional(self.db.pool())
        .await?;
        if let Some(row) = by_key {
            let refund = refund_from_row(&row)?;
            return Ok(if refund.charge_id != charge.id {
                RefundRecorded::KeyReused
            } else if inserted {
                RefundRecorded::Created(refund)
            } else {
                RefundRecorded::Existing(refund)
            });
        }
        let by_charge = sqlx::query(
            "SELECT r.refund_id, r.idempotency_key, r.charge_id, r.amount_cents, c.order_id, \
             r.created_at_us FROM refunds r JOIN charges c ON c.charge_id = r.charge_id \
             WHERE r.charge_id = $1",
        )
        .bind(charge.id.clone())
        .fetch_one(self.db.pool())
        .await?;
        Ok(RefundRecorded::Existing(refund_from_row(&by_charge)?))
    }

    /// Every charge, oldest first, optionally only those of one order.
    pub async fn charges(&self, order_id: Option<&str>) -> Result<Vec<Charge>, sqlx::Error> {
        let rows = match order_id {
            None => {
                sqlx::query(
                    "SELECT c.charge_id, c.idempotency_key, c.amount_cents, c.payment_method, \
                     c.status, c.decline_code, c.order_id, c.created_at_us, r.refund_id \
                     FROM charges c LEFT JOIN refunds r ON r.charge_id = c.charge_id \
                     ORDER BY c.created_at_us, c.charge_id",
                )
                .fetch_all(self.db.pool())
                .await?
            }
            Some(order_id) => {
                sqlx::query(
                    "SELECT c.charge_id, c.idempotency_key, c.amount_cents, c.payment_method, \
                     c.status, c.decline_code, c.order_id, c.created_at_us, r.refund_id \
                     FROM charges c LEFT JOIN refunds r ON r.charge_id = c.charge_id \
                     WHERE c.order_id = $1 ORDER BY c.created_at_us, c.charge_id",
                )
                .bind(order_id.to_owned())
                .fetch_all(self.db.pool())
                .await?
            }
        };
        rows.iter().map(charge_from_row).collect()
    }

    /// Every refund, oldest first, optionally only those of one order's charges.
    pub async fn refunds(&self, order_id: Option<&str>) -> Result<Vec<Refund>, sqlx::Error> {
        let rows = match order_id {
            None => {
                sqlx::query(
                    "SELECT r.refund_id, r.idempotency_key, r.charge_id, r.amount_cents, \
                     c.order_id, r.created_at_us \
                     FROM refunds r JOIN charges c ON c.charge_id = r.charge_id \
                     ORDER BY r.created_at_us, r.refund_id",
                )
                .fetch_all(self.db.pool())
                .await?
            }
            Some(order_id) => {
                sqlx::query(
                    "SELECT r.refund_id, r.idempotency_key, r.charge_id, r.amount_cents, \
                     c.order_id, r.created_at_us \
                     FROM refunds r JOIN charges c ON c.charge_id = r.charge_id \
                     WHERE c.order_id = $1 ORDER BY r.created_at_us, r.refund_id",
                )
                .bind(order_id.to_owned())
                .fetch_all(self.db.pool())
                .await?
            }
        };
        rows.iter().map(refund_from_row).collect()
    }
}

fn charge_from_row(row: &AnyRow) -> Result<Charge, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let refund_id: Option<String> = row.try_get("refund_id")?;
    Ok(Charge {
        id: row.try_get("charge_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        amount_cents: row.try_get("amount_cents")?,
        payment_method: row.try_get("payment_method")?,
        status: ChargeStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown charge status '{status}'").into(),
        })?,
        decline_code: row.try_get("decline_code")?,
        order_id: row.try_get("order_id")?,
        refunded: refund_id.is_some(),
        created_at_us: row.try_get("created_at_us")?,
    })
}

fn refund_from_row(row: &AnyRow) -> Result<Refund, sqlx::Error> {
    Ok(Refund {
        id: row.try_get("refund_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        charge_id: row.try_get("charge_id")?,
        amount_cents: row.try_get("amount_cents")?,
        order_id: row.try_get("order_id")?,
        created_at_us: row.try_get("created_at_us")?,
    })
}
