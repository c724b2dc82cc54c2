//! Order-service's writes against real databases (SQLite and PostgreSQL) where its two consumers
//! (inventory events, payment events) race: on PostgreSQL they run in concurrent transactions, so a
//! status read at the start of one may be stale by the time it writes.

use contracts::events::{
    CancelReason, Event, InventoryReserved, PaymentFailed, PaymentFailureReason, PaymentRefunded,
    PaymentSucceeded,
};
use contracts::{CorrelationId, Envelope, Money, OrderId};
use order_service::domain::OrderStatus;
use order_service::handlers::OrderHandler;
use order_service::storage;
use platform::consumer::{Handler, HandlerError};
use platform::db::{Db, query};
use testkit::{Backend, on_both_backends};

mod common;
use common::{database, new_order};

async fn pending_order(db: &Db) -> OrderId {
    let order = new_order();
    let order_id = OrderId::new();
    let mut tx = db.begin().await.unwrap();
    storage::insert_order(
        &mut tx,
        order_id,
        &order,
        &CorrelationId::new(),
        contracts::TraceContext::new_root(),
        0,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    order_id
}

/// Seen on PostgreSQL under load: the inventory consumer read "pending", the payment consumer then
/// cancelled the order (payment declined) and committed, and the inventory consumer's total, written
/// afterwards, moved the order's end time back to before the charge, which `orderflow verify` reported
/// as a charge made after the cancel. A total is recorded only while the order is pending.
async fn a_late_total_leaves_an_ended_order_as_it_ended(backend: Backend) {
    let Some((_test_db, db)) = database(backend).await else {
        return;
    };
    let order_id = pending_order(&db).await;
    let mut tx = db.begin().await.unwrap();
    assert!(
        storage::finish(
            &mut tx,
            order_id,
            OrderStatus::Cancelled,
            None,
            Some(CancelReason::PaymentDeclined)
        )
        .await
        .unwrap()
        .is_some()
    );
    tx.commit().await.unwrap();
    let (ended, _) = storage::find_order(&db, order_id).await.unwrap().unwrap();

    let mut late = db.begin().await.unwrap();
    let recorded = storage::record_total(&mut late, order_id, Money::from_cents(1_000).unwrap())
        .await
        .unwrap();
    late.commit().await.unwrap();
    assert!(!recorded, "an ended order takes no total");

    let (after, _) = storage::find_order(&db, order_id).await.unwrap().unwrap();
    assert_eq!(after.updated_at_us, ended.updated_at_us);
    assert_eq!(after.total_cents, ended.total_cents);
    assert_eq!(after.status, "cancelled");
}

on_both_backends!(a_late_total_leaves_an_ended_order_as_it_ended);

async fn unpublished_events(db: &Db) -> Vec<String> {
    query("SELECT subject FROM outbox WHERE published_at_us IS NULL ORDER BY sequence")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

async fn handle(db: &Db, order_id: OrderId, event: Event) -> Result<(), HandlerError> {
    let envelope = Envelope::first(order_id, CorrelationId::new(), event);
    let mut tx = db.begin().await.unwrap();
    OrderHandler::default().handle(&mut tx, &envelope).await?;
    tx.commit().await.unwrap();
    Ok(())
}

/// The handler writes first and reads the order only when the write changed nothing: an ended order
/// still absorbs every outcome (no second final status, no second event), each is recorded in its
/// timeline, and an outcome for an order that does not exist is refused for good.
async fn an_ended_order_absorbs_outcomes_and_an_unknown_one_refuses_them(backend: Backend) {
    let Some((_test_db, db)) = database(backend).await else {
        return;
    };
    let order_id = pending_order(&db).await;
    let total = Money::from_cents(1_000).unwrap();
    let paid = || {
        Event::PaymentSucceeded(PaymentSucceeded {
            amount_cents: total,
            charge_id: "ch-1".into(),
        })
    };
    handle(&db, order_id, paid()).await.unwrap();
    let (confirmed, _) = storage::find_order(&db, order_id).await.unwrap().unwrap();
    assert_eq!(confirmed.status, "confirmed");

    let late = [
        Event::PaymentFailed(PaymentFailed {
            reason: PaymentFailureReason::PaymentDeclined,
        }),
        Event::InventoryReserved(InventoryReserved {
            total_cents: Money::from_cents(5).unwrap(),
            lines: vec![],
        }),
        paid(),
    ];
    for event in late {
        handle(&db, order_id, event).await.unwrap();
    }
    let (after, _) = storage::find_order(&db, order_id).await.unwrap().unwrap();
    assert_eq!(after.status, "confirmed");
    assert_eq!(after.updated_at_us, confirmed.updated_at_us);
    assert_eq!(after.total_cents, confirmed.total_cents);
    assert_eq!(
        unpublished_events(&db).await,
        ["orders.confirmed"],
        "one final event"
    );
    assert_eq!(
        storage::timeline(&db, order_id).await.unwrap().len(),
        5,
        "four outcomes and the confirmation"
    );

    let unknown = OrderId::new();
    for event in [
        paid(),
        Event::PaymentRefunded(PaymentRefunded {
            amount_cents: total,
            charge_id: "ch-1".into(),
        }),
    ] {
        match handle(&db, unknown, event).await {
            Err(HandlerError::Permanent(why)) => assert!(why.contains("unknown order"), "{why}"),
            other => panic!("an event for an unknown order must be refused for good: {other:?}"),
        }
    }
}

on_both_backends!(an_ended_order_absorbs_outcomes_and_an_unknown_one_refuses_them);
