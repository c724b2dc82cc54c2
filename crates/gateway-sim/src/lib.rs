//! gateway-sim (stub: the real simulator replaces this file).

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;

/// Configuration of the payment gateway simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the simulator listens on.
    #[arg(long, env = "ORDERFLOW_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the HTTP server failed")]
    Serve(#[from] std::io::Error),
}

/// Runs the simulator until `shutdown` is requested.
pub async fn run(_config: Config, _metrics: PrometheusHandle, _shutdown: Shutdown) -> Result<(), Error> {
    Ok(())
}
