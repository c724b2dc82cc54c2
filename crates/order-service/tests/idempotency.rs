//! Idempotency keys against real databases (SQLite and PostgreSQL): a claim can be taken over once
//! its request looks abandoned, and from then on only the new claim can complete or release the key,
//! so a stalled first request and its retry never both create an order.

use contracts::{CorrelationId, OrderId};
use order_service::storage::{self, ABANDONED_AFTER, KeyState};
use platform::db::{Db, query};
use platform::retention::Sweeper;
use std::time::Duration;
use testkit::{Backend, on_both_backends};

mod common;
use common::{database, new_order};

const KEY: &str = "checkout-42";

/// Creates the order the way `POST /orders` does: order row and key completion in one transaction,
/// rolled back when the claim is no longer this request's. Returns whether the order was created.
async fn create(db: &Db, token: &storage::ClaimToken) -> bool {
    let mut tx = db.begin().await.unwrap();
    let order_id = OrderId::new();
    storage::insert_order(
        &mut tx,
        order_id,
        &new_order(),
        &CorrelationId::new(),
        contracts::TraceContext::new_root(),
        0,
    )
    .await
    .unwrap();
    if storage::complete_idempotency_key(&mut tx, KEY, token, order_id)
        .await
        .unwrap()
    {
        tx.commit().await.unwrap();
        true
    } else {
        tx.rollback().await.unwrap();
        false
    }
}

async fn orders(db: &Db) -> i64 {
    query("SELECT COUNT(*) FROM orders")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn a_stalled_request_cannot_complete_a_key_taken_over_by_its_retry(backend: Backend) {
    let Some((_test_db, db)) = database(backend).await else {
        return;
    };
    let request = new_order().canonical_json();
    let start = 1_000_000_000_000;
    let KeyState::Claimed(first) = storage::claim_idempotency_key(&db, KEY, &request, start)
        .await
        .unwrap()
    else {
        panic!("the first request claims the key");
    };
    // A retry while the first is still within the takeover age waits for it.
    let soon = start + 1_000_000;
    assert_eq!(
        storage::claim_idempotency_key(&db, KEY, &request, soon)
            .await
            .unwrap(),
        KeyState::InFlight
    );
    // The first request stalls past the takeover age; a retry takes the key over.
    let late = start + ABANDONED_AFTER.as_micros() as i64 + 1;
    let KeyState::Claimed(second) = storage::claim_idempotency_key(&db, KEY, &request, late)
        .await
        .unwrap()
    else {
        panic!("the retry takes the abandoned key over");
    };
    assert_ne!(first, second);

    // The first request wakes up: it can neither complete the key nor give it back.
    assert!(
        !create(&db, &first).await,
        "the stale claim completed the key"
    );
    storage::release_idempotency_key(&db, KEY, &first)
        .await
        .unwrap();
    assert_eq!(
        storage::claim_idempotency_key(&db, KEY, &request, late + 1)
            .await
            .unwrap(),
        KeyState::InFlight,
        "the stale release deleted the retry's claim"
    );
    // The retry completes it; repeats now get its order.
    assert!(create(&db, &second).await);
    assert_eq!(orders(&db).await, 1);
    assert!(matches!(
        storage::claim_idempotency_key(&db, KEY, &request, late + 2)
            .await
            .unwrap(),
        KeyState::Completed(_)
    ));
}

async fn a_released_claim_lets_the_next_request_claim_again(backend: Backend) {
    let Some((_test_db, db)) = database(backend).await else {
        return;
    };
    let request = new_order().canonical_json();
    let KeyState::Claimed(token) = storage::claim_idempotency_key(&db, KEY, &request, 1)
        .await
        .unwrap()
    else {
        panic!("claimed");
    };
    storage::release_idempotency_key(&db, KEY, &token)
        .await
        .unwrap();
    assert!(matches!(
        storage::claim_idempotency_key(&db, KEY, &request, 2)
            .await
            .unwrap(),
        KeyState::Claimed(_)
    ));
}

async fn a_key_is_forgotten_after_its_ttl(backend: Backend) {
    let Some((_test_db, db)) = database(backend).await else {
        return;
    };
    let request = new_order().canonical_json();
    let day = Duration::from_secs(86_400);
    let claimed_at = 1_000_000_000_000;
    let KeyState::Claimed(token) = storage::claim_idempotency_key(&db, KEY, &request, claimed_at)
        .await
        .unwrap()
    else {
        panic!("claimed");
    };
    assert!(create(&db, &token).await);
    let sweeper = Sweeper::new(db.clone(), vec![storage::expiring_idempotency_keys(day)]);

    let day_us = day.as_micros() as i64;
    sweeper.sweep_at(claimed_at + day_us - 1).await.unwrap();
    assert!(matches!(
        storage::claim_idempotency_key(&db, KEY, &request, claimed_at + day_us - 1)
            .await
            .unwrap(),
        KeyState::Completed(_)
    ));
    let deleted = sweeper.sweep_at(claimed_at + day_us + 1).await.unwrap();
    assert_eq!(deleted, [("idempotency_keys", 1)]);
    // Forgotten: the same key now stands for a new order.
    assert!(matches!(
        storage::claim_idempotency_key(&db, KEY, &request, claimed_at + day_us + 2)
            .await
            .unwrap(),
        KeyState::Claimed(_)
    ));
}

async fn a_new_key_is_stored_with_its_order_and_a_used_one_writes_nothing(backend: Backend) {
    let Some((_test_db, db)) = database(backend).await else {
        return;
    };
    let request = new_order().canonical_json();
    let order_id = OrderId::new();
    let mut tx = db.begin().await.unwrap();
    assert!(
        storage::store_new_idempotency_key(&mut tx, KEY, &request, order_id, 1)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    // A repeat finds the key stored and completed: what `POST /orders` then answers with.
    let mut tx = db.begin().await.unwrap();
    assert!(
        !storage::store_new_idempotency_key(&mut tx, KEY, &request, OrderId::new(), 2)
            .await
            .unwrap()
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        storage::claim_idempotency_key(&db, KEY, &request, 3)
            .await
            .unwrap(),
        KeyState::Completed(order_id)
    );
    // A key claimed by a request still in flight is not stored over either.
    let KeyState::Claimed(_) = storage::claim_idempotency_key(&db, "in-flight", &request, 4)
        .await
        .unwrap()
    else {
        panic!("claimed");
    };
    let mut tx = db.begin().await.unwrap();
    assert!(
        !storage::store_new_idempotency_key(&mut tx, "in-flight", &request, OrderId::new(), 5)
            .await
            .unwrap()
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        storage::claim_idempotency_key(&db, "in-flight", &request, 6)
            .await
            .unwrap(),
        KeyState::InFlight
    );
}

on_both_backends!(
    a_stalled_request_cannot_complete_a_key_taken_over_by_its_retry,
    a_released_claim_lets_the_next_request_claim_again,
    a_key_is_forgotten_after_its_ttl,
    a_new_key_is_stored_with_its_order_and_a_used_one_writes_nothing,
);
