//! Events in: the two halves of the join (intent from `orders.created`, amount from
//! `inventory.reserved`) and cancellations. The handlers never call the gateway; they only decide, in the
//! consumer's transaction, whether the charge worker has something to do, and wake it.

use crate::domain::{self, CancelDecision};
use crate::storage;
use contracts::{Envelope, Event, EventMeta, Priority};
use platform::consumer::{Handler, HandlerError};
use platform::db::{Db, Tx, now_us};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// One handler type for both consumers (`payment-orders` and `payment-inventory`): each gets only its
/// own stream's events, and the rest are ignored.
#[derive(Debug, Clone)]
pub struct PaymentHandler {
    /// Woken after the commit of an event that made a charge or a refund due (and only then: a look
    /// that finds nothing costs the worker a query).
    work_due: Arc<Notify>,
    /// The same for an express order's payment: wakes the worker's express lane.
    express_due: Arc<Notify>,
    queue: Option<QueueLimit>,
}

/// How many payments may wait for the worker before the consumers stop taking events.
#[derive(Debug, Clone)]
struct QueueLimit {
    db: Db,
    normal: i64,
    express: i64,
}

/// Payments waiting per gateway call the worker makes at once: enough to keep each busy between two
/// pulls of the consumers, few enough to be worked off in a moment at the gateway's usual pace.
pub const WAITING_PER_CALL: usize = 16;

/// How often a held-back consumer looks at the worker's queue again.
const QUEUE_RECHECK: Duration = Duration::from_millis(50);

impl PaymentHandler {
    pub fn new(work_due: Arc<Notify>, express_due: Arc<Notify>) -> Self {
        Self {
            work_due,
            express_due,
            queue: None,
        }
    }

    /// Holds the consumers back while `WAITING_PER_CALL` payments per gateway call in flight wait for
    /// the worker (`normal_calls` on the shared lanes, one on the express lane), so that a slow
    /// gateway leaves its backlog in the streams instead of in the payments table, where admission
    /// control cannot see it (ADR 16).
    pub fn with_queue_limit(mut self, db: Db, normal_calls: usize) -> Self {
        let limit = |calls: usize| i64::try_from(calls * WAITING_PER_CALL).unwrap_or(i64::MAX);
        self.queue = Some(QueueLimit {
            db,
            normal: limit(normal_calls),
            express: limit(1),
        });
        self
    }

    fn wake_worker_after(&self, tx: &mut Tx, lane: Priority) {
        let due = match lane {
            Priority::Normal => self.work_due.clone(),
            Priority::Express => self.express_due.clone(),
        };
        tx.after_commit(move || due.notify_one());
    }

    async fn joined(
        &self,
        tx: &mut Tx,
        meta: &EventMeta,
        join: domain::Join,
        input: &'static str,
    ) -> Result<(), HandlerError> {
        if !join.completes() {
            tracing::debug!(
                input,
                status = join.status.as_str(),
                "payment input recorded"
            );
            return Ok(());
        }
        if storage::start_charging(tx, meta, now_us()).await? {
            self.wake_worker_after(tx, meta.priority);
            tracing::debug!(input, "payment ready to charge");
        }
        Ok(())
    }

    async fn cancelled(&self, tx: &mut Tx, meta: &EventMeta) -> Result<(), HandlerError> {
        let now = now_us();
        if storage::insert_tombstone(tx, meta, now).await? {
            tracing::debug!("order cancelled before its payment began; it will never be charged");
            return Ok(());
        }
        let current = storage::lock(tx, meta.order_id, now).await?;
        match domain::on_cancel(current) {
            CancelDecision::Tombstone => {
                // The row existed a moment ago; only a concurrent delete could get here, and nothing
                // deletes payments. Retrying re-reads the row.
                return Err(HandlerError::Transient(
                    "payment row vanished during cancellation".into(),
                ));
            }
            CancelDecision::NeverCharge => {
                if storage::cancel(tx, meta.order_id, now).await? {
                    tracing::debug!("payment cancelled before any charge");
                }
            }
            CancelDecision::Refund => {
                if storage::start_refund(tx, meta, now).await? {
                    self.wake_worker_after(tx, meta.priority);
                    tracing::info!(
                        "order cancelled after a charge (or a charge attempt); refunding"
                    );
                }
            }
            CancelDecision::Ignore => {
                tracing::debug!(status = ?current.map(|(status, _)| status.as_str()),
                    "cancellation needs no payment change");
            }
        }
        Ok(())
    }
}

impl Handler for PaymentHandler {
    async fn ready(&self, lane: Priority) {
        let Some(queue) = &self.queue else {
            return;
        };
        let limit = match lane {
            Priority::Normal => queue.normal,
            Priority::Express => queue.express,
        };
        let db = queue.db.prioritized(lane);
        loop {
            match storage::payments_waiting(&db, lane, limit).await {
                Ok(waiting) if waiting >= limit => {}
                // Room in the queue; or the database does not answer, which the consumer meets
                // and handles on its own next step.
                _ => return,
            }
            tokio::time::sleep(QUEUE_RECHECK).await;
        }
    }

    async fn handle(&self, tx: &mut Tx, envelope: &Envelope) -> Result<(), HandlerError> {
        let meta = &envelope.meta;
        match &envelope.event {
            Event::OrderCreated(created) => {
                let join = storage::record_intent(tx, meta, created, now_us()).await?;
                self.joined(tx, meta, join, "intent").await
            }
            Event::InventoryReserved(reserved) => {
                let join = storage::record_amount(tx, meta, reserved.total_cents.cents(), now_us())
                    .await?;
                self.joined(tx, meta, join, "amount").await
            }
            Event::OrderCancelled(_) => self.cancelled(tx, meta).await,
            // orders.confirmed follows our own payments.succeeded: nothing left to do. The inventory
            // consumer is filtered to inventory.reserved, and nothing else reaches us.
            _ => Ok(()),
        }
    }
}
