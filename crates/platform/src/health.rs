//! What a service says about itself: `/health/live`, `/health/ready`, `/status` and `/metrics`.
//!
//! `/health/ready` checks the database (a write on SQLite, `SELECT 1` on PostgreSQL), the NATS
//! connection, that the streams exist, that the outbox backlog is below its limit, and whatever the
//! tasks report in [`Readiness`]: a consumer waiting out a database outage that a probe cannot notice
//! (a SQLite file locked by another process still answers reads), a consumer that cannot declare
//! itself on the broker, a task that died and is being restarted. Any failed check makes the service
//! not ready, and the answer names it. `/status` adds the numbers an operator looks at when a saga is
//! stuck (the outbox backlog, each consumer's pending and redelivered messages, dead letters, and
//! what only the service knows), and `/metrics` exports the same numbers as gauges at every scrape.

use crate::consumer::{HandledEvent, handled_events};
use crate::db::Db;
use crate::http::{ApiError, Problem};
use crate::nats::{ConsumerBacklog, consumer_backlogs};
use crate::outbox::{OutboxBacklog, backlog};
use async_nats::jetstream;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use contracts::topology::{ALL_STREAMS, ConsumerSpec};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use utoipa::ToSchema;

/// How long a probe or a scrape waits for the broker or the database before it reports the check
/// failed: a probe that hangs is worse than one that says why.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Problems by check (`database`, or a task's name), then by who reported them; shared by the tasks of
/// one service and its `/health/ready` handler.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
}

impl Readiness {
    /// Makes `check` appear in the readiness answer ("ok" until a problem is reported), so that every
    /// task of the service is listed, not only the failing ones.
    pub fn register(&self, check: &str) {
        self.lock().entry(check.to_owned()).or_default();
    }

    /// What `reporter` currently knows about `check`: `Ok` clears its earlier problem. The check is
    /// down while any reporter has a problem with it, so one consumer recovering does not hide another
    /// that is still waiting.
    pub fn report(&self, check: &str, reporter: &str, state: Result<(), String>) {
        let mut checks = self.lock();
        let problems = checks.entry(check.to_owned()).or_default();
        match state {
            Ok(()) => {
                problems.remove(reporter);
            }
            Err(reason) => {
                problems.insert(reporter.to_owned(), reason);
            }
        }
    }

    /// Every check with its state: `Ok`, or the reason of one of the reporters that see it down.
    pub fn checks(&self) -> BTreeMap<String, Result<(), String>> {
        self.lock()
            .iter()
            .map(|(check, problems)| {
                let state = match problems.iter().next() {
                    None => Ok(()),
                    Some((reporter, reason)) if reporter == check => Err(reason.clone()),
                    Some((reporter, reason)) => Err(format!("{reporter}: {reason}")),
                };
                (check.clone(), state)
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<String, String>>> {
        // A panic while holding this lock leaves plain data behind, still fit to read.
        self.checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What only one service knows about its work, for `/status` (and the gauges it sets itself): the
/// orders of the last minute, the breaker's state, the stock totals.
pub type DetailsProbe =
    Arc<dyn Fn(Db) -> BoxFuture<'static, BTreeMap<String, Value>> + Send + Sync>;

/// Everything the health and status endpoints of one service read.
#[derive(Clone)]
pub struct Health {
    service: &'static str,
    db: Db,
    broker: Option<Broker>,
    /// The outbox backlog above which the service is not ready; `None` for a service without one.
    outbox_limit: Option<u64>,
    metrics: PrometheusHandle,
    readiness: Readiness,
    details: Option<DetailsProbe>,
}

#[derive(Clone)]
struct Broker {
    client: async_nats::Client,
    js: jetstream::Context,
    consumers: Vec<ConsumerSpec>,
}

/// What `/health/live` and `/health/ready` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// `live`; `ready`, or `not_ready` when any check failed.
    pub status: String,
    /// Each check with `ok` or why it failed: for readiness `database`, `nats`, `streams`, `outbox`
    /// and every task and consumer of the service.
    pub checks: BTreeMap<String, String>,
}

impl HealthReport {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

/// What `/status` answers: the service's readiness and the numbers behind a stuck saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceStatus {
    pub service: String,
    pub version: String,
    pub ready: HealthReport,
    /// Absent for a service without an outbox, or when the database did not answer.
    pub outbox: Option<OutboxBacklog>,
    /// The service's durable consumers, as the broker sees them; empty when it did not answer.
    pub consumers: Vec<ConsumerBacklog>,
    /// What only this service knows (order-service: `orders_last_minute`; payment-service: `breaker`;
    /// inventory-service: `stock`).
    #[schema(value_type = Object)]
    pub details: BTreeMap<String, Value>,
}

impl Health {
    pub fn new(
        service: &'static str,
        db: Db,
        metrics: PrometheusHandle,
        readiness: Readiness,
    ) -> Self {
        Self {
            service,
            db,
            broker: None,
            outbox_limit: None,
            metrics,
            readiness,
            details: None,
        }
    }

    /// Checks the connection, the streams and `consumers` on the broker too.
    pub fn with_broker(
        mut self,
        client: async_nats::Client,
        js: jetstream::Context,
        consumers: Vec<ConsumerSpec>,
    ) -> Self {
        self.broker = Some(Broker {
            client,
            js,
            consumers,
        });
        self
    }

    /// Checks the outbox backlog too: not ready at `limit` events waiting or more.
    pub fn with_outbox(mut self, limit: u64) -> Self {
        self.outbox_limit = Some(limit);
        self
    }

    /// Adds the service's own facts to `/status`.
    pub fn with_details(mut self, probe: DetailsProbe) -> Self {
        self.details = Some(probe);
        self
    }

    /// Every readiness check, run now.
    pub async fn readiness_report(&self) -> HealthReport {
        let outbox = self.read_outbox().await;
        self.readiness_with(outbox.as_ref()).await
    }

    /// The outbox backlog, or why it could not be read; `None` for a service without an outbox.
    async fn read_outbox(&self) -> Option<Result<OutboxBacklog, String>> {
        self.outbox_limit?;
        let read = match tokio::time::timeout(PROBE_TIMEOUT, backlog(&self.db)).await {
            Ok(Ok(backlog)) => Ok(backlog),
            Ok(Err(error)) => Err(format!("cannot read the outbox: {error}")),
            Err(_) => Err(format!("the outbox was not read within {PROBE_TIMEOUT:?}")),
        };
        Some(read)
    }

    /// Every readiness check, with the outbox backlog already read.
    async fn readiness_with(&self, outbox: Option<&Result<OutboxBacklog, String>>) -> HealthReport {
        let mut checks = BTreeMap::new();
        let mut reported = self.readiness.checks();
        // A probe that answers does not clear what a task saw: a SQLite file locked by another
        // process still answers `SELECT 1`.
        let database = self.db.ping().await.and(
            reported
                .remove(crate::consumer::DATABASE_CHECK)
                .unwrap_or(Ok(())),
        );
        checks.insert("database".to_owned(), database);
        if let Some(broker) = &self.broker {
            let connected = crate::nats::check_connected(&broker.client);
            let streams = match &connected {
                Ok(()) => streams_present(&broker.js).await,
                Err(_) => Err("not checked while NATS is not connected".to_owned()),
            };
            checks.insert("nats".to_owned(), connected);
            checks.insert("streams".to_owned(), streams);
        }
        if let (Some(limit), Some(outbox)) = (self.outbox_limit, outbox) {
            checks.insert("outbox".to_owned(), outbox_check(outbox, limit));
        }
        checks.extend(reported);
        let ready = checks.values().all(Result::is_ok);
        HealthReport {
            status: if ready { "ready" } else { "not_ready" }.to_owned(),
            checks: checks
                .into_iter()
                .map(|(check, state)| (check, state.err().unwrap_or_else(|| "ok".to_owned())))
                .collect(),
        }
    }

    /// Readiness, the outbox backlog, the consumers' backlogs and the service's own facts, now.
    pub async fn status(&self) -> ServiceStatus {
        // One read of the outbox serves both its readiness check and the numbers.
        let read = self.read_outbox().await;
        let ready = self.readiness_with(read.as_ref()).await;
        let outbox = read.and_then(Result::ok);
        let consumers = match &self.broker {
            // While NATS is away there is nobody to ask; a scrape then answers at once.
            Some(broker) if crate::nats::check_connected(&broker.client).is_ok() => {
                consumer_backlogs(&broker.js, &broker.consumers, PROBE_TIMEOUT)
                    .await
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let details = match &self.details {
            Some(probe) => probe(self.db.clone()).await,
            None => BTreeMap::new(),
        };
        ServiceStatus {
            service: self.service.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready,
            outbox,
            consumers,
            details,
        }
    }

    /// Sets the gauges that are read rather than counted, from a fresh [`Health::status`].
    async fn record_gauges(&self) {
        let status = self.status().await;
        if let Some(outbox) = status.outbox {
            metrics::gauge!("orderflow_outbox_unpublished_events").set(outbox.unpublished as f64);
            metrics::gauge!("orderflow_outbox_oldest_unpublished_age_seconds")
                .set(outbox.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
        }
        for consumer in status.consumers {
            let name = consumer.consumer;
            metrics::gauge!("orderflow_consumer_pending_messages", "consumer" => name.clone())
                .set(consumer.pending as f64);
            metrics::gauge!("orderflow_consumer_ack_pending_messages", "consumer" => name.clone())
                .set(consumer.ack_pending as f64);
            metrics::gauge!("orderflow_consumer_redelivered_messages", "consumer" => name.clone())
                .set(consumer.redelivered as f64);
            metrics::gauge!("orderflow_dead_letters", "consumer" => name)
                .set(consumer.dead_letters as f64);
        }
        for (check, state) in status.ready.checks {
            metrics::gauge!("orderflow_health_check_up", "check" => check).set(if state == "ok" {
                1.0
            } else {
                0.0
            });
        }
    }
}

/// `Ok` while fewer than `limit` events wait to be published.
fn outbox_check(outbox: &Result<OutboxBacklog, String>, limit: u64) -> Result<(), String> {
    let backlog = outbox.as_ref().map_err(Clone::clone)?;
    if backlog.unpublished < limit {
        return Ok(());
    }
    Err(format!(
        "{} events wait to be published (the limit is {limit}), the oldest for {} s: the relay \
         cannot keep up or cannot reach NATS",
        backlog.unpublished,
        backlog.oldest_age_ms.unwrap_or(0) / 1000
    ))
}

/// `Ok` when every stream of the topology exists on the broker.
async fn streams_present(js: &jetstream::Context) -> Result<(), String> {
    let lookups = futures::future::join_all(
        ALL_STREAMS
            .iter()
            .map(|spec| async move { (spec.name, js.get_stream(spec.name).await) }),
    );
    let answers = tokio::time::timeout(PROBE_TIMEOUT, lookups)
        .await
        .map_err(|_| {
            format!("the broker did not say within {PROBE_TIMEOUT:?} whether the streams exist")
        })?;
    let missing: Vec<String> = answers
        .into_iter()
        .filter_map(|(name, answer)| answer.err().map(|error| format!("{name} ({error})")))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "cannot find stream {}; the service declares them again when it next publishes or pulls",
            missing.join(", ")
        ))
    }
}

/// Whether the process answers at all (for a liveness probe: restart it when this fails). It checks
/// nothing outside the process: an outage of the database or the broker is for readiness, and
/// restarting the service would not end it.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process is alive.", body = HealthReport)))]
pub(crate) async fn live() -> Json<HealthReport> {
    Json(HealthReport {
        status: "live".to_owned(),
        checks: BTreeMap::from([("process".to_owned(), "ok".to_owned())]),
    })
}

/// Whether the service can do its work now: its database and NATS answer, the streams exist, the
/// outbox keeps up and every task runs (for a readiness probe: send no traffic while this fails).
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "Every check passed.", body = HealthReport),
        (status = 503, description = "A check failed; `checks` says which and why.", body = HealthReport),
    ))]
pub(crate) async fn ready(State(health): State<Health>) -> Response {
    let report = health.readiness_report().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// The service's readiness with the numbers behind a stuck saga: its outbox backlog, its consumers'
/// pending, unacknowledged, redelivered and dead-lettered messages, and what only it knows.
/// `orderflow status` shows this for every service.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "The service's status (also while it is not ready).", body = ServiceStatus)))]
pub(crate) async fn status(State(health): State<Health>) -> Json<ServiceStatus> {
    Json(health.status().await)
}

/// `GET /inbox`'s query: the events to look up.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct HandledQuery {
    /// Event ids, comma-separated (at most 100).
    event_ids: String,
}

/// The most event ids one `/inbox` request looks up: a saga has a handful of events.
const MAX_LOOKUP: usize = 100;

/// Which of the given events this service's consumers handled, and when (from their inboxes, until
/// retention forgets them). `orderflow trace` puts these beside each event's publish time.
#[utoipa::path(get, path = "/inbox", tag = "operations", params(HandledQuery),
    responses(
        (status = 200, description = "The handled ones; an event not listed was not handled (yet).", body = Vec<HandledEvent>),
        (status = 400, description = "An id is not a UUID, or there are more than 100.", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn handled(
    State(health): State<Health>,
    lookup: Result<Query<HandledQuery>, QueryRejection>,
) -> Result<Json<Vec<HandledEvent>>, ApiError> {
    // Refused as every other 400 is: a problem document, not axum's plain text.
    let Query(lookup) = lookup.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let ids: Vec<String> = lookup
        .event_ids
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(|id| {
            contracts::EventId::parse(id)
                .map(|id| id.to_string())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "event_ids: '{}' is not an event id (a UUID)",
                        crate::telemetry::printable(id, 64)
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    if ids.len() > MAX_LOOKUP {
        return Err(ApiError::BadRequest(format!(
            "event_ids: at most {MAX_LOOKUP} ids, not {}",
            ids.len()
        )));
    }
    let consumers: Vec<&str> = match &health.broker {
        Some(broker) => broker.consumers.iter().map(|spec| spec.name).collect(),
        None => Vec::new(),
    };
    handled_events(&health.db, &consumers, &ids)
        .await
        .map(Json)
        .map_err(ApiError::database)
}

/// The service's metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Every metric of the process.", body = String,
        content_type = "text/plain; version=0.0.4")))]
pub(crate) async fn render_metrics(State(health): State<Health>) -> impl IntoResponse {
    health.record_gauges().await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        health.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_down_while_any_reporter_sees_a_problem() {
        let readiness = Readiness::default();
        readiness.register("outbox-relay");
        readiness.report("database", "inventory-orders", Err("locked".into()));
        readiness.report("database", "payment-orders", Err("locked".into()));
        readiness.report("database", "inventory-orders", Ok(()));
        let checks = readiness.checks();
        assert_eq!(checks["outbox-relay"], Ok(()));
        assert_eq!(checks["database"], Err("payment-orders: locked".into()));
        readiness.report("database", "payment-orders", Ok(()));
        assert_eq!(readiness.checks()["database"], Ok(()));
    }

    #[test]
    fn a_task_reporting_on_itself_is_shown_without_its_name_twice() {
        let readiness = Readiness::default();
        readiness.report("charge-worker", "charge-worker", Err("restarting".into()));
        assert_eq!(
            readiness.checks()["charge-worker"],
            Err("restarting".into())
        );
    }
}
