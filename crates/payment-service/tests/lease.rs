//! Leasing due payments for the charge worker: each payment to one worker at a time, never more in one
//! lease than asked for, the call counted only for payments that get one. Also with several workers
//! leasing side by side on one PostgreSQL database (two instances of payment-service), where a lease
//! that let its row query run twice once took more rows than it had breaker permits for.

use contracts::{OrderId, Priority};
use payment_service::storage::{self, Lease};
use platform::db::{Db, query};
use std::collections::BTreeSet;
use testkit::{Backend, TestDatabase};

const PAYMENTS: usize = 240;
const LIMIT: usize = 8;
const NOW: i64 = 1_000_000;
/// Far enough ahead for every charge to be answered in time.
const DEADLINE: i64 = 1_000_000_000;

async fn payments_due(backend: Backend) -> Option<(TestDatabase, Db)> {
    let database = TestDatabase::create(backend).await?;
    let db = Db::connect(
        &database.url_for("payment"),
        "payment",
        payment_service::MIGRATIONS,
    )
    .await
    .unwrap();
    for n in 0..PAYMENTS {
        // Every tenth one too late to be charged: its step gives up without a call.
        let deadline = if n % 10 == 0 { NOW + 1 } else { DEADLINE };
        query(
            "INSERT INTO payments (order_id, payment_method, amount_cents, deadline_at_us, status, \
             attempts, next_attempt_at_us, correlation_id, cause_event_id, created_at_us, \
             updated_at_us, priority) \
             VALUES ($1, 'pm_card_visa', 100, $2, 'charging', 0, $3, 'c', 'e', 0, 0, $4)",
        )
        .bind(OrderId::new().to_string())
        .bind(deadline)
        .bind(i64::try_from(n).unwrap())
        .bind(if n % 3 == 0 { "express" } else { "normal" })
        .execute(db.pool())
        .await
        .unwrap();
    }
    Some((database, db))
}

fn lease(only: Option<Priority>) -> Lease {
    Lease {
        now: NOW,
        answered_by: NOW + 2_000_000,
        until: NOW + 7_000_000,
        limit: LIMIT,
        only,
        count_calls: true,
    }
}

#[derive(serde::Deserialize)]
struct Row {
    order_id: String,
    attempts: i64,
    deadline_at_us: i64,
    next_attempt_at_us: i64,
}

async fn each_payment_is_leased_once_and_no_lease_takes_more_than_asked(backend: Backend) {
    let Some((_database, db)) = payments_due(backend).await else {
        return;
    };
    // Four workers, one of them the express lane's, lease until nothing is due.
    let workers = [None, None, None, Some(Priority::Express)].map(|only| {
        let db = db.clone();
        tokio::spawn(async move {
            let mut leased = Vec::new();
            loop {
                let batch = storage::lease_due(db.pool(), lease(only)).await.unwrap();
                assert!(batch.len() <= LIMIT, "one lease took {} rows", batch.len());
                if let Some(only) = only {
                    assert!(batch.iter().all(|payment| payment.priority == only));
                }
                if batch.is_empty() {
                    return leased;
                }
                leased.extend(batch.into_iter().map(|payment| payment.order_id));
            }
        })
    });
    let mut leased = Vec::new();
    for worker in workers {
        leased.extend(worker.await.unwrap());
    }
    let distinct: BTreeSet<_> = leased.iter().collect();
    assert_eq!(distinct.len(), leased.len(), "a payment was leased twice");
    assert_eq!(leased.len(), PAYMENTS);

    let rows: Vec<Row> =
        query("SELECT order_id, attempts, deadline_at_us, next_attempt_at_us FROM payments")
            .fetch_all(db.pool())
            .await
            .unwrap();
    for row in rows {
        let calls = if row.deadline_at_us == DEADLINE { 1 } else { 0 };
        assert_eq!(row.attempts, calls, "{}", row.order_id);
        assert_eq!(row.next_attempt_at_us, NOW + 7_000_000, "{}", row.order_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_payment_is_leased_once_and_no_lease_takes_more_than_asked_sqlite() {
    each_payment_is_leased_once_and_no_lease_takes_more_than_asked(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_payment_is_leased_once_and_no_lease_takes_more_than_asked_postgres() {
    each_payment_is_leased_once_and_no_lease_takes_more_than_asked(Backend::Postgres).await;
}
