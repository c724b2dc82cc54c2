//! Events in: the two halves of the join (intent from `orders.created`, amount from
//! `inventory.reserved`) and cancellations. The handlers never call the gateway; they only decide, in the
//! consumer's transaction, whether the charge worker has something to do, and wake it.

use crate::domain::{self, CancelDecision};
use crate::storage;
use contracts::{Envelope, Event, EventMeta, Priority};
use platform::consumer::{Handler, HandlerError};
use platform::db::{Tx, now_us};
use std::sync::Arc;
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
}

impl PaymentHandler {
    pub fn new(work_due: Arc<Notify>, express_due: Arc<Notify>) -> Self {
        Self {
            work_due,
            express_due,
        }
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
