//! Per-test databases for both supported backends.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;

/// Admin URL override for the PostgreSQL server tests may use.
const POSTGRES_URL_ENV: &str = "ORDERFLOW_TEST_POSTGRES_URL";
/// The PostgreSQL admin URL used when the env var is not set.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// When "1", an unreachable PostgreSQL fails the test instead of skipping it.
const REQUIRE_POSTGRES_ENV: &str = "ORDERFLOW_REQUIRE_POSTGRES";
/// How long to try reaching PostgreSQL before treating it as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the cleanup in `Drop` so a hung server can't hang the test run.
const DROP_TIMEOUT: Duration = Duration::from_secs(10);

/// A database backend the services support; tests run against each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test, removed again on `Drop`.
///
/// Each test gets its own database so tests can run in parallel and never see
/// each other's rows. SQLite needs no server, so it always works; PostgreSQL
/// is optional locally (the test is skipped when it is unreachable) but can be
/// made mandatory in CI with `ORDERFLOW_REQUIRE_POSTGRES=1`, so a broken CI
/// database can't silently turn into skipped tests.
#[derive(Debug)]
pub struct TestDatabase {
    backend: Backend,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// One SQLite file per service lives in this directory.
    Sqlite { dir: TempDir },
    /// One PostgreSQL database shared by all services (each service isolates
    /// itself in its own schema).
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

impl TestDatabase {
    /// A fresh PostgreSQL database on the server of `admin_url` (one the test started itself, say
    /// a [`crate::PostgresServer`]); its URL keeps `admin_url`'s parameters (`sslmode`, ...).
    pub async fn create_on(admin_url: &str) -> Option<TestDatabase> {
        Some(TestDatabase {
            backend: Backend::Postgres,
            inner: create_postgres_on(admin_url.to_owned()).await?,
        })
    }

    /// Creates a fresh database on `backend`.
    ///
    /// Returns `None` only for PostgreSQL when the server is unreachable and
    /// `ORDERFLOW_REQUIRE_POSTGRES` is not "1" (a "skipping: …" line is printed
    /// so the skip is visible with `--nocapture`). Panics on any other failure.
    pub async fn create(backend: Backend) -> Option<TestDatabase> {
        let inner = match backend {
            Backend::Sqlite => Inner::Sqlite {
                dir: tempfile::Builder::new()
                    .prefix("orderflow-db-")
                    .tempdir()
                    .expect("creating a temp dir for SQLite databases failed; is TMPDIR writable?"),
            },
            Backend::Postgres => create_postgres().await?,
        };
        Some(TestDatabase { backend, inner })
    }

    /// The backend this database lives on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The base location: for SQLite `sqlite://<dir>` (not a database by
    /// itself; see [`TestDatabase::url_for`]), for PostgreSQL the URL of the
    /// test database.
    pub fn url(&self) -> String {
        match &self.inner {
            Inner::Sqlite { dir } => format!("sqlite://{}", dir.path().display()),
            Inner::Postgres { url, .. } => url.clone(),
        }
    }

    /// The database URL the service named `service` should use.
    ///
    /// SQLite gets one file per service (`mode=rwc` so the service creates
    /// it), mirroring production where services don't share a database file.
    /// PostgreSQL returns the same database for every service; services
    /// isolate themselves by schema.
    pub fn url_for(&self, service: &str) -> String {
        match &self.inner {
            Inner::Sqlite { dir } => sqlite_url(dir.path(), service),
            Inner::Postgres { url, .. } => url.clone(),
        }
    }

    /// The address of the PostgreSQL server (`None` on SQLite): what a
    /// [`crate::FaultProxy`] in front of it forwards to.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        let Inner::Postgres { url, .. } = &self.inner else {
            return None;
        };
        let authority = authority(url);
        let host_port = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let with_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        with_port.to_socket_addrs().ok()?.next()
    }

    /// [`TestDatabase::url_for`], but reaching the server through a proxy on `port` of 127.0.0.1.
    pub fn url_via(&self, service: &str, port: u16) -> String {
        let url = self.url_for(service);
        if self.backend == Backend::Sqlite {
            return url;
        }
        let authority = authority(&url);
        let user = authority
            .rsplit_once('@')
            .map_or(String::new(), |(user, _)| format!("{user}@"));
        url.replacen(authority, &format!("{user}127.0.0.1:{port}"), 1)
    }
}

/// The `user@host:port` part of a URL.
fn authority(url: &str) -> &str {
    let start = url.find("://").map_or(0, |index| index + 3);
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    &rest[..end]
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // SQLite: the TempDir field removes the files by itself.
        let Inner::Postgres {
            admin_url, name, ..
        } = &self.inner
        else {
            return;
        };
        let admin_url = admin_url.clone();
        let name = name.clone();
        // Drop is synchronous and may run inside a tokio runtime (where
        // blocking on another runtime would panic), so the async cleanup runs
        // on its own thread with its own runtime, and we wait for it.
        let cleanup = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("testkit: cannot drop test database {name}: no runtime: {error}");
                    return;
                }
            };
            // The timeout must be created inside the runtime (it needs its
            // timer), hence the async block.
            let result = runtime.block_on(async {
                tokio::time::timeout(DROP_TIMEOUT, drop_postgres_database(&admin_url, &name)).await
            });
            match result {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    eprintln!("testkit: dropping test database {name} failed: {error}")
                }
                Err(_) => eprintln!(
                    "testkit: dropping test database {name} timed out after {DROP_TIMEOUT:?}"
                ),
            }
        });
        if cleanup.join().is_err() {
            eprintln!("testkit: the thread dropping a test database panicked");
        }
    }
}

/// Creates a uniquely named PostgreSQL database, or returns `None` (skip)
/// when the server is unreachable and not required.
async fn create_postgres() -> Option<Inner> {
    let admin_url =
        std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
    create_postgres_on(admin_url).await
}

/// [`create_postgres`] on the server of `admin_url`.
async fn create_postgres_on(admin_url: String) -> Option<Inner> {
    let connected =
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(&admin_url)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
        };
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(error) => {
            if std::env::var(REQUIRE_POSTGRES_ENV).as_deref() == Ok("1") {
                panic!(
                    "PostgreSQL is required ({REQUIRE_POSTGRES_ENV}=1) but unreachable at {admin_url}: {error}"
                );
            }
            eprintln!(
                "skipping: PostgreSQL unreachable at {admin_url} (set {POSTGRES_URL_ENV} to use another server): {error}"
            );
            return None;
        }
    };

    // The name is generated (no user input), so interpolating it is safe.
    let name = format!("of_{}", uuid::Uuid::new_v4().simple());
    conn.execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await
        .unwrap_or_else(|error| panic!("CREATE DATABASE {name} on {admin_url} failed: {error}"));
    if let Err(error) = conn.close().await {
        eprintln!("testkit: closing the PostgreSQL admin connection failed: {error}");
    }
    let url = with_database(&admin_url, &name);
    Some(Inner::Postgres {
        admin_url,
        name,
        url,
    })
}

/// Drops the test database, disconnecting any service still attached (FORCE)
/// since a killed service may not have closed its pool.
async fn drop_postgres_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(admin_url).await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
    )))
    .await?;
    conn.close().await
}

/// The SQLite URL for `service`'s own database file inside `dir`.
fn sqlite_url(dir: &Path, service: &str) -> String {
    format!("sqlite://{}/{service}.db?mode=rwc", dir.display())
}

/// Replaces the database name (the path) of a PostgreSQL URL, keeping
/// credentials, host and query parameters (e.g. `sslmode`).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |index| authority_start + index);
    let mut result = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "of_x"),
            "postgres://postgres@127.0.0.1:5432/of_x"
        );
        assert_eq!(
            with_database("postgres://u:p@db:5432/admin?sslmode=disable", "of_x"),
            "postgres://u:p@db:5432/of_x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@db:5432", "of_x"),
            "postgres://u@db:5432/of_x"
        );
        assert_eq!(
            with_database("postgresql://db/?sslmode=require", "of_x"),
            "postgresql://db/of_x?sslmode=require"
        );
    }

    #[test]
    fn sqlite_url_is_per_service() {
        assert_eq!(
            sqlite_url(Path::new("/tmp/x"), "orders"),
            "sqlite:///tmp/x/orders.db?mode=rwc"
        );
    }
}
