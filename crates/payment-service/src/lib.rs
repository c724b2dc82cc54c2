//! payment-service (stub: the real service replaces this file).

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;
use platform::service::{ServiceArgs, ServiceInfo};

pub const INFO: ServiceInfo = ServiceInfo {
    name: "payment-service",
    store: "payment",
    default_port: 8082,
    migrations: &[],
};

/// Configuration of payment-service, from flags and environment variables.
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
