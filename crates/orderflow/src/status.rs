//! `orderflow status`: one look at a running system. Each service's own `/status` (its health, its
//! outbox backlog and what only it knows: the orders of the last minute, the breaker, the stock), and
//! the broker's view of every durable consumer (pending, unacknowledged, redelivered, dead-lettered),
//! read straight from NATS so that a consumer whose service is down still shows its backlog.

use crate::dlq::DEFAULT_NATS_URL;
use crate::up::{DEFAULT_HTTP_PORT_BASE, Ports, http_client, local_url};
use contracts::topology::ALL_CONSUMERS;
use platform::health::ServiceStatus;
use platform::nats::ConsumerBacklog;
use platform::nats::NatsAuth;
use serde::Serialize;
use std::time::Duration;

/// How long the broker may take to answer before the consumers are reported unknown.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

/// Show the health, backlogs, dead letters, breaker and recent orders of a running system.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 every service is ready, 1 a service is not ready or does not answer, 2 bad flags.
Each service's part comes from its GET /status; the consumers' part from the broker.")]
pub struct Args {
    #[command(flatten)]
    pub system: SystemArgs,
    /// Refresh in place until interrupted (Ctrl-C).
    #[arg(long)]
    pub watch: bool,
    /// How often --watch refreshes (e.g. 1s, 500ms; 100ms to 1h).
    #[arg(long, default_value = "2s", value_parser = platform::config::duration_between(
        Duration::from_millis(100), Duration::from_secs(3600)))]
    pub interval: Duration,
    /// Print one JSON object (`services`, `consumers`, `dead_letters`, `ok`) instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Where a running system answers, for the commands that inspect it (`status`, `trace`): the ports
/// of `orderflow up` by default, or each service's own URL.
#[derive(Debug, Clone, clap::Args)]
pub struct SystemArgs {
    /// The --http-port-base the system runs with: order-service listens on it, inventory-service on +1,
    /// payment-service on +2, the gateway simulator on +3.
    #[arg(long, env = "ORDERFLOW_HTTP_PORT_BASE", default_value_t = DEFAULT_HTTP_PORT_BASE)]
    pub http_port_base: u16,
    /// order-service's base URL, where it is not on this machine's --http-port-base.
    #[arg(long, env = "ORDERFLOW_ORDER_URL", value_parser = platform::config::HTTP_URL)]
    pub order_url: Option<String>,
    /// inventory-service's base URL. [default: http://127.0.0.1:<http-port-base + 1>]
    #[arg(long, env = "ORDERFLOW_INVENTORY_URL", value_parser = platform::config::HTTP_URL)]
    pub inventory_url: Option<String>,
    /// payment-service's base URL. [default: http://127.0.0.1:<http-port-base + 2>]
    #[arg(long, env = "ORDERFLOW_PAYMENT_URL", value_parser = platform::config::HTTP_URL)]
    pub payment_url: Option<String>,
    /// The gateway simulator's base URL. [default: http://127.0.0.1:<http-port-base + 3>]
    #[arg(long, env = "ORDERFLOW_GATEWAY_URL", value_parser = platform::config::HTTP_URL)]
    pub gateway_url: Option<String>,
    /// The NATS server the services use.
    #[arg(long, env = "ORDERFLOW_NATS_URL", default_value = DEFAULT_NATS_URL,
        value_parser = platform::config::NATS_URLS)]
    pub nats_url: String,
    /// Instances of each service, as `orderflow up --replicas` runs them: the further ones on
    /// --http-port-base + 4 onwards, three ports each.
    #[arg(long, env = "ORDERFLOW_REPLICAS", default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=9))]
    pub replicas: u16,
    /// [default: the `operator` user `orderflow up` saved in $ORDERFLOW_DATA_DIR, if any]
    #[command(flatten)]
    pub nats_auth: NatsAuth,
}

/// Where the system's parts answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub order: String,
    pub inventory: String,
    pub payment: String,
    pub gateway: String,
    /// The services' further instances: `(service, base URL)`.
    pub replicas: Vec<(&'static str, String)>,
    pub nats_url: String,
    pub nats_auth: NatsAuth,
}

impl Targets {
    /// An explicit URL wins over the port base.
    pub fn from_args(args: &SystemArgs) -> anyhow::Result<Self> {
        let ports = Ports::from_base(args.http_port_base)?;
        let url = |explicit: &Option<String>, port: u16| match explicit {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => local_url(port),
        };
        let mut replicas = Vec::new();
        for instance in 2..=args.replicas {
            let [order, inventory, payment] = ports.instance(instance)?;
            replicas.extend([
                (order_service::INFO.name, local_url(order)),
                (inventory_service::INFO.name, local_url(inventory)),
                (payment_service::INFO.name, local_url(payment)),
            ]);
        }
        Ok(Self {
            order: url(&args.order_url, ports.order),
            inventory: url(&args.inventory_url, ports.inventory),
            payment: url(&args.payment_url, ports.payment),
            gateway: url(&args.gateway_url, ports.gateway),
            replicas,
            nats_url: args.nats_url.clone(),
            nats_auth: crate::admin::operator_nats_auth(&args.nats_auth, None),
        })
    }

    /// `(service name, base URL)` of each instance, in the order they are shown.
    pub fn services(&self) -> Vec<(&'static str, &str)> {
        let mut services = vec![
            (order_service::INFO.name, self.order.as_str()),
            (inventory_service::INFO.name, &self.inventory),
            (payment_service::INFO.name, &self.payment),
            ("gateway-sim", &self.gateway),
        ];
        services.extend(
            self.replicas
                .iter()
                .map(|(service, url)| (*service, url.as_str())),
        );
        services
    }
}

/// One service as `status` saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceEntry {
    pub service: &'static str,
    pub url: String,
    /// Its `/status`; absent when it did not answer.
    pub status: Option<ServiceStatus>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ServiceEntry {
    fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|status| status.ready.is_ready())
    }
}

/// Everything `status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// When it was read (RFC 3339).
    pub taken_at: String,
    /// Whether every service answered and is ready.
    pub ok: bool,
    pub services: Vec<ServiceEntry>,
    /// Every durable consumer of the system, from the broker; empty when it did not answer.
    pub consumers: Vec<ConsumerBacklog>,
    /// Why the consumers are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_error: Option<String>,
    /// Messages in the DLQ stream, over all consumers.
    pub dead_letters: u64,
}

/// Reads every part of the system now. Never fails: what does not answer is reported as such.
pub async fn gather(targets: &Targets) -> StatusReport {
    let client = http_client().ok();
    let services =
        futures::future::join_all(targets.services().into_iter().map(|(service, url)| {
            let client = client.clone();
            async move {
                let read = match client {
                    Some(client) => read_status(&client, url).await,
                    None => Err("cannot create an HTTP client".to_owned()),
                };
                let (status, error) = match read {
                    Ok(status) => (Some(status), None),
                    Err(error) => (None, Some(error)),
                };
                ServiceEntry {
                    service,
                    url: url.to_owned(),
                    status,
                    error,
                }
            }
        }))
        .await;
    let (consumers, broker_error) =
        match read_consumers(&targets.nats_url, &targets.nats_auth).await {
            Ok(consumers) => (consumers, None),
            Err(error) => (Vec::new(), Some(error)),
        };
    StatusReport {
        taken_at: now_rfc3339(),
        ok: services.iter().all(ServiceEntry::is_ready),
        dead_letters: consumers.iter().map(|c| c.dead_letters).sum(),
        services,
        consumers,
        broker_error,
    }
}

pub(crate) async fn read_status(
    client: &reqwest::Client,
    url: &str,
) -> Result<ServiceStatus, String> {
    let response = client
        .get(format!("{url}/status"))
        .send()
        .await
        .map_err(|error| {
            format!(
                "not answering at {url}: {}",
                crate::demo::root_cause(&error)
            )
        })?;
    if !response.status().is_success() {
        return Err(format!("{url}/status answered {}", response.status()));
    }
    response
        .json()
        .await
        .map_err(|error| format!("{url}/status is not a status: {error}"))
}

/// Every consumer's backlog, from the broker at `nats_url`.
pub(crate) async fn read_consumers(
    nats_url: &str,
    auth: &NatsAuth,
) -> Result<Vec<ConsumerBacklog>, String> {
    let client = auth
        .apply(async_nats::ConnectOptions::new())
        .connection_timeout(BROKER_TIMEOUT)
        .connect(platform::config::nats_servers(nats_url))
        .await
        .map_err(|error| format!("cannot reach NATS at {nats_url}: {error}"))?;
    let js = async_nats::jetstream::new(client);
    platform::nats::consumer_backlogs(&js, &ALL_CONSUMERS, BROKER_TIMEOUT)
        .await
        .map_err(|error| platform::telemetry::error_chain(&error))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Colours for a terminal; none when the output goes elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    On,
    Off,
}

impl Colour {
    pub(crate) fn paint(self, code: &str, text: &str) -> String {
        match self {
            Colour::On => format!("\x1b[{code}m{text}\x1b[0m"),
            Colour::Off => text.to_owned(),
        }
    }

    fn good(self, text: &str) -> String {
        self.paint("32", text)
    }

    fn bad(self, text: &str) -> String {
        self.paint("31;1", text)
    }

    fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    /// Something that waits: not broken yet, but where to look.
    pub(crate) fn warn(self, text: &str) -> String {
        self.paint("33;1", text)
    }
}

impl StatusReport {
    /// The report as tables, one line per element.
    pub fn text_lines(&self, colour: Colour) -> Vec<String> {
        let mut lines = vec![
            format!("orderflow status at {}", self.taken_at),
            String::new(),
        ];
        lines.push(format!(
            "{:<18} {:<10} {:<18} {}",
            "SERVICE", "HEALTH", "OUTBOX (OLDEST)", "DETAILS"
        ));
        let mut problems = Vec::new();
        for entry in &self.services {
            let Some(status) = &entry.status else {
                lines.push(format!(
                    "{:<18} {}",
                    entry.service,
                    colour.bad(&format!("{:<10}", "down"))
                ));
                problems.push(format!(
                    "{}: {}",
                    entry.service,
                    entry.error.as_deref().unwrap_or("")
                ));
                continue;
            };
            let health = if status.ready.is_ready() {
                colour.good(&format!("{:<10}", "ready"))
            } else {
                colour.bad(&format!("{:<10}", "not ready"))
            };
            for (check, state) in &status.ready.checks {
                if state != "ok" {
                    problems.push(format!("{}: {check}: {state}", entry.service));
                }
            }
            let outbox = match &status.outbox {
                None => "-".to_owned(),
                Some(backlog) => match backlog.oldest_age_ms {
                    Some(age) if backlog.unpublished > 0 => {
                        format!("{} ({})", backlog.unpublished, seconds(age))
                    }
                    _ => backlog.unpublished.to_string(),
                },
            };
            lines.push(format!(
                "{:<18} {health} {:<18} {}",
                entry.service,
                outbox,
                details_text(status)
            ));
        }
        lines.push(String::new());
        lines.push(format!(
            "{:<18} {:<10} {:>9} {:>9} {:>12} {:>13}",
            "CONSUMER", "STREAM", "PENDING", "UNACKED", "REDELIVERED", "DEAD LETTERS"
        ));
        if let Some(error) = &self.broker_error {
            lines.push(colour.bad(&format!("unknown: {error}")));
        }
        for consumer in &self.consumers {
            let dead = format!("{:>13}", consumer.dead_letters);
            let dead = if consumer.dead_letters > 0 {
                colour.bad(&dead)
            } else {
                dead
            };
            let name = if consumer.declared {
                consumer.consumer.clone()
            } else {
                format!("{} (not declared)", consumer.consumer)
            };
            lines.push(format!(
                "{:<18} {:<10} {:>9} {:>9} {:>12} {dead}",
                name, consumer.stream, consumer.pending, consumer.ack_pending, consumer.redelivered
            ));
        }
        lines.push(String::new());
        let dead = format!("Dead letters: {}", self.dead_letters);
        lines.push(if self.dead_letters > 0 {
            colour.bad(&format!("{dead} (see `orderflow dlq list`)"))
        } else {
            colour.dim(&dead)
        });
        for problem in problems {
            lines.push(colour.bad(&format!("! {problem}")));
        }
        lines
    }
}

/// What only one service knows, in words.
fn details_text(status: &ServiceStatus) -> String {
    let mut parts = Vec::new();
    if let Some(orders) = status.details.get("orders_last_minute") {
        parts.push(format!(
            "last minute: {} accepted, {} confirmed, {} cancelled",
            orders["accepted"], orders["confirmed"], orders["cancelled"]
        ));
    }
    if let Some(stock) = status.details.get("stock") {
        match stock.get("error") {
            Some(error) => parts.push(format!("stock: unknown ({error})")),
            None => parts.push(format!(
                "stock: {} available, {} reserved, {} sold",
                stock["available"], stock["reserved"], stock["sold"]
            )),
        }
    }
    if let Some(breaker) = status.details.get("breaker").and_then(|b| b.as_str()) {
        parts.push(format!("breaker: {breaker}"));
    }
    if let Some(admission) = status.details.get("admission") {
        parts.push(admission_text(admission));
    }
    parts.join("; ")
}

/// order-service's admission control: each lane's estimated saga time against the limit, and which
/// lanes refuse new orders.
fn admission_text(admission: &serde_json::Value) -> String {
    let Some(limit) = admission["max_wait_ms"].as_u64() else {
        return "admission control off".to_owned();
    };
    let estimate = |lane: &str| seconds(admission[lane]["estimate_ms"].as_u64().unwrap_or(0));
    let shedding: Vec<&str> = ["normal", "express"]
        .into_iter()
        .filter(|lane| admission[*lane]["shedding"] == true)
        .collect();
    let mut text = format!(
        "saga estimate: normal {}, express {} (limit {})",
        estimate("normal"),
        estimate("express"),
        seconds(limit)
    );
    if !shedding.is_empty() {
        text.push_str(&format!(", SHEDDING {} orders", shedding.join(" and ")));
    }
    text
}

pub(crate) fn seconds(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::health::HealthReport;
    use platform::outbox::OutboxBacklog;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn service_status(service: &str, ready: bool) -> ServiceStatus {
        let mut checks = BTreeMap::from([("database".to_owned(), "ok".to_owned())]);
        if !ready {
            checks.insert(
                "outbox".to_owned(),
                "12000 events wait to be published".to_owned(),
            );
        }
        ServiceStatus {
            service: service.to_owned(),
            version: "0.1.0".to_owned(),
            ready: HealthReport {
                status: if ready { "ready" } else { "not_ready" }.to_owned(),
                checks,
            },
            outbox: Some(OutboxBacklog {
                unpublished: if ready { 0 } else { 12_000 },
                oldest_age_ms: (!ready).then_some(41_500),
            }),
            consumers: Vec::new(),
            details: BTreeMap::new(),
        }
    }

    fn report() -> StatusReport {
        let mut order = service_status("order-service", true);
        order.details.insert(
            "orders_last_minute".to_owned(),
            json!({"accepted": 120, "confirmed": 118, "cancelled": 2}),
        );
        order.details.insert(
            "admission".to_owned(),
            json!({"max_wait_ms": 15_000, "normal": {"estimate_ms": 18_600, "shedding": true},
                "express": {"estimate_ms": 40, "shedding": false}}),
        );
        let mut payment = service_status("payment-service", false);
        payment.details.insert("breaker".to_owned(), json!("open"));
        StatusReport {
            taken_at: "2026-12-06T03:00:00Z".to_owned(),
            ok: false,
            services: vec![
                ServiceEntry {
                    service: "order-service",
                    url: "http://127.0.0.1:8080".to_owned(),
                    status: Some(order),
                    error: None,
                },
                ServiceEntry {
                    service: "payment-service",
                    url: "http://127.0.0.1:8082".to_owned(),
                    status: Some(payment),
                    error: None,
                },
                ServiceEntry {
                    service: "inventory-service",
                    url: "http://127.0.0.1:8081".to_owned(),
                    status: None,
                    error: Some(
                        "not answering at http://127.0.0.1:8081: connection refused".into(),
                    ),
                },
            ],
            consumers: vec![ConsumerBacklog {
                consumer: "payment-inventory".to_owned(),
                stream: "INVENTORY".to_owned(),
                declared: true,
                pending: 340,
                ack_pending: 12,
                redelivered: 3,
                dead_letters: 1,
            }],
            broker_error: None,
            dead_letters: 1,
        }
    }

    #[test]
    fn the_tables_show_what_is_wrong_and_where() {
        let text = report().text_lines(Colour::Off).join("\n");
        assert!(
            text.contains("order-service      ready      0                  last minute: 120 accepted, 118 confirmed, 2 cancelled; saga estimate: normal 18 s, express 0.0 s (limit 15 s), SHEDDING normal orders"),
            "{text}"
        );
        assert!(
            text.contains("payment-service    not ready  12000 (41 s)       breaker: open"),
            "{text}"
        );
        assert!(text.contains("inventory-service  down"), "{text}");
        assert!(
            text.contains(
                "payment-inventory  INVENTORY        340        12            3             1"
            ),
            "{text}"
        );
        assert!(
            text.contains("Dead letters: 1 (see `orderflow dlq list`)"),
            "{text}"
        );
        assert!(
            text.contains("! payment-service: outbox: 12000 events wait to be published"),
            "{text}"
        );
        assert!(
            text.contains(
                "! inventory-service: not answering at http://127.0.0.1:8081: connection refused"
            ),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no colour unless asked");
        assert!(
            report()
                .text_lines(Colour::On)
                .join("\n")
                .contains("\x1b[31;1m")
        );
    }

    #[test]
    fn the_json_has_every_part() {
        let value = serde_json::to_value(report()).unwrap();
        assert_eq!(value["ok"], false);
        assert_eq!(value["dead_letters"], 1);
        assert_eq!(value["services"][0]["status"]["ready"]["status"], "ready");
        assert_eq!(value["services"][2]["status"], serde_json::Value::Null);
        assert_eq!(value["consumers"][0]["pending"], 340);
        assert!(value.get("broker_error").is_none());
    }

    #[test]
    fn targets_follow_the_port_base_of_up_unless_a_url_is_given() {
        let args = SystemArgs {
            http_port_base: 9000,
            order_url: None,
            inventory_url: Some("http://inventory.internal:8081/".to_owned()),
            payment_url: None,
            gateway_url: None,
            nats_url: DEFAULT_NATS_URL.to_owned(),
            replicas: 2,
            nats_auth: NatsAuth::default(),
        };
        let targets = Targets::from_args(&args).unwrap();
        assert_eq!(
            targets.services()[4..],
            [
                ("order-service", "http://127.0.0.1:9004"),
                ("inventory-service", "http://127.0.0.1:9005"),
                ("payment-service", "http://127.0.0.1:9006"),
            ]
        );
        assert_eq!(
            targets.services()[2],
            ("payment-service", "http://127.0.0.1:9002")
        );
        assert_eq!(targets.services()[3].1, "http://127.0.0.1:9003");
        assert_eq!(targets.inventory, "http://inventory.internal:8081");
    }
}
