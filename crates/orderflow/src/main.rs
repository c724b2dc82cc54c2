//! The `orderflow` command: every service, the gateway simulator, and the tools that run and inspect the
//! whole system, in one binary (one build, one artifact; see docs/adr/0002).

use clap::{CommandFactory, Parser, Subcommand};
use orderflow::{demo, dlq, gateway, loadgen, schemas, up, verify};
use platform::telemetry::{self, LogFormat};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "orderflow",
    version,
    about = "Event-driven order processing on NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the order service (HTTP API for orders; owns order state).
    OrderService(order_service::Config),
    /// Run the inventory service (catalog and stock; reserves, releases, commits).
    InventoryService(inventory_service::Config),
    /// Run the payment service (charges and refunds through the gateway).
    PaymentService(payment_service::Config),
    /// Run the payment gateway simulator (a Stripe-like HTTP API with a ledger).
    GatewaySim(gateway_sim::Config),
    /// Run the whole system locally: nats-server, the gateway simulator and the three services.
    Up(up::Args),
    /// Place three demo orders (confirmed, out of stock, declined) against a running system.
    Demo(demo::Args),
    /// Inspect, replay and delete dead letters (messages a consumer could never handle).
    Dlq(dlq::Args),
    /// Switch the gateway simulator's faults (down, slow, flaky, hang) and show its counters.
    Gateway(gateway::Args),
    /// Place orders against a running system at a fixed rate (open loop) or concurrency (closed loop)
    /// and report throughput, accept and end-to-end latency percentiles, and how every order ended.
    Loadgen(loadgen::Args),
    /// Work with the event contracts: generate the JSON Schemas and documents from the event types, and
    /// check that a change keeps each version compatible.
    Schemas(schemas::Args),
    /// Check, once the system is quiet, that every order ended consistently across the services' data and
    /// the gateway ledger; prints each violation and exits 1 if there is one.
    Verify(verify::Args),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // What no single flag can check is checked here, before anything connects, and refused the way
    // clap refuses a bad flag: a message naming the flags, and exit code 2.
    if let Err(reason) = cli.command.check() {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, reason)
            .exit();
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::OrderService(config) => {
                let (metrics, shutdown) = start(config.common.log_format);
                order_service::run(config, metrics, shutdown).await?;
            }
            Command::InventoryService(config) => {
                let (metrics, shutdown) = start(config.common.log_format);
                inventory_service::run(config, metrics, shutdown).await?;
            }
            Command::PaymentService(config) => {
                let (metrics, shutdown) = start(config.common.log_format);
                payment_service::run(config, metrics, shutdown).await?;
            }
            Command::GatewaySim(config) => {
                let (metrics, shutdown) = start(config.log_format);
                gateway_sim::run(config, metrics, shutdown).await?;
            }
            Command::Up(args) => up::run(args).await?,
            Command::Demo(args) => return demo::run(args).await,
            Command::Dlq(args) => return Ok(dlq::run(args).await),
            Command::Gateway(args) => return Ok(gateway::run(args).await),
            Command::Verify(args) => return Ok(verify::run(args).await),
            Command::Loadgen(args) => return Ok(loadgen::run(args).await),
            Command::Schemas(args) => return Ok(schemas::run(args)),
        }
        Ok(ExitCode::SUCCESS)
    })
}

impl Command {
    /// The checks across flags of the services' configurations.
    fn check(&self) -> Result<(), String> {
        match self {
            Command::OrderService(config) => config.check(),
            Command::InventoryService(config) => config.common.check(),
            Command::PaymentService(config) => config.check(),
            _ => Ok(()),
        }
    }
}

/// Logging, metrics, and a shutdown signal that fires on SIGINT or SIGTERM.
fn start(
    format: LogFormat,
) -> (
    metrics_exporter_prometheus::PrometheusHandle,
    platform::Shutdown,
) {
    let metrics = telemetry::init(format);
    let (trigger, shutdown) = platform::shutdown::channel();
    tokio::spawn(async move {
        platform::shutdown::signal().await;
        tracing::info!("shutdown requested");
        trigger.trigger();
    });
    (metrics, shutdown)
}
