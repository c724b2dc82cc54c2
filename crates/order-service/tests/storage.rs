//! Order-service's writes against real databases (SQLite and PostgreSQL) where its two consumers
//! (inventory events, payment events) race: on PostgreSQL they run in concurrent transactions, so a
//! status read at the start of one may be stale by the time it writes.

use contracts::events::CancelReason;
use contracts::{CorrelationId, Money, OrderId};
use order_service::domain::OrderStatus;
use order_service::storage;
use platform::db::Db;
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
    storage::record_total(&mut late, order_id, Money::from_cents(1_000).unwrap())
        .await
        .unwrap();
    late.commit().await.unwrap();

    let (after, _) = storage::find_order(&db, order_id).await.unwrap().unwrap();
    assert_eq!(after.updated_at_us, ended.updated_at_us);
    assert_eq!(after.total_cents, ended.total_cents);
    assert_eq!(after.status, "cancelled");
}

on_both_backends!(a_late_total_leaves_an_ended_order_as_it_ended);
