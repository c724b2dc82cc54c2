//! order-service (stub: the real service replaces this file).

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;
use platform::service::{ServiceArgs, ServiceInfo};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "order-service",
    store: "order",
    default_port: 8080,
    migrations: &[],
};

/// Configuration of order-service, from flags and environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub common: ServiceArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] platform::service::StartError),
    #[error("the HTTP server failed")]
    Serve(#[from] std::io::Error),
}

/// Runs the service until `shutdown` is requested.
pub async fn run(config: Config, metrics: PrometheusHandle, shutdown: Shutdown) -> Result<(), Error> {
    let context = platform::service::ServiceContext::start(INFO, &config.common, metrics, shutdown).await?;
    context.serve(axum::Router::new()).await?;
    Ok(())
}
