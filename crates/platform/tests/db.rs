//! What a transaction promises the tasks that act on its rows: they hear of it only after it commits.

use platform::db::{Db, Tx};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

async fn db(dir: &tempfile::TempDir) -> Db {
    let url = format!("sqlite://{}/tx.db?mode=rwc", dir.path().display());
    Db::connect(&url, "tx", &[]).await.unwrap()
}

/// A transaction that counts how often what it runs after commit ran.
async fn counting_tx(db: &Db) -> (Tx, Arc<AtomicU32>) {
    let mut tx = db.begin().await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let count = runs.clone();
    tx.after_commit(move || {
        count.fetch_add(1, Ordering::SeqCst);
    });
    (tx, runs)
}

#[tokio::test]
async fn what_runs_after_commit_runs_once_the_transaction_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, runs) = counting_tx(&db(&dir).await).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "not before the commit");
    tx.commit().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn what_runs_after_commit_never_runs_for_a_transaction_rolled_back_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(&dir).await;
    let (rolled_back, rolled_back_runs) = counting_tx(&db).await;
    rolled_back.rollback().await.unwrap();
    let (dropped, dropped_runs) = counting_tx(&db).await;
    drop(dropped);

    // The connection is usable again and the next commit runs only its own.
    let (next, next_runs) = counting_tx(&db).await;
    next.commit().await.unwrap();
    assert_eq!(rolled_back_runs.load(Ordering::SeqCst), 0);
    assert_eq!(dropped_runs.load(Ordering::SeqCst), 0);
    assert_eq!(next_runs.load(Ordering::SeqCst), 1);
}
