//! Test support that starts *real* dependencies hermetically.
//!
//! Every test gets its own nats-server (pinned version, free port, private
//! JetStream store in a temp dir), its own database, and its own service
//! processes with captured logs. Nothing here talks to a system-wide NATS or
//! to port 4222: an unrelated, older server may be running there and tests
//! must never depend on (or pollute) it.
//!
//! Setup failures panic with a message that says what to do, because a test
//! that cannot set up its environment has nothing better to do than fail
//! loudly. Everything started here is killed on `Drop`, so a failing test
//! does not leave processes behind.

pub mod arbitrary;
mod db;
mod nats;
mod otlp;
mod pg_server;
mod process;
mod prometheus;
mod proxy;
mod tls;
mod wait;

use std::path::PathBuf;

pub use db::{Backend, TestDatabase};
pub use nats::NatsServer;
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use pg_server::PostgresServer;
pub use process::{ChildProcess, rss_kb};
pub use prometheus::{Prometheus, ScrapeTarget};
pub use proxy::FaultProxy;
pub use tls::{CertFiles, TestCa};
pub use wait::{free_port, free_ports, wait_for, wait_until};

/// The workspace root (the directory holding the root `Cargo.toml`).
///
/// Tests need it to find workspace-local tools (the pinned nats-server under
/// `.tools/`) independently of the current directory, which cargo sets to the
/// *crate* directory of whichever test is running.
pub fn workspace_root() -> PathBuf {
    let raw = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    // Canonicalizing only makes paths in panic messages readable; the raw
    // path works just as well if it fails.
    raw.canonicalize().unwrap_or(raw)
}

/// Runs each named test body (`async fn name(backend: Backend)`) once per storage backend, as
/// `name::sqlite` and `name::postgres`; the PostgreSQL one skips itself (with a message) when no
/// PostgreSQL is reachable, unless `ORDERFLOW_REQUIRE_POSTGRES=1` (see [`TestDatabase::create`]).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await;
                }
            }
        )*
    };
}
