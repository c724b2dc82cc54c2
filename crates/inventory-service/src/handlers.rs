//! Order events in, inventory events out: claims a held reservation or reads it, asks [`domain`] what
//! to do, applies it through [`storage`] and enqueues the answer, all in the transaction the consumer
//! runtime gives us (so the stock move, the reservation row, the outbox event and the inbox record
//! commit together).

use crate::domain::{
    self, Action, LineAttempt, LineOutcome, OrderEvent, ReservationStatus, Verdict,
};
use crate::storage;
use contracts::events::{InventoryReserved, OrderLine};
use contracts::{Envelope, Event, EventMeta, OrderId};
use platform::consumer::{Handler, HandlerError};
use platform::db::{Tx, now_us};

/// Consumes the `ORDERS` stream (`contracts::topology::INVENTORY_ORDERS`): reserves stock for new
/// orders, sells it on confirmation, gives it back on cancellation.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryHandler;

impl InventoryHandler {
    pub fn new() -> Self {
        Self
    }
}

impl Handler for InventoryHandler {
    async fn handle(&self, tx: &mut Tx, envelope: &Envelope) -> Result<(), HandlerError> {
        let Some(event) = OrderEvent::of(&envelope.event) else {
            return Ok(());
        };
        let order_id = envelope.meta.order_id;
        // Confirming or cancelling a held reservation, the usual case, starts with a write guarded
        // by its status (the claim): the reservation is read only when there was nothing to claim.
        let done = match event {
            OrderEvent::Confirmed => commit(tx, &order_id).await?,
            OrderEvent::Cancelled => release(tx, &order_id).await?,
            OrderEvent::Created(_) => false,
        };
        if done {
            return Ok(());
        }
        let current = storage::reservation_status(tx, &order_id).await?;
        match domain::decide(current, event) {
            Action::Reserve(lines) => reserve(tx, &envelope.meta, lines).await,
            // Held after all: another instance's reservation committed since the claim was tried.
            Action::Commit => commit(tx, &order_id).await.map(drop),
            Action::Release => release(tx, &order_id).await.map(drop),
            Action::Tombstone => {
                storage::insert_without_stock(
                    tx,
                    &order_id,
                    ReservationStatus::Tombstone,
                    None,
                    now_us(),
                )
                .await?;
                tracing::debug!(order_id = %order_id, "cancelled before creation; tombstone left");
                Ok(())
            }
            Action::Nothing => {
                tracing::debug!(order_id = %order_id, status = current.as_ref().map(ReservationStatus::as_str),
                    "reservation already decided; event changes nothing");
                Ok(())
            }
        }
    }
}

/// All or nothing: holds every line it can (so the rejection can list every failed line), then
/// either records the reservation or gives back what it held.
async fn reserve(tx: &mut Tx, cause: &EventMeta, lines: &[OrderLine]) -> Result<(), HandlerError> {
    let order_id = cause.order_id;
    let now = now_us();
    let mut attempts = Vec::with_capacity(lines.len());
    for line in domain::lock_order(lines) {
        let outcome = match storage::hold(tx, &line.product_id, line.quantity.get(), now).await? {
            Some(unit_price) => LineOutcome::Held { unit_price },
            None => match storage::available(tx, &line.product_id).await? {
                Some(available) => LineOutcome::InsufficientStock { available },
                None => LineOutcome::UnknownProduct,
            },
        };
        attempts.push(LineAttempt { line, outcome });
    }

    match domain::conclude(&attempts) {
        Verdict::Reserve(lines) => {
            let total = domain::total(&lines).ok_or_else(|| {
                HandlerError::Permanent(format!("the total of order {order_id} overflows"))
            })?;
            storage::insert_reserved(tx, &order_id, total, &lines, now).await?;
            emit(
                tx,
                cause,
                Event::InventoryReserved(InventoryReserved {
                    lines,
                    total_cents: total,
                }),
            );
            count("reserved");
            tracing::debug!(order_id = %order_id, total_cents = total.cents(), "stock reserved");
        }
        Verdict::Reject(rejected) => {
            for attempt in &attempts {
                if matches!(attempt.outcome, LineOutcome::Held { .. }) {
                    storage::unhold(
                        tx,
                        &attempt.line.product_id,
                        attempt.line.quantity.get(),
                        now,
                    )
                    .await?;
                }
            }
            let reason = rejected.reason.as_str();
            storage::insert_without_stock(
                tx,
                &order_id,
                ReservationStatus::Rejected,
                Some(reason),
                now,
            )
            .await?;
            let failed_lines = rejected.lines.len();
            emit(tx, cause, Event::InventoryRejected(rejected));
            count("rejected");
            tracing::debug!(order_id = %order_id, reason, failed_lines, "reservation rejected");
        }
    }
    Ok(())
}

/// Confirmed order: its held units become sold; `false` if the reservation was not held.
async fn commit(tx: &mut Tx, order_id: &OrderId) -> Result<bool, HandlerError> {
    let now = now_us();
    if !claim(tx, order_id, ReservationStatus::Committed, now).await? {
        return Ok(false);
    }
    for line in storage::held_lines(tx, order_id).await? {
        if !storage::sell(tx, &line.product_id, line.quantity, now).await? {
            return Err(missing_product(order_id, &line.product_id));
        }
    }
    count("committed");
    tracing::debug!(order_id = %order_id, "reservation committed");
    Ok(true)
}

/// Cancelled order: its held units are available again; `false` if the reservation was not held.
async fn release(tx: &mut Tx, order_id: &OrderId) -> Result<bool, HandlerError> {
    let now = now_us();
    if !claim(tx, order_id, ReservationStatus::Released, now).await? {
        return Ok(false);
    }
    for line in storage::held_lines(tx, order_id).await? {
        if !storage::unhold(tx, &line.product_id, line.quantity, now).await? {
            return Err(missing_product(order_id, &line.product_id));
        }
    }
    count("released");
    tracing::debug!(order_id = %order_id, "reservation released");
    Ok(true)
}

/// Moves a held reservation to its final status before touching stock: with several instances on
/// PostgreSQL, only the transaction whose conditional update matched may move the units.
async fn claim(
    tx: &mut Tx,
    order_id: &OrderId,
    to: ReservationStatus,
    now: i64,
) -> Result<bool, HandlerError> {
    Ok(storage::set_status(tx, order_id, ReservationStatus::Reserved, to, now).await?)
}

fn missing_product(order_id: &OrderId, product_id: &contracts::ProductId) -> HandlerError {
    HandlerError::Permanent(format!(
        "product {product_id} held by order {order_id} is missing from the catalog"
    ))
}

fn emit(tx: &mut Tx, cause: &EventMeta, event: Event) {
    platform::outbox::enqueue(tx, &Envelope::caused_by(cause, event));
}

fn count(outcome: &'static str) {
    metrics::counter!("orderflow_reservations_total", "outcome" => outcome).increment(1);
}
