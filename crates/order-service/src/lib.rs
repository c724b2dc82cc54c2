//! order-service: accepts orders over HTTP, owns their state, and confirms or cancels them as stock
//! and payment events arrive.

pub mod accepts;
pub mod admission;
pub mod api;
pub mod deadline;
pub mod domain;
pub mod handlers;
pub mod outcomes;
pub mod storage;

use metrics_exporter_prometheus::PrometheusHandle;
use platform::Shutdown;
use platform::config::{duration_between, format_duration};
use platform::db::MigrationSql;
use platform::service::{ServiceArgs, ServiceContext, ServiceInfo, StartError};
use std::sync::Arc;
use std::time::Duration;

const MIGRATIONS: &[MigrationSql] = &[
    MigrationSql {
        version: 100,
        description: "orders",
        sqlite: include_str!("../migrations/0100_orders.sql"),
        postgres: include_str!("../migrations/0100_orders.sql"),
    },
    MigrationSql {
        version: 101,
        description: "idempotency claims",
        sqlite: include_str!("../migrations/0101_idempotency_claims.sql"),
        postgres: include_str!("../migrations/0101_idempotency_claims.sql"),
    },
    MigrationSql {
        version: 102,
        description: "order traceparent",
        sqlite: include_str!("../migrations/0102_order_traceparent.sql"),
        postgres: include_str!("../migrations/0102_order_traceparent.sql"),
    },
    MigrationSql {
        version: 103,
        description: "order priority",
        sqlite: include_str!("../migrations/0103_order_priority.sql"),
        postgres: include_str!("../migrations/0103_order_priority.sql"),
    },
];

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
    /// How long an order may stay pending (e.g. 30s, 1500ms, 2m; 100ms to 1d) before it is cancelled
    /// with reason `timeout`. Carried in `orders.created` as `deadline_at`, so every service stops
    /// working on the order then, and stored with the order, so a restart does not forget it. Must be
    /// longer than --ack-wait.
    #[arg(long, env = "ORDERFLOW_SAGA_TIMEOUT", default_value = "30s",
        value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(86_400)))]
    pub saga_timeout: Duration,
    /// The longest a new order's saga may be expected to take for the order to be accepted (e.g. 15s;
    /// 100ms to 1d, at most --saga-timeout; or `off`) [default: half of --saga-timeout]. While the
    /// saga's backlog says a new order would take longer, POST /orders answers 503 with Retry-After
    /// and creates nothing, normal orders first (each lane is judged on its own backlog). `off`
    /// accepts every order whatever the backlog, for a system whose clients are held back in front
    /// of it. See the README's "Overload" on sizing it.
    #[arg(long, env = "ORDERFLOW_ADMISSION_MAX_WAIT", value_parser = parse_admission_max_wait)]
    pub admission_max_wait: Option<AdmissionMaxWait>,
    /// How long an Idempotency-Key is remembered (1m to 365d): a request repeated with the same key
    /// within this time gets the first request's order instead of a new one.
    #[arg(long, env = "ORDERFLOW_IDEMPOTENCY_KEY_TTL", default_value = "24h",
        value_parser = duration_between(Duration::from_secs(60), platform::service::RETENTION_MAX))]
    pub idempotency_key_ttl: Duration,
    /// The versions `orders.created` is published in: v1 (read by every consumer), v1,v2 (both, while
    /// consumers are upgraded; a consumer that reads both acts once) or v2 (once every consumer reads
    /// it). An order in another currency than USD needs v2. See docs/evolving-events.md.
    #[arg(long, env = "ORDERFLOW_PUBLISH_VERSIONS", default_value = "v1")]
    pub publish_versions: platform::outbox::PublishVersions,
}

impl Config {
    /// Checks what no single flag can.
    pub fn check(&self) -> Result<(), String> {
        self.common.check()?;
        if self.saga_timeout <= self.common.ack_wait {
            return Err(format!(
                "--saga-timeout (ORDERFLOW_SAGA_TIMEOUT) is {}, but it must be longer than --ack-wait \
                 ({}): events held by a crashed instance come back only after the ack wait, and \
                 their sagas would time out first",
                format_duration(self.saga_timeout),
                format_duration(self.common.ack_wait),
            ));
        }
        if let Some(max_wait) = self.admission_max_wait()
            && max_wait > self.saga_timeout
        {
            return Err(format!(
                "--admission-max-wait (ORDERFLOW_ADMISSION_MAX_WAIT) is {}, longer than \
                 --saga-timeout ({}): orders admitted then would be cancelled by their deadline",
                format_duration(max_wait),
                format_duration(self.saga_timeout),
            ));
        }
        Ok(())
    }

    /// `--admission-max-wait`, or half the saga timeout (the other half is the saga's own work and
    /// room for the estimate to be wrong); `None` when admission control is off.
    pub fn admission_max_wait(&self) -> Option<Duration> {
        match self.admission_max_wait {
            None => Some(self.saga_timeout / 2),
            Some(AdmissionMaxWait::Off) => None,
            Some(AdmissionMaxWait::After(max_wait)) => Some(max_wait),
        }
    }
}

/// `--admission-max-wait` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionMaxWait {
    Off,
    After(Duration),
}

fn parse_admission_max_wait(raw: &str) -> Result<AdmissionMaxWait, String> {
    if raw == "off" {
        return Ok(AdmissionMaxWait::Off);
    }
    duration_between(Duration::from_millis(100), Duration::from_secs(86_400))(raw)
        .map(AdmissionMaxWait::After)
        .map_err(|reason| format!("{reason}, or off"))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Runs order-service until `shutdown` is requested.
pub async fn run(
    config: Config,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let mut context = ServiceContext::start(INFO, &config.common, metrics, shutdown).await?;
    context.spawn_relay();
    context.spawn_retention(vec![storage::expiring_idempotency_keys(
        config.idempotency_key_ttl,
    )]);
    // What the saga-duration alert compares its p99 with.
    metrics::gauge!("orderflow_saga_timeout_seconds").set(config.saga_timeout.as_secs_f64());
    let outcomes = outcomes::Outcomes::default();
    let admission = admission::Admission::new(
        config.admission_max_wait(),
        config.common.outbox_ready_limit,
    );
    admission.describe();
    // `/status`: the orders of the last minute, and where admission control stands.
    let last_minute = outcomes.details();
    let admitting = admission.clone();
    context.set_details(Arc::new(move |db| {
        let last_minute = last_minute(db);
        let admission = admitting.details();
        Box::pin(async move {
            let mut details = last_minute.await;
            details.insert("admission".to_owned(), admission);
            details
        })
    }));
    let handler = handlers::OrderHandler {
        outcomes: outcomes.clone(),
    };
    context.spawn_consumers(
        &[
            contracts::topology::ORDER_INVENTORY,
            contracts::topology::ORDER_PAYMENTS,
            contracts::topology::ORDER_INVENTORY_EXPRESS,
            contracts::topology::ORDER_PAYMENTS_EXPRESS,
        ],
        handler,
    );
    let sweeper = Arc::new(deadline::DeadlineSweeper::new(
        context.db.clone(),
        outcomes.clone(),
    ));
    context.spawn("saga-deadline", move |shutdown| {
        let sweeper = sweeper.clone();
        async move { sweeper.run(shutdown).await }
    });
    if config.admission_max_wait().is_some() {
        let (estimated, db, js) = (admission.clone(), context.db.clone(), context.js.clone());
        context.spawn("admission", move |shutdown| {
            admission::run(estimated.clone(), db.clone(), js.clone(), shutdown)
        });
    }
    let routes = api::router(api::AppState {
        db: context.db.clone(),
        saga_timeout: config.saga_timeout,
        publish_versions: config.publish_versions.clone(),
        outcomes,
        admission,
        accepts: accepts::Accepts::new(&context.db, config.publish_versions.clone()),
    });
    context.serve(routes, &api::openapi()).await;
    Ok(())
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
        let args = std::iter::once("order-service").chain(args.iter().copied());
        Cli::try_parse_from(args).map(|cli| cli.config)
    }

    #[test]
    fn admission_waits_at_most_half_the_saga_timeout_unless_told_otherwise() {
        let defaults = parse(&["--saga-timeout", "40s"]).unwrap();
        assert_eq!(defaults.admission_max_wait(), Some(Duration::from_secs(20)));
        let set = parse(&["--admission-max-wait", "5s"]).unwrap();
        assert_eq!(set.admission_max_wait(), Some(Duration::from_secs(5)));
        let off = parse(&["--admission-max-wait", "off"]).unwrap();
        assert_eq!(off.admission_max_wait(), None);
        assert!(off.check().is_ok());
    }

    #[test]
    fn an_admission_limit_past_the_saga_timeout_is_refused() {
        let error = parse(&["--admission-max-wait", "31s"])
            .unwrap()
            .check()
            .unwrap_err();
        assert!(error.contains("--admission-max-wait"), "{error}");
        let error = parse(&["--admission-max-wait", "soon"]).unwrap_err();
        assert!(error.to_string().contains("or off"), "{error}");
    }
}
