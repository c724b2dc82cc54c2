//! How order-service reacts to stock and payment events: it records each in the order's timeline and
//! lets the state machine decide whether the order is now confirmed or cancelled.

use crate::domain::{OrderStatus, Transition, decide};
use crate::storage;
use contracts::events::{CancelReason, Event, OrderCancelled, OrderConfirmed};
use contracts::{CorrelationId, Envelope, Money, OrderId};
use platform::consumer::{Handler, HandlerError};
use platform::db::Tx;
use platform::outbox;

/// A saga's outcome is its one line at info. It is logged under a root span of its own, so the line
/// does not carry the consumer's event span, whose fields would double its size on every order;
/// failures are logged inside the event span, with all of its context.
fn outcome_span() -> tracing::Span {
    tracing::info_span!(parent: None, "saga")
}

fn log_confirmed(order_id: OrderId, correlation_id: &CorrelationId, total: Money) {
    outcome_span().in_scope(|| {
        tracing::info!(%order_id, %correlation_id, total_cents = total.cents(), "order confirmed");
    });
}

fn log_cancelled(order_id: OrderId, correlation_id: &CorrelationId, reason: CancelReason) {
    outcome_span().in_scope(|| {
        tracing::info!(%order_id, %correlation_id, reason = reason.as_str(), "order cancelled");
    });
}

/// Handles `inventory.*` and `payments.*` events (both consumers share it).
#[derive(Debug, Clone, Default)]
pub struct OrderHandler;

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
                if status != OrderStatus::Pending {
                    tracing::info!(
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
                storage::finish(tx, order_id, OrderStatus::Confirmed, Some(total), None)
                    .await?
                    .then(|| {
                        log_confirmed(order_id, &envelope.meta.correlation_id, total);
                        Event::OrderConfirmed(OrderConfirmed { total_cents: total })
                    })
            }
            Transition::Cancel(reason) => {
                storage::finish(tx, order_id, OrderStatus::Cancelled, None, Some(reason))
                    .await?
                    .then(|| {
                        log_cancelled(order_id, &envelope.meta.correlation_id, reason);
                        Event::OrderCancelled(OrderCancelled { reason })
                    })
            }
        };
        // The event is recorded whatever it changed, and with the event it caused, if any, in one
        // statement.
        let outgoing = emitted.map(|event| Envelope::caused_by(&envelope.meta, event));
        let recorded: Vec<&Envelope> = std::iter::once(envelope).chain(&outgoing).collect();
        storage::record_timeline(tx, &recorded).await?;
        if let Some(outgoing) = &outgoing {
            outbox::enqueue(tx, outgoing).await?;
        }
        Ok(())
    }
}
