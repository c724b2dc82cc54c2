//! order-service: accepts orders over HTTP, owns their state, and confirms or cancels them as stock
//! and payment events arrive.

pub mod api;
pub mod deadline;
pub mod domain;
pub mod handlers;
pub mod storage;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;
use platform::db::MigrationSql;
use platform::service::{ServiceArgs, ServiceContext, ServiceInfo, StartError};
use std::time::Duration;

const MIGRATIONS: &[MigrationSql] = &[MigrationSql {
    version: 100,
    description: "orders",
    sqlite: include_str!("../migrations/0100_orders.sql"),
    postgres: include_str!("../migrations/0100_orders.sql"),
}];

pub const INFO: ServiceInfo = ServiceInfo {
    name: "order-service",
    store: "order",
    default_port: 8080,
    migrations: MIGRATIONS,
};

/// Configuration of order-service, from flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: ServiceArgs,
    /// How long an order may stay pending (e.g. 30s, 1500ms, 2m) before it is cancelled with reason
    /// `timeout`. Carried in `orders.created` as `deadline_at`, so every service stops working on the
    /// order then, and stored with the order, so a restart does not forget it.
    #[arg(long, env = "ORDERFLOW_SAGA_TIMEOUT", default_value = "30s",
        value_parser = platform::service::parse_duration)]
    pub saga_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("the HTTP server failed")]
    Serve(#[from] std::io::Error),
}

/// Runs order-service until `shutdown` is requested.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let mut context = ServiceContext::start(INFO, &config.common, metrics, shutdown).await?;
    context.spawn_relay();
    context.spawn_consumer(contracts::topology::ORDER_INVENTORY, handlers::OrderHandler);
    context.spawn_consumer(contracts::topology::ORDER_PAYMENTS, handlers::OrderHandler);
    let sweeper = deadline::DeadlineSweeper::new(context.db.clone(), context.outbox.clone());
    let sweeper_shutdown = context.shutdown.clone();
    context.spawn("saga-deadline", sweeper.run(sweeper_shutdown));
    let routes = api::routes(api::AppState {
        db: context.db.clone(),
        outbox: context.outbox.clone(),
        saga_timeout: config.saga_timeout,
    });
    context.serve(routes).await?;
    Ok(())
}
