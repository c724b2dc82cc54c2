//! gateway-sim: a Stripe-like payment gateway for orderflow to charge through. It is a real HTTP server
//! with a persisted ledger, so payment-service makes real calls with real timeouts, and the ledger (not
//! the services' own bookkeeping) is the evidence `orderflow verify` and the tests check: every charge
//! once, every refund once, nothing charged for a cancelled order.

pub mod api;
pub mod domain;
pub mod faults;
pub mod ledger;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;
use platform::access::AdminToken;
use platform::db::{Db, DbError, MigrationSql};
use platform::health::Health;
use platform::http::EdgePolicy;
use platform::server::ServerArgs;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The ledger's tables; versions from 100 up, below them are platform's (outbox and inbox, unused here).
pub const MIGRATIONS: &[MigrationSql] = &[
    MigrationSql {
        version: 100,
        description: "charges and refunds",
        sqlite: include_str!("../migrations/0100_ledger.sql"),
        postgres: include_str!("../migrations/0100_ledger.sql"),
    },
    MigrationSql {
        version: 101,
        description: "charge currency",
        sqlite: include_str!("../migrations/0101_charge_currency.sql"),
        postgres: include_str!("../migrations/0101_charge_currency.sql"),
    },
];

/// The PostgreSQL schema of the ledger (ignored on SQLite).
const SCHEMA: &str = "gateway";
/// The name in logs and in `/status`.
pub const NAME: &str = "gateway-sim";

/// Configuration of the payment gateway simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the simulator listens on.
    #[arg(long, env = "ORDERFLOW_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,
    /// The ledger's database: sqlite://PATH?mode=rwc or postgres://USER@HOST:PORT/DB (schema "gateway").
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://.orderflow/gateway.db?mode=rwc",
        value_parser = platform::config::DATABASE_URL
    )]
    pub database_url: String,
    /// Log format: json (one object per line), pretty, or auto: pretty when stdout is a terminal,
    /// json otherwise.
    #[arg(long, env = "ORDERFLOW_LOG_FORMAT", default_value = "auto")]
    pub log_format: platform::telemetry::LogFormat,
    /// The bearer token the `/admin` routes (faults, stats) require; they are refused without one.
    /// Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "ORDERFLOW_ADMIN_TOKEN", hide_env_values = true,
        value_parser = AdminToken::parse)]
    pub admin_token: Option<AdminToken>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the ledger database")]
    Database(#[from] DbError),
}

/// Runs the simulator until `shutdown` is requested.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let db = Db::connect(&config.database_url, SCHEMA, MIGRATIONS).await?;
    tracing::info!(service = NAME, http = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "started");
    serve(
        listener,
        db.clone(),
        metrics,
        config.admin_token,
        config.server,
        shutdown,
    )
    .await;
    db.close().await;
    tracing::info!(service = NAME, "stopped");
    Ok(())
}

/// Serves the gateway API (plus health and metrics) on `listener` until shutdown, starting without
/// faults (switch them with `POST /admin/faults`, given `admin`'s token), within the `server`
/// limits. Tests call this with a listener on port 0 and a database of their own.
pub async fn serve(
    listener: TcpListener,
    db: Db,
    metrics: PrometheusHandle,
    admin: Option<AdminToken>,
    server: ServerArgs,
    shutdown: Shutdown,
) {
    // It stands in for a third party: its limits are not ours to set, so no per-client limit.
    let edge = EdgePolicy {
        admin,
        per_client: None,
        request_timeout: server.http_request_timeout,
    };
    let router = platform::http::with_common_routes(
        api::routes(
            ledger::Ledger::new(db.clone()),
            faults::Faults::default(),
            shutdown.clone(),
        ),
        Health::new(NAME, db, metrics, platform::health::Readiness::default()),
        &api::openapi(),
        &edge,
    );
    platform::server::serve(listener, router, server, shutdown.stopped()).await
}
