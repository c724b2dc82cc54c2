//! `orderflow demo`: three orders against a running system, one for each way a saga ends (confirmed,
//! out of stock, payment declined), each shown with the timeline of events that decided it. Doubles as a
//! smoke test: it exits 1 unless every order ends as expected.

use crate::admin::{AdminArgs, WithAdmin};
use crate::up::{DEFAULT_HTTP_PORT_BASE, Ports, http_client, local_url};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How often a pending order is looked at again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long an order may stay pending before the scenario counts as failed.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Place three demo orders (confirmed, out of stock, declined) and show how each one ended.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The --http-port-base that `orderflow up` runs with: order-service on it, inventory-service on +1.
    #[arg(long, env = "ORDERFLOW_HTTP_PORT_BASE", default_value_t = DEFAULT_HTTP_PORT_BASE)]
    pub http_port_base: u16,
    /// The order service's base URL. [default: http://127.0.0.1:<http-port-base>]
    #[arg(long, env = "ORDERFLOW_DEMO_ORDER_URL", value_parser = platform::config::HTTP_URL)]
    pub order_url: Option<String>,
    /// The inventory service's base URL. [default: http://127.0.0.1:<http-port-base + 1>]
    #[arg(long, env = "ORDERFLOW_DEMO_INVENTORY_URL", value_parser = platform::config::HTTP_URL)]
    pub inventory_url: Option<String>,
    /// The demo resets its products, an admin operation.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The base URLs of the order and inventory services, without a trailing slash.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Targets {
    pub order: String,
    pub inventory: String,
}

impl Targets {
    fn from_args(args: &Args) -> Result<Targets> {
        Self::resolve(args.http_port_base, &args.order_url, &args.inventory_url)
    }

    /// Explicit URLs win; otherwise both follow the port layout of `orderflow up` from `http_port_base`.
    pub(crate) fn resolve(
        http_port_base: u16,
        order_url: &Option<String>,
        inventory_url: &Option<String>,
    ) -> Result<Targets> {
        let ports = Ports::from_base(http_port_base)?;
        let base = |explicit: &Option<String>, port: u16| match explicit {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => local_url(port),
        };
        Ok(Targets {
            order: base(order_url, ports.order),
            inventory: base(inventory_url, ports.inventory),
        })
    }
}

/// The demo's own products, reset on every run so that each run sees the same stock.
const DEMO_PRODUCTS: [(&str, &str, i64, i64); 2] = [
    ("demo-widget", "Demo widget", 1299, 100),
    ("demo-rare", "Demo rarity", 99900, 1),
];

/// How an order should end.
#[derive(Debug, Clone, Copy)]
struct Expected {
    status: &'static str,
    total_cents: Option<i64>,
    cancel_reason: Option<&'static str>,
}

impl Expected {
    /// Every way `order` (the body of `GET /orders/{id}`) differs from this, as "field: expected X, got Y".
    fn mismatches(&self, order: &Value) -> Vec<String> {
        let mut found = Vec::new();
        let status = order.get("status").and_then(Value::as_str);
        if status != Some(self.status) {
            found.push(format!(
                "status: expected {}, got {}",
                self.status,
                shown(order.get("status"))
            ));
        }
        if let Some(total) = self.total_cents
            && order.get("total_cents").and_then(Value::as_i64) != Some(total)
        {
            found.push(format!(
                "total_cents: expected {total}, got {}",
                shown(order.get("total_cents"))
            ));
        }
        if let Some(reason) = self.cancel_reason
            && order.get("cancel_reason").and_then(Value::as_str) != Some(reason)
        {
            found.push(format!(
                "cancel_reason: expected {reason}, got {}",
                shown(order.get("cancel_reason"))
            ));
        }
        found
    }
}

/// A JSON value as a person reads it: strings without quotes, a missing value as "nothing".
fn shown(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "nothing".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

struct Scenario {
    /// Short name, used in the correlation id and the summary.
    key: &'static str,
    title: &'static str,
    items: &'static [(&'static str, i64)],
    payment_method: &'static str,
    expected: Expected,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        key: "happy",
        title: "happy path: 2 × demo-widget, paid with tok_visa",
        items: &[("demo-widget", 2)],
        payment_method: "tok_visa",
        expected: Expected {
            status: "confirmed",
            total_cents: Some(2598),
            cancel_reason: None,
        },
    },
    Scenario {
        key: "out-of-stock",
        title: "out of stock: 5 × demo-rare (1 in stock), paid with tok_visa",
        items: &[("demo-rare", 5)],
        payment_method: "tok_visa",
        expected: Expected {
            status: "cancelled",
            total_cents: None,
            cancel_reason: Some("insufficient_stock"),
        },
    },
    Scenario {
        key: "declined",
        title: "declined card: 1 × demo-widget, paid with tok_chargeDeclined",
        items: &[("demo-widget", 1)],
        payment_method: "tok_chargeDeclined",
        expected: Expected {
            status: "cancelled",
            total_cents: None,
            cancel_reason: Some("payment_declined"),
        },
    },
];

impl Scenario {
    fn request_body(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|(product_id, quantity)| json!({ "product_id": product_id, "quantity": quantity }))
            .collect();
        json!({ "customer_id": "demo", "items": items, "payment_method": self.payment_method })
    }
}

/// Why the demo placed no order.
#[derive(Debug, thiserror::Error)]
pub enum NotStarted {
    #[error(
        "orderflow is not running at {url} ({reason}). Start it with `make up`, then run the demo again."
    )]
    NotRunning { url: String, reason: String },
    /// `error` with its causes, as `{:#}` shows them.
    #[error("cannot set up the demo products: {error}")]
    NoProducts { error: String },
}

/// What the demo tells as it goes: each step of each scenario, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Both services are ready.
    Ready {
        order: String,
        inventory: String,
    },
    ProductsReset,
    /// Scenario `number` of `of` (from 1) begins.
    Scenario {
        number: usize,
        of: usize,
        title: &'static str,
    },
    OrderPlaced {
        order_id: String,
        correlation_id: String,
    },
    /// The order was decided (or the settle timeout passed): `summary` says how it stands.
    OrderSettled {
        summary: String,
        after: Duration,
    },
    /// The order's events as a table, or why they could not be read.
    Timeline(Result<Vec<String>, String>),
    /// How the scenario ended: empty if as expected, else each way it did not.
    ScenarioEnded {
        problems: Vec<String>,
    },
}

impl Progress {
    /// What a person watching the demo reads, indented under its scenario's title.
    pub fn text_lines(&self) -> Vec<String> {
        let indent = |line: &str| format!("      {line}");
        match self {
            Progress::Ready { order, inventory } => vec![format!(
                "orderflow demo: orders at {order}, inventory at {inventory}"
            )],
            Progress::ProductsReset => vec![
                "demo products reset: demo-widget (12.99, 100 in stock), demo-rare (999.00, 1 in stock)"
                    .to_owned(),
            ],
            Progress::Scenario { number, of, title } => {
                vec![String::new(), format!("[{number}/{of}] {title}")]
            }
            Progress::OrderPlaced {
                order_id,
                correlation_id,
            } => vec![indent(&format!(
                "order {order_id}, correlation id {correlation_id}"
            ))],
            Progress::OrderSettled { summary, after } => vec![indent(&format!(
                "{summary} after {:.1} s",
                after.as_secs_f64()
            ))],
            Progress::Timeline(Ok(lines)) => lines.iter().map(|line| indent(line)).collect(),
            Progress::Timeline(Err(error)) => vec![indent(&format!("(no timeline: {error})"))],
            Progress::ScenarioEnded { problems } if problems.is_empty() => {
                vec![indent("✓ as expected")]
            }
            Progress::ScenarioEnded { problems } => {
                vec![indent(&format!("✗ {}", problems.join("; ")))]
            }
        }
    }
}

/// How the scenarios ended: one line per scenario that did not end as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    scenarios: usize,
    /// "<scenario key>: <what went wrong>".
    failures: Vec<String>,
}

impl Summary {
    pub fn all_as_expected(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn text_lines(&self) -> Vec<String> {
        let mut lines = vec![String::new()];
        if self.failures.is_empty() {
            lines.push(format!(
                "All {} scenarios ended as expected.",
                self.scenarios
            ));
            return lines;
        }
        lines.push(format!(
            "{} of {} scenarios did not end as expected:",
            self.failures.len(),
            self.scenarios
        ));
        lines.extend(self.failures.iter().map(|failure| format!("  {failure}")));
        lines
    }
}

/// How the demo ended.
#[derive(Debug)]
pub enum Outcome {
    Played(Summary),
    NotStarted(NotStarted),
}

/// Plays every scenario, telling `progress` each step as it happens. An error: the demo could not even
/// try (its flags, the HTTP client).
pub async fn run(args: Args, progress: &mut dyn FnMut(Progress)) -> Result<Outcome> {
    let targets = Targets::from_args(&args)?;
    let client = http_client()?;
    for url in [&targets.order, &targets.inventory] {
        if let Err(reason) = check_ready(&client, url).await {
            return Ok(Outcome::NotStarted(NotStarted::NotRunning {
                url: url.clone(),
                reason,
            }));
        }
    }
    progress(Progress::Ready {
        order: targets.order.clone(),
        inventory: targets.inventory.clone(),
    });
    let token = args.admin.token();
    let catalog = Catalog {
        client: &client,
        inventory: &targets.inventory,
        token: token.as_deref(),
    };
    if let Err(error) = reset_products(&catalog).await {
        return Ok(Outcome::NotStarted(NotStarted::NoProducts {
            error: format!("{error:#}"),
        }));
    }
    progress(Progress::ProductsReset);

    let mut failures = Vec::new();
    for (number, scenario) in SCENARIOS.iter().enumerate() {
        progress(Progress::Scenario {
            number: number + 1,
            of: SCENARIOS.len(),
            title: scenario.title,
        });
        let problems = match play(&client, &targets.order, scenario, progress).await {
            Ok(problems) => problems,
            Err(error) => vec![format!("{error:#}")],
        };
        if !problems.is_empty() {
            failures.push(format!("{}: {}", scenario.key, problems.join("; ")));
        }
        progress(Progress::ScenarioEnded { problems });
    }
    Ok(Outcome::Played(Summary {
        scenarios: SCENARIOS.len(),
        failures,
    }))
}

/// Ok if `GET <base>/health/ready` answers 200; otherwise why not, for the operator.
pub(crate) async fn check_ready(client: &reqwest::Client, base: &str) -> Result<(), String> {
    match client.get(format!("{base}/health/ready")).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("GET /health/ready answered {}", response.status())),
        Err(error) => Err(root_cause(&error)),
    }
}

/// The innermost cause of an error ("Connection refused (os error 111)"): what a person can act on.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

async fn reset_products(catalog: &Catalog<'_>) -> Result<()> {
    for (id, name, price_cents, stock) in DEMO_PRODUCTS {
        catalog
            .put_product(
                id,
                &json!({ "name": name, "price_cents": price_cents, "stock": stock }),
            )
            .await?;
    }
    Ok(())
}

/// inventory-service's catalog, written with the admin token.
pub(crate) struct Catalog<'a> {
    pub client: &'a reqwest::Client,
    /// The inventory service's base URL.
    pub inventory: &'a str,
    pub token: Option<&'a str>,
}

impl Catalog<'_> {
    /// `PUT /products/{id}` with `product` (name, price_cents, stock): creates or replaces it.
    pub(crate) async fn put_product(&self, id: &str, product: &Value) -> Result<()> {
        let response = self
            .client
            .put(format!("{}/products/{id}", self.inventory))
            .admin(self.token)
            .json(product)
            .send()
            .await
            .with_context(|| format!("PUT /products/{id} failed"))?;
        ensure_success(response, &format!("PUT /products/{id}")).await?;
        Ok(())
    }
}

/// Places the scenario's order, waits until it is decided, tells `progress` its result and timeline,
/// and returns how it differs from the expected end (empty if it does not).
async fn play(
    client: &reqwest::Client,
    order_service: &str,
    scenario: &Scenario,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<String>> {
    let correlation_id = format!("demo-{}-{}", scenario.key, uuid::Uuid::new_v4());
    let placed = Instant::now();
    let response = client
        .post(format!("{order_service}/orders"))
        .header("X-Correlation-ID", &correlation_id)
        .json(&scenario.request_body())
        .send()
        .await
        .context("POST /orders failed")?;
    let accepted: Value = ensure_success(response, "POST /orders")
        .await?
        .json()
        .await
        .context("POST /orders did not answer JSON")?;
    let order_id = accepted
        .get("order_id")
        .and_then(Value::as_str)
        .context("POST /orders answered without an order_id")?
        .to_owned();
    progress(Progress::OrderPlaced {
        order_id: order_id.clone(),
        correlation_id,
    });

    let (order, settled) = settle(client, order_service, &order_id).await?;
    progress(Progress::OrderSettled {
        summary: summary(&order),
        after: placed.elapsed(),
    });
    // Shown for an order stuck in pending too: the last event tells where the saga stopped.
    let events = timeline(client, order_service, &order_id).await;
    progress(Progress::Timeline(
        events
            .map(|events| format_timeline(&events))
            .map_err(|error| format!("{error:#}")),
    ));
    if !settled {
        return Ok(vec![format!(
            "status: expected {}, got still pending after {} s",
            scenario.expected.status,
            SETTLE_TIMEOUT.as_secs()
        )]);
    }
    Ok(scenario.expected.mismatches(&order))
}

/// Polls the order until it is no longer pending or [`SETTLE_TIMEOUT`] passes. Returns the last state
/// seen and whether it is a decision.
async fn settle(
    client: &reqwest::Client,
    order_service: &str,
    order_id: &str,
) -> Result<(Value, bool)> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let response = client
            .get(format!("{order_service}/orders/{order_id}"))
            .send()
            .await
            .context("GET /orders/{id} failed")?;
        let order: Value = ensure_success(response, "GET /orders/{id}")
            .await?
            .json()
            .await
            .context("GET /orders/{id} did not answer JSON")?;
        let settled = order.get("status").and_then(Value::as_str) != Some("pending");
        if settled || Instant::now() >= deadline {
            return Ok((order, settled));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn timeline(
    client: &reqwest::Client,
    order_service: &str,
    order_id: &str,
) -> Result<Vec<Value>> {
    let response = client
        .get(format!("{order_service}/orders/{order_id}/events"))
        .send()
        .await
        .context("GET /orders/{id}/events failed")?;
    let events: Value = ensure_success(response, "GET /orders/{id}/events")
        .await?
        .json()
        .await
        .context("GET /orders/{id}/events did not answer JSON")?;
    match events {
        Value::Array(events) => Ok(events),
        _ => anyhow::bail!("GET /orders/{{id}}/events did not answer a JSON array"),
    }
}

/// Passes a 2xx response through; otherwise fails with the status and the start of the body (a
/// problem document says what was wrong).
pub(crate) async fn ensure_success(
    response: reqwest::Response,
    what: &str,
) -> Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    anyhow::bail!(
        "{what} answered {status}: {body}{}",
        crate::admin::refusal_hint(status)
    )
}

/// One line about how an order ended: "confirmed, total 2598 cents" or "cancelled (insufficient_stock)".
fn summary(order: &Value) -> String {
    let mut text = shown(order.get("status"));
    if let Some(total) = order.get("total_cents").and_then(Value::as_i64) {
        text.push_str(&format!(", total {total} cents"));
    }
    if let Some(reason) = order.get("cancel_reason").and_then(Value::as_str) {
        text.push_str(&format!(" ({reason})"));
    }
    text
}

/// The events of an order as an aligned table: time since the first event, type, and source.
fn format_timeline(events: &[Value]) -> Vec<String> {
    if events.is_empty() {
        return vec!["(no events recorded)".to_owned()];
    }
    let parse = |event: &Value| {
        event
            .get("occurred_at")
            .and_then(Value::as_str)
            .and_then(|at| {
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
            })
    };
    let first = events.first().and_then(parse);
    let rows: Vec<[String; 3]> = events
        .iter()
        .map(|event| {
            let at = match (first, parse(event)) {
                (Some(first), Some(at)) => {
                    format!("+{} ms", (at - first).whole_milliseconds())
                }
                _ => shown(event.get("occurred_at")),
            };
            [at, shown(event.get("type")), shown(event.get("source"))]
        })
        .collect();
    let header = ["after".to_owned(), "event".to_owned(), "source".to_owned()];
    let width = |column: usize| {
        std::iter::once(&header)
            .chain(&rows)
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (at_width, type_width) = (width(0), width(1));
    std::iter::once(&header)
        .chain(&rows)
        .map(|[at, event_type, source]| {
            format!("{at:>at_width$}  {event_type:<type_width$}  {source}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(base: u16, order: Option<&str>, inventory: Option<&str>) -> Args {
        Args {
            http_port_base: base,
            order_url: order.map(str::to_owned),
            inventory_url: inventory.map(str::to_owned),
            admin: AdminArgs::default(),
        }
    }

    #[test]
    fn targets_follow_the_port_base() {
        let targets = Targets::from_args(&args(9080, None, None)).expect("valid");
        assert_eq!(
            targets,
            Targets {
                order: "http://127.0.0.1:9080".into(),
                inventory: "http://127.0.0.1:9081".into(),
            }
        );
    }

    #[test]
    fn explicit_urls_win_and_lose_their_trailing_slash() {
        let targets =
            Targets::from_args(&args(8080, Some("http://orders:80/"), None)).expect("valid");
        assert_eq!(targets.order, "http://orders:80");
        assert_eq!(targets.inventory, "http://127.0.0.1:8081");
    }

    #[test]
    fn expected_order_matches() {
        let happy = SCENARIOS[0].expected;
        let order = json!({ "order_id": "x", "status": "confirmed", "total_cents": 2598 });
        assert!(happy.mismatches(&order).is_empty());
    }

    #[test]
    fn every_mismatch_is_named() {
        let happy = SCENARIOS[0].expected;
        let order = json!({ "status": "cancelled", "cancel_reason": "payment_declined" });
        assert_eq!(
            happy.mismatches(&order),
            [
                "status: expected confirmed, got cancelled",
                "total_cents: expected 2598, got nothing"
            ]
        );
        let declined = SCENARIOS[2].expected;
        let order = json!({ "status": "cancelled", "cancel_reason": "insufficient_stock" });
        assert_eq!(
            declined.mismatches(&order),
            ["cancel_reason: expected payment_declined, got insufficient_stock"]
        );
    }

    #[test]
    fn scenario_bodies_match_the_api() {
        assert_eq!(
            SCENARIOS[1].request_body(),
            json!({
                "customer_id": "demo",
                "items": [{ "product_id": "demo-rare", "quantity": 5 }],
                "payment_method": "tok_visa"
            })
        );
    }

    #[test]
    fn timeline_shows_offsets_from_the_first_event() {
        let events = [
            json!({ "event_id": "1", "type": "orders.created", "occurred_at": "2026-01-01T10:00:00Z", "source": "order-service" }),
            json!({ "event_id": "2", "type": "inventory.reserved", "occurred_at": "2026-01-01T10:00:00.015Z", "source": "inventory-service" }),
        ];
        assert_eq!(
            format_timeline(&events),
            [
                " after  event               source",
                " +0 ms  orders.created      order-service",
                "+15 ms  inventory.reserved  inventory-service",
            ]
        );
    }

    #[test]
    fn each_step_reads_under_its_scenario() {
        let lines = |progress: Progress| progress.text_lines();
        assert_eq!(
            lines(Progress::Ready {
                order: "http://127.0.0.1:8080".into(),
                inventory: "http://127.0.0.1:8081".into(),
            }),
            ["orderflow demo: orders at http://127.0.0.1:8080, inventory at http://127.0.0.1:8081"]
        );
        assert_eq!(
            lines(Progress::Scenario {
                number: 2,
                of: 3,
                title: SCENARIOS[1].title,
            }),
            [
                "",
                "[2/3] out of stock: 5 × demo-rare (1 in stock), paid with tok_visa"
            ]
        );
        assert_eq!(
            lines(Progress::OrderPlaced {
                order_id: "ord-1".into(),
                correlation_id: "demo-happy-1".into(),
            }),
            ["      order ord-1, correlation id demo-happy-1"]
        );
        assert_eq!(
            lines(Progress::OrderSettled {
                summary: summary(&json!({ "status": "confirmed", "total_cents": 2598 })),
                after: Duration::from_millis(420),
            }),
            ["      confirmed, total 2598 cents after 0.4 s"]
        );
        assert_eq!(
            lines(Progress::Timeline(Ok(vec![
                "after  event".into(),
                "+0 ms  orders.created".into()
            ]))),
            ["      after  event", "      +0 ms  orders.created"]
        );
        assert_eq!(
            lines(Progress::Timeline(Err(
                "GET /orders/{id}/events answered 500".into()
            ))),
            ["      (no timeline: GET /orders/{id}/events answered 500)"]
        );
        assert_eq!(
            lines(Progress::ScenarioEnded {
                problems: Vec::new()
            }),
            ["      ✓ as expected"]
        );
        assert_eq!(
            lines(Progress::ScenarioEnded {
                problems: vec![
                    "status: expected confirmed, got cancelled".into(),
                    "x".into()
                ]
            }),
            ["      ✗ status: expected confirmed, got cancelled; x"]
        );
    }

    #[test]
    fn the_summary_lists_the_scenarios_that_went_wrong() {
        let fine = Summary {
            scenarios: 3,
            failures: Vec::new(),
        };
        assert!(fine.all_as_expected());
        assert_eq!(
            fine.text_lines(),
            ["", "All 3 scenarios ended as expected."]
        );
        let failed = Summary {
            scenarios: 3,
            failures: vec!["declined: POST /orders failed".into()],
        };
        assert!(!failed.all_as_expected());
        assert_eq!(
            failed.text_lines(),
            [
                "",
                "1 of 3 scenarios did not end as expected:",
                "  declined: POST /orders failed"
            ]
        );
    }

    #[test]
    fn not_starting_says_what_to_do() {
        assert_eq!(
            NotStarted::NotRunning {
                url: "http://127.0.0.1:8080".into(),
                reason: "Connection refused (os error 111)".into(),
            }
            .to_string(),
            "orderflow is not running at http://127.0.0.1:8080 (Connection refused (os error 111)). \
             Start it with `make up`, then run the demo again."
        );
        assert_eq!(
            NotStarted::NoProducts {
                error: "PUT /products/demo-widget answered 401 Unauthorized: ".into()
            }
            .to_string(),
            "cannot set up the demo products: PUT /products/demo-widget answered 401 Unauthorized: "
        );
    }
}
