//! The database of a service, from `DATABASE_URL`: SQLite (embedded, the default) through `rusqlite` on
//! one connection used in the calling task (ADR 11), or PostgreSQL (production) through a sqlx pool.
//! One set of SQL serves both ([`query`]); it sticks to what both understand: `$n` placeholders,
//! `ON CONFLICT`, `RETURNING`, integers and text. Timestamps are stored as Unix microseconds (`*_us`
//! columns) so they sort and compare the same way on both backends. Migrations go through sqlx's
//! migrator on PostgreSQL and through our own, which keeps the same record, on SQLite (sqlx's SQLite
//! driver would otherwise be in the binary only for them).

mod at_commit;
mod postgres;
mod query;
mod row;
mod sqlite;

pub use at_commit::InsertAtCommit;
pub use query::{Executor, Query, Value, query};
pub use row::DecodeError;

use crate::outbox::OutboxSignal;
use contracts::Priority;
use sqlite::Sqlite;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, Executor as _, SqlSafeStr};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The most messages (or requests) applied in one transaction: a consumer applies a batch pulled in
/// transactions of this many, order-service new orders that arrive together. Larger ones gained
/// little (a commit is a fraction of handling 32 events) and held the database that much longer from
/// the express lane.
pub const TX_BATCH: usize = 32;

/// PostgreSQL connections one instance of a service uses at most.
const MAX_CONNECTIONS: u32 = 10;

/// A transaction on the service's database. Handlers receive one and never commit it themselves: the
/// caller owns the boundary, so state, inbox and outbox always commit together. Dropped without a
/// commit, it rolls back.
///
/// It also carries who must hear of the commit: the outbox relay when rows were added to the outbox
/// ([`crate::outbox::enqueue`]), and whatever a writer asked for with [`Tx::after_commit`] (waking the
/// task that acts on its rows). They run only once the commit succeeded, so no task looks before the
/// rows are there, and none is woken for nothing (a relay woken after every commit read an empty
/// outbox several times per order).
pub struct Tx {
    inner: TxInner,
    outbox: OutboxSignal,
    /// The lanes whose outbox rows the transaction added: their relays are woken after the commit.
    outbox_written: Vec<Priority>,
    /// Rows inserted together just before the transaction commits, by table.
    at_commit: Vec<at_commit::Pending>,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
}

enum TxInner {
    Sqlite(SqliteTx),
    /// A connection inside `BEGIN`; rolled back when dropped before its commit.
    Postgres(postgres::Checkout),
}

/// The held SQLite connection inside `BEGIN IMMEDIATE`; rolled back when dropped before its commit.
struct SqliteTx(sqlite::Held);

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Err(error) = sqlite::rollback(&mut self.0) {
            tracing::warn!(error = %error, "a SQLite transaction could not be rolled back");
        }
    }
}

/// A PostgreSQL connection of its own ([`Db::session`]), for work that keeps state in its session
/// between statements: an advisory lock held from one step to the next. It is closed when dropped
/// and never shared, so whatever the session holds ends with it, and no other work ever finds a lock
/// it did not take on a connection it was given.
#[derive(Debug)]
pub struct Session(sqlx::PgConnection);

impl Session {
    /// What the session's statements execute on, each on its own (autocommit).
    pub fn conn(&mut self) -> Executor<'_> {
        Executor::Session(self)
    }
}

impl Tx {
    /// What the transaction's statements execute on.
    pub fn conn(&mut self) -> Executor<'_> {
        Executor::Tx(self)
    }

    /// Runs `then` once this transaction has committed; never if it does not.
    pub fn after_commit(&mut self, then: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(then));
    }

    /// Adds a row to `table`, inserted with the transaction's other rows of it just before it
    /// commits: a batch that emits many events, or records them, does so with one statement. The row
    /// is not there for the transaction's own statements to read, so only rows that no one reads
    /// before the commit go this way.
    pub fn insert_at_commit<const COLUMNS: usize>(
        &mut self,
        table: &'static InsertAtCommit<COLUMNS>,
        row: [Value; COLUMNS],
    ) {
        at_commit::add(&mut self.at_commit, table, row);
    }

    /// Notes that the transaction added rows to the outbox, so the relay is woken after the commit.
    pub(crate) fn outbox_written(&mut self, lane: Priority) {
        if !self.outbox_written.contains(&lane) {
            self.outbox_written.push(lane);
        }
    }

    pub async fn commit(mut self) -> Result<(), SqlError> {
        let at_commit = std::mem::take(&mut self.at_commit);
        at_commit::insert(&mut self, at_commit).await?;
        match self.inner {
            TxInner::Sqlite(mut held) => sqlite::commit(&mut held.0)?,
            TxInner::Postgres(mut checkout) => {
                checkout.conn()?.execute("COMMIT").await?;
                checkout.finished();
            }
        }
        for lane in self.outbox_written {
            self.outbox.wake(lane);
        }
        for then in self.after_commit {
            then();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), SqlError> {
        match self.inner {
            TxInner::Sqlite(mut held) => sqlite::rollback(&mut held.0),
            TxInner::Postgres(mut checkout) => {
                checkout.conn()?.execute("ROLLBACK").await?;
                checkout.finished();
                Ok(())
            }
        }
    }
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] sqlx::Error),
    #[error("the statement returned no row")]
    NoRow,
    #[error("cannot bind the statement's values: {0}")]
    Bind(String),
    #[error("cannot read a stored row: {0}")]
    Decode(String),
    #[error("the database was closed")]
    Closed,
    #[error("cannot start SQLite's checkpoint thread")]
    Checkpointer(#[source] std::io::Error),
}

impl From<DecodeError> for SqlError {
    fn from(error: DecodeError) -> Self {
        SqlError::Decode(error.0)
    }
}

impl SqlError {
    /// SQLite's primary result code, if SQLite answered.
    fn sqlite_code(&self) -> Option<i32> {
        match self {
            SqlError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => {
                Some(failure.extended_code)
            }
            _ => None,
        }
    }

    /// Another connection holds the lock this statement needs.
    fn is_busy(&self) -> bool {
        self.sqlite_code()
            .is_some_and(|code| code & 0xff == rusqlite::ffi::SQLITE_BUSY)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One embedded migration, in both SQL dialects. Most migrations are one file (`NNNN_name.sql`) used
/// for both; where DDL must differ (identity columns, byte types, collations) there is a
/// `.sqlite.sql` and a `.postgres.sql`.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSql {
    /// Services number theirs from 100 up; 1–99 belong to platform tables (outbox, inbox).
    pub version: i64,
    pub description: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

const PLATFORM_MIGRATIONS: &[MigrationSql] = &[
    MigrationSql {
        version: 1,
        description: "outbox and inbox",
        sqlite: include_str!("../../migrations/0001_outbox_inbox.sqlite.sql"),
        postgres: include_str!("../../migrations/0001_outbox_inbox.postgres.sql"),
    },
    MigrationSql {
        version: 2,
        description: "delivery failures and retention indexes",
        sqlite: include_str!("../../migrations/0002_delivery_and_retention.sql"),
        postgres: include_str!("../../migrations/0002_delivery_and_retention.sql"),
    },
    MigrationSql {
        version: 3,
        description: "outbox publish versions",
        sqlite: include_str!("../../migrations/0003_outbox_publish_versions.sql"),
        postgres: include_str!("../../migrations/0003_outbox_publish_versions.sql"),
    },
    MigrationSql {
        version: 4,
        description: "outbox traceparent",
        sqlite: include_str!("../../migrations/0004_outbox_traceparent.sql"),
        postgres: include_str!("../../migrations/0004_outbox_traceparent.sql"),
    },
    MigrationSql {
        version: 5,
        description: "outbox priority",
        sqlite: include_str!("../../migrations/0005_outbox_priority.sql"),
        postgres: include_str!("../../migrations/0005_outbox_priority.sql"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Holds the URL with its password masked (see [`crate::config::redact`]).
    #[error("DATABASE_URL must start with sqlite:// or postgres://, got '{0}'")]
    UnsupportedUrl(String),
    #[error("schema name '{0}' must be lowercase letters, digits and underscores")]
    InvalidSchema(String),
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("the database did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("cannot open the database file")]
    Open(#[source] SqlError),
    /// On SQLite too, where our migrator answers with sqlx's bookkeeping errors (a migration changed
    /// since it was applied, one this version does not know, one that half-failed).
    #[error("cannot apply migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("cannot apply migrations to the SQLite file")]
    MigrateSqlite(#[source] SqlError),
    #[error("cannot apply migration {version} ({description})")]
    Migration {
        version: i64,
        description: String,
        #[source]
        source: SqlError,
    },
    #[error("the task applying the SQLite migrations failed")]
    MigrationTask(#[source] tokio::task::JoinError),
}

impl DbError {
    fn open(error: rusqlite::Error) -> Self {
        DbError::Open(error.into())
    }

    fn migrations(error: rusqlite::Error) -> Self {
        DbError::MigrateSqlite(error.into())
    }
}

/// The service's database, and the signal that wakes its outbox relay (every transaction begun here
/// wakes it after committing outbox rows).
///
/// A handle works for one lane ([`Db::prioritized`]). The normal lane's work first queues for its
/// turn, one at a time, before it queues for the connection (SQLite's one, or one of the pool's);
/// express work queues for the connection straight away. So an express transaction waits for the
/// work holding the connection and at most one normal transaction more, however many requests and
/// consumers of the normal lane are waiting: under a flood, that queue is where its time would go.
#[derive(Debug, Clone)]
pub struct Db {
    store: Store,
    outbox: OutboxSignal,
    normal_turn: Arc<tokio::sync::Mutex<()>>,
    priority: Priority,
}

/// SQLite: one connection (one writer), used in the calling task. PostgreSQL: connections taken
/// for each transaction or statement and given back.
#[derive(Debug, Clone)]
enum Store {
    Sqlite(Sqlite),
    Postgres(Arc<postgres::Connections>),
}

impl Db {
    fn new(store: Store) -> Db {
        Db {
            store,
            outbox: OutboxSignal::default(),
            normal_turn: Arc::default(),
            priority: Priority::Normal,
        }
    }

    /// The same database, for the work of `priority`'s lane.
    pub fn prioritized(&self, priority: Priority) -> Db {
        Db {
            priority,
            ..self.clone()
        }
    }

    /// Waits for the normal lane's turn to queue for a connection; express work needs none. Held
    /// until the connection is taken.
    async fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.priority {
            Priority::Normal => Some(self.normal_turn.lock().await),
            Priority::Express => None,
        }
    }

    /// Connects, isolates the service in its own schema (PostgreSQL) and applies the platform's and the
    /// service's embedded migrations.
    pub async fn connect(
        url: &str,
        schema: &str,
        migrations: &[MigrationSql],
    ) -> Result<Db, DbError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(crate::config::redact(url)));
        };
        let schema = schema_name(schema).map_err(|_| DbError::InvalidSchema(schema.to_owned()))?;
        let migrations = embedded_migrations(backend, migrations);
        let store = match backend {
            Backend::Sqlite => {
                if let Some(dir) = sqlite_parent_dir(url) {
                    // SQLite creates the file, not its folder; a failure here shows up as a clearer
                    // open error just below.
                    let _ = std::fs::create_dir_all(dir);
                }
                let file = url.to_owned();
                tokio::task::spawn_blocking(move || sqlite::migrate(&file, &migrations))
                    .await
                    .map_err(DbError::MigrationTask)??;
                Store::Sqlite(Sqlite::open(url).map_err(DbError::Open)?)
            }
            Backend::Postgres => {
                create_schema(url, &schema).await?;
                let acquire_timeout = Duration::from_secs(30);
                let pool = pool_options(&schema, "")
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(acquire_timeout)
                    .connect(url)
                    .await
                    .map_err(DbError::Connect)?;
                // sqlx takes an advisory lock on PostgreSQL, so concurrent starts take turns.
                Migrator::with_migrations(migrations)
                    .run(&pool)
                    .await
                    .map_err(DbError::Migrate)?;
                Store::Postgres(postgres::Connections::new(
                    pool,
                    MAX_CONNECTIONS as usize,
                    acquire_timeout,
                ))
            }
        };
        Ok(Db::new(store))
    }

    /// Opens a service's database to read it while the service runs (`orderflow verify`): no
    /// migrations, nothing written. SQLite opens the file read-only whatever mode the URL names;
    /// PostgreSQL gives one connection in the service's schema, whose transactions are read-only. An
    /// operator waits for this: an unreachable server fails after `patience`.
    pub async fn open_read_only(
        url: &str,
        schema: &str,
        patience: Duration,
    ) -> Result<Db, DbError> {
        let store = if url.starts_with("sqlite:") {
            Store::Sqlite(Sqlite::open_read_only(url).map_err(DbError::Open)?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let schema =
                schema_name(schema).map_err(|_| DbError::InvalidSchema(schema.to_owned()))?;
            // A connection of its own first: the pool retries a failing connect until `patience`
            // runs out and then says only that it timed out, where the operator needs the cause
            // (connection refused, no such database, authentication failed).
            let probe = tokio::time::timeout(patience, sqlx::PgConnection::connect(url))
                .await
                .map_err(|_| DbError::NoAnswer(patience))?
                .map_err(DbError::Connect)?;
            probe.close().await.map_err(DbError::Connect)?;
            let pool = pool_options(&schema, "SET default_transaction_read_only = on;")
                .max_connections(1)
                .acquire_timeout(patience)
                .connect(url)
                .await
                .map_err(DbError::Connect)?;
            Store::Postgres(postgres::Connections::new(pool, 1, patience))
        } else {
            return Err(DbError::UnsupportedUrl(crate::config::redact(url)));
        };
        Ok(Db::new(store))
    }

    /// Statements on their own, each its own transaction: on PostgreSQL on any connection of the
    /// pool, on SQLite on the one connection once no transaction holds it.
    pub fn pool(&self) -> Executor<'_> {
        Executor::Pool(self)
    }

    /// A connection of its own on PostgreSQL, set up like the others (the service's schema) but not
    /// counted among them; `None` on SQLite, whose one connection everything shares.
    pub async fn session(&self) -> Result<Option<Session>, SqlError> {
        match &self.store {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(connections) => Ok(Some(Session(connections.detached().await?))),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.store {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// What wakes this service's outbox relay.
    pub(crate) fn outbox_signal(&self) -> &OutboxSignal {
        &self.outbox
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so
    /// that a second process on the same file waits its turn instead of failing half-way when a
    /// transaction that has read tries to write.
    pub async fn begin(&self) -> Result<Tx, SqlError> {
        let turn = self.turn().await;
        let inner = match &self.store {
            Store::Sqlite(sqlite) => TxInner::Sqlite(SqliteTx(sqlite.begin().await?)),
            Store::Postgres(connections) => {
                let mut checkout = connections.checkout().await?;
                checkout.conn()?.execute("BEGIN").await?;
                TxInner::Postgres(checkout)
            }
        };
        drop(turn);
        Ok(Tx {
            inner,
            outbox: self.outbox.clone(),
            outbox_written: Vec::new(),
            at_commit: Vec::new(),
            after_commit: Vec::new(),
        })
    }

    /// Readiness check: can we write within a second? On SQLite that means taking the write lock
    /// (and giving it back at once): a file locked by another process still answers reads, and a
    /// service that cannot write cannot do its work. On PostgreSQL an answer to `SELECT 1` says it.
    pub async fn ping(&self) -> Result<(), String> {
        let probe = async {
            match self.backend() {
                Backend::Sqlite => self.begin().await?.rollback().await,
                Backend::Postgres => query("SELECT 1").execute(self.pool()).await.map(drop),
            }
        };
        match tokio::time::timeout(Duration::from_secs(1), probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 1 s".into()),
        }
    }

    pub async fn close(&self) {
        match &self.store {
            Store::Sqlite(sqlite) => sqlite.close().await,
            Store::Postgres(connections) => connections.close().await,
        }
    }
}

/// The platform's and the service's migrations in the backend's dialect, each with the checksum both
/// migrators record.
fn embedded_migrations(backend: Backend, service: &[MigrationSql]) -> Vec<Migration> {
    PLATFORM_MIGRATIONS
        .iter()
        .chain(service)
        .map(|m| {
            let sql = match backend {
                Backend::Sqlite => m.sqlite,
                Backend::Postgres => m.postgres,
            };
            Migration::new(
                m.version,
                m.description.into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect()
}

/// The service's own schema on PostgreSQL, created if it is not there yet.
async fn create_schema(url: &str, schema: &str) -> Result<(), DbError> {
    let mut setup = sqlx::PgConnection::connect(url)
        .await
        .map_err(DbError::Connect)?;
    // Several instances may start at once and `IF NOT EXISTS` does not see an uncommitted schema:
    // a transaction-scoped advisory lock makes the second wait until the first has committed.
    setup
        .execute(AssertSqlSafe(format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7234); \
             CREATE SCHEMA IF NOT EXISTS \"{schema}\"; COMMIT;"
        )))
        .await
        .map_err(DbError::Connect)?;
    setup.close().await.map_err(DbError::Connect)
}

/// Every connection's `search_path` points at the service's own schema, so the same unqualified SQL
/// runs on SQLite and PostgreSQL and no service can see another's tables by accident; `set_up` is
/// run after it on every new connection.
///
/// The pool only opens connections, which are detached from it at once ([`postgres::Connections`]),
/// so it pings none when one is taken: a connection that breaks while idle fails its next statement,
/// which the callers retry as an outage.
fn pool_options(schema: &str, set_up: &str) -> PgPoolOptions {
    // Quoted: a service name such as `order` is a reserved word in SQL.
    let set_up = format!("SET search_path TO \"{schema}\"; {set_up}");
    PgPoolOptions::new()
        .test_before_acquire(false)
        .after_connect(move |conn, _meta| {
            let set_up = set_up.clone();
            Box::pin(async move {
                conn.execute(AssertSqlSafe(set_up)).await?;
                Ok(())
            })
        })
}

/// A PostgreSQL schema name orderflow accepts: lowercase letters, digits and underscores. Also the
/// value parser of `--db-schema`.
pub fn schema_name(raw: &str) -> Result<String, String> {
    if raw.is_empty()
        || raw.len() > 63
        || !raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "'{}' is not a schema name: use 1 to 63 lowercase letters, digits and underscores",
            raw.escape_debug()
        ));
    }
    Ok(raw.to_owned())
}

/// The file a SQLite URL (`sqlite://PATH?...`) names; `None` for any other URL.
pub fn sqlite_file(url: &str) -> Option<&str> {
    url.starts_with("sqlite:").then(|| sqlite::parse_url(url).0)
}

/// Checks a `sqlite://PATH[?mode=ro|rw|rwc]` URL as the services open it; says why it is refused.
pub fn check_sqlite_url(url: &str) -> Result<(), String> {
    sqlite::check_url(url)
}

/// The folder of a SQLite URL's file, if it names one.
fn sqlite_parent_dir(url: &str) -> Option<std::path::PathBuf> {
    let parent = std::path::Path::new(sqlite_file(url)?).parent()?;
    (!parent.as_os_str().is_empty()).then(|| parent.to_path_buf())
}

/// `true` when the error says the database itself is unavailable (unreachable, out of connections,
/// shutting down, failed over to a read-only standby, locked by another process, out of disk, closed),
/// and nothing about the statement or the data: retrying the same work once the database is back will
/// work. Constraint violations, missing tables and every other answer about the statement are not.
pub fn is_infrastructure(error: &SqlError) -> bool {
    match error {
        SqlError::Postgres(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed,
        )
        | SqlError::Closed => true,
        SqlError::Postgres(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| sqlstate_is_infrastructure(&code)),
        SqlError::Sqlite(_) => error
            .sqlite_code()
            .is_some_and(sqlite_code_is_infrastructure),
        _ => false,
    }
}

/// PostgreSQL answers with a five-character SQLSTATE.
fn sqlstate_is_infrastructure(code: &str) -> bool {
    // 08: connection exception; 53: insufficient resources (disk full, out of memory, too many
    // connections); 58: system error (I/O); 57P01-03: the server is shutting down or starting;
    // 57014: the statement was cancelled; 55P03: a lock could not be had; 25006: read-only
    // transaction, which is what a standby answers during a failover.
    matches!(code.get(..2), Some("08" | "53" | "58"))
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "25006"
        )
}

/// SQLite answers with its extended result code, whose low byte is the primary code: BUSY, LOCKED,
/// NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL.
fn sqlite_code_is_infrastructure(extended: i32) -> bool {
    matches!(extended & 0xff, 5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 15)
}

/// The `VALUES` list of a multi-row insert of `rows` rows of `columns` values each, numbered in row
/// order: `($1, $2), ($3, $4)` for two rows of two. Only these placeholders are formatted into the
/// statement; the values are bound, in the same order.
pub fn values_placeholders(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let numbers: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", numbers.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `true` when the error is a unique-constraint violation (a duplicate key), on either backend.
pub fn is_unique_violation(error: &SqlError) -> bool {
    match error {
        SqlError::Postgres(sqlx::Error::Database(db)) => db.is_unique_violation(),
        // SQLITE_CONSTRAINT_PRIMARYKEY and SQLITE_CONSTRAINT_UNIQUE.
        _ => error
            .sqlite_code()
            .is_some_and(|code| matches!(code, 1555 | 2067)),
    }
}

pub fn now_us() -> i64 {
    to_us(OffsetDateTime::now_utc())
}

pub fn to_us(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

/// A span of time in whole microseconds, as `*_us` columns and counters hold it; saturates at
/// `i64::MAX` (292,000 years).
pub fn duration_us(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Converts a stored `*_us` column back; out-of-range values (never written by us) clamp to the epoch.
pub fn from_us(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 text of a stored timestamp, as the HTTP API shows it.
pub fn format_us(us: i64) -> String {
    from_us(us)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_folder() {
        assert_eq!(
            sqlite_parent_dir("sqlite://.orderflow/order.db?mode=rwc"),
            Some(std::path::PathBuf::from(".orderflow"))
        );
        assert_eq!(sqlite_parent_dir("sqlite://order.db"), None);
        assert_eq!(sqlite_parent_dir("postgres://h/db"), None);
    }

    #[test]
    fn a_sqlite_url_names_its_file() {
        assert_eq!(
            sqlite_file("sqlite://./.orderflow/order.db?mode=ro"),
            Some("./.orderflow/order.db")
        );
        assert_eq!(sqlite_file("sqlite:///data/x.db"), Some("/data/x.db"));
        assert_eq!(sqlite_file("postgres://db/x"), None);
    }

    #[test]
    fn a_multi_row_insert_numbers_its_placeholders_row_by_row() {
        assert_eq!(values_placeholders(1, 3), "($1, $2, $3)");
        assert_eq!(values_placeholders(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(values_placeholders(0, 4), "");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(schema_name("order").is_ok());
        assert!(schema_name("inventory_2").is_ok());
        for bad in ["", "Order", "a-b", "x;drop", &"a".repeat(64)] {
            assert!(schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outages_are_told_apart_from_answers_about_the_statement() {
        assert!(is_infrastructure(&SqlError::Postgres(
            sqlx::Error::PoolTimedOut
        )));
        assert!(is_infrastructure(&SqlError::Postgres(sqlx::Error::Io(
            std::io::Error::other("reset")
        ))));
        assert!(is_infrastructure(&SqlError::Closed));
        assert!(!is_infrastructure(&SqlError::NoRow));
        for outage in ["08006", "53100", "57P01", "25006"] {
            assert!(sqlstate_is_infrastructure(outage), "{outage}");
        }
        for answer in ["23505", "42P01", "40001"] {
            assert!(!sqlstate_is_infrastructure(answer), "{answer}");
        }
        for outage in [5, 517, 6, 13, 266] {
            assert!(sqlite_code_is_infrastructure(outage), "{outage}");
        }
        for answer in [1, 19, 2067] {
            assert!(!sqlite_code_is_infrastructure(answer), "{answer}");
        }
    }
}
