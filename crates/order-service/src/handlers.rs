//! How order-service reacts to stock and payment events: it records each in the order's timeline and
//! lets the state machine decide whether the order is now confirmed or cancelled.

use crate::domain::{OrderStatus, Transition, decide};
use crate::outcomes::{Ended, Outcomes};
use crate::storage;
use contracts::Envelope;
use contracts::events::{Event, OrderCancelled, OrderConfirmed};
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
        let Some(status) = storage::status(tx, order_id).await? else {
            // Every event of a saga follows the order's own commit, so this is a broken invariant:
            // retrying cannot help; the dead-letter stream keeps the event for an operator.
            return Err(HandlerError::Permanent(format!(
                "event for unknown order {order_id}"
            )));
        };
        let emitted = match decide(status, &envelope.event) {
            Transition::None => {
                // Normal in the saga's flow, so not worth an info line per event: the release
                // that follows a declined payment, or a reservation that order-service's
                // inventory consumer, behind its payments one, handles after the confirmation.
                // The timeline records the event either way.
                if status != OrderStatus::Pending {
                    tracing::debug!(
                        status = status.as_str(),
                        "order already final; event recorded only"
                    );
                }
                None
            }
            Transition::RecordTotal(total) => {
                storage::record_total(tx, order_id, total).await?;
                None
            }
            Transition::Confirm(total) => {
                let confirmed = OrderStatus::Confirmed;
                storage::finish(tx, order_id, confirmed, Some(total), None)
                    .await?
                    .map(|took| {
                        let ended = Ended {
                            total: Some(total),
                            ..Ended::of(&envelope.meta, confirmed, took)
                        };
                        self.outcomes.ended_after_commit(tx, ended);
                        Event::OrderConfirmed(OrderConfirmed { total_cents: total })
                    })
            }
            Transition::Cancel(reason) => {
                let cancelled = OrderStatus::Cancelled;
                storage::finish(tx, order_id, cancelled, None, Some(reason))
                    .await?
                    .map(|took| {
                        let ended = Ended {
                            reason: Some(reason),
                            ..Ended::of(&envelope.meta, cancelled, took)
                        };
                        self.outcomes.ended_after_commit(tx, ended);
                        Event::OrderCancelled(OrderCancelled { reason })
                    })
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
