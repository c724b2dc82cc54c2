//! payment-service: charges each order once through the payment gateway, and refunds it if the order is
//! cancelled after all.
//!
//! It joins two inputs per order, whichever arrives first: the intent from `orders.created` (payment
//! method, deadline) and the amount from `inventory.reserved`. With both, the charge worker takes over;
//! it is the only part that talks to the gateway, outside of any transaction, and it uses the order id
//! as the gateway's idempotency key so no retry, crash or race ever charges twice.

pub mod api;
pub mod breaker;
pub mod domain;
pub mod gateway;
pub mod handlers;
pub mod storage;
pub mod worker;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;
use platform::db::{MigrationSql, SqlError};
use platform::service::{ServiceArgs, ServiceContext, ServiceInfo};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

pub const MIGRATIONS: &[MigrationSql] = &[
    MigrationSql {
        version: 100,
        description: "payments",
        sqlite: include_str!("../migrations/0100_payments.sql"),
        postgres: include_str!("../migrations/0100_payments.sql"),
    },
    MigrationSql {
        version: 101,
        description: "payment currency",
        sqlite: include_str!("../migrations/0101_payment_currency.sql"),
        postgres: include_str!("../migrations/0101_payment_currency.sql"),
    },
    MigrationSql {
        version: 102,
        description: "payment cause traceparent",
        sqlite: include_str!("../migrations/0102_payment_cause_traceparent.sql"),
        postgres: include_str!("../migrations/0102_payment_cause_traceparent.sql"),
    },
    MigrationSql {
        version: 103,
        description: "payment priority",
        sqlite: include_str!("../migrations/0103_payment_priority.sql"),
        postgres: include_str!("../migrations/0103_payment_priority.sql"),
    },
];

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
        default_value = "http://127.0.0.1:8083",
        value_parser = platform::config::HTTP_URL
    )]
    pub gateway_url: String,
    /// How long one gateway call may take, connecting included (milliseconds, 1 to 600000). A call
    /// that takes longer counts as failed and is retried with the same idempotency key; a charge is
    /// only started while its answer is due before the order's deadline.
    #[arg(long, env = "ORDERFLOW_GATEWAY_TIMEOUT_MS", default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub gateway_timeout_ms: u64,
    /// Gateway calls in flight at most: the charge worker keeps this many payments' calls going side
    /// by side, each on its own payment (1 to 256).
    #[arg(long, env = "ORDERFLOW_CHARGE_CONCURRENCY", default_value_t = 8,
        value_parser = clap::value_parser!(u16).range(1..=256))]
    pub charge_concurrency: u16,
    /// Share of failed gateway calls (timeouts, connection errors, 5xx, 429; not declines), among the
    /// latest ones, that opens the circuit breaker: more than 0, at most 1.
    #[arg(long, env = "ORDERFLOW_BREAKER_FAILURE_THRESHOLD", default_value_t = 0.5,
        value_parser = parse_share)]
    pub breaker_failure_threshold: f64,
    /// How many calls the breaker's window must hold before it may open (at most the window).
    #[arg(long, env = "ORDERFLOW_BREAKER_MIN_CALLS", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_min_calls: u32,
    /// How many of the latest gateway calls the breaker judges the failure rate over.
    #[arg(long, env = "ORDERFLOW_BREAKER_WINDOW", default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_window: u32,
    /// How long an open breaker refuses gateway calls before it lets trial calls through
    /// (milliseconds, 1 to 3600000). Payments wait meanwhile, without using up attempts.
    #[arg(long, env = "ORDERFLOW_BREAKER_OPEN_MS", default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub breaker_open_ms: u64,
    /// How many trial calls a half-open breaker lets through at once; the first outcome closes it
    /// (success) or opens it again (failure).
    #[arg(long, env = "ORDERFLOW_BREAKER_HALF_OPEN_TRIALS", default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_half_open_trials: u32,
}

impl Config {
    /// Checks what no single flag can.
    pub fn check(&self) -> Result<(), String> {
        self.common.check()?;
        self.breaker().map(drop).map_err(|error| error.to_string())
    }

    /// The breaker's settings; refuses combinations no single flag can check (min calls > window).
    pub fn breaker(&self) -> Result<breaker::BreakerConfig, breaker::InvalidBreakerConfig> {
        let count = |value: u32| usize::try_from(value).unwrap_or(usize::MAX);
        breaker::BreakerConfig::new(
            self.breaker_failure_threshold,
            count(self.breaker_min_calls),
            count(self.breaker_window),
            Duration::from_millis(self.breaker_open_ms),
            count(self.breaker_half_open_trials),
        )
    }
}

fn parse_share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(share) if share > 0.0 && share <= 1.0 => Ok(share),
        _ => Err(format!("'{raw}' is not a number above 0 and at most 1")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the gateway client")]
    GatewayClient(#[source] reqwest::Error),
    #[error(transparent)]
    Breaker(#[from] breaker::InvalidBreakerConfig),
    #[error(transparent)]
    Start(#[from] platform::service::StartError),
    #[error("database error")]
    Database(#[from] SqlError),
}

/// Runs the service until `shutdown` is requested.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let timeout = Duration::from_millis(config.gateway_timeout_ms);
    let gateway = gateway_client(&config.gateway_url, timeout)?;
    let breaker = Arc::new(breaker::CircuitBreaker::new(
        "gateway",
        config.breaker()?,
        Arc::new(breaker::SystemClock),
    ));
    let mut context = ServiceContext::start(INFO, &config.common, metrics, shutdown).await?;
    let watched = breaker.clone();
    context.set_details(Arc::new(move |_db| {
        let state = watched.state();
        Box::pin(async move {
            std::collections::BTreeMap::from([(
                "breaker".to_owned(),
                serde_json::Value::from(state.as_str()),
            )])
        })
    }));
    let work_due = Arc::new(Notify::new());
    let express_due = Arc::new(Notify::new());
    let handler = handlers::PaymentHandler::new(work_due.clone(), express_due.clone())
        .with_queue_limit(context.db.clone(), usize::from(config.charge_concurrency));
    context.spawn_relay();
    context.spawn_retention(Vec::new());
    context.spawn_consumers(
        &[
            contracts::topology::PAYMENT_ORDERS,
            contracts::topology::PAYMENT_INVENTORY,
            contracts::topology::PAYMENT_ORDERS_EXPRESS,
            contracts::topology::PAYMENT_INVENTORY_EXPRESS,
        ],
        handler,
    );
    // The express lane's worker has a gateway client of its own: the client's connections belong
    // to the thread that opened them, and its thread is the express lane's (ADR 15).
    let express_worker = Arc::new(worker::ChargeWorker::new(
        context.db.clone(),
        gateway_client(&config.gateway_url, timeout)?,
        breaker.clone(),
        express_due,
        timeout,
    ));
    let worker = Arc::new(worker::ChargeWorker::new(
        context.db.clone(),
        gateway,
        breaker,
        work_due,
        timeout,
    ));
    let width = usize::from(config.charge_concurrency);
    context.spawn("charge-worker", move |shutdown| {
        let worker = worker.clone();
        async move { worker.run(width, shutdown).await }
    });
    context.spawn_express("charge-worker-express", move |shutdown| {
        let worker = express_worker.clone();
        async move { worker.run_express(shutdown).await }
    });
    let routes = api::router(context.db.clone());
    context.serve(routes, &api::openapi()).await;
    Ok(())
}

/// The URL was checked when the flags were parsed (`platform::config::HTTP_URL`).
fn gateway_client(url: &str, timeout: Duration) -> Result<gateway::GatewayClient, Error> {
    gateway::GatewayClient::new(url, timeout).map_err(Error::GatewayClient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let args = std::iter::once("payment-service").chain(args.iter().copied());
        Cli::try_parse_from(args).map(|cli| cli.config)
    }

    #[test]
    fn the_breaker_defaults_are_valid() {
        let expected = breaker::BreakerConfig::new(0.5, 5, 20, Duration::from_secs(5), 1);
        assert_eq!(parse(&[]).unwrap().breaker(), expected);
    }

    #[test]
    fn bad_breaker_flags_are_refused() {
        assert!(parse(&["--breaker-failure-threshold", "0"]).is_err());
        assert!(parse(&["--breaker-failure-threshold", "1.5"]).is_err());
        assert!(parse(&["--breaker-window", "0"]).is_err());
        assert!(parse(&["--breaker-open-ms", "0"]).is_err());
        let config = parse(&["--breaker-min-calls", "30"]).unwrap();
        assert!(config.breaker().is_err(), "more than the window of 20");
        let config = parse(&[
            "--breaker-failure-threshold",
            "1",
            "--breaker-min-calls",
            "20",
        ]);
        assert!(config.unwrap().breaker().is_ok());
    }
}
