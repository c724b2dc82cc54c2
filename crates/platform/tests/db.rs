//! What a transaction promises the tasks that act on its rows: they hear of it only after it commits.

use platform::db::Db;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

async fn db(dir: &tempfile::TempDir) -> Db {
    let url = format!("sqlite://{}/tx.db?mode=rwc", dir.path().display());
    Db::connect(&url, "tx", &[]).await.unwrap()
}

fn counter() -> (Arc<AtomicU32>, impl FnOnce() + Send + 'static) {
    let runs = Arc::new(AtomicU32::new(0));
    let count = runs.clone();
    (runs, move || {
        count.fetch_add(1, Ordering::SeqCst);
    })
}

#[tokio::test]
async fn what_runs_after_commit_runs_once_the_transaction_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(&dir).await;
    let mut tx = db.begin().await.unwrap();
    let (runs, then) = counter();
    tx.after_commit(then);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "not before the commit");
    tx.commit().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn what_runs_after_commit_never_runs_for_a_transaction_rolled_back_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(&dir).await;
    let mut rolled_back = db.begin().await.unwrap();
    let (runs, then) = counter();
    rolled_back.after_commit(then);
    rolled_back.rollback().await.unwrap();

    let mut dropped = db.begin().await.unwrap();
    let (dropped_runs, then) = counter();
    dropped.after_commit(then);
    drop(dropped);

    // The connection is usable again and the next commit runs only its own.
    let mut next = db.begin().await.unwrap();
    let (next_runs, then) = counter();
    next.after_commit(then);
    next.commit().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(dropped_runs.load(Ordering::SeqCst), 0);
    assert_eq!(next_runs.load(Ordering::SeqCst), 1);
}
