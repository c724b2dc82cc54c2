//! How order-service reacts to stock and payment events: it records each in the order's timeline and
//! lets the state machine decide whether the order is now confirmed or cancelled.

use crate::domain::{OrderStatus, Transition, requested};
use crate::outcomes::{Ended, Outcomes};
use crate::storage;
use contracts::events::{Event, OrderCancelled, OrderConfirmed};
use contracts::{Envelope, OrderId};
use platform::consumer::{Handler, HandlerError};
use platform::db::Tx;
use platform::outbox;

/// Handles `inventory.*` and `payments.*` events (both consumers share it).
#[derive(Debug, Clone, Default)]
pub struct OrderHandler {
    pub outcomes: Outcomes,
}

impl Handler for OrderHandler {
    async fn handle(&self, tx: &mut Tx, envelope: &Envelope) -> Result<(), HandlerError> {
        let order_id = envelope.meta.order_id;
        // The write a transition needs is guarded by the order's status, so the order is read only
        // when nothing was written: most events of a saga cost one statement instead of two.
        let emitted = match requested(&envelope.event) {
            Transition::None => {
                expect_order(tx, order_id).await?;
                None
            }
            Transition::RecordTotal(total) => {
                if !storage::record_total(tx, order_id, total).await? {
                    expect_order(tx, order_id).await?;
                }
                None
            }
            Transition::Confirm(total) => {
                let confirmed = OrderStatus::Confirmed;
                match storage::finish(tx, order_id, confirmed, Some(total), None).await? {
                    Some(took) => {
                        let ended = Ended {
                            total: Some(total),
                            ..Ended::of(&envelope.meta, confirmed, took)
                        };
                        self.outcomes.ended_after_commit(tx, ended);
                        Some(Event::OrderConfirmed(OrderConfirmed { total_cents: total }))
                    }
                    None => {
                        expect_order(tx, order_id).await?;
                        None
                    }
                }
            }
            Transition::Cancel(reason) => {
                let cancelled = OrderStatus::Cancelled;
                match storage::finish(tx, order_id, cancelled, None, Some(reason)).await? {
                    Some(took) => {
                        let ended = Ended {
                            reason: Some(reason),
                            ..Ended::of(&envelope.meta, cancelled, took)
                        };
                        self.outcomes.ended_after_commit(tx, ended);
                        Some(Event::OrderCancelled(OrderCancelled { reason }))
                    }
                    None => {
                        expect_order(tx, order_id).await?;
                        None
                    }
                }
            }
        };
        // The event is recorded whatever it changed, and with the event it caused, if any, in one
        // statement.
        let outgoing = emitted.map(|event| Envelope::caused_by(&envelope.meta, event));
        let recorded: Vec<&Envelope> = std::iter::once(envelope).chain(&outgoing).collect();
        storage::record_timeline(tx, &recorded);
        if let Some(outgoing) = &outgoing {
            outbox::enqueue(tx, outgoing);
        }
        Ok(())
    }
}

/// Checks that an event the order did not act on belongs to an order that exists.
async fn expect_order(tx: &mut Tx, order_id: OrderId) -> Result<(), HandlerError> {
    match storage::status(tx, order_id).await? {
        // Every event of a saga follows the order's own commit, so this is a broken invariant:
        // retrying cannot help; the dead-letter stream keeps the event for an operator.
        None => Err(HandlerError::Permanent(format!(
            "event for unknown order {order_id}"
        ))),
        // Normal in the saga's flow, so not worth an info line per event: the release that follows
        // a declined payment, or a reservation that order-service's inventory consumer, behind its
        // payments one, handles after the confirmation. The timeline records the event either way.
        Some(status) => {
            if status != OrderStatus::Pending {
                tracing::debug!(
                    status = status.as_str(),
                    "order already final; event recorded only"
                );
            }
            Ok(())
        }
    }
}
