//! `orderflow loadgen`: places orders against a running system and measures it.
//!
//! Two ways of arriving: an open loop (`--rate`) places orders on a fixed timetable whatever the system
//! does, and measures every latency from the order's *scheduled* time, so a stall shows as latency
//! instead of as fewer requests (no coordinated omission); a closed loop (`--concurrency`) keeps that
//! many clients busy, each placing an order and waiting for its end before the next.
//!
//! An order's end is observed, not polled: the generator subscribes to `orders.>` on the system's NATS
//! server before the first request and recognises its own sagas by the correlation id it gave them
//! (`lg-<run>-<n>`), which the relay copies into a header, so other traffic costs no decoding. One
//! collector task owns every measurement; the request tasks and the subscription only send it notes.

use crate::admin::AdminArgs;
use crate::demo::{Catalog, Targets, check_ready};
use crate::dlq::DEFAULT_NATS_URL;
use crate::up::DEFAULT_HTTP_PORT_BASE;
use anyhow::{Context, Result, bail};
use contracts::events::{ORDER_CANCELLED, ORDER_CONFIRMED, ORDER_CREATED};
use contracts::{Envelope, Event, Priority};
use futures::StreamExt;
use hdrhistogram::Histogram;
use platform::config::duration_between;
use platform::db::duration_us;
use platform::nats::NatsAuth;
use platform::outbox::CORRELATION_HEADER;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// The window the progress line's "current rate" is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(2);
/// A closed-loop client whose request failed waits this long before its next one, so a system that
/// refuses connections is not hammered in a tight loop.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(50);
/// Stock of every product the generator creates for orders that should succeed (the inventory's maximum).
const AMPLE_STOCK: i64 = 1_000_000_000;
/// Price of the generator's products.
const PRICE_CENTS: i64 = 1000;
/// Latencies are recorded in microseconds, up to an hour, to three significant digits.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
/// The largest sum of `--mix` weights: the mix is spelled out as a cycle of that length.
const MAX_MIX_TOTAL: u32 = 10_000;
/// Where the order service takes orders.
const DEFAULT_ORDER_PATH: &str = "/orders";

/// `--order-path`: an absolute path, without query or fragment, that can follow the base URL as it is.
fn order_path(raw: &str) -> Result<String, String> {
    let plain = raw.starts_with('/')
        && raw
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '?' | '#' | '%'));
    if plain {
        Ok(raw.to_owned())
    } else {
        Err("give an absolute path of plain characters, such as /orders".to_owned())
    }
}

/// Place orders against a running system and report throughput, latency and how the orders ended.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
#[command(group(clap::ArgGroup::new("arrival").required(true).args(["rate", "concurrency"])))]
pub struct Args {
    /// Open loop: place this many orders per second on a fixed timetable, whatever the system does.
    /// Latencies count from each order's scheduled time, so a stall is not hidden.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: Option<u32>,
    /// Closed loop: this many clients, each placing an order and waiting for it to end (confirmed or
    /// cancelled) before placing the next.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// Stop placing orders after this long (e.g. 30s, 2m). [default: 10s, unless --orders is given]
    #[arg(long, value_parser = duration_between(Duration::from_millis(1), Duration::from_secs(86_400)),
        conflicts_with = "orders")]
    pub duration: Option<Duration>,
    /// Stop after placing this many orders.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub orders: Option<u64>,
    /// Kinds of orders by weight: happy (ends confirmed), out_of_stock (cancelled: insufficient_stock),
    /// declined (cancelled: payment_declined). Interleaved evenly, the same on every run.
    #[arg(long, default_value = "happy=100")]
    pub mix: Mix,
    /// The lane of every order of the run: `express` orders travel on subjects and consumers of
    /// their own, ahead of any backlog of normal ones. Run an express load beside a normal flood to
    /// see what a backlog costs the express lane.
    #[arg(long, default_value = "normal")]
    pub priority: Priority,
    /// Products the orders spread over: fewer means hotter rows.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub products: u32,
    /// After the last order is placed, how long to wait for those still in flight to end; any that
    /// have not ended by then count as `unfinished`.
    #[arg(long, default_value = "60s",
        value_parser = duration_between(Duration::from_secs(1), Duration::from_secs(3600)))]
    pub settle_timeout: Duration,
    /// Retry an order refused by admission control (503 with Retry-After) after the seconds the
    /// answer gives, with the same Idempotency-Key, as a well-behaved client does, until it is
    /// accepted or --settle-timeout has passed since its first refusal. Without it a refused order
    /// is given up at once. Either way refusals are counted as `shed`, never as errors.
    #[arg(long)]
    pub retry_shed: bool,
    /// How long to wait for the answer to one request (e.g. 10s; 100ms to 10m); a request not
    /// answered by then counts as `timeout`.
    #[arg(long, default_value = "10s",
        value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(600)))]
    pub request_timeout: Duration,
    /// Open loop: most requests waiting for an answer at once. Beyond it the timetable slips, and the
    /// slip counts as latency.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_in_flight: u32,
    /// The --http-port-base that `orderflow up` runs with: order-service on it, inventory-service on +1.
    #[arg(long, env = "ORDERFLOW_HTTP_PORT_BASE", default_value_t = DEFAULT_HTTP_PORT_BASE)]
    pub http_port_base: u16,
    /// The order service's base URL (on this machine). [default: http://127.0.0.1:<http-port-base>]
    #[arg(long, env = "ORDERFLOW_LOADGEN_ORDER_URL", value_parser = platform::config::HTTP_URL)]
    pub order_url: Option<String>,
    /// The inventory service's base URL (on this machine). [default: http://127.0.0.1:<http-port-base + 1>]
    #[arg(long, env = "ORDERFLOW_LOADGEN_INVENTORY_URL", value_parser = platform::config::HTTP_URL)]
    pub inventory_url: Option<String>,
    /// The path orders are POSTed to under --order-url. Another system's own ingress (a benchmark peer)
    /// may take orders elsewhere; then only --inventory-url is asked whether it is ready.
    #[arg(long, default_value = DEFAULT_ORDER_PATH, value_parser = order_path)]
    pub order_path: String,
    /// The NATS server the services publish to (on this machine): orders' ends are observed there.
    #[arg(long, env = "ORDERFLOW_NATS_URL", default_value = DEFAULT_NATS_URL,
        value_parser = platform::config::NATS_URLS)]
    pub nats_url: String,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The run creates its own products, an admin operation.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// [default: the `operator` user `orderflow up` saved in $ORDERFLOW_DATA_DIR, if any]
    #[command(flatten)]
    pub nats_auth: NatsAuth,
}

const AFTER_HELP: &str = "\
Latencies:
  accept       the order's scheduled time (open loop) or send time (closed loop) → its 202
  end-to-end   orders.created seen on NATS → orders.confirmed or orders.cancelled seen on NATS
  total        scheduled or send time → orders.confirmed or orders.cancelled seen on NATS

Targets must be on this machine (loopback addresses): the generator is a benchmark tool, not a way to
load somebody else's system. It exits 0 when every order was accepted (or refused by admission
control: 503 with Retry-After, counted as `shed`) and every accepted one ended as its kind should, 1
otherwise (the report says what went wrong), 2 when it could not start.

Examples:
  orderflow loadgen --rate 200 --duration 30s
  orderflow loadgen --concurrency 64 --orders 20000 --mix happy=90,out_of_stock=5,declined=5 --json
  orderflow loadgen --rate 5000 --duration 30s --retry-shed   # a flash sale of polite clients";

contracts::text_enum! {
    /// What an order is made to do, and so how it should end.
    pub enum OrderKind {
        Happy => "happy",
        OutOfStock => "out_of_stock",
        Declined => "declined",
    }
}

impl OrderKind {
    /// The final state an order of this kind must reach (as [`Ending::label`] spells it).
    fn expected(self) -> &'static str {
        match self {
            OrderKind::Happy => "confirmed",
            OrderKind::OutOfStock => "cancelled:insufficient_stock",
            OrderKind::Declined => "cancelled:payment_declined",
        }
    }
}

/// `--mix`: kinds with weights, spelled out as one cycle that interleaves them evenly (smooth weighted
/// round robin), so order `n` always has the same kind and any stretch of orders has about the mix.
#[derive(Debug, Clone)]
pub struct Mix {
    weights: Vec<(OrderKind, u32)>,
    cycle: Vec<OrderKind>,
}

impl Mix {
    fn kind(&self, n: u64) -> OrderKind {
        self.cycle[(n % self.cycle.len() as u64) as usize]
    }
}

impl std::fmt::Display for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(kind, weight)| format!("{kind}={weight}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let mut weights: Vec<(OrderKind, u32)> = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not kind=weight (e.g. happy=90)"))?;
            let kind = OrderKind::parse(name.trim()).ok_or_else(|| {
                format!(
                    "unknown order kind `{}`; the kinds are {}",
                    name.trim(),
                    OrderKind::choices()
                )
            })?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!("the weight of {kind} must be a whole number, not `{weight}`")
            })?;
            if weights.iter().any(|(seen, _)| *seen == kind) {
                return Err(format!("{kind} is given twice"));
            }
            weights.push((kind, weight));
        }
        let total: u32 = weights.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            return Err(
                "the weights must add up to more than 0 (e.g. happy=90,declined=10)".into(),
            );
        }
        if total > MAX_MIX_TOTAL {
            return Err(format!(
                "the weights add up to {total}; keep them at most {MAX_MIX_TOTAL} (they are ratios)"
            ));
        }
        weights.retain(|(_, weight)| *weight > 0);
        let mut credit = vec![0_i64; weights.len()];
        let cycle = (0..total)
            .map(|_| {
                for (credit, (_, weight)) in credit.iter_mut().zip(&weights) {
                    *credit += i64::from(*weight);
                }
                let (richest, _) = credit
                    .iter()
                    .enumerate()
                    .max_by_key(|(index, credit)| (**credit, std::cmp::Reverse(*index)))
                    .expect("at least one weight is positive");
                credit[richest] -= i64::from(total);
                weights[richest].0
            })
            .collect();
        Ok(Mix { weights, cycle })
    }
}

/// When the generator stops placing orders.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Orders(u64),
    Duration(Duration),
}

impl Bound {
    fn reached(self, placed: u64, elapsed: Duration) -> bool {
        match self {
            Bound::Orders(orders) => placed >= orders,
            Bound::Duration(duration) => elapsed >= duration,
        }
    }

    fn describe(self) -> String {
        match self {
            Bound::Orders(orders) => format!("{orders} orders"),
            Bound::Duration(duration) => platform::config::format_duration(duration),
        }
    }
}

/// How an order ended, as seen on NATS.
#[derive(Debug, Clone)]
enum Ending {
    Confirmed,
    Cancelled(String),
}

impl Ending {
    fn label(&self) -> String {
        match self {
            Ending::Confirmed => "confirmed".to_owned(),
            Ending::Cancelled(reason) => format!("cancelled:{reason}"),
        }
    }
}

/// What the request tasks and the subscription tell the collector.
enum Note {
    /// Order `n` is about to be requested; `due` is when it was meant to be.
    Placing {
        n: u64,
        kind: OrderKind,
        due: Instant,
        done: Option<oneshot::Sender<()>>,
    },
    /// The request of order `n` was answered at `at`: 202, or an error of this kind.
    Answered {
        n: u64,
        at: Instant,
        result: Result<(), String>,
    },
    /// The request of order `n` was refused by admission control at `at`; `given_up` unless it
    /// will be sent again.
    Shed {
        n: u64,
        at: Instant,
        given_up: bool,
    },
    Created {
        n: u64,
        at: Instant,
    },
    Ended {
        n: u64,
        at: Instant,
        ending: Ending,
    },
    /// No more orders will be placed.
    AllPlaced,
}

/// Everything the request tasks share.
struct Driver {
    http: reqwest::Client,
    order_url: String,
    order_path: String,
    run: String,
    mix: Mix,
    priority: Priority,
    products: u32,
    /// `--retry-shed`, and for how long after an order's first refusal.
    retry_shed: Option<Duration>,
    notes: mpsc::UnboundedSender<Note>,
}

/// How a request for an order was answered.
enum Answer {
    Accepted,
    /// 503 with `Retry-After` and a problem of type `...overloaded`: refused by admission control.
    Shed {
        retry_after: Duration,
    },
    /// Anything else, by kind (`http_<status>`, `timeout`, `connect`, `request`).
    Failed(String),
}

impl Driver {
    fn correlation_id(&self, n: u64) -> String {
        format!("lg-{}-{n}", self.run)
    }

    fn body(&self, n: u64) -> String {
        let product = self.product(n % u64::from(self.products));
        let (product, token) = match self.mix.kind(n) {
            OrderKind::Happy => (product, "tok_visa"),
            OrderKind::OutOfStock => (self.sold_out_product(), "tok_visa"),
            OrderKind::Declined => (product, "tok_chargeDeclined"),
        };
        let mut body = serde_json::json!({
            "customer_id": format!("loadgen-{}", self.run),
            "items": [{ "product_id": product, "quantity": 1 }],
            "payment_method": token,
        });
        // Named only when it is not the default: a peer's ingress need not know the field.
        if self.priority != Priority::Normal {
            body["priority"] = self.priority.as_str().into();
        }
        body.to_string()
    }

    fn product(&self, index: u64) -> String {
        format!("lg-{}-{index}", self.run)
    }

    fn sold_out_product(&self) -> String {
        format!("lg-{}-sold-out", self.run)
    }

    /// Places order `n`; `true` if it was accepted.
    async fn place(&self, n: u64, due: Instant, done: Option<oneshot::Sender<()>>) -> bool {
        // A send fails only once the collector is gone, and then nobody is measuring any more.
        let _ = self.notes.send(Note::Placing {
            n,
            kind: self.mix.kind(n),
            due,
            done,
        });
        let mut first_refused = None;
        let result = loop {
            match self.request(n).await {
                Answer::Accepted => break Ok(()),
                Answer::Failed(kind) => break Err(kind),
                Answer::Shed { retry_after } => {
                    let refused_at = *first_refused.get_or_insert_with(Instant::now);
                    let retry = self
                        .retry_shed
                        .filter(|patience| refused_at.elapsed() + retry_after <= *patience);
                    let _ = self.notes.send(Note::Shed {
                        n,
                        at: Instant::now(),
                        given_up: retry.is_none(),
                    });
                    if retry.is_none() {
                        return false;
                    }
                    tokio::time::sleep(retry_after).await;
                }
            }
        };
        let accepted = result.is_ok();
        let _ = self.notes.send(Note::Answered {
            n,
            at: Instant::now(),
            result,
        });
        accepted
    }

    /// Sends order `n`'s request once.
    async fn request(&self, n: u64) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{}", self.order_url, self.order_path))
            .header("X-Correlation-ID", self.correlation_id(n))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if self.retry_shed.is_some() {
            // A retry must not place the order twice, should an earlier try have been accepted
            // after all.
            request = request.header("Idempotency-Key", self.correlation_id(n));
        }
        let response = match request.body(self.body(n)).send().await {
            Ok(response) => response,
            Err(error) if error.is_timeout() => return Answer::Failed("timeout".to_owned()),
            Err(error) if error.is_connect() => return Answer::Failed("connect".to_owned()),
            Err(_) => return Answer::Failed("request".to_owned()),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read the body to the end so the connection can be used again.
        let body = response.bytes().await.unwrap_or_default();
        match (status, retry_after) {
            (reqwest::StatusCode::ACCEPTED, _) => Answer::Accepted,
            (reqwest::StatusCode::SERVICE_UNAVAILABLE, Some(retry_after)) if overloaded(&body) => {
                Answer::Shed { retry_after }
            }
            _ => Answer::Failed(format!("http_{}", status.as_u16())),
        }
    }
}

/// Whether a problem document says the server is overloaded (`type` ending in `overloaded`).
fn overloaded(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|problem| problem.get("type")?.as_str().map(str::to_owned))
        .is_some_and(|kind| kind.ends_with("overloaded"))
}

/// Latency percentiles of one histogram, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// What `--json` prints: the run, its throughput and latencies, and how every order ended.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `rate` (open loop) or `concurrency` (closed loop).
    pub mode: &'static str,
    /// Orders per second (open loop) or clients (closed loop).
    pub target: u32,
    pub mix: String,
    /// Seconds spent placing orders.
    pub placing_s: f64,
    /// Seconds from the first order to the last end seen.
    pub elapsed_s: f64,
    pub placed: u64,
    pub accepted: u64,
    pub finished: u64,
    /// Requests refused by admission control (503 with Retry-After), retries included.
    pub shed: u64,
    /// Orders never accepted because they were refused so (all that were, without --retry-shed).
    pub shed_orders: u64,
    /// Accepted orders per second of placing.
    pub accepted_per_s: f64,
    /// Ended orders per second, from the first order to the last end seen.
    pub finished_per_s: f64,
    pub accept_ms: Percentiles,
    /// Scheduled (or send) time → the 503 of each request refused by admission control: how fast
    /// a refusal comes.
    pub shed_ms: Percentiles,
    pub end_to_end_ms: Percentiles,
    pub total_ms: Percentiles,
    /// `confirmed`, `cancelled:<reason>`: how many orders ended so.
    pub final_states: BTreeMap<String, u64>,
    /// `http_<status>`, `timeout`, `connect`, `request`, `unfinished`, `unexpected_end`: how often.
    pub errors: BTreeMap<String, u64>,
    /// The products this run created, each with the stock it was given, so a checker can balance
    /// the system's books against the orders that ended confirmed.
    pub stock: BTreeMap<String, i64>,
}

/// One order, from placing to its end.
struct Tracked {
    kind: OrderKind,
    due: Instant,
    answered: bool,
    created_at: Option<Instant>,
    ended: bool,
    done: Option<oneshot::Sender<()>>,
}

/// Owns every measurement; fed by notes, it draws the progress line and builds the report.
struct Collector {
    start: Instant,
    orders: HashMap<u64, Tracked>,
    accept: Histogram<u64>,
    /// Scheduled time → a 503 of admission control.
    refusal: Histogram<u64>,
    end_to_end: Histogram<u64>,
    total: Histogram<u64>,
    placed: u64,
    accepted: u64,
    finished: u64,
    shed: u64,
    shed_orders: u64,
    /// Orders placed that are not both answered and ended yet (kept as a count: checked per note).
    open: u64,
    last_end: Option<Instant>,
    all_placed_at: Option<Instant>,
    final_states: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    /// (time, finished) samples for the progress line's current rate.
    recent: VecDeque<(Instant, u64)>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("the bounds are valid")
}

impl Collector {
    fn new(start: Instant) -> Self {
        Self {
            start,
            orders: HashMap::new(),
            accept: histogram(),
            refusal: histogram(),
            end_to_end: histogram(),
            total: histogram(),
            placed: 0,
            accepted: 0,
            finished: 0,
            shed: 0,
            shed_orders: 0,
            open: 0,
            last_end: None,
            all_placed_at: None,
            final_states: BTreeMap::new(),
            errors: BTreeMap::new(),
            recent: VecDeque::new(),
        }
    }

    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
    }

    fn note(&mut self, note: Note) {
        match note {
            Note::Placing { n, kind, due, done } => {
                self.placed += 1;
                self.open += 1;
                self.orders.insert(
                    n,
                    Tracked {
                        kind,
                        due,
                        answered: false,
                        created_at: None,
                        ended: false,
                        done,
                    },
                );
            }
            Note::Answered { n, at, result } => {
                let Some(order) = self.orders.get_mut(&n) else {
                    return;
                };
                order.answered = true;
                match result {
                    Ok(()) => {
                        self.accepted += 1;
                        self.accept
                            .saturating_record(duration_us(at - order.due).unsigned_abs());
                        // Its end may have been seen before the 202 arrived.
                        if order.ended {
                            self.open -= 1;
                        }
                    }
                    Err(kind) => {
                        self.open -= 1;
                        // Nothing will end: let a closed-loop client go on, and forget the order.
                        if let Some(order) = self.orders.remove(&n)
                            && let Some(done) = order.done
                        {
                            let _ = done.send(());
                        }
                        self.error(&kind);
                    }
                }
            }
            Note::Shed { n, at, given_up } => {
                self.shed += 1;
                if let Some(order) = self.orders.get(&n) {
                    self.refusal
                        .saturating_record(duration_us(at - order.due).unsigned_abs());
                }
                if given_up {
                    self.shed_orders += 1;
                    self.open -= 1;
                    if let Some(order) = self.orders.remove(&n)
                        && let Some(done) = order.done
                    {
                        let _ = done.send(());
                    }
                }
            }
            Note::Created { n, at } => {
                if let Some(order) = self.orders.get_mut(&n) {
                    order.created_at.get_or_insert(at);
                }
            }
            Note::Ended { n, at, ending } => {
                let Some(order) = self.orders.get_mut(&n) else {
                    return;
                };
                // The relay may publish an event twice (JetStream drops the copy, subscribers see it).
                if order.ended {
                    return;
                }
                order.ended = true;
                if order.answered {
                    self.open -= 1;
                }
                let kind = order.kind;
                self.total
                    .saturating_record(duration_us(at - order.due).unsigned_abs());
                if let Some(created) = order.created_at {
                    self.end_to_end
                        .saturating_record(duration_us(at - created).unsigned_abs());
                }
                if let Some(done) = order.done.take() {
                    let _ = done.send(());
                }
                self.finished += 1;
                self.last_end = Some(at);
                let label = ending.label();
                if label != kind.expected() {
                    self.error("unexpected_end");
                }
                *self.final_states.entry(label).or_default() += 1;
            }
            Note::AllPlaced => self.all_placed_at = Some(Instant::now()),
        }
    }

    /// Every placed order has been answered, and every accepted one has ended.
    fn settled(&self) -> bool {
        self.open == 0
    }

    fn snapshot(&mut self) -> Snapshot {
        let now = Instant::now();
        self.recent.push_back((now, self.finished));
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now - *at > RATE_WINDOW)
        {
            self.recent.pop_front();
        }
        let rate = match self.recent.front() {
            Some((at, finished)) if now > *at => {
                (self.finished - finished) as f64 / (now - *at).as_secs_f64()
            }
            _ => 0.0,
        };
        Snapshot {
            elapsed: now - self.start,
            sent: self.placed,
            in_flight: self.placed - self.finished - self.shed_orders - self.errors_before_accept(),
            shed: self.shed,
            done: self.finished,
            per_second: rate,
            p99_end_to_end_ms: self.end_to_end.value_at_quantile(0.99) as f64 / 1000.0,
        }
    }

    /// Requests that failed, and so never put an order in flight.
    fn errors_before_accept(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(kind, _)| kind.as_str() != "unexpected_end")
            .map(|(_, count)| count)
            .sum()
    }

    fn report(mut self, mode: &'static str, target: u32, mix: &Mix) -> Report {
        let unfinished = self
            .orders
            .values()
            .filter(|order| order.answered && !order.ended)
            .count() as u64;
        if unfinished > 0 {
            *self.errors.entry("unfinished".to_owned()).or_default() += unfinished;
        }
        let placing = self
            .all_placed_at
            .map_or(Duration::ZERO, |at| at - self.start);
        let elapsed = self.last_end.map_or(Duration::ZERO, |at| at - self.start);
        let per_second = |count: u64, over: Duration| {
            if over.is_zero() {
                0.0
            } else {
                count as f64 / over.as_secs_f64()
            }
        };
        Report {
            mode,
            target,
            mix: mix.to_string(),
            placing_s: placing.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            placed: self.placed,
            accepted: self.accepted,
            finished: self.finished,
            shed: self.shed,
            shed_orders: self.shed_orders,
            accepted_per_s: per_second(self.accepted, placing),
            finished_per_s: per_second(self.finished, elapsed),
            accept_ms: Percentiles::of(&self.accept),
            shed_ms: Percentiles::of(&self.refusal),
            end_to_end_ms: Percentiles::of(&self.end_to_end),
            total_ms: Percentiles::of(&self.total),
            final_states: self.final_states,
            errors: self.errors,
            stock: BTreeMap::new(),
        }
    }
}

/// Hosts a benchmark may target: this machine only.
fn check_loopback(what: &str, url: &str) -> Result<()> {
    let parsed = url::Url::parse(url).with_context(|| format!("{what} is not a URL"))?;
    let loopback = match parsed.host() {
        // Outside http(s) the URL crate leaves hosts unparsed: `nats://127.0.0.1` has a "domain".
        Some(url::Host::Domain(name)) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback {
        bail!(
            "{what} must be on this machine (localhost, 127.0.0.0/8 or ::1), not {}: the load generator \
             only loads systems it runs beside",
            parsed.host_str().unwrap_or("nothing")
        );
    }
    Ok(())
}

/// Subscribes to the order events of this run and turns them into notes.
async fn observe(
    nats_url: &str,
    auth: &NatsAuth,
    run: &str,
    priority: Priority,
    notes: mpsc::UnboundedSender<Note>,
) -> Result<()> {
    let client = auth
        .apply(async_nats::ConnectOptions::new())
        .connection_timeout(Duration::from_secs(5))
        .connect(platform::config::nats_servers(nats_url))
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {}: point --nats-url at the server the services use",
                platform::config::redact(nats_url)
            )
        })?;
    // The run's lane only: beside a flood in the other lane, the flood's events would queue in front
    // of the run's own and delay what it measures.
    let subjects = priority.subject("orders.*").into_owned();
    let mut events = client
        .subscribe(subjects.clone())
        .await
        .with_context(|| format!("cannot subscribe to {subjects}"))?;
    // The subscription must be in place on the server before the first order can be created.
    client.flush().await.context("cannot reach NATS")?;
    let prefix = format!("lg-{run}-");
    tokio::spawn(async move {
        // Keeps the connection alive as long as the subscription.
        let _client = client;
        while let Some(message) = events.next().await {
            let at = Instant::now();
            let Some(n) = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(CORRELATION_HEADER))
                .and_then(|value| value.as_str().strip_prefix(prefix.as_str()))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let (_, event_type) = Priority::of_subject(message.subject.as_str());
            let note = match event_type.as_ref() {
                ORDER_CREATED => Note::Created { n, at },
                ORDER_CONFIRMED => Note::Ended {
                    n,
                    at,
                    ending: Ending::Confirmed,
                },
                ORDER_CANCELLED => {
                    let reason = match Envelope::from_json(&message.payload) {
                        Ok(Envelope {
                            event: Event::OrderCancelled(cancelled),
                            ..
                        }) => cancelled.reason.to_string(),
                        _ => "undecodable".to_owned(),
                    };
                    Note::Ended {
                        n,
                        at,
                        ending: Ending::Cancelled(reason),
                    }
                }
                _ => continue,
            };
            if notes.send(note).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Creates the run's products: `--products` with ample stock, and one with none. Returns each with
/// its stock.
async fn create_products(catalog: &Catalog<'_>, driver: &Driver) -> Result<BTreeMap<String, i64>> {
    let products: BTreeMap<String, i64> = (0..u64::from(driver.products))
        .map(|index| (driver.product(index), AMPLE_STOCK))
        .chain([(driver.sold_out_product(), 0)])
        .collect();
    for (id, stock) in &products {
        let product = serde_json::json!({ "name": "Load generator item", "price_cents": PRICE_CENTS, "stock": stock });
        catalog.put_product(id, &product).await?;
    }
    Ok(products)
}

/// Open loop: order `n` is due at `start + n / rate`, placed then or as soon as a slot is free.
async fn open_loop(
    driver: Arc<Driver>,
    rate: u32,
    bound: Bound,
    max_in_flight: u32,
    start: Instant,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let slots = Arc::new(Semaphore::new(max_in_flight as usize));
    let mut n = 0_u64;
    loop {
        let due = start + period.mul_f64(n as f64);
        if bound.reached(n, due - start) {
            break;
        }
        tokio::time::sleep_until(due).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let driver = driver.clone();
        tokio::spawn(async move {
            driver.place(n, due, None).await;
            drop(slot);
        });
        n += 1;
    }
    // Every request placed has been answered once all slots are free again.
    let _ = slots.acquire_many(max_in_flight).await;
}

/// Closed loop: `clients` clients, each placing an order and waiting for its end before the next.
async fn closed_loop(
    driver: Arc<Driver>,
    clients: u32,
    bound: Bound,
    settle_timeout: Duration,
    start: Instant,
) {
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let driver = driver.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if bound.reached(n, start.elapsed()) {
                        break;
                    }
                    let (done, ended) = oneshot::channel();
                    if driver.place(n, Instant::now(), Some(done)).await {
                        // An order that never ends frees its client after the settle timeout.
                        let _ = tokio::time::timeout(settle_timeout, ended).await;
                    } else {
                        tokio::time::sleep(PAUSE_AFTER_ERROR).await;
                    }
                }
            })
        })
        .collect();
    futures::future::join_all(workers).await;
}

/// Exit code when the load could not start (an error from [`load`]); 0 and 1 are
/// [`Report::all_went_well`].
pub const EXIT_CANNOT_START: u8 = 2;

/// What a run tells as it goes, for a person watching it.
#[derive(Debug)]
pub enum Progress {
    /// The system is ready and the first order is about to be placed.
    Starting(Start),
    /// How far it is, every [`PROGRESS_EVERY`] until the orders have settled.
    Running(Snapshot),
    /// The orders have settled (or the settle timeout passed): the report comes next.
    Done,
}

/// The run about to start.
#[derive(Debug)]
pub struct Start {
    /// `rate` (open loop) or `concurrency` (closed loop), as in [`Report::mode`].
    mode: &'static str,
    target: u32,
    bound: Bound,
    mix: Mix,
    priority: Priority,
    order_url: String,
    /// The run's id, in the correlation id of each of its orders.
    run: String,
}

impl Start {
    pub fn text_line(&self) -> String {
        let arrival = match self.mode {
            "rate" => format!("open loop at {} orders/s", self.target),
            _ => format!("closed loop with {} clients", self.target),
        };
        format!(
            "orderflow loadgen: {arrival} for {}, mix {}, {} lane, against {} (run {})",
            self.bound.describe(),
            self.mix,
            self.priority,
            self.order_url,
            self.run
        )
    }
}

/// The run so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    elapsed: Duration,
    sent: u64,
    /// Accepted or still unanswered, and not ended yet.
    in_flight: u64,
    done: u64,
    /// Requests refused by admission control so far.
    shed: u64,
    /// Orders ended per second over the last [`RATE_WINDOW`].
    per_second: f64,
    p99_end_to_end_ms: f64,
}

impl Snapshot {
    pub fn text_line(&self) -> String {
        let shed = if self.shed > 0 {
            format!("  shed {}", self.shed)
        } else {
            String::new()
        };
        format!(
            "{:>6.1}s  sent {}  in flight {}  done {}{shed}  {:.0}/s  p99 end-to-end {:.1} ms",
            self.elapsed.as_secs_f64(),
            self.sent,
            self.in_flight,
            self.done,
            self.per_second,
            self.p99_end_to_end_ms
        )
    }
}

/// Runs the load, telling `progress` how it goes, and returns the report; an error means the load
/// could not start (the reason says what to do).
pub async fn load(args: Args, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    let targets = Targets::resolve(args.http_port_base, &args.order_url, &args.inventory_url)?;
    check_loopback("--order-url", &targets.order)?;
    check_loopback("--inventory-url", &targets.inventory)?;
    for url in args.nats_url.split(',') {
        check_loopback("--nats-url", url.trim())?;
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(args.request_timeout)
        .build()
        .context("cannot create an HTTP client")?;
    // A peer's own ingress has no /health/ready; its setup API (--inventory-url) answers for it.
    let asked = if args.order_path == DEFAULT_ORDER_PATH {
        vec![&targets.order, &targets.inventory]
    } else {
        vec![&targets.inventory]
    };
    for url in asked {
        if let Err(reason) = check_ready(&http, url).await {
            bail!(
                "orderflow is not ready at {url} ({reason}). Start it with `make up` (or point \
                 --http-port-base / --order-url at it), then run the load generator again."
            );
        }
    }
    let bound = match (args.orders, args.duration) {
        (Some(orders), _) => Bound::Orders(orders),
        (None, Some(duration)) => Bound::Duration(duration),
        (None, None) => Bound::Duration(Duration::from_secs(10)),
    };
    let (notes, mut inbox) = mpsc::unbounded_channel();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let driver = Arc::new(Driver {
        http: http.clone(),
        order_url: targets.order.clone(),
        order_path: args.order_path.clone(),
        run: run.clone(),
        mix: args.mix.clone(),
        priority: args.priority,
        products: args.products,
        retry_shed: args.retry_shed.then_some(args.settle_timeout),
        notes: notes.clone(),
    });
    let token = args.admin.token();
    let catalog = Catalog {
        client: &http,
        inventory: &targets.inventory,
        token: token.as_deref(),
    };
    let stock = create_products(&catalog, &driver).await?;
    let nats_auth = crate::admin::operator_nats_auth(&args.nats_auth, None);
    observe(
        &args.nats_url,
        &nats_auth,
        &run,
        args.priority,
        notes.clone(),
    )
    .await?;

    let (mode, target) = match (args.rate, args.concurrency) {
        (Some(rate), _) => ("rate", rate),
        (None, Some(clients)) => ("concurrency", clients),
        (None, None) => bail!("give --rate or --concurrency"),
    };
    progress(Progress::Starting(Start {
        mode,
        target,
        bound,
        mix: args.mix.clone(),
        priority: args.priority,
        order_url: targets.order.clone(),
        run,
    }));
    let start = Instant::now();
    let placing = {
        let driver = driver.clone();
        let (rate, concurrency) = (args.rate, args.concurrency);
        let (max_in_flight, settle_timeout) = (args.max_in_flight, args.settle_timeout);
        tokio::spawn(async move {
            match (rate, concurrency) {
                (Some(rate), _) => {
                    open_loop(driver.clone(), rate, bound, max_in_flight, start).await
                }
                (None, Some(clients)) => {
                    closed_loop(driver.clone(), clients, bound, settle_timeout, start).await;
                }
                (None, None) => {}
            }
            let _ = driver.notes.send(Note::AllPlaced);
        })
    };
    drop(driver);
    drop(notes);

    let mut collector = Collector::new(start);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    loop {
        let settle_deadline = collector.all_placed_at.map(|at| at + args.settle_timeout);
        tokio::select! {
            note = inbox.recv() => match note {
                Some(note) => collector.note(note),
                None => break,
            },
            _ = ticks.tick() => progress(Progress::Running(collector.snapshot())),
            _ = async { tokio::time::sleep_until(settle_deadline.unwrap_or_else(Instant::now)).await },
                if settle_deadline.is_some() => break,
        }
        if collector.all_placed_at.is_some() && collector.settled() {
            break;
        }
    }
    progress(Progress::Done);
    placing.abort();
    Ok(Report {
        stock,
        ..collector.report(mode, target, &args.mix)
    })
}

impl Report {
    /// Orders were placed, and every one was accepted and ended as its kind should.
    pub fn all_went_well(&self) -> bool {
        self.errors.is_empty() && self.placed > 0
    }

    /// The report as a person reads it: counts, throughput, a latency table, and how orders ended.
    pub fn text_lines(&self) -> Vec<String> {
        let share = |part: u64| {
            if self.placed == 0 {
                0.0
            } else {
                100.0 * part as f64 / self.placed as f64
            }
        };
        let mut lines = vec![
            String::new(),
            format!(
                "placed {} orders in {:.1}s; accepted {} ({:.1}%), ended {} ({:.1}%)",
                self.placed,
                self.placing_s,
                self.accepted,
                share(self.accepted),
                self.finished,
                share(self.finished)
            ),
            format!(
                "throughput: {:.1} accepted orders/s, {:.1} ended orders/s",
                self.accepted_per_s, self.finished_per_s
            ),
            String::new(),
            format!(
                "{:<12}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
                "latency ms", "count", "p50", "p90", "p99", "p99.9", "max"
            ),
        ];
        let shed = (self.shed > 0).then_some(("shed", &self.shed_ms));
        for (name, p) in [
            Some(("accept", &self.accept_ms)),
            shed,
            Some(("end-to-end", &self.end_to_end_ms)),
            Some(("total", &self.total_ms)),
        ]
        .into_iter()
        .flatten()
        {
            lines.push(format!(
                "{name:<12}{:>10}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                p.count, p.p50, p.p90, p.p99, p.p999, p.max
            ));
        }
        let listed = |counts: &BTreeMap<String, u64>| {
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts
                    .iter()
                    .map(|(name, count)| format!("{name} {count}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        lines.push(String::new());
        if self.shed > 0 {
            lines.push(format!(
                "shed: {} requests refused with 503 + Retry-After (overloaded); {} orders not placed",
                self.shed, self.shed_orders
            ));
        }
        lines.push(format!("final states: {}", listed(&self.final_states)));
        lines.push(format!("errors: {}", listed(&self.errors)));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(mix: &Mix, orders: u64) -> BTreeMap<OrderKind, u64> {
        let mut counts = BTreeMap::new();
        for n in 0..orders {
            *counts.entry(mix.kind(n)).or_default() += 1;
        }
        counts
    }

    #[test]
    fn a_mix_is_interleaved_evenly_and_the_same_every_time() {
        let mix: Mix = "happy=90,out_of_stock=5,declined=5".parse().expect("valid");
        let counts = kinds(&mix, 1000);
        assert_eq!(counts[&OrderKind::Happy], 900);
        assert_eq!(counts[&OrderKind::OutOfStock], 50);
        assert_eq!(counts[&OrderKind::Declined], 50);
        // Evenly: no stretch of 20 orders lacks a happy one, and the rare kinds never come in pairs.
        let cycle: Vec<OrderKind> = (0..100).map(|n| mix.kind(n)).collect();
        assert!(
            cycle
                .windows(2)
                .all(|w| w[0] == OrderKind::Happy || w[1] == OrderKind::Happy)
        );
        let again: Mix = "happy=90,out_of_stock=5,declined=5".parse().expect("valid");
        assert!((0..1000).all(|n| mix.kind(n) == again.kind(n)));
    }

    #[test]
    fn a_mix_with_zero_weights_leaves_those_kinds_out() {
        let mix: Mix = "happy=1,declined=0".parse().expect("valid");
        assert!((0..10).all(|n| mix.kind(n) == OrderKind::Happy));
        assert_eq!(mix.to_string(), "happy=1");
    }

    #[test]
    fn a_bad_mix_says_what_is_wrong() {
        let error = |raw: &str| raw.parse::<Mix>().expect_err(raw);
        assert!(error("happy").contains("kind=weight"));
        assert!(error("sad=1").contains("the kinds are happy, out_of_stock or declined"));
        assert!(error("happy=x").contains("whole number"));
        assert!(error("happy=1,happy=2").contains("twice"));
        assert!(error("happy=0").contains("more than 0"));
        assert!(error("happy=10001").contains("at most"));
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn exactly_one_way_of_arriving_is_given() {
        use clap::Parser;
        let parsed = |line: &[&str]| Cli::try_parse_from([&["loadgen"], line].concat());
        assert!(parsed(&["--rate", "10"]).is_ok());
        assert!(parsed(&["--concurrency", "4", "--orders", "10"]).is_ok());
        let neither = parsed(&[]).expect_err("no arrival mode").to_string();
        assert!(
            neither.contains("--rate") && neither.contains("--concurrency"),
            "{neither}"
        );
        let both = parsed(&["--rate", "10", "--concurrency", "4"]).expect_err("both");
        assert!(both.to_string().contains("cannot be used with"), "{both}");
        let bounds = parsed(&["--rate", "10", "--orders", "5", "--duration", "1s"]);
        assert!(bounds.is_err(), "--orders and --duration together");
    }

    #[test]
    fn an_order_path_is_absolute_and_plain() {
        use clap::Parser;
        let parsed = |path: &str| {
            Cli::try_parse_from(["loadgen", "--rate", "1", "--order-path", path])
                .map(|cli| cli.args.order_path)
        };
        assert_eq!(
            parsed("/orders/place/send").expect("a plain path"),
            "/orders/place/send"
        );
        for bad in ["orders", "/orders?x=1", "/a b", "/%2e%2e", ""] {
            let error = parsed(bad).expect_err(bad).to_string();
            assert!(error.contains("absolute path"), "{bad}: {error}");
        }
        let default = Cli::try_parse_from(["loadgen", "--rate", "1"]).expect("defaults");
        assert_eq!(default.args.order_path, "/orders");
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "nats://127.0.0.2:4223",
            "nats://[::1]:4223",
            "nats://localhost:4223",
        ] {
            check_loopback("--order-url", url).expect(url);
        }
        for url in [
            "http://10.0.0.5:8080",
            "http://example.com",
            "nats://192.168.1.2:4222",
        ] {
            let error = check_loopback("--order-url", url)
                .expect_err(url)
                .to_string();
            assert!(error.contains("must be on this machine"), "{error}");
        }
    }

    #[test]
    fn an_end_seen_before_its_202_still_settles_the_order_once_answered() {
        let start = Instant::now();
        let mut collector = Collector::new(start);
        collector.note(Note::Placing {
            n: 7,
            kind: OrderKind::Declined,
            due: start,
            done: None,
        });
        collector.note(Note::AllPlaced);
        collector.note(Note::Ended {
            n: 7,
            at: start + Duration::from_millis(4),
            ending: Ending::Cancelled("payment_declined".into()),
        });
        assert!(!collector.settled(), "its request is still unanswered");
        collector.note(Note::Answered {
            n: 7,
            at: start + Duration::from_millis(5),
            result: Ok(()),
        });
        assert!(collector.settled());
        let mix: Mix = "declined=1".parse().expect("valid");
        let report = collector.report("rate", 1, &mix);
        assert_eq!(report.final_states["cancelled:payment_declined"], 1);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }

    #[test]
    fn latencies_count_from_the_due_time_and_duplicates_count_once() {
        let start = Instant::now();
        let mut collector = Collector::new(start);
        let due = start;
        collector.note(Note::Placing {
            n: 0,
            kind: OrderKind::Happy,
            due,
            done: None,
        });
        collector.note(Note::Answered {
            n: 0,
            at: due + Duration::from_millis(3),
            result: Ok(()),
        });
        collector.note(Note::Created {
            n: 0,
            at: due + Duration::from_millis(2),
        });
        for _ in 0..2 {
            collector.note(Note::Ended {
                n: 0,
                at: due + Duration::from_millis(12),
                ending: Ending::Confirmed,
            });
        }
        collector.note(Note::Placing {
            n: 1,
            kind: OrderKind::Happy,
            due,
            done: None,
        });
        collector.note(Note::Answered {
            n: 1,
            at: due,
            result: Err("http_503".into()),
        });
        collector.note(Note::AllPlaced);
        assert!(collector.settled());
        let mix: Mix = "happy=1".parse().expect("valid");
        let report = collector.report("rate", 10, &mix);
        assert_eq!((report.placed, report.accepted, report.finished), (2, 1, 1));
        assert_eq!(report.final_states["confirmed"], 1);
        assert_eq!(report.errors["http_503"], 1);
        assert!((report.accept_ms.p50 - 3.0).abs() < 0.01);
        assert!((report.end_to_end_ms.p50 - 10.0).abs() < 0.02);
        assert!((report.total_ms.p50 - 12.0).abs() < 0.02);
    }

    fn percentiles(count: u64, p50: f64) -> Percentiles {
        Percentiles {
            count,
            p50,
            p90: p50 * 2.0,
            p99: p50 * 3.0,
            p999: p50 * 4.0,
            max: p50 * 5.0,
        }
    }

    fn report() -> Report {
        Report {
            mode: "rate",
            target: 50,
            mix: "happy=90,declined=10".into(),
            placing_s: 10.02,
            elapsed_s: 10.4,
            placed: 500,
            accepted: 499,
            finished: 498,
            shed: 0,
            shed_orders: 0,
            accepted_per_s: 49.8,
            finished_per_s: 47.9,
            accept_ms: percentiles(499, 1.5),
            shed_ms: percentiles(0, 0.0),
            end_to_end_ms: percentiles(498, 12.25),
            total_ms: percentiles(498, 14.0),
            final_states: BTreeMap::from([
                ("cancelled:payment_declined".to_owned(), 50),
                ("confirmed".to_owned(), 448),
            ]),
            errors: BTreeMap::from([("http_503".to_owned(), 1), ("unfinished".to_owned(), 1)]),
            stock: BTreeMap::new(),
        }
    }

    #[test]
    fn the_report_reads_as_a_table() {
        assert_eq!(
            report().text_lines(),
            [
                "",
                "placed 500 orders in 10.0s; accepted 499 (99.8%), ended 498 (99.6%)",
                "throughput: 49.8 accepted orders/s, 47.9 ended orders/s",
                "",
                "latency ms       count       p50       p90       p99     p99.9       max",
                "accept             499      1.50      3.00      4.50      6.00      7.50",
                "end-to-end         498     12.25     24.50     36.75     49.00     61.25",
                "total              498     14.00     28.00     42.00     56.00     70.00",
                "",
                "final states: cancelled:payment_declined 50, confirmed 448",
                "errors: http_503 1, unfinished 1",
            ]
        );
    }

    #[test]
    fn a_run_went_well_when_it_placed_orders_and_met_no_error() {
        let troubled = report();
        assert!(!troubled.all_went_well());
        let clean = Report {
            errors: BTreeMap::new(),
            ..report()
        };
        assert!(clean.all_went_well());
        assert!(clean.text_lines().contains(&"errors: none".to_owned()));
        let idle = Report {
            placed: 0,
            accepted: 0,
            finished: 0,
            errors: BTreeMap::new(),
            ..report()
        };
        assert!(!idle.all_went_well());
        assert!(
            idle.text_lines().contains(
                &"placed 0 orders in 10.0s; accepted 0 (0.0%), ended 0 (0.0%)".to_owned()
            )
        );
    }

    #[test]
    fn progress_reads_as_one_line_each() {
        let start = Start {
            mode: "concurrency",
            target: 4,
            bound: Bound::Orders(20),
            mix: "happy=1".parse().expect("valid"),
            priority: Priority::Express,
            order_url: "http://127.0.0.1:8080".into(),
            run: "1a2b3c4d".into(),
        };
        assert_eq!(
            start.text_line(),
            "orderflow loadgen: closed loop with 4 clients for 20 orders, mix happy=1, express lane, \
             against http://127.0.0.1:8080 (run 1a2b3c4d)"
        );
        let open = Start {
            mode: "rate",
            target: 100,
            bound: Bound::Duration(Duration::from_secs(30)),
            ..start
        };
        assert!(
            open.text_line()
                .starts_with("orderflow loadgen: open loop at 100 orders/s for 30s, "),
            "{}",
            open.text_line()
        );
        let snapshot = Snapshot {
            elapsed: Duration::from_millis(2_750),
            sent: 140,
            in_flight: 12,
            done: 127,
            shed: 0,
            per_second: 49.6,
            p99_end_to_end_ms: 18.04,
        };
        assert_eq!(
            snapshot.text_line(),
            "   2.8s  sent 140  in flight 12  done 127  50/s  p99 end-to-end 18.0 ms"
        );
        let shedding = Snapshot {
            shed: 31,
            ..snapshot
        };
        assert_eq!(
            shedding.text_line(),
            "   2.8s  sent 140  in flight 12  done 127  shed 31  50/s  p99 end-to-end 18.0 ms"
        );
    }

    #[test]
    fn shed_requests_are_counted_apart_from_errors() {
        let start = Instant::now();
        let mut collector = Collector::new(start);
        // Order 0 is refused once, retried and accepted; order 1 is refused and given up.
        for n in 0..2 {
            collector.note(Note::Placing {
                n,
                kind: OrderKind::Happy,
                due: start,
                done: None,
            });
        }
        collector.note(Note::Shed {
            n: 0,
            at: start + Duration::from_millis(4),
            given_up: false,
        });
        collector.note(Note::Shed {
            n: 1,
            at: start + Duration::from_millis(6),
            given_up: true,
        });
        collector.note(Note::AllPlaced);
        assert!(!collector.settled(), "order 0 is being retried");
        collector.note(Note::Answered {
            n: 0,
            at: start + Duration::from_secs(2),
            result: Ok(()),
        });
        collector.note(Note::Ended {
            n: 0,
            at: start + Duration::from_secs(3),
            ending: Ending::Confirmed,
        });
        assert!(collector.settled());
        assert_eq!(collector.snapshot().in_flight, 0);
        let report = collector.report("rate", 1, &"happy=1".parse().expect("valid"));
        assert_eq!((report.placed, report.accepted, report.finished), (2, 1, 1));
        assert_eq!((report.shed, report.shed_orders), (2, 1));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.all_went_well());
        // The accept latency of a retried order counts from its first try.
        assert!((report.accept_ms.p50 - 2000.0).abs() < 2.0);
        assert_eq!(report.shed_ms.count, 2);
        assert!((report.shed_ms.max - 6.0).abs() < 0.01);
        assert!(report.text_lines().contains(
            &"shed: 2 requests refused with 503 + Retry-After (overloaded); 1 orders not placed"
                .to_owned()
        ));
    }

    #[test]
    fn only_an_overloaded_problem_counts_as_shed() {
        assert!(overloaded(
            br#"{"type":"urn:orderflow:problem:overloaded","status":503}"#
        ));
        assert!(!overloaded(
            br#"{"type":"urn:orderflow:problem:unavailable","status":503}"#
        ));
        assert!(!overloaded(b"Service Unavailable"));
    }
}
