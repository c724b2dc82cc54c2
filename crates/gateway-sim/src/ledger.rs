//! The ledger: every charge and refund the gateway has answered, persisted so a restarted gateway still
//! gives the same answer to a retried request. All of the simulator's SQL lives here.
//!
//! Idempotency is race-free by construction: a request inserts under its key with
//! `ON CONFLICT DO NOTHING` and then reads back whatever the key holds, so two concurrent requests with
//! one key agree on a single row without any locking.

use crate::domain::{ChargeRequest, ChargeStatus, Decision, IdempotencyKey};
use platform::db::{Db, SqlError, now_us, query};
use serde::Deserialize;
use uuid::Uuid;

/// `?order_id=` narrows a listing to one order and `?idempotency_key=` to the charges made under one
/// key (the charge search real gateways offer, by which a client settles a call whose answer it never
/// got); anything else in the query is a mistake worth a 400.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerFilter {
    pub order_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// One row of `charges`, with whether it has been refunded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Charge {
    #[serde(rename = "charge_id")]
    pub id: String,
    pub idempotency_key: String,
    pub amount_cents: i64,
    pub currency: String,
    pub payment_method: String,
    pub status: ChargeStatus,
    pub decline_code: Option<String>,
    pub order_id: Option<String>,
    pub created_at_us: i64,
    /// The refund that gave the money back, if any.
    pub refund_id: Option<String>,
}

impl Charge {
    pub fn refunded(&self) -> bool {
        self.refund_id.is_some()
    }
}

/// A charge with the refund that may have followed it, as every charge query reads it.
const CHARGE_COLUMNS: &str = "SELECT c.charge_id, c.idempotency_key, c.amount_cents, \
    c.currency, c.payment_method, c.status, c.decline_code, c.order_id, c.created_at_us, r.refund_id \
    FROM charges c LEFT JOIN refunds r ON r.charge_id = c.charge_id";

/// A refund with the order of its charge, as every refund query reads it.
const REFUND_COLUMNS: &str = "SELECT r.refund_id, r.idempotency_key, r.charge_id, r.amount_cents, \
    c.order_id, r.created_at_us FROM refunds r JOIN charges c ON c.charge_id = r.charge_id";

/// One row of `refunds`, with the order of the refunded charge for searching.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Refund {
    #[serde(rename = "refund_id")]
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
    ) -> Result<(Charge, bool), SqlError> {
        let (status, decline_code) = match decision {
            Decision::Succeed => (ChargeStatus::Succeeded, None),
            Decision::Decline { decline_code } => {
                (ChargeStatus::Declined, Some(decline_code.to_owned()))
            }
        };
        let inserted = query(
            "INSERT INTO charges (charge_id, idempotency_key, amount_cents, payment_method, status, \
             decline_code, order_id, created_at_us, currency) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(format!("ch_{}", Uuid::now_v7().simple()))
        .bind(key.as_str().to_owned())
        .bind(request.amount_cents)
        .bind(request.payment_method.as_str().to_owned())
        .bind(status.as_str())
        .bind(decline_code)
        .bind(request.order_id.clone())
        .bind(now_us())
        .bind(request.currency.as_str().to_owned())
        .execute(self.db.pool())
        .await?
            == 1;
        let charge = query(format!("{CHARGE_COLUMNS} WHERE c.idempotency_key = $1"))
            .bind(key.as_str().to_owned())
            .fetch_one(self.db.pool())
            .await?;
        Ok((charge, inserted))
    }

    pub async fn charge(&self, charge_id: &str) -> Result<Option<Charge>, SqlError> {
        query(format!("{CHARGE_COLUMNS} WHERE c.charge_id = $1"))
            .bind(charge_id.to_owned())
            .fetch_optional(self.db.pool())
            .await
    }

    /// Refunds `charge` in full unless it already is refunded. The UNIQUE constraints on both the key
    /// and the charge make concurrent requests agree on one refund.
    pub async fn record_refund(
        &self,
        key: &IdempotencyKey,
        charge: &Charge,
    ) -> Result<RefundRecorded, SqlError> {
        let inserted = query(
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
            == 1;
        let by_key: Option<Refund> =
            query(format!("{REFUND_COLUMNS} WHERE r.idempotency_key = $1"))
                .bind(key.as_str().to_owned())
                .fetch_optional(self.db.pool())
                .await?;
        if let Some(refund) = by_key {
            return Ok(if refund.charge_id != charge.id {
                RefundRecorded::KeyReused
            } else if inserted {
                RefundRecorded::Created(refund)
            } else {
                RefundRecorded::Existing(refund)
            });
        }
        let by_charge = query(format!("{REFUND_COLUMNS} WHERE r.charge_id = $1"))
            .bind(charge.id.clone())
            .fetch_one(self.db.pool())
            .await?;
        Ok(RefundRecorded::Existing(by_charge))
    }

    /// Every charge, oldest first; only those of one order, or made under one key, if the filter
    /// says so.
    pub async fn charges(&self, filter: &LedgerFilter) -> Result<Vec<Charge>, SqlError> {
        // Each condition matches everything when its parameter is NULL.
        query(format!(
            "{CHARGE_COLUMNS} WHERE ($1 IS NULL OR c.order_id = $1) \
             AND ($2 IS NULL OR c.idempotency_key = $2) ORDER BY c.created_at_us, c.charge_id"
        ))
        .bind(filter.order_id.clone())
        .bind(filter.idempotency_key.clone())
        .fetch_all(self.db.pool())
        .await
    }

    /// Every refund, oldest first, optionally only those of one order's charges.
    pub async fn refunds(&self, order_id: Option<&str>) -> Result<Vec<Refund>, SqlError> {
        query(format!(
            "{REFUND_COLUMNS} WHERE ($1 IS NULL OR c.order_id = $1) \
             ORDER BY r.created_at_us, r.refund_id"
        ))
        .bind(order_id.map(str::to_owned))
        .fetch_all(self.db.pool())
        .await
    }
}
