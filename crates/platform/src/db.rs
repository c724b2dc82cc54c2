//! The database: one pool per service from `DATABASE_URL`, SQLite (embedded, the default) or PostgreSQL
//! (production), through sqlx's `Any` driver so one set of SQL serves both. The SQL in this project
//! sticks to what both understand: `$n` placeholders, `ON CONFLICT`, `RETURNING`, integers and text.
//! Timestamps are stored as Unix microseconds (`*_us` columns) so they sort and compare the same way on
//! both backends.

use crate::outbox::OutboxSignal;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Connection, Executor, SqlSafeStr};
use std::time::Duration;
use time::OffsetDateTime;

/// A transaction on the service's database. Handlers receive one and never commit it themselves: the
/// caller owns the boundary, so state, inbox and outbox always commit together.
///
/// It also carries who must hear of the commit: the outbox relay when rows were added to the outbox
/// ([`crate::outbox::enqueue`]), and whatever a writer asked for with [`Tx::after_commit`] (waking the
/// task that acts on its rows). They run only once the commit succeeded, so no task looks before the
/// rows are there, and none is woken for nothing (a relay woken after every commit read an empty
/// outbox several times per order).
pub struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Any>,
    outbox: OutboxSignal,
    outbox_written: bool,
    after_commit: Vec<Box<dyn FnOnce() + Send>>,
}

impl Tx {
    /// The connection the transaction runs on: what its statements execute on.
    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.inner
    }

    /// Runs `then` once this transaction has committed; never if it does not.
    pub fn after_commit(&mut self, then: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(then));
    }

    /// Notes that the transaction added rows to the outbox, so the relay is woken after the commit.
    pub(crate) fn outbox_written(&mut self) {
        self.outbox_written = true;
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await?;
        if self.outbox_written {
            self.outbox.wake();
        }
        for then in self.after_commit {
            then();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
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
        sqlite: include_str!("../migrations/0001_outbox_inbox.sqlite.sql"),
        postgres: include_str!("../migrations/0001_outbox_inbox.postgres.sql"),
    },
    MigrationSql {
        version: 2,
        description: "delivery failures and retention indexes",
        sqlite: include_str!("../migrations/0002_delivery_and_retention.sql"),
        postgres: include_str!("../migrations/0002_delivery_and_retention.sql"),
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
    #[error("cannot apply migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// The service's connection pool, which backend it talks to, and the signal that wakes its outbox
/// relay (every transaction begun here wakes it after committing outbox rows).
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    outbox: OutboxSignal,
}

impl Db {
    /// Connects, isolates the service in its own schema (PostgreSQL) and applies the platform's and the
    /// service's embedded migrations.
    pub async fn connect(
        url: &str,
        schema: &str,
        migrations: &[MigrationSql],
    ) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(crate::config::redact(url)));
        };
        let schema = schema_name(schema).map_err(|_| DbError::InvalidSchema(schema.to_owned()))?;
        if let Some(dir) = sqlite_parent_dir(url) {
            // SQLite creates the file, not its folder; a failure here shows up as a clearer connect
            // error just below.
            let _ = std::fs::create_dir_all(dir);
        }

        let pool = match backend {
            Backend::Sqlite => Self::sqlite_pool(url).await?,
            Backend::Postgres => Self::postgres_pool(url, &schema).await?,
        };
        let db = Db {
            pool,
            backend,
            outbox: OutboxSignal::default(),
        };
        db.migrate(migrations).await?;
        Ok(db)
    }

    /// SQLite allows one writer at a time; a single connection serializes this process's transactions
    /// instead of failing them with SQLITE_BUSY. WAL with `synchronous=NORMAL` survives a process crash
    /// (SIGKILL) without losing a committed transaction.
    ///
    /// Neither pool pings a connection when it is taken from the pool: sqlx already pings each one
    /// when it is given back (and drops a broken one), and the second ping cost a round trip to the
    /// connection's thread (SQLite) or the server (PostgreSQL) for every transaction and every
    /// statement run on the pool, about a quarter of the services' context switches. A connection that
    /// breaks while idle fails its next statement, which the callers retry as an outage.
    async fn sqlite_pool(url: &str) -> Result<AnyPool, DbError> {
        AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                         PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;",
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(DbError::Connect)
    }

    /// Every connection's `search_path` points at the service's own schema, so the same unqualified SQL
    /// runs on SQLite and PostgreSQL and no service can see another's tables by accident.
    async fn postgres_pool(url: &str, schema: &str) -> Result<AnyPool, DbError> {
        let mut setup = sqlx::AnyConnection::connect(url)
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
        setup.close().await.map_err(DbError::Connect)?;

        // Quoted: a service name such as `order` is a reserved word in SQL.
        let set_path = format!("SET search_path TO \"{schema}\"");
        AnyPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(AssertSqlSafe(set_path)).await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(DbError::Connect)
    }

    async fn migrate(&self, service: &[MigrationSql]) -> Result<(), DbError> {
        let migrations = PLATFORM_MIGRATIONS
            .iter()
            .chain(service)
            .map(|m| {
                let sql = match self.backend {
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
            .collect();
        let migrator = Migrator::with_migrations(migrations);
        match self.backend {
            // sqlx takes an advisory lock on PostgreSQL, so concurrent starts take turns.
            Backend::Postgres => migrator.run(&self.pool).await.map_err(DbError::Migrate),
            // On SQLite it takes none, and two processes opening one file at once (replicated
            // instances) would both apply the first migration. The write lock, taken first and held
            // across all of them (each runs in a savepoint of this transaction), makes the second
            // wait and then find them applied.
            Backend::Sqlite => {
                let mut conn = self.pool.acquire().await.map_err(DbError::Connect)?;
                let mut tx = conn
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(|e| DbError::Migrate(e.into()))?;
                migrator.run(&mut *tx).await.map_err(DbError::Migrate)?;
                tx.commit().await.map_err(|e| DbError::Migrate(e.into()))
            }
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What wakes this service's outbox relay.
    pub(crate) fn outbox_signal(&self) -> &OutboxSignal {
        &self.outbox
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so
    /// that a second process on the same file waits its turn (busy timeout) instead of failing
    /// half-way when a transaction that has read tries to write.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let inner = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx {
            inner,
            outbox: self.outbox.clone(),
            outbox_written: false,
            after_commit: Vec::new(),
        })
    }

    /// Readiness check: can we write within a second? On SQLite that means taking the write lock
    /// (and giving it back at once): a file locked by another process still answers reads, and a
    /// service that cannot write cannot do its work. On PostgreSQL an answer to `SELECT 1` says it.
    pub async fn ping(&self) -> Result<(), String> {
        let probe = async {
            match self.backend {
                Backend::Sqlite => self.begin().await?.rollback().await,
                Backend::Postgres => sqlx::query("SELECT 1").execute(&self.pool).await.map(drop),
            }
        };
        match tokio::time::timeout(Duration::from_secs(1), probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 1 s".into()),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
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

/// The folder of a SQLite URL's file, if it names one.
fn sqlite_parent_dir(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    let parent = std::path::Path::new(path).parent()?;
    (!parent.as_os_str().is_empty()).then(|| parent.to_path_buf())
}

/// `true` when the error says the database itself is unavailable (unreachable, out of connections,
/// shutting down, failed over to a read-only standby, locked by another process, out of disk), and
/// nothing about the statement or the data: retrying the same work once the database is back will
/// work. Constraint violations, missing tables and every other answer about the statement are not.
pub fn is_infrastructure(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| infrastructure_code(&code)),
        _ => false,
    }
}

/// PostgreSQL answers with a five-character SQLSTATE, SQLite with a (shorter) number: its extended
/// result code, whose low byte is the primary code.
fn infrastructure_code(code: &str) -> bool {
    if code.len() == 5 {
        let class = &code[..2];
        // 08: connection exception; 53: insufficient resources (disk full, out of memory, too many
        // connections); 58: system error (I/O); 57P01-03: the server is shutting down or starting;
        // 57014: the statement was cancelled; 55P03: a lock could not be had; 25006: read-only
        // transaction, which is what a standby answers during a failover.
        return matches!(class, "08" | "53" | "58")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "57014" | "55P03" | "25006"
            );
    }
    // BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL.
    code.parse::<u32>()
        .is_ok_and(|extended| matches!(extended & 0xff, 5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 15))
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
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub fn now_us() -> i64 {
    to_us(OffsetDateTime::now_utc())
}

pub fn to_us(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
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
        assert!(is_infrastructure(&sqlx::Error::PoolTimedOut));
        assert!(is_infrastructure(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!is_infrastructure(&sqlx::Error::RowNotFound));
        for outage in [
            "08006", "53100", "57P01", "25006", "5", "517", "6", "13", "266",
        ] {
            assert!(infrastructure_code(outage), "{outage}");
        }
        for answer in ["23505", "42P01", "40001", "1", "19", "2067"] {
            assert!(!infrastructure_code(answer), "{answer}");
        }
    }
}
