//! inventory-service: owns the catalog and the stock. It reserves every line of a new order or
//! nothing (`inventory.reserved` / `inventory.rejected`), sells the reserved units when the order is
//! confirmed and gives them back when it is cancelled. The HTTP API manages the catalog.

pub mod api;
pub mod domain;
pub mod handlers;
pub mod storage;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;
use platform::db::MigrationSql;
use platform::service::{ServiceArgs, ServiceInfo};
use std::collections::BTreeMap;

const MIGRATIONS: &[MigrationSql] = &[
    MigrationSql {
        version: 100,
        description: "products and reservations",
        sqlite: include_str!("../migrations/0100_inventory.sqlite.sql"),
        postgres: include_str!("../migrations/0100_inventory.postgres.sql"),
    },
    MigrationSql {
        version: 101,
        description: "product stock baseline",
        sqlite: include_str!("../migrations/0101_baseline.sql"),
        postgres: include_str!("../migrations/0101_baseline.sql"),
    },
];

pub const INFO: ServiceInfo = ServiceInfo {
    name: "inventory-service",
    store: "inventory",
    default_port: 8081,
    migrations: MIGRATIONS,
};

/// Configuration of inventory-service, from flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: ServiceArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] platform::service::StartError),
}

/// Runs the service until `shutdown` is requested: the outbox relay, the retention sweep, the
/// `inventory-orders` consumers (normal and express) and the catalog API.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let mut context =
        platform::service::ServiceContext::start(INFO, &config.common, metrics, shutdown).await?;
    context.set_details(std::sync::Arc::new(|db| Box::pin(stock_details(db))));
    context.spawn_relay();
    context.spawn_retention(Vec::new());
    context.spawn_consumers(
        &[
            contracts::topology::INVENTORY_ORDERS,
            contracts::topology::INVENTORY_ORDERS_EXPRESS,
        ],
        handlers::InventoryHandler::new(),
    );
    let routes = api::router(context.db.clone());
    context.serve(routes, &api::openapi()).await;
    Ok(())
}

/// `/status`'s `stock` and the `orderflow_stock_units` gauges: the catalog's totals by state. Not
/// per product, which would give the metric one series per product.
async fn stock_details(db: platform::db::Db) -> BTreeMap<String, serde_json::Value> {
    match storage::stock_totals(&db).await {
        Ok(totals) => {
            for (state, units) in [
                ("available", totals.available),
                ("reserved", totals.reserved),
                ("sold", totals.sold),
            ] {
                metrics::gauge!("orderflow_stock_units", "state" => state).set(units as f64);
            }
            BTreeMap::from([("stock".to_owned(), serde_json::json!(totals))])
        }
        Err(error) => BTreeMap::from([(
            "stock".to_owned(),
            serde_json::json!({ "error": error.to_string() }),
        )]),
    }
}
