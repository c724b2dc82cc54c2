//! What every service does at start and stop, written once: configuration shared by all services,
//! connecting to the database and NATS, declaring streams, and running the relay, the consumers and
//! the HTTP server as tasks that all stop on one signal.

use crate::consumer::{Consumer, Handler};
use crate::db::{Db, DbError, MigrationSql};
use crate::http::{Health, with_common_routes};
use crate::nats::{self, DeliveryPolicy, NatsError};
use crate::outbox::{OutboxSignal, Relay};
use crate::shutdown::Shutdown;
use crate::telemetry::error_chain;
use async_nats::jetstream;
use contracts::topology::ConsumerSpec;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Settings every service takes, as flags or environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// NATS server to use.
    #[arg(
        long,
        env = "ORDERFLOW_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// How long to wait for NATS at start before giving up (seconds).
    #[arg(long, env = "ORDERFLOW_NATS_CONNECT_TIMEOUT", default_value_t = 60)]
    pub nats_connect_timeout: u64,
    /// Database: sqlite://PATH?mode=rwc or postgres://USER@HOST:PORT/DB.
    /// [default: sqlite://.orderflow/<service>.db?mode=rwc]
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// PostgreSQL schema holding this service's tables (ignored on SQLite). [default: the service's name]
    #[arg(long, env = "ORDERFLOW_DB_SCHEMA")]
    pub db_schema: Option<String>,
    /// Address the HTTP API listens on. [default: 127.0.0.1 on the service's own port]
    #[arg(long, env = "ORDERFLOW_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Deliveries of one event before it is dead-lettered (the first delivery counts).
    #[arg(long, env = "ORDERFLOW_MAX_DELIVER", default_value_t = 5,
        value_parser = clap::value_parser!(i64).range(1..))]
    pub max_deliver: i64,
    /// How long the broker waits for an acknowledgement before it redelivers an event (e.g. 10s) —
    /// also how long events held by a crashed instance wait before another instance gets them, so it
    /// must stay well below the saga timeout. Slow handlers send in-progress acks, so it need not
    /// cover the slowest one.
    #[arg(long, env = "ORDERFLOW_ACK_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Log format: json (one object per line) or pretty.
    #[arg(long, env = "ORDERFLOW_LOG_FORMAT", default_value = "json")]
    pub log_format: crate::telemetry::LogFormat,
}

/// The fixed facts about one service that its defaults derive from.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    /// `order-service`, ...: the NATS client name and the name in logs.
    pub name: &'static str,
    /// Default SQLite file stem and PostgreSQL schema.
    pub store: &'static str,
    pub default_port: u16,
    pub migrations: &'static [MigrationSql],
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database")]
    Database(#[from] DbError),
    #[error("cannot connect to NATS")]
    Nats(#[from] NatsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started service's shared resources, and the tasks it runs until shutdown.
pub struct ServiceContext {
    pub info: ServiceInfo,
    pub db: Db,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub outbox: OutboxSignal,
    pub metrics: PrometheusHandle,
    pub shutdown: Shutdown,
    pub listener: tokio::net::TcpListener,
    max_deliver: i64,
    ack_wait: Duration,
    tasks: JoinSet<()>,
}

impl ServiceContext {
    /// Binds the HTTP port first (so a port conflict fails fast), then opens the database (migrating
    /// it) and connects to NATS, waiting for it if needed, and declares the streams.
    pub async fn start(
        info: ServiceInfo,
        args: &ServiceArgs,
        metrics: PrometheusHandle,
        shutdown: Shutdown,
    ) -> Result<Self, StartError> {
        let addr = args
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], info.default_port)));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let url = args
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://.orderflow/{}.db?mode=rwc", info.store));
        if let Some(dir) = sqlite_parent_dir(&url) {
            // SQLite creates the file, not its folder.
            let _ = std::fs::create_dir_all(dir);
        }
        let schema = args.db_schema.as_deref().unwrap_or(info.store);
        let db = Db::connect(&url, schema, info.migrations).await?;
        let nats = nats::connect(
            &args.nats_url,
            info.name,
            Duration::from_secs(args.nats_connect_timeout),
        )
        .await?;
        let js = jetstream::new(nats.clone());
        nats::declare_streams(&js).await?;
        tracing::info!(service = info.name, http = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "started");
        Ok(Self {
            info,
            db,
            nats,
            js,
            outbox: OutboxSignal::default(),
            metrics,
            shutdown,
            listener,
            max_deliver: args.max_deliver,
            ack_wait: args.ack_wait,
            tasks: JoinSet::new(),
        })
    }

    pub fn health(&self) -> Health {
        Health {
            db: self.db.clone(),
            nats: Some(self.nats.clone()),
            metrics: self.metrics.clone(),
        }
    }

    /// Runs the outbox relay of this service.
    pub fn spawn_relay(&mut self) {
        let relay = Relay::new(self.db.clone(), self.js.clone(), self.outbox.clone());
        let shutdown = self.shutdown.clone();
        self.spawn("outbox-relay", relay.run(shutdown));
    }

    /// Runs a durable consumer that feeds `handler`.
    pub fn spawn_consumer<H: Handler>(&mut self, spec: ConsumerSpec, handler: H) {
        let policy = DeliveryPolicy {
            max_deliver: self.max_deliver,
            ack_wait: self.ack_wait,
            ..DeliveryPolicy::default()
        };
        let consumer = Consumer::new(
            spec,
            policy,
            self.db.clone(),
            self.js.clone(),
            handler,
            self.outbox.clone(),
        );
        let shutdown = self.shutdown.clone();
        let name = spec.name;
        self.spawn(name, async move {
            if let Err(error) = consumer.run(shutdown).await {
                tracing::error!(consumer = name, error = %error_chain(&error), "consumer stopped");
            }
        });
    }

    /// Runs any other task of the service (a worker, a timer) under the service's span.
    pub fn spawn(
        &mut self,
        task: &'static str,
        future: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let span = tracing::info_span!("task", service = self.info.name, task);
        self.tasks.spawn(future.instrument(span));
    }

    /// Serves the service's routes (plus health and metrics) and waits until shutdown, then for every
    /// task to finish its current message, then closes NATS (flushing acks) and the database.
    pub async fn serve(mut self, routes: axum::Router) -> std::io::Result<()> {
        let router = with_common_routes(routes, self.health());
        let served = crate::http::serve(self.listener, router, self.shutdown.clone()).await;
        if let Err(error) = &served {
            // Without its API the service is of no use; stop the other tasks too.
            tracing::error!(%error, "HTTP server failed; stopping");
            self.tasks.abort_all();
        }
        while self.tasks.join_next().await.is_some() {}
        let _ = self.nats.flush().await;
        self.db.close().await;
        tracing::info!(service = self.info.name, "stopped");
        served
    }
}

fn sqlite_parent_dir(url: &str) -> Option<std::path::PathBuf> {
    let path = url.strip_prefix("sqlite://")?.split('?').next()?;
    let parent = std::path::Path::new(path).parent()?;
    (!parent.as_os_str().is_empty()).then(|| parent.to_path_buf())
}

/// Parses a duration flag: `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("'{raw}' is not a duration such as 30s, 500ms or 2m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(amount)),
        "ms" => Ok(Duration::from_millis(amount)),
        "m" => Ok(Duration::from_secs(amount * 60)),
        "h" => Ok(Duration::from_secs(amount * 3600)),
        _ => Err(format!(
            "'{raw}' has an unknown unit '{unit}'; use ms, s, m or h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn sqlite_urls_name_their_folder() {
        assert_eq!(
            sqlite_parent_dir("sqlite://.orderflow/order.db?mode=rwc"),
            Some(std::path::PathBuf::from(".orderflow"))
        );
        assert_eq!(sqlite_parent_dir("sqlite://order.db"), None);
        assert_eq!(sqlite_parent_dir("postgres://h/db"), None);
    }
}
