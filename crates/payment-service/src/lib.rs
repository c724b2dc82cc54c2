//! payment-service: charges each order once through the payment gateway, and refunds it if the order is
//! cancelled after all.
//!
//! It joins two inputs per order, whichever arrives first: the intent from `orders.created` (payment
//! method, deadline) and the amount from `inventory.reserved`. With both, the charge worker takes over;
//! it is the only part that talks to the gateway, outside of any transaction, and it uses the order id
//! as the gateway's idempotency key so no retry, crash or race ever charges twice.

pub mod api;
pub mod domain;
pub mod gateway;
pub mod handlers;
pub mod storage;
pub mod worker;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;
use platform::db::MigrationSql;
use platform::service::{ServiceArgs, ServiceContext, ServiceInfo};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub const MIGRATIONS: &[MigrationSql] = &[MigrationSql {
    version: 100,
    description: "payments",
    sqlite: include_str!("../migrations/0100_payments.sqlite.sql"),
    postgres: include_str!("../migrations/0100_payments.postgres.sql"),
}];

pub const INFO: ServiceInfo = ServiceInfo {
    name: "payment-service",
    store: "payment",
    default_port: 8082,
    migrations: MIGRATIONS,
};

/// Configuration of payment-service, from flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: ServiceArgs,
    /// Base URL of the payment gateway (Stripe-like API; `orderflow gateway-sim` in development).
    #[arg(
        long,
        env = "ORDERFLOW_GATEWAY_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub gateway_url: String,
    /// How long one gateway call may take, connecting included (milliseconds). A call that takes
    /// longer counts as failed and is retried with the same idempotency key.
    #[arg(long, env = "ORDERFLOW_GATEWAY_TIMEOUT_MS", default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub gateway_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the gateway URL '{0}' is not a valid http(s) URL")]
    GatewayUrl(String),
    #[error("cannot build the gateway client")]
    GatewayClient(#[source] reqwest::Error),
    #[error(transparent)]
    Start(#[from] platform::service::StartError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("the HTTP server failed")]
    Serve(#[from] std::io::Error),
}

/// Runs the service until `shutdown` is requested.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let timeout = Duration::from_millis(config.gateway_timeout_ms);
    let gateway = gateway_client(&config.gateway_url, timeout)?;
    let mut context = ServiceContext::start(INFO, &config.common, metrics, shutdown).await?;
    let work_due = Arc::new(Notify::new());
    let handler = handlers::PaymentHandler::new(work_due.clone());
    context.spawn_relay();
    context.spawn_consumer(contracts::topology::PAYMENT_ORDERS, handler.clone());
    context.spawn_consumer(contracts::topology::PAYMENT_INVENTORY, handler);
    let worker = worker::ChargeWorker::new(
        context.db.clone(),
        gateway,
        context.outbox.clone(),
        work_due,
        timeout,
    );
    let worker_shutdown = context.shutdown.clone();
    context.spawn("charge-worker", worker.run(worker_shutdown));
    let routes = api::routes(context.db.clone());
    context.serve(routes).await?;
    Ok(())
}

/// Checks the URL up front, so a typo fails at start instead of as endless "transient" call errors.
fn gateway_client(url: &str, timeout: Duration) -> Result<gateway::GatewayClient, Error> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
            gateway::GatewayClient::new(url, timeout).map_err(Error::GatewayClient)
        }
        _ => Err(Error::GatewayUrl(url.to_owned())),
    }
}
