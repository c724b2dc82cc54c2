//! What every service does at start and stop, written once: configuration shared by all services
//! (checked before anything connects), connecting to the database and NATS, declaring streams, and
//! running the relay, the consumers, the retention sweep and the HTTP server as supervised tasks that
//! all stop on one signal.
//!
//! Supervision: a task that ends unexpectedly (it panicked, or returned while nobody asked it to stop)
//! is logged at error level with its cause and started again with backoff; while it is down,
//! `/health/ready` answers 503 and names it. Nothing in a service may die silently.

use crate::access::ClientRateLimit;
use crate::backoff::{Backoff, Retries};
use crate::config::{self, DATABASE_URL, NATS_URLS, duration_between, format_duration};
use crate::consumer::{Consumer, Handler, PriorityGate, panic_message};
use crate::db::{Db, DbError, MigrationSql};
use crate::health::{DetailsProbe, Health, Readiness};
use crate::http::{EdgePolicy, with_common_routes};
use crate::nats::{self, DeliveryPolicy, NatsError, StreamLimits};
use crate::outbox::Relay;
use crate::retention::{self, Expiring, Sweeper};
use crate::schema::SchemaError;
use crate::server::ServerArgs;
use crate::shutdown::Shutdown;
use async_nats::jetstream;
use contracts::Priority;
use contracts::topology::ConsumerSpec;
use metrics_exporter_prometheus::PrometheusHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tracing::Instrument;

/// Ack waits orderflow can honour: in-progress acks go every third of it, and above an hour a
/// crashed instance's events would wait longer than any saga.
pub const ACK_WAIT_MIN: Duration = Duration::from_millis(100);
pub const ACK_WAIT_MAX: Duration = Duration::from_secs(3600);
/// A stop takes at least a second (handing back what a pull request still delivers takes that
/// long) and at most an hour; the readiness delay is at most a minute of it.
pub const SHUTDOWN_GRACE_MIN: Duration = Duration::from_secs(1);
pub const SHUTDOWN_GRACE_MAX: Duration = Duration::from_secs(3600);
pub const SHUTDOWN_DELAY_MAX: Duration = Duration::from_secs(60);
/// The readiness check that turns 503 as soon as a stop is requested.
pub const SHUTDOWN_CHECK: &str = "shutdown";
/// Retentions and ages: at least a second, at most a year.
pub const RETENTION_MIN: Duration = Duration::from_secs(1);
pub const RETENTION_MAX: Duration = Duration::from_secs(365 * 86_400);

/// Settings every service takes, as flags or environment variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// NATS server to use (or a comma-separated list of a cluster's servers).
    #[arg(long, env = "ORDERFLOW_NATS_URL", default_value = "nats://127.0.0.1:4222",
        value_parser = NATS_URLS)]
    pub nats_url: String,
    #[command(flatten)]
    pub nats_auth: nats::NatsAuth,
    /// How long to wait for NATS at start before giving up (seconds, 1 to 3600).
    #[arg(long, env = "ORDERFLOW_NATS_CONNECT_TIMEOUT", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub nats_connect_timeout: u64,
    /// Database: sqlite://PATH?mode=rwc or postgres://USER@HOST:PORT/DB.
    /// [default: sqlite://.orderflow/<service>.db?mode=rwc]
    #[arg(long, env = "DATABASE_URL", value_parser = DATABASE_URL)]
    pub database_url: Option<String>,
    /// PostgreSQL schema holding this service's tables (ignored on SQLite). [default: the service's name]
    #[arg(long, env = "ORDERFLOW_DB_SCHEMA", value_parser = crate::db::schema_name)]
    pub db_schema: Option<String>,
    /// Address the HTTP API listens on. [default: 127.0.0.1 on the service's own port]
    #[arg(long, env = "ORDERFLOW_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Failed attempts at one event before it is dead-lettered (1 to 1000). Only failures of the
    /// event count: while the service's own database is unavailable, events wait without counting.
    #[arg(long, env = "ORDERFLOW_MAX_DELIVER", default_value_t = 5,
        value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub max_deliver: i64,
    /// How long the broker waits for an acknowledgement before it redelivers an event (100ms to 1h),
    /// which is also how long events held by a crashed instance wait before another instance gets
    /// them, so it must stay well below the saga timeout. Slow handlers send in-progress acks, so it
    /// need not cover the slowest one.
    #[arg(long, env = "ORDERFLOW_ACK_WAIT", default_value = "10s",
        value_parser = duration_between(ACK_WAIT_MIN, ACK_WAIT_MAX))]
    pub ack_wait: Duration,
    /// How long published outbox rows are kept (1s to 365d); older ones are deleted.
    #[arg(long, env = "ORDERFLOW_OUTBOX_RETENTION", default_value = "1h",
        value_parser = duration_between(RETENTION_MIN, RETENTION_MAX))]
    pub outbox_retention: Duration,
    /// How long the inbox remembers a handled event, so that a redelivery has no second effect (1s to
    /// 365d). Must cover the longest time an event can still be redelivered: the streams' age limit,
    /// the broker's duplicate window and ack wait × max deliver.
    #[arg(long, env = "ORDERFLOW_INBOX_RETENTION", default_value = "7d",
        value_parser = duration_between(RETENTION_MIN, RETENTION_MAX))]
    pub inbox_retention: Duration,
    /// How long the ORDERS, INVENTORY and PAYMENTS streams keep a message (1s to 365d). DLQ keeps its
    /// messages until they are purged.
    #[arg(long, env = "ORDERFLOW_STREAM_MAX_AGE", default_value = "7d",
        value_parser = duration_between(RETENTION_MIN, RETENTION_MAX))]
    pub stream_max_age: Duration,
    /// On how many servers of a NATS cluster each stream is stored (1 to 5; at most the cluster's
    /// size). 3 on a 3-node cluster keeps every event through the loss of any one node. Raising it
    /// on existing streams replicates them; lowering it is refused by the server.
    #[arg(long, env = "ORDERFLOW_STREAM_REPLICAS", default_value_t = 1,
        value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u8).range(1..=5), usize::from))]
    pub stream_replicas: usize,
    /// The event versions this service's consumers read: every one this build knows by default. Fewer
    /// (`v1`) make it read as an older build would, to rehearse a rolling upgrade: a version it does
    /// not read is skipped when the same event also went out in one it does (dual publishing), and
    /// dead-lettered otherwise.
    #[arg(long, env = "ORDERFLOW_READ_VERSIONS", default_value = "v1,v2")]
    pub read_versions: crate::schema::ReadVersions,
    /// Events waiting in the outbox at which `/health/ready` reports the service not ready (1 to
    /// 10,000,000): a relay that cannot keep up or cannot reach NATS leaves every saga waiting.
    #[arg(long, env = "ORDERFLOW_OUTBOX_READY_LIMIT", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub outbox_ready_limit: u64,
    /// How long a stop may take from SIGTERM to exit (1s to 1h): new requests refused, the
    /// messages in hand finished, those still arriving handed back, the outbox flushed. What is not
    /// done by then is abandoned (it is safe: held messages come back after --ack-wait, outbox rows
    /// are published at the next start). Keep it below the orchestrator's kill timeout.
    #[arg(long, env = "ORDERFLOW_SHUTDOWN_GRACE", default_value = "20s",
        value_parser = duration_between(SHUTDOWN_GRACE_MIN, SHUTDOWN_GRACE_MAX))]
    pub shutdown_grace: Duration,
    /// How long, after SIGTERM, the service keeps serving requests while `/health/ready` already
    /// answers 503 (0s to 1m), so that a load balancer stops sending before the port closes. Part
    /// of --shutdown-grace. Behind Kubernetes a few seconds; alone, 0s.
    #[arg(long, env = "ORDERFLOW_SHUTDOWN_DELAY", default_value = "0s",
        value_parser = duration_between(Duration::ZERO, SHUTDOWN_DELAY_MAX))]
    pub shutdown_delay: Duration,
    /// How much lower the CPU priority of the service's normal work is than its express lane's: a
    /// nice increment (0 to 19) for every thread of the service's runtime, not for the express
    /// lane's own thread. On cores that a flood of normal orders keeps busy, the express lane then
    /// gets the CPU first (ADR 15). 0 leaves every thread as it started.
    #[arg(long, env = "ORDERFLOW_NORMAL_LANE_NICE", default_value_t = 10,
        value_parser = clap::value_parser!(u8).range(0..=19))]
    pub normal_lane_nice: u8,
    /// Requests a second each client (by IP address) may make to the service's own routes, on
    /// average (0 to 1,000,000; 0 turns the limit off). Over it the answer is 429 with Retry-After.
    /// Health, status and metrics are never limited.
    #[arg(long, env = "ORDERFLOW_RATE_LIMIT", default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub rate_limit: u32,
    /// Requests one client may make at once above its --rate-limit (1 to 1,000,000).
    #[arg(long, env = "ORDERFLOW_RATE_LIMIT_BURST", default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit_burst: u32,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The bearer token admin operations require (catalog writes); they are refused without one.
    /// 16 to 256 visible ASCII characters. Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "ORDERFLOW_ADMIN_TOKEN", hide_env_values = true,
        value_parser = crate::access::AdminToken::parse)]
    pub admin_token: Option<crate::access::AdminToken>,
    /// Log format: json (one object per line), pretty, or auto: pretty when stdout is a terminal,
    /// json otherwise.
    #[arg(long, env = "ORDERFLOW_LOG_FORMAT", default_value = "auto")]
    pub log_format: crate::telemetry::LogFormat,
}

impl ServiceArgs {
    pub fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            max_age: self.stream_max_age,
            replicas: self.stream_replicas,
        }
    }

    /// What the HTTP server enforces on each request: the admin token, the per-client rate limit
    /// (unless 0), the request timeout.
    pub fn edge_policy(&self) -> EdgePolicy {
        let per_client = NonZeroU32::new(self.rate_limit).map(|per_second| {
            ClientRateLimit::new(
                per_second,
                NonZeroU32::new(self.rate_limit_burst).unwrap_or(NonZeroU32::MIN),
            )
        });
        EdgePolicy {
            admin: self.admin_token.clone(),
            per_client,
            request_timeout: self.server.http_request_timeout,
        }
    }

    /// The longest time after an event was handled that it may still arrive again: a consumer
    /// deleted and declared anew replays its stream (up to its age limit), the broker takes a
    /// re-publish as new after its duplicate window, and an applied event whose acks are lost comes
    /// back after every ack wait.
    pub fn redelivery_horizon(&self) -> Duration {
        let limits = self.stream_limits();
        let acks = self
            .ack_wait
            .saturating_mul(u32::try_from(self.max_deliver).unwrap_or(u32::MAX));
        limits.max_age.max(limits.duplicate_window()).max(acks)
    }

    /// Checks what no single flag can: an inbox that forgets events before they can stop arriving
    /// would apply a redelivered event twice.
    pub fn check(&self) -> Result<(), String> {
        if self.shutdown_delay >= self.shutdown_grace {
            return Err(format!(
                "--shutdown-delay (ORDERFLOW_SHUTDOWN_DELAY) is {}, which leaves nothing of \
                 --shutdown-grace (ORDERFLOW_SHUTDOWN_GRACE, {}) to finish the work in hand; make \
                 the grace longer than the delay",
                format_duration(self.shutdown_delay),
                format_duration(self.shutdown_grace),
            ));
        }
        let horizon = self.redelivery_horizon();
        if self.inbox_retention < horizon {
            return Err(format!(
                "--inbox-retention (ORDERFLOW_INBOX_RETENTION) is {}, but an event can still be \
                 redelivered {} after it was handled (--stream-max-age {}, --ack-wait {} × \
                 --max-deliver {}); set it to at least {}",
                format_duration(self.inbox_retention),
                format_duration(horizon),
                format_duration(self.stream_max_age),
                format_duration(self.ack_wait),
                self.max_deliver,
                format_duration(horizon),
            ));
        }
        Ok(())
    }
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
    #[error(transparent)]
    Schemas(#[from] SchemaError),
    #[error("cannot start the express lane's thread")]
    ExpressThread(#[source] std::io::Error),
}

/// The runtime a service runs on: its worker and blocking threads run `normal_lane_nice` lower in
/// CPU priority than the thread that builds it. Build it on the process's main thread and start the
/// service there (`block_on`): the express lane's thread is started from it, so it keeps the
/// process's own priority (a thread cannot raise its priority again without privileges).
pub fn service_runtime(normal_lane_nice: u8) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || lower_priority(normal_lane_nice))
        .build()
}

/// Lowers the calling thread's CPU priority by `increment` (Linux: nice values are per thread).
fn lower_priority(increment: u8) {
    if increment == 0 {
        return;
    }
    // SAFETY: plain system calls on the calling thread's own id; they touch no memory of ours.
    let done = unsafe {
        let thread = libc::gettid() as libc::id_t;
        let current = libc::getpriority(libc::PRIO_PROCESS, thread);
        libc::setpriority(libc::PRIO_PROCESS, thread, current + i32::from(increment))
    };
    if done != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(),
            "cannot lower the normal lane's CPU priority; both lanes share the CPU equally");
    }
}

/// The express lane's own thread (ADR 15): a runtime with nothing else on it, so that an express event
/// never waits for a turn on a thread behind the normal lane's requests and batches, and a NATS
/// connection of its own, so that its messages are not read and written behind theirs. The express
/// consumers, the express outbox relay and whatever a service adds with
/// [`ServiceContext::spawn_express`] run there.
struct ExpressLane {
    runtime: tokio::runtime::Handle,
    nats: async_nats::Client,
    js: jetstream::Context,
    /// Dropped once the service has stopped: the thread then ends its runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ExpressLane {
    async fn start(args: &ServiceArgs, service: &'static str) -> Result<ExpressLane, StartError> {
        let (started, on_started) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (url, auth) = (args.nats_url.clone(), args.nats_auth.clone());
        let patience = Duration::from_secs(args.nats_connect_timeout);
        let name = format!("{service}-express");
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started.send(Err(StartError::ExpressThread(error)));
                        return;
                    }
                };
                // Connected from this thread, so that the connection's own tasks run here.
                let connected = runtime.block_on(nats::connect(&url, &auth, &name, patience));
                let handle = runtime.handle().clone();
                let _ = started.send(connected.map(|nats| (handle, nats)).map_err(Into::into));
                // The lane's tasks run while this waits, until the service has stopped.
                let _ = runtime.block_on(stopped);
            })
            .map_err(StartError::ExpressThread)?;
        let (runtime, nats) = on_started.await.map_err(|_| {
            StartError::ExpressThread(std::io::Error::other(
                "the express lane's thread ended before it started",
            ))
        })??;
        Ok(ExpressLane {
            runtime,
            js: jetstream::new(nats.clone()),
            nats,
            _stop: stop,
        })
    }
}

/// Restarts of a task that ended unexpectedly: growing while it keeps dying, from the least again
/// once it ran for [`TASK_HEALTHY_AFTER`].
const TASK_RESTART_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
const TASK_HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// A started service's shared resources, and the tasks it runs until shutdown.
pub struct ServiceContext {
    pub info: ServiceInfo,
    pub db: Db,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub metrics: PrometheusHandle,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    pub listener: tokio::net::TcpListener,
    args: ServiceArgs,
    /// Every task but the relay: they stop on [`ServiceContext::shutdown`].
    tasks: JoinSet<()>,
    /// The outbox relay, stopped only once every other task has finished, so that it publishes what
    /// their last messages produced.
    relay: JoinSet<()>,
    relay_stop: crate::shutdown::ShutdownTrigger,
    relay_shutdown: Shutdown,
    /// The consumers spawned so far, for health and status.
    consumers: Vec<ConsumerSpec>,
    /// Shared by the consumers, so that the express lane's go first.
    gate: PriorityGate,
    express: ExpressLane,
    details: Option<DetailsProbe>,
}

impl ServiceContext {
    /// Compiles the event validators, binds the HTTP port (so a port conflict fails fast), then opens the database (migrating
    /// it) and connects to NATS, waiting for it if needed, and declares the streams.
    pub async fn start(
        info: ServiceInfo,
        args: &ServiceArgs,
        metrics: PrometheusHandle,
        shutdown: Shutdown,
    ) -> Result<Self, StartError> {
        crate::schema::compile(&args.read_versions)?;
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
        let schema = args.db_schema.as_deref().unwrap_or(info.store);
        let db = Db::connect(&url, schema, info.migrations).await?;
        let nats = nats::connect(
            &args.nats_url,
            &args.nats_auth,
            info.name,
            Duration::from_secs(args.nats_connect_timeout),
        )
        .await?;
        let js = jetstream::new(nats.clone());
        nats::declare_streams_patiently(
            &js,
            args.stream_limits(),
            Duration::from_secs(args.nats_connect_timeout),
        )
        .await?;
        let express = ExpressLane::start(args, info.name).await?;
        tracing::info!(service = info.name, database = %config::redact(&url),
            http = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "started");
        let (relay_stop, relay_shutdown) = crate::shutdown::channel();
        let readiness = Readiness::default();
        readiness.register(SHUTDOWN_CHECK);
        Ok(Self {
            info,
            db,
            nats,
            js,
            metrics,
            readiness,
            shutdown,
            listener,
            args: args.clone(),
            tasks: JoinSet::new(),
            relay: JoinSet::new(),
            relay_stop,
            relay_shutdown,
            consumers: Vec::new(),
            gate: PriorityGate::default(),
            express,
            details: None,
        })
    }

    pub fn health(&self) -> Health {
        let health = Health::new(
            self.info.name,
            self.db.clone(),
            self.metrics.clone(),
            self.readiness.clone(),
        )
        .with_broker(self.nats.clone(), self.js.clone(), self.consumers.clone())
        .with_outbox(self.args.outbox_ready_limit);
        match &self.details {
            Some(probe) => health.with_details(probe.clone()),
            None => health,
        }
    }

    /// Adds what only this service knows to its `/status` (and sets its own gauges at each scrape).
    pub fn set_details(&mut self, probe: DetailsProbe) {
        self.details = Some(probe);
    }

    /// Runs the outbox relay of this service.
    pub fn spawn_relay(&mut self) {
        // One relay per lane, each on its lane's thread and connection. Every event waits for its
        // relay: the express one must not queue for the database behind a flood of normal requests.
        let normal = Relay::new(self.db.clone(), self.js.clone(), self.args.stream_limits())
            .only(Priority::Normal);
        let express = Relay::new(
            self.db.prioritized(Priority::Express),
            self.express.js.clone(),
            self.args.stream_limits(),
        )
        .only(Priority::Express);
        for (task, relay, runtime) in [
            ("outbox-relay", normal, tokio::runtime::Handle::current()),
            (
                "outbox-relay-express",
                express,
                self.express.runtime.clone(),
            ),
        ] {
            let relay = Arc::new(relay);
            let supervised = self.supervised(task, self.relay_shutdown.clone(), move |stop| {
                let relay = relay.clone();
                async move { relay.run(stop).await }
            });
            self.relay.spawn_on(supervised, &runtime);
        }
    }

    /// Runs the retention sweep over the platform's tables (outbox, inbox, failure counts) and the
    /// service's own `extra` ones.
    pub fn spawn_retention(&mut self, extra: Vec<Expiring>) {
        let mut tables =
            retention::platform_tables(self.args.outbox_retention, self.args.inbox_retention);
        tables.extend(extra);
        let sweeper = Arc::new(Sweeper::new(self.db.clone(), tables));
        self.spawn("retention", move |shutdown| {
            let sweeper = sweeper.clone();
            async move { sweeper.run(shutdown).await }
        });
    }

    /// Runs a durable consumer that feeds `handler`.
    pub fn spawn_consumer<H: Handler>(&mut self, spec: ConsumerSpec, handler: H) {
        let policy = DeliveryPolicy {
            max_deliver: self.args.max_deliver,
            ack_wait: self.args.ack_wait,
            ..DeliveryPolicy::default()
        };
        self.consumers.push(spec);
        let js = match spec.priority {
            Priority::Normal => self.js.clone(),
            Priority::Express => self.express.js.clone(),
        };
        let consumer = Arc::new(
            Consumer::new(
                spec,
                policy,
                self.db.clone(),
                js,
                handler,
                self.readiness.clone(),
            )
            .with_streams(self.args.stream_limits())
            .with_gate(self.gate.clone()),
        );
        let start = move |shutdown| {
            let consumer = consumer.clone();
            async move { consumer.run(shutdown).await }
        };
        match spec.priority {
            Priority::Normal => self.spawn(spec.name, start),
            Priority::Express => self.spawn_express(spec.name, start),
        }
    }

    /// Runs durable consumers that feed clones of `handler`: a service's consumer of each lane.
    pub fn spawn_consumers<H: Handler + Clone>(&mut self, specs: &[ConsumerSpec], handler: H) {
        for spec in specs {
            self.spawn_consumer(*spec, handler.clone());
        }
    }

    /// Runs a task of the express lane on the lane's own thread (see [`ExpressLane`]), under the
    /// service's supervision like [`ServiceContext::spawn`].
    pub fn spawn_express<F, Fut>(&mut self, task: &'static str, start: F)
    where
        F: Fn(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let supervised = self.supervised(task, self.shutdown.clone(), start);
        self.tasks.spawn_on(supervised, &self.express.runtime);
    }

    /// Runs a task of the service (a worker, a timer) under the service's span and supervision:
    /// `start` makes a fresh run of it, and is called again after an unexpected end.
    pub fn spawn<F, Fut>(&mut self, task: &'static str, start: F)
    where
        F: Fn(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let supervised = self.supervised(task, self.shutdown.clone(), start);
        self.tasks.spawn(supervised);
    }

    /// `start`'s task under the service's span and supervision, stopping on `shutdown`, and listed
    /// in readiness.
    fn supervised<F, Fut>(
        &self,
        task: &'static str,
        shutdown: Shutdown,
        start: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: Fn(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("task", service = self.info.name, task);
        self.readiness.register(task);
        supervise(task, start, self.readiness.clone(), shutdown).instrument(span)
    }

    /// Serves the service's routes (plus health and metrics) until shutdown, then stops in order
    /// within `--shutdown-grace`: readiness turns 503 at once (requests are still served for
    /// `--shutdown-delay`), the server stops accepting and finishes the requests in flight, every
    /// task finishes the message in hand and hands back what is still arriving, the relay flushes
    /// what they wrote to the outbox, and NATS (with the last acks) and the database are closed.
    pub async fn serve(self, routes: axum::Router, document: &utoipa::openapi::OpenApi) {
        let router = with_common_routes(routes, self.health(), document, &self.args.edge_policy());
        let Self {
            info,
            db,
            nats,
            readiness,
            shutdown,
            listener,
            args,
            mut tasks,
            mut relay,
            relay_stop,
            express,
            ..
        } = self;
        let (delay, grace) = (args.shutdown_delay, args.shutdown_grace);
        let refusing = {
            let mut requested = shutdown.clone();
            async move {
                requested.requested().await;
                readiness.report(
                    SHUTDOWN_CHECK,
                    SHUTDOWN_CHECK,
                    Err("shutting down: this instance takes no new work".into()),
                );
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    grace_ms = grace.as_millis() as u64,
                    "shutting down: readiness answers 503; finishing the work in hand"
                );
                tokio::time::sleep(delay).await;
            }
        };
        let stopping = async {
            crate::server::serve(listener, router, args.server, refusing).await;
            while tasks.join_next().await.is_some() {}
            relay_stop.trigger();
            while relay.join_next().await.is_some() {}
        };
        let mut requested = shutdown.clone();
        let overdue = async {
            requested.requested().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = stopping => {}
            () = overdue => {
                tracing::error!(grace_ms = grace.as_millis() as u64,
                    "the stop took longer than --shutdown-grace; abandoning what is left (held \
                     events come back after --ack-wait, outbox rows are published at the next start)");
            }
        }
        tasks.shutdown().await;
        relay.shutdown().await;
        let _ = nats.flush().await;
        let _ = express.nats.flush().await;
        db.close().await;
        tracing::info!(service = info.name, "stopped");
    }
}

/// Runs `start`'s task until shutdown, starting it again whenever it ends unexpectedly.
async fn supervise<F, Fut>(task: &'static str, start: F, readiness: Readiness, shutdown: Shutdown)
where
    F: Fn(Shutdown) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut retries = Retries::new(TASK_RESTART_BACKOFF, TASK_HEALTHY_AFTER);
    let mut stop = shutdown.clone();
    loop {
        readiness.report(task, task, Ok(()));
        let started = Instant::now();
        // A task of its own, so that a panic ends only this run; aborted with its supervisor.
        let mut run = AbortOnDrop(tokio::spawn(start(shutdown.clone()).in_current_span()));
        let ended = (&mut run.0).await;
        if shutdown.is_requested() {
            return;
        }
        let cause = match ended {
            Ok(()) => "it returned without being asked to stop".to_owned(),
            Err(error) if error.is_panic() => {
                format!(
                    "it panicked: {}",
                    panic_message(error.into_panic().as_ref())
                )
            }
            Err(error) => format!("it was cancelled: {error}"),
        };
        let pause = retries.failed(started.elapsed());
        readiness.report(
            task,
            task,
            Err(format!(
                "down, restarting in {} ms: {cause}",
                pause.as_millis()
            )),
        );
        tracing::error!(task, %cause, restart = retries.total(), retry_in_ms = pause.as_millis() as u64,
            "task ended unexpectedly; restarting it");
        metrics::counter!("orderflow_task_restarts_total", "task" => task).increment(1);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.requested() => return,
        }
    }
}

/// A spawned task that is aborted when this handle is dropped (its supervisor was aborted).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServiceArgs,
    }

    fn parse(args: &[&str]) -> Result<ServiceArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("service").chain(args.iter().copied()))
            .map(|cli| cli.args)
    }

    #[test]
    fn the_defaults_are_consistent() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.check(), Ok(()));
        assert_eq!(args.redelivery_horizon(), Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn values_that_cannot_work_are_refused_naming_the_flag_and_range() {
        for bad in [
            &["--ack-wait", "0s"][..],
            &["--ack-wait=-1s"],
            &["--max-deliver", "0"],
            &["--outbox-retention", "0s"],
            &["--stream-max-age", "400d"],
            &["--nats-url", "http://127.0.0.1:4222"],
            &["--database-url", "mysql://x"],
            &["--nats-connect-timeout", "0"],
            &["--shutdown-grace", "0s"],
            &["--shutdown-delay", "2m"],
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
            let flag = bad[0].split('=').next().unwrap_or_default();
            assert!(error.to_string().contains(flag), "{bad:?}: {error}");
        }
        let error = parse(&["--ack-wait", "0s"]).unwrap_err().to_string();
        assert!(error.contains("from 100ms to 1h"), "{error}");
    }

    #[test]
    fn a_shutdown_delay_must_leave_time_within_the_grace() {
        let args = parse(&["--shutdown-delay", "20s"]).unwrap();
        let error = args.check().unwrap_err();
        assert!(error.contains("--shutdown-delay"), "{error}");
        assert!(error.contains("--shutdown-grace"), "{error}");
        let args = parse(&["--shutdown-delay", "5s", "--shutdown-grace", "30s"]).unwrap();
        assert_eq!(args.check(), Ok(()));
    }

    #[test]
    fn an_inbox_shorter_than_the_redelivery_horizon_is_refused() {
        let args = parse(&["--inbox-retention", "1h"]).unwrap();
        let error = args.check().unwrap_err();
        assert!(error.contains("--inbox-retention"), "{error}");
        assert!(error.contains("at least 7d"), "{error}");
        let args = parse(&[
            "--inbox-retention",
            "5s",
            "--stream-max-age",
            "5s",
            "--ack-wait",
            "1s",
            "--max-deliver",
            "3",
        ])
        .unwrap();
        assert_eq!(args.check(), Ok(()));
        let args = parse(&["--inbox-retention", "5s", "--stream-max-age", "5s"]).unwrap();
        assert!(args.check().unwrap_err().contains("at least 50s"));
    }

    #[tokio::test]
    async fn a_task_that_dies_is_reported_and_restarted() {
        let readiness = Readiness::default();
        let (trigger, shutdown) = crate::shutdown::channel();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = runs.clone();
        let supervisor = tokio::spawn(supervise(
            "flaky",
            move |mut shutdown: Shutdown| {
                let run = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if run == 0 {
                        panic!("the first run fails");
                    }
                    shutdown.requested().await;
                }
            },
            readiness.clone(),
            shutdown,
        ));
        let down = wait_for(|| readiness.checks().get("flaky").is_some_and(Result::is_err)).await;
        assert!(down, "the dead task was never reported");
        let reason = readiness.checks()["flaky"].clone().unwrap_err();
        assert!(reason.contains("the first run fails"), "{reason}");
        let back = wait_for(|| {
            runs.load(std::sync::atomic::Ordering::SeqCst) == 2
                && readiness.checks()["flaky"].is_ok()
        })
        .await;
        assert!(back, "the task was never restarted");
        trigger.trigger();
        supervisor.await.unwrap();
    }

    async fn wait_for(condition: impl Fn() -> bool) -> bool {
        for _ in 0..400 {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }
}
