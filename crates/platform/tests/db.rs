//! What a transaction promises: the tasks that act on its rows hear of it only after it commits, a
//! transaction that does not commit leaves nothing behind, and on SQLite a lock held by another process
//! is waited out (for a while) instead of failing the write at once. Migrations keep sqlx's record, are
//! applied once however many processes open a new file together, and refuse a file they do not match.

use platform::db::{Db, DbError, InsertAtCommit, MigrationSql, Tx, is_infrastructure, query};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{Connection, Executor, SqlSafeStr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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

const ROWS_TABLE: MigrationSql = MigrationSql {
    version: 100,
    description: "rows",
    sqlite: "CREATE TABLE rows (n BIGINT PRIMARY KEY, label TEXT)",
    postgres: "CREATE TABLE rows (n BIGINT PRIMARY KEY, label TEXT)",
};

async fn db_with_rows(dir: &tempfile::TempDir) -> (Db, String) {
    let url = format!("sqlite://{}/rows.db?mode=rwc", dir.path().display());
    let db = Db::connect(&url, "rows", &[ROWS_TABLE]).await.unwrap();
    (db, url)
}

async fn insert(tx: &mut Tx, n: i64) {
    query("INSERT INTO rows (n, label) VALUES ($1, $2)")
        .bind(n)
        .bind(format!("row {n}"))
        .execute(tx.conn())
        .await
        .unwrap();
}

async fn rows(db: &Db) -> Vec<(i64, Option<String>)> {
    query("SELECT n, label FROM rows ORDER BY n")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

/// What an operator's `sqlite3` shell running `BEGIN EXCLUSIVE` does to the file; `ROLLBACK` ends it.
async fn lock_from_another_connection(url: &str) -> sqlx::SqliteConnection {
    let mut other = sqlx::SqliteConnection::connect(url).await.unwrap();
    other.execute("BEGIN EXCLUSIVE").await.unwrap();
    other
}

#[tokio::test]
async fn a_transaction_dropped_before_its_commit_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = db_with_rows(&dir).await;
    let mut dropped = db.begin().await.unwrap();
    insert(&mut dropped, 1).await;
    drop(dropped);
    let mut rolled_back = db.begin().await.unwrap();
    insert(&mut rolled_back, 2).await;
    rolled_back.rollback().await.unwrap();
    let mut committed = db.begin().await.unwrap();
    insert(&mut committed, 3).await;
    committed.commit().await.unwrap();

    assert_eq!(rows(&db).await, vec![(3, Some("row 3".to_owned()))]);
}

static ROWS_AT_COMMIT: InsertAtCommit<2> = InsertAtCommit::new("rows", ["n", "label"], "");
static NOTES_AT_COMMIT: InsertAtCommit<1> =
    InsertAtCommit::new("notes", ["n"], "ON CONFLICT DO NOTHING");

/// Rows added for the commit go in when the transaction commits, every one of them, tables
/// interleaved and in any number (37 rows take three statements), with each table's tail; a
/// transaction that does not commit inserts none. (That the outbox's rows keep their order is
/// `tests/outbox.rs`'s.)
#[tokio::test]
async fn rows_added_for_the_commit_go_in_with_it_and_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = db_with_rows(&dir).await.0;
    let postgres = match testkit::TestDatabase::create(testkit::Backend::Postgres).await {
        Some(database) => {
            let db = Db::connect(&database.url(), "at_commit", &[ROWS_TABLE])
                .await
                .unwrap();
            Some((database, db))
        }
        None => None,
    };
    for db in std::iter::once(&sqlite).chain(postgres.as_ref().map(|(_, db)| db)) {
        query("CREATE TABLE notes (n BIGINT PRIMARY KEY)")
            .execute(db.pool())
            .await
            .unwrap();
        let mut dropped = db.begin().await.unwrap();
        dropped.insert_at_commit(&ROWS_AT_COMMIT, [1000.into(), "dropped".into()]);
        drop(dropped);

        let mut tx = db.begin().await.unwrap();
        for n in 0..37_i64 {
            tx.insert_at_commit(&ROWS_AT_COMMIT, [n.into(), format!("row {n}").into()]);
            tx.insert_at_commit(&NOTES_AT_COMMIT, [(n % 5).into()]);
        }
        let before: Vec<(i64, Option<String>)> = query("SELECT n, label FROM rows")
            .fetch_all(tx.conn())
            .await
            .unwrap();
        assert!(before.is_empty(), "not before the commit: {before:?}");
        tx.commit().await.unwrap();

        let expected: Vec<(i64, Option<String>)> =
            (0..37).map(|n| (n, Some(format!("row {n}")))).collect();
        assert_eq!(rows(db).await, expected);
        let notes: Vec<i64> = query("SELECT n FROM notes ORDER BY n")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(
            notes,
            [0, 1, 2, 3, 4],
            "duplicates left out by the table's tail"
        );
    }
}

/// Another process holding the write lock (`BEGIN EXCLUSIVE` in a shell) makes a write wait, asleep
/// and not inside SQLite, and the write goes through once the lock is given back.
/// PostgreSQL connections are reused only clean: a transaction dropped before its commit, or a
/// `BEGIN` cut short (a request answered from another's transaction drops its own), must leave no
/// connection inside a transaction, where the next statement on its own would never be committed.
#[tokio::test]
async fn postgres_work_cut_short_leaves_no_connection_inside_a_transaction() {
    let Some(database) = testkit::TestDatabase::create(testkit::Backend::Postgres).await else {
        return;
    };
    let db = Db::connect(&database.url(), "cut_short", &[])
        .await
        .unwrap();
    query("CREATE TABLE written (n BIGINT)")
        .execute(db.pool())
        .await
        .unwrap();
    for n in 0..50_i64 {
        let mut tx = db.begin().await.unwrap();
        query("INSERT INTO written (n) VALUES (-1)")
            .execute(tx.conn())
            .await
            .unwrap();
        drop(tx);
        // Cut short at a different point each time, or not at all.
        let cut_after = Duration::from_micros(n.unsigned_abs() * 20);
        drop(tokio::time::timeout(cut_after, db.begin()).await);
        query("INSERT INTO written (n) VALUES ($1)")
            .bind(n)
            .execute(db.pool())
            .await
            .unwrap();
    }
    let other = Db::connect(&database.url(), "cut_short", &[])
        .await
        .unwrap();
    let seen: Vec<i64> = query("SELECT n FROM written ORDER BY n")
        .fetch_all(other.pool())
        .await
        .unwrap();
    assert_eq!(seen, (0..50).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_write_waits_out_another_processs_lock_and_then_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = db_with_rows(&dir).await;
    let mut other = lock_from_another_connection(&url).await;

    let writer = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = db.begin().await?;
            insert(&mut tx, 1).await;
            tx.commit().await
        }
    });
    // The runtime stays free meanwhile: this test's own task runs while the write waits.
    let still_waiting = tokio::time::timeout(Duration::from_millis(200), async {
        while !writer.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        still_waiting.is_err(),
        "the write did not wait for the lock"
    );

    other.execute("ROLLBACK").await.unwrap();
    writer.await.unwrap().unwrap();
    assert_eq!(rows(&db).await.len(), 1);
}

#[tokio::test]
async fn a_lock_held_past_the_busy_wait_fails_the_write_as_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = db_with_rows(&dir).await;
    let mut other = lock_from_another_connection(&url).await;

    let error = match db.begin().await {
        Ok(_) => panic!("began a transaction on a locked file"),
        Err(error) => error,
    };
    assert!(is_infrastructure(&error), "{error}");
    other.execute("ROLLBACK").await.unwrap();
    assert!(db.begin().await.is_ok());
}

/// The service's commits make no checkpoints (they would hold its one connection meanwhile); a thread
/// of its own copies the WAL back into the database file while the service keeps running.
#[tokio::test]
async fn committed_pages_reach_the_database_file_while_the_service_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = db_with_rows(&dir).await;
    let file = dir.path().join("rows.db");
    let before = std::fs::metadata(&file).unwrap().len();
    for n in 0..200 {
        let mut tx = db.begin().await.unwrap();
        query("INSERT INTO rows (n, label) VALUES ($1, $2)")
            .bind(n)
            .bind("x".repeat(2_000))
            .execute(tx.conn())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&file).unwrap().len() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was checkpointed into the database file within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rows(&db).await.len(), 200);
}

/// The WAL header's checkpoint sequence number, which SQLite raises each time it starts the WAL over.
fn wal_generation(wal: &std::path::Path) -> u32 {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(wal)
        .and_then(|mut file| file.read_exact(&mut header))
        .unwrap();
    u32::from_be_bytes([header[12], header[13], header[14], header[15]])
}

/// Under writes without a pause (a service under load), the WAL is now and then copied back whole at a
/// moment when SQLite then starts it over from its beginning. Checkpoints that only ran beside the
/// writer never left it wholly copied at such a moment: the WAL held every page ever written (2 GB
/// after 25 s at 600 orders/s) and the kernel zeroed each new block of it (a fifth of the services'
/// CPU).
#[tokio::test]
async fn the_wal_starts_over_while_the_service_writes_without_pause() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = db_with_rows(&dir).await;
    let wal = dir.path().join("rows.db-wal");
    let started = std::time::Instant::now();
    let mut generations = std::collections::BTreeSet::new();
    let mut n = 0;
    // Ten checkpoint rounds' worth of commits back to back.
    while started.elapsed() < Duration::from_secs(2) {
        let mut tx = db.begin().await.unwrap();
        insert(&mut tx, n).await;
        query("DELETE FROM rows WHERE n = $1")
            .bind(n - 100)
            .execute(tx.conn())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        if n % 50 == 0 {
            generations.insert(wal_generation(&wal));
        }
        n += 1;
    }
    assert!(
        generations.len() > 3,
        "the WAL started over {} times in 2 s of writes",
        generations.len() - 1
    );
}

/// The versions and checksums a file's migration record holds, read the way sqlx's migrator reads them.
async fn migration_record(url: &str) -> Vec<(i64, bool, Vec<u8>)> {
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

fn sqlx_migration(migration: &MigrationSql) -> Migration {
    Migration::new(
        migration.version,
        migration.description.into(),
        MigrationType::Simple,
        migration.sqlite.into_sql_str(),
        false,
    )
}

/// Earlier versions of orderflow applied SQLite migrations through sqlx's migrator: a file it migrated
/// opens as it is (nothing applied twice), and a file migrated now is one sqlx's migrator finds up to
/// date, checksums included.
#[tokio::test]
async fn the_migration_record_is_the_one_sqlxs_migrator_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    Migrator::with_migrations(vec![sqlx_migration(&ROWS_TABLE)])
        .run(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let db = Db::connect(&url, "rows", &[ROWS_TABLE]).await.unwrap();
    assert!(rows(&db).await.is_empty(), "the table is there, once");
    db.close().await;
    let record = migration_record(&url).await;
    let versions: Vec<i64> = record.iter().map(|(version, ..)| *version).collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4, 5, 100],
        "the platform's five were added"
    );
    assert!(record.iter().all(|(_, success, _)| *success));

    let mut sqlx_view = Migrator::with_migrations(vec![sqlx_migration(&ROWS_TABLE)]);
    sqlx_view.set_ignore_missing(true);
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx_view.run(&mut conn).await.unwrap();
    assert_eq!(
        migration_record(&url).await,
        record,
        "sqlx found nothing to do"
    );
}

#[tokio::test]
async fn a_file_whose_migrations_changed_or_are_unknown_is_refused_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = db_with_rows(&dir).await;
    db.close().await;
    let changed = MigrationSql {
        sqlite: "CREATE TABLE rows (n BIGINT PRIMARY KEY)",
        ..ROWS_TABLE
    };
    assert!(matches!(
        Db::connect(&url, "rows", &[changed]).await,
        Err(DbError::Migrate(MigrateError::VersionMismatch(100)))
    ));
    // A newer orderflow's file: this version does not know migration 100.
    assert!(matches!(
        Db::connect(&url, "rows", &[]).await,
        Err(DbError::Migrate(MigrateError::VersionMissing(100)))
    ));
    let record = migration_record(&url).await;
    assert_eq!(record.len(), 6, "nothing was recorded: {record:?}");
}

#[tokio::test]
async fn a_migration_that_fails_leaves_the_file_as_it_was_and_names_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = db_with_rows(&dir).await;
    db.close().await;
    let next = MigrationSql {
        version: 101,
        description: "more rows",
        sqlite: "CREATE TABLE more_rows (n BIGINT); INSERT INTO no_such_table VALUES (1);",
        postgres: "",
    };
    match Db::connect(&url, "rows", &[ROWS_TABLE, next]).await {
        Err(DbError::Migration {
            version: 101,
            description,
            ..
        }) => assert_eq!(description, "more rows"),
        other => panic!("expected migration 101 to fail, got {:?}", other.map(drop)),
    }
    assert_eq!(migration_record(&url).await.len(), 6);
    let db = Db::connect(&url, "rows", &[ROWS_TABLE]).await.unwrap();
    let tables: i64 = query("SELECT COUNT(*) FROM sqlite_master WHERE name = 'more_rows'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        tables, 0,
        "the failed migration's first statement was rolled back"
    );
}

/// Replicated instances open one new file at the same moment: the second waits for the first's
/// migrations and finds them applied, instead of failing on a table that is already there.
#[tokio::test]
async fn services_opening_one_new_file_together_apply_each_migration_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shared.db?mode=rwc", dir.path().display());
    let opened =
        futures::future::join_all((0..4).map(|_| Db::connect(&url, "rows", &[ROWS_TABLE]))).await;
    for db in opened {
        let db = db.unwrap();
        assert!(rows(&db).await.is_empty());
        db.close().await;
    }
    let versions: Vec<i64> = migration_record(&url)
        .await
        .iter()
        .map(|(version, ..)| *version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 100]);
}

/// `orderflow verify` reads a running service's file: nothing it does can write to it.
#[tokio::test]
async fn a_database_opened_read_only_reads_and_refuses_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = db_with_rows(&dir).await;
    let mut tx = db.begin().await.unwrap();
    insert(&mut tx, 7).await;
    tx.commit().await.unwrap();

    let reader = Db::open_read_only(&url, "rows", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(rows(&reader).await, vec![(7, Some("row 7".to_owned()))]);
    let write = query("DELETE FROM rows").execute(reader.pool()).await;
    assert!(write.is_err(), "a read-only database took a write");
    assert_eq!(rows(&db).await.len(), 1);
}
