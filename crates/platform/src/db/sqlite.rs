//! SQLite through `rusqlite`, in the calling task (ADR 11). The service's one connection sits behind an
//! async lock; whoever holds it runs statements as plain function calls, a few µs each. sqlx ran every
//! statement on a thread of its own and answered over a channel, about 60 µs per round trip here even
//! on an idle machine, and the round trips were most of what the services spent on the database.
//!
//! Work runs on the async runtime's thread, so it must not wait inside SQLite: the busy timeout is 0
//! and a lock held by another process (an operator's shell, `orderflow verify`, a second instance) is
//! waited for here, asleep between attempts, for as long as sqlx's busy timeout waited before.

use super::query::Value;
use super::row::{RowRef, ValueRef};
use super::{DbError, SqlError};
use crate::backoff::{Backoff, Delays};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sqlx::migrate::{MigrateError, Migration};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// How long a statement waits for another process's lock before it fails as an outage.
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// The pauses between attempts while the file is locked.
const BUSY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(50));
/// How often the WAL is copied back into the database file (a passive checkpoint, off the hot path).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// The WAL is started over once it holds this many frames (4 MiB of 4 KiB pages, about what SQLite's
/// own checkpoints let it reach): an idle or lightly loaded service is not made to wait for the last
/// copy every round, and a busy one (order-service writes about 30 frames per order) every round. A
/// short WAL is also cheaper to read: every page read looks it up in the WAL's index first.
const START_OVER_AFTER: i64 = 1_024;
/// Every statement of the saga, several times over: the statement cache never evicts in steady state.
const STATEMENT_CACHE: usize = 256;

/// The connection, or `None` once the database was closed.
pub(crate) type Slot = Option<Connection>;

/// The one connection of a service.
#[derive(Debug, Clone)]
pub(crate) struct Sqlite {
    conn: Arc<Mutex<Slot>>,
}

/// What a statement hands each row it returns to; answers whether it wants the next one.
pub(crate) type RowSink<'a> = dyn FnMut(RowRef<'_>) -> Result<bool, SqlError> + Send + 'a;

/// The connection, held for a transaction or a statement.
pub(crate) type Held = OwnedMutexGuard<Slot>;

impl Sqlite {
    /// Opens the file of a `sqlite://path?mode=…` URL: `rwc` creates it, `ro` opens it read-only,
    /// anything else opens an existing file for writing.
    pub fn open(url: &str) -> Result<Sqlite, SqlError> {
        let (path, mode) = parse_url(url);
        let flags = open_flags(mode);
        let conn = Connection::open_with_flags(path, flags)?;
        // WAL with `synchronous=NORMAL` survives a process crash (SIGKILL) without losing a committed
        // transaction; foreign keys are off by default in SQLite. Checkpoints are not made by the
        // commits here (see `checkpoint_in_background`).
        // The journal size limit shrinks a WAL that grew large (a long transaction, or a file from
        // before `checkpoint_round`) back to it when the WAL starts over.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; \
             PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;",
        )?;
        // The bundled SQLite is built with STAT4, which recompiles a statement whenever a value bound
        // to an indexed column changes, in case the value calls for another plan: every execution of
        // the saga's statements. Our plans never depend on the values; the stability guarantee keeps
        // each statement compiled once.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let conn = Arc::new(Mutex::new(Some(conn)));
        if mode != Some("ro") {
            checkpoint_in_background(Connection::open_with_flags(path, flags)?, &conn)?;
        }
        Ok(Sqlite { conn })
    }

    /// Opens the file read-only, whatever mode the URL names, for a tool that reads a service's
    /// database while the service runs (`orderflow verify`). It runs no checkpoints: it writes nothing.
    pub fn open_read_only(url: &str) -> Result<Sqlite, SqlError> {
        let (path, _) = parse_url(url);
        let conn = Connection::open_with_flags(path, open_flags(Some("ro")))?;
        conn.busy_timeout(Duration::ZERO)?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(Some(conn))),
        })
    }

    /// Takes the connection, waiting for the statement or transaction that has it.
    pub async fn hold(&self) -> Result<Held, SqlError> {
        let held = Arc::clone(&self.conn).lock_owned().await;
        if held.is_none() {
            return Err(SqlError::Closed);
        }
        Ok(held)
    }

    /// `BEGIN IMMEDIATE`: the write lock at once, so that another process on the same file makes this
    /// one wait its turn instead of failing half-way when a transaction that has read tries to write.
    pub async fn begin(&self) -> Result<Held, SqlError> {
        let mut held = self.hold().await?;
        waiting_while_busy(|| run(connection(&mut held)?, &BEGIN, &mut |_| Ok(true))).await?;
        Ok(held)
    }

    /// Closes the connection; every later statement fails with [`SqlError::Closed`].
    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            // A close that fails (a statement still open) leaves SQLite to finish it when the
            // connection is dropped, which happens right here either way.
            let _ = conn.close();
        }
    }
}

/// `rwc` creates the file, `ro` opens it read-only, anything else opens an existing file for writing.
fn open_flags(mode: Option<&str>) -> OpenFlags {
    let access = match mode {
        Some("rwc") => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        Some("ro") => OpenFlags::SQLITE_OPEN_READ_ONLY,
        _ => OpenFlags::SQLITE_OPEN_READ_WRITE,
    };
    access | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// The bookkeeping table of sqlx's migrator, which applied orderflow's SQLite migrations before
/// [`migrate`] did: the same table, so a file migrated by an earlier orderflow is read as it is.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// Applies the migrations the file has not had yet, on a connection of its own that is closed
/// before the service opens its own. It blocks (waiting for the write lock): run it off the runtime.
///
/// Two processes opening one file at once (replicated instances) would both apply the first
/// migration: the write lock, taken first and held across all of them in one transaction, makes
/// the second wait and then find them applied. As sqlx's migrator did, it refuses a file whose
/// record says a migration half-failed, was changed since it was applied, or is unknown to this
/// version (a newer orderflow migrated it).
pub(crate) fn migrate(url: &str, migrations: &[Migration]) -> Result<(), DbError> {
    let (path, mode) = parse_url(url);
    let mut conn = Connection::open_with_flags(path, open_flags(mode)).map_err(DbError::open)?;
    // Two connections turning a new file to WAL at the same moment deadlock, and SQLite answers one
    // of them BUSY at once instead of calling its busy handler: replicated instances starting on a
    // new file together. The loser tries again; by then the file is in WAL mode.
    waiting_while_busy_blocking(|| conn.execute_batch("PRAGMA journal_mode=WAL;"))
        .map_err(DbError::open)?;
    conn.busy_timeout(BUSY_WAIT).map_err(DbError::open)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(DbError::migrations)?;
    tx.execute_batch(MIGRATIONS_TABLE)
        .map_err(DbError::migrations)?;
    let dirty: Option<i64> = tx
        .query_row(
            "SELECT version FROM _sqlx_migrations WHERE success = false ORDER BY version LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(DbError::migrations)?;
    if let Some(version) = dirty {
        return Err(DbError::Migrate(MigrateError::Dirty(version)));
    }
    let applied: BTreeMap<i64, Vec<u8>> = tx
        .prepare("SELECT version, checksum FROM _sqlx_migrations")
        .and_then(|mut select| {
            select
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .map_err(DbError::migrations)?;
    if let Some(unknown) = applied
        .keys()
        .find(|version| !migrations.iter().any(|m| m.version == **version))
    {
        return Err(DbError::Migrate(MigrateError::VersionMissing(*unknown)));
    }
    for migration in migrations {
        match applied.get(&migration.version) {
            Some(checksum) if checksum[..] != migration.checksum[..] => {
                return Err(DbError::Migrate(MigrateError::VersionMismatch(
                    migration.version,
                )));
            }
            Some(_) => {}
            None => {
                let started = Instant::now();
                let failed = |error: rusqlite::Error| DbError::Migration {
                    version: migration.version,
                    description: migration.description.to_string(),
                    source: error.into(),
                };
                tx.execute_batch(migration.sql.as_str()).map_err(failed)?;
                tx.execute(
                    "INSERT INTO _sqlx_migrations \
                     (version, description, success, checksum, execution_time) \
                     VALUES (?1, ?2, TRUE, ?3, ?4)",
                    rusqlite::params![
                        migration.version,
                        &*migration.description,
                        &*migration.checksum,
                        i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX),
                    ],
                )
                .map_err(failed)?;
            }
        }
    }
    tx.commit().map_err(DbError::migrations)?;
    conn.close()
        .map_err(|(_, error)| DbError::migrations(error))
}

/// Checks a `sqlite://PATH[?mode=ro|rw|rwc]` URL as [`Sqlite::open`] reads it: a parameter it would
/// not act on is refused rather than silently ignored.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if parse_url(url).0.is_empty() {
        return Err("it names no file".into());
    }
    let parameters = url.split_once('?').map_or("", |(_, query)| query);
    match parameters
        .split('&')
        .find(|pair| !matches!(*pair, "" | "mode=ro" | "mode=rw" | "mode=rwc"))
    {
        Some(pair) => Err(format!(
            "orderflow does not read '{pair}': the one parameter is mode=ro, mode=rw or mode=rwc"
        )),
        None => Ok(()),
    }
}

/// Copies the WAL back into the database file every [`CHECKPOINT_EVERY`], on a thread and a
/// connection of its own, for as long as the service's connection exists.
///
/// SQLite's own checkpoints run inside the commit that fills the WAL past 1,000 pages, on the
/// committing connection: here that is the service's only one, held by the task that committed, on a
/// runtime thread, for as long as copying the pages and syncing the file takes, and every request
/// and event waits behind it (p99 end-to-end grew with the checkpoint interval). A passive checkpoint
/// from another connection waits for no one and makes no one wait: SQLite lets it run beside the
/// writer, copying what was committed before it started. See [`checkpoint_round`] for why that alone
/// is not enough.
fn checkpoint_in_background(
    checkpointer: Connection,
    conn: &Arc<Mutex<Slot>>,
) -> Result<(), SqlError> {
    checkpointer.busy_timeout(Duration::ZERO)?;
    let service = Arc::downgrade(conn);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                std::thread::sleep(CHECKPOINT_EVERY);
                let Some(service) = service.upgrade() else {
                    break;
                };
                match checkpoint_round(&checkpointer, &service) {
                    Ok(Round::Closed) => break,
                    // Busy means another checkpoint (another process on the file) is running: the
                    // next round catches up.
                    Err(error) if error.is_busy() => {}
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(error = %error, every = ?CHECKPOINT_EVERY, "WAL checkpoints fail; trying again");
                    }
                    Err(_) => {}
                    Ok(Round::Done) if failing => {
                        failing = false;
                        tracing::info!("WAL checkpoints work again");
                    }
                    Ok(Round::Done) => {}
                }
            }
        })
        .map_err(SqlError::Checkpointer)?;
    Ok(())
}

/// How a checkpoint round ended.
enum Round {
    Done,
    /// The service closed its database: the checkpoints end with it.
    Closed,
}

/// One round of checkpoints. SQLite starts the WAL over from its beginning only when a write
/// transaction begins after a checkpoint copied all of it. A service under load commits while every
/// passive checkpoint runs and between it and its next transaction, so that moment never came and the
/// WAL grew for as long as the load lasted (2 GB after 25 s at 600 orders/s, every new block of it
/// zeroed by the kernel first: a fifth of the services' CPU). So the round first copies, beside the
/// writer, what was committed so far, and then copies the little committed meanwhile while the
/// service's connection is idle (its lock held for that long: a few pages and a sync). The next
/// transaction then finds the WAL wholly copied and starts it over.
fn checkpoint_round(checkpointer: &Connection, service: &Mutex<Slot>) -> Result<Round, SqlError> {
    // Closed means the slot is empty; a held connection is in use, so open.
    if service.try_lock().is_ok_and(|slot| slot.is_none()) {
        return Ok(Round::Closed);
    }
    if passive_checkpoint(checkpointer)? < START_OVER_AFTER {
        return Ok(Round::Done);
    }
    // Once more beside the writer: it copies what was committed during the first, which is less.
    passive_checkpoint(checkpointer)?;
    let idle = service.blocking_lock();
    if idle.is_none() {
        return Ok(Round::Closed);
    }
    passive_checkpoint(checkpointer)?;
    Ok(Round::Done)
}

/// A passive checkpoint; returns how many frames the WAL holds.
fn passive_checkpoint(checkpointer: &Connection) -> Result<i64, SqlError> {
    let frames = checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))?;
    Ok(frames)
}

static BEGIN: Statement = Statement::fixed("BEGIN IMMEDIATE");
static COMMIT: Statement = Statement::fixed("COMMIT");
static ROLLBACK: Statement = Statement::fixed("ROLLBACK");

/// SQL text with its bound values.
pub(crate) struct Statement<'q> {
    pub sql: &'q str,
    pub values: &'q [Value],
}

impl Statement<'static> {
    const fn fixed(sql: &'static str) -> Self {
        Statement { sql, values: &[] }
    }
}

/// The connection a statement runs on. Taken mutably though SQLite only reads it: a shared borrow
/// held across an await would need the connection to be `Sync`, which it is not.
pub(crate) fn connection(held: &mut Held) -> Result<&Connection, SqlError> {
    held.as_ref().ok_or(SqlError::Closed)
}

pub(crate) fn commit(held: &mut Held) -> Result<(), SqlError> {
    run(connection(held)?, &COMMIT, &mut |_| Ok(true)).map(drop)
}

/// Ends a transaction that did not commit (dropped, failed, or rolled back on purpose). Nothing is
/// left to undo when SQLite already rolled it back by itself (after some errors) or it never began.
pub(crate) fn rollback(held: &mut Held) -> Result<(), SqlError> {
    match held.as_ref() {
        Some(conn) if !conn.is_autocommit() => run(conn, &ROLLBACK, &mut |_| Ok(true)).map(drop),
        _ => Ok(()),
    }
}

/// A statement on its own (autocommit), waiting out another process's lock.
pub(crate) async fn run_alone(
    mut held: Held,
    statement: &Statement<'_>,
    each_row: &mut RowSink<'_>,
) -> Result<u64, SqlError> {
    waiting_while_busy(|| run(connection(&mut held)?, statement, &mut *each_row)).await
}

/// Runs one statement, handing each row it returns to `each_row` until that answers `false`; returns
/// the number of rows it changed. Its placeholders are `$1`, `$2`, … as on PostgreSQL, bound by name
/// so that their order in the text does not matter.
pub(crate) fn run(
    conn: &Connection,
    statement: &Statement<'_>,
    each_row: &mut RowSink<'_>,
) -> Result<u64, SqlError> {
    let mut prepared = conn.prepare_cached(statement.sql)?;
    if prepared.parameter_count() != statement.values.len() {
        return Err(SqlError::Bind(format!(
            "the statement has {} placeholders and {} values were bound: {}",
            prepared.parameter_count(),
            statement.values.len(),
            statement.sql
        )));
    }
    for (number, value) in (1..).zip(statement.values) {
        let name = placeholder(number);
        match value {
            Value::Integer(n) => prepared.raw_bind_parameter(name.as_ref(), n)?,
            Value::Text(text) => prepared.raw_bind_parameter(name.as_ref(), text)?,
            Value::Blob(bytes) => prepared.raw_bind_parameter(name.as_ref(), bytes)?,
        }
    }
    if prepared.column_count() == 0 {
        return Ok(prepared.raw_execute()? as u64);
    }
    let mut rows = prepared.raw_query();
    while let Some(row) = rows.next()? {
        let columns = row.as_ref().column_count();
        let names = (0..columns)
            .map(|i| row.as_ref().column_name(i))
            .collect::<Result<Vec<&str>, _>>()?;
        let values = (0..columns)
            .map(|i| row.get_ref(i).map(value))
            .collect::<Result<Vec<_>, _>>()?;
        if !each_row(RowRef { names, values })? {
            break;
        }
    }
    drop(rows);
    Ok(conn.changes())
}

/// `$1`, `$2`, …: the names of the first placeholders are written once, not for every bound value.
fn placeholder(number: usize) -> std::borrow::Cow<'static, str> {
    static NAMES: LazyLock<Vec<String>> =
        LazyLock::new(|| (1..=COMMON_PLACEHOLDERS).map(|n| format!("${n}")).collect());
    match NAMES.get(number - 1) {
        Some(name) => std::borrow::Cow::Borrowed(name),
        None => std::borrow::Cow::Owned(format!("${number}")),
    }
}

/// A multi-row insert of a full batch (100 events × 5 columns) binds this many.
const COMMON_PLACEHOLDERS: usize = 512;

fn value(raw: rusqlite::types::ValueRef<'_>) -> ValueRef<'_> {
    use rusqlite::types::ValueRef as Raw;
    match raw {
        Raw::Null => ValueRef::Null,
        Raw::Integer(n) => ValueRef::Integer(n),
        Raw::Real(x) => ValueRef::Real(x),
        // SQLite keeps whatever bytes it was given; ours are always UTF-8 (bound from `&str`).
        Raw::Text(bytes) => std::str::from_utf8(bytes)
            .map(ValueRef::Text)
            .unwrap_or(ValueRef::Blob(bytes)),
        Raw::Blob(bytes) => ValueRef::Blob(bytes),
    }
}

/// The pauses between attempts while another connection holds a lock, for [`BUSY_WAIT`] in all.
struct BusyWait {
    deadline: tokio::time::Instant,
    pauses: Delays,
}

impl BusyWait {
    fn new() -> Self {
        BusyWait {
            deadline: tokio::time::Instant::now() + BUSY_WAIT,
            pauses: BUSY_BACKOFF.delays(),
        }
    }

    /// How long to pause before trying again after a failure (`busy`: because of another
    /// connection's lock); `None` when it is no lock to wait out, or the wait is over.
    fn pause_after(&mut self, busy: bool) -> Option<Duration> {
        (busy && tokio::time::Instant::now() < self.deadline)
            .then(|| self.pauses.next().unwrap_or(BUSY_BACKOFF.max()))
    }
}

async fn waiting_while_busy<T>(
    mut attempt: impl FnMut() -> Result<T, SqlError>,
) -> Result<T, SqlError> {
    let mut wait = BusyWait::new();
    loop {
        match attempt() {
            Err(error) => match wait.pause_after(error.is_busy()) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(error),
            },
            done => return done,
        }
    }
}

/// [`waiting_while_busy`] for work off the runtime ([`migrate`]): asleep on its own thread.
fn waiting_while_busy_blocking<T>(
    mut attempt: impl FnMut() -> Result<T, rusqlite::Error>,
) -> Result<T, rusqlite::Error> {
    let mut wait = BusyWait::new();
    loop {
        match attempt() {
            Err(error) => match wait
                .pause_after(error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy))
            {
                Some(pause) => std::thread::sleep(pause),
                None => return Err(error),
            },
            done => return done,
        }
    }
}

/// The file and the `mode` parameter of a SQLite URL.
pub(crate) fn parse_url(url: &str) -> (&str, Option<&str>) {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mode = query.split('&').find_map(|pair| pair.strip_prefix("mode="));
    (path, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_and_a_mode() {
        assert_eq!(
            parse_url("sqlite://.orderflow/order.db?mode=rwc"),
            (".orderflow/order.db", Some("rwc"))
        );
        assert_eq!(
            parse_url("sqlite:///data/x.db?cache=shared&mode=ro"),
            ("/data/x.db", Some("ro"))
        );
        assert_eq!(parse_url("sqlite:x.db"), ("x.db", None));
    }

    #[test]
    fn a_url_with_a_parameter_that_would_be_ignored_is_refused() {
        for usable in [
            "sqlite://.orderflow/order.db?mode=rwc",
            "sqlite:///data/x.db?mode=ro",
            "sqlite:x.db",
        ] {
            assert_eq!(check_url(usable), Ok(()), "{usable}");
        }
        for refused in [
            "sqlite://",
            "sqlite://x.db?mode=memory",
            "sqlite://x.db?mode=rwc&cache=shared",
        ] {
            assert!(check_url(refused).is_err(), "{refused}");
        }
    }
}
