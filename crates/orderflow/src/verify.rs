//! `orderflow verify`: the saga's promises, checked after the fact. It first checks that the system is
//! quiet (every event published, every consumer caught up, nothing dead-lettered unless allowed), since
//! judging a system in mid-flight proves nothing. Then the three services' databases and the gateway's
//! ledger must tell one consistent story: every order ended, money and stock moved exactly as its end
//! says, no unit of stock appeared or vanished, no event had its effect twice, and nothing was charged
//! after its order was cancelled. This reads all four, read-only, plus the broker's view of the
//! consumers, and names every place where they disagree. It reads nothing that retention deletes (no
//! published outbox rows, no inbox): the order timeline is the record of the events each saga saw.
//!
//! The rules are pure functions over a [`Snapshot`] of plain rows; reading the snapshot is a thin layer
//! below them, so the rules are tested without any database.

use crate::dlq::DEFAULT_NATS_URL;
use crate::up::{DEFAULT_HTTP_PORT_BASE, Ports, http_client, local_url};
use contracts::events::{
    INVENTORY_REJECTED, INVENTORY_RESERVED, ORDER_CANCELLED, ORDER_CONFIRMED, ORDER_CREATED,
    PAYMENT_FAILED, PAYMENT_REFUNDED, PAYMENT_SUCCEEDED,
};
use contracts::topology::{ALL_CONSUMERS, DLQ, dead_letter_subject};
use futures::StreamExt;
use inventory_service::domain::ReservationStatus;
use inventory_service::storage::{HeldStock, ReservationOutcome as Reservation, StockLedger};
use order_service::domain::OrderStatus;
use order_service::storage::{OrderOutcome as Order, TimelineCount};
use payment_service::domain::Status as PaymentStatus;
use payment_service::storage::PaymentOutcome as Payment;
use platform::config::redact;
use platform::db::{Db, SqlError, format_us};
use platform::nats::NatsAuth;
use platform::telemetry::error_chain;
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What verify checks, for `--help`: the names are the ones violations are reported under.
const RULES_HELP: &str = "\
Reads order-service's, inventory-service's and payment-service's databases (read-only), the gateway
ledger and the broker's consumers, and checks:
  quiet                      every service's outbox is published and every consumer has nothing
                             pending or unacknowledged (run verify once the system is quiet)
  no-dead-letters            the DLQ stream is empty (unless --allow-dead-letters)
  settled                    every order is confirmed or cancelled, none still pending
  confirmed-charged          a confirmed order has exactly one succeeded, unrefunded charge, for its total
  confirmed-stock-sold       ... its reservation is committed, for the same total
  confirmed-paid             ... its payment succeeded, for the same amount
  cancelled-not-charged      a cancelled order has no net charge (every charge of it refunded)
  cancelled-stock-released   ... nothing reserved or sold for it
  cancelled-payment-settled  ... its payment, if any, ended without holding money
  stock-conserved            for every product, available + reserved + sold = its starting stock
  stock-reserved             ... reserved = the units its reservations still hold
  stock-sold                 ... sold = the units of its committed reservations
  event-once                 no order has an event (or both of two outcomes) emitted twice
  charge-once                no order was charged more than once
  charge-has-order           no money is held for an order that order-service does not know
  charge-before-cancel       no charge was made after its order was cancelled

Exit status: 0 no violation, 1 violations (each printed), 2 the data could not be read.";

/// Exit code when the data could not be read: nothing was checked, which is not the same as a violation.
pub const EXIT_UNREADABLE: u8 = 2;
/// An operator waits for this command: an unreachable database should fail fast, not hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Check that the system's data is consistent: run it when the system is quiet (no order in flight).
/// The rules are listed in [`RULES_HELP`], which `--help` shows.
#[derive(Debug, clap::Args)]
#[command(after_help = RULES_HELP)]
pub struct Args {
    /// Folder where `orderflow up` keeps its SQLite databases (order.db, inventory.db, payment.db).
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "./.orderflow")]
    pub data_dir: PathBuf,
    /// A postgres:// URL shared by the three services, as given to `orderflow up --database-url`: each
    /// service's tables are read from its own schema ("order", "inventory", "payment").
    #[arg(long, env = "ORDERFLOW_UP_DATABASE_URL", value_parser = platform::config::DATABASE_URL)]
    pub database_url: Option<String>,
    /// order-service's database. [default: --database-url, else sqlite://<data-dir>/order.db?mode=ro]
    #[arg(long, env = "ORDERFLOW_VERIFY_ORDER_DB", value_parser = platform::config::DATABASE_URL)]
    pub order_db: Option<String>,
    /// inventory-service's database. [default: --database-url, else sqlite://<data-dir>/inventory.db?mode=ro]
    #[arg(long, env = "ORDERFLOW_VERIFY_INVENTORY_DB", value_parser = platform::config::DATABASE_URL)]
    pub inventory_db: Option<String>,
    /// payment-service's database. [default: --database-url, else sqlite://<data-dir>/payment.db?mode=ro]
    #[arg(long, env = "ORDERFLOW_VERIFY_PAYMENT_DB", value_parser = platform::config::DATABASE_URL)]
    pub payment_db: Option<String>,
    /// The --http-port-base that `orderflow up` runs with: the gateway simulator listens on +3.
    #[arg(long, env = "ORDERFLOW_HTTP_PORT_BASE", default_value_t = DEFAULT_HTTP_PORT_BASE)]
    pub http_port_base: u16,
    /// The gateway simulator's base URL. [default: http://127.0.0.1:<http-port-base + 3>]
    #[arg(long, env = "ORDERFLOW_GATEWAY_URL", value_parser = platform::config::HTTP_URL)]
    pub gateway_url: Option<String>,
    /// The NATS server the services use: verify asks it whether every consumer has caught up and
    /// whether anything was dead-lettered.
    #[arg(long, env = "ORDERFLOW_NATS_URL", default_value = DEFAULT_NATS_URL,
        value_parser = platform::config::NATS_URLS)]
    pub nats_url: String,
    /// [default: the `operator` user `orderflow up` saved in --data-dir, if any]
    #[command(flatten)]
    pub nats_auth: NatsAuth,
    /// Do not count dead letters as a violation (they are still reported): for a system where some
    /// messages were set aside on purpose and are being looked after.
    #[arg(long)]
    pub allow_dead_letters: bool,
    /// Print one JSON object (`ok`, `orders`, `products`, `violations`) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What verify found: the data it read and every place where it disagrees.
#[derive(Debug, Clone)]
pub struct Verdict {
    snapshot: Snapshot,
    violations: Vec<Violation>,
}

impl Verdict {
    /// No violation: the system's data tells one consistent story.
    pub fn is_consistent(&self) -> bool {
        self.violations.is_empty()
    }

    /// One line per violation, then the summary.
    pub fn text_lines(&self) -> Vec<String> {
        report_text(&self.snapshot, &self.violations)
    }

    /// One object: `ok`, `orders`, `products`, `dead_letters`, `violations`.
    pub fn to_json(&self) -> serde_json::Value {
        report_json(&self.snapshot, &self.violations)
    }

    /// Dead letters that were allowed (`--allow-dead-letters`) and so are not a violation, said aside.
    pub fn allowed_dead_letters(&self) -> Option<String> {
        let total: usize = self.snapshot.dead_letters.iter().map(|(_, n)| n).sum();
        let reported = self
            .violations
            .iter()
            .any(|v| v.rule == Rule::NoDeadLetters);
        (total > 0 && !reported).then(|| {
            format!(
                "note: {} in DLQ, allowed by --allow-dead-letters",
                plural(total, "dead letter")
            )
        })
    }
}

/// Reads everything and checks it. `Err` when the data could not be read: nothing was checked, which
/// the exit code tells apart from a violation ([`EXIT_UNREADABLE`]).
pub async fn verify(args: &Args) -> Result<Verdict, Unreadable> {
    let sources = Sources::from_args(args)?;
    let snapshot = read_snapshot(&sources).await?;
    let violations = check(&snapshot, args.allow_dead_letters);
    Ok(Verdict {
        snapshot,
        violations,
    })
}

// ---------------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------------

/// Everything the rules look at, as plain rows.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// Unpublished outbox rows, by service.
    unpublished: Vec<(&'static str, i64)>,
    consumers: Vec<ConsumerState>,
    /// Dead letters in the DLQ stream, by consumer.
    dead_letters: Vec<(&'static str, usize)>,
    orders: Vec<Order>,
    reservations: Vec<Reservation>,
    held: Vec<HeldStock>,
    products: Vec<StockLedger>,
    payments: Vec<Payment>,
    charges: Vec<Charge>,
    refunds: Vec<Refund>,
    events: Vec<TimelineCount>,
}

/// What the broker says about one durable consumer; `None` when it does not exist.
#[derive(Debug, Clone)]
struct ConsumerState {
    name: &'static str,
    backlog: Option<Backlog>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backlog {
    /// Messages not yet delivered.
    pending: u64,
    /// Messages delivered and not yet acknowledged.
    unacknowledged: usize,
}

/// A charge in the gateway ledger (`GET /v1/charges`).
#[derive(Debug, Clone, Deserialize)]
struct Charge {
    id: String,
    status: String,
    amount_cents: i64,
    order_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
}

/// A refund in the gateway ledger (`GET /v1/refunds`); `charge` is the refunded charge's id.
#[derive(Debug, Clone, Deserialize)]
struct Refund {
    charge: String,
    amount_cents: i64,
}

/// Events that record a decision about an order: each is made once, so emitting one twice means an
/// input was processed twice.
const ONCE_PER_ORDER: [&str; 8] = [
    ORDER_CREATED,
    ORDER_CONFIRMED,
    ORDER_CANCELLED,
    INVENTORY_RESERVED,
    INVENTORY_REJECTED,
    PAYMENT_SUCCEEDED,
    PAYMENT_FAILED,
    PAYMENT_REFUNDED,
];

/// Outcomes that exclude each other: an order is confirmed or cancelled, reserved or rejected.
const EXCLUSIVE_PER_ORDER: [(&str, &str); 2] = [
    (ORDER_CONFIRMED, ORDER_CANCELLED),
    (INVENTORY_RESERVED, INVENTORY_REJECTED),
];

/// Payment statuses that hold money or may still move it: a cancelled order's payment must not end in one.
const UNSETTLED_PAYMENT: [PaymentStatus; 4] = [
    PaymentStatus::Waiting,
    PaymentStatus::Charging,
    PaymentStatus::Succeeded,
    PaymentStatus::Refunding,
];

contracts::text_enum! {
    /// The rules, by the names `verify --help` lists and violations are reported under.
    enum Rule {
        Quiet => "quiet",
        NoDeadLetters => "no-dead-letters",
        Settled => "settled",
        ConfirmedCharged => "confirmed-charged",
        ConfirmedStockSold => "confirmed-stock-sold",
        ConfirmedPaid => "confirmed-paid",
        CancelledNotCharged => "cancelled-not-charged",
        CancelledStockReleased => "cancelled-stock-released",
        CancelledPaymentSettled => "cancelled-payment-settled",
        StockConserved => "stock-conserved",
        StockReserved => "stock-reserved",
        StockSold => "stock-sold",
        EventOnce => "event-once",
        ChargeOnce => "charge-once",
        ChargeHasOrder => "charge-has-order",
        ChargeBeforeCancel => "charge-before-cancel",
    }
}

contracts::text_enum! {
    /// What a violation is about.
    enum Kind {
        /// A service (its outbox).
        Service => "service",
        /// A durable consumer on the broker (its backlog, its dead letters).
        Consumer => "consumer",
        Order => "order",
        Product => "product",
    }
}

/// One broken rule: about which order or product, which rule, and what was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    kind: Kind,
    id: String,
    rule: Rule,
    observed: String,
}

/// The snapshot's rows, looked up by order and product.
struct Index<'a> {
    orders: BTreeMap<&'a str, &'a Order>,
    reservations: HashMap<&'a str, &'a Reservation>,
    payments: HashMap<&'a str, &'a Payment>,
    /// Succeeded charges by order, oldest first (declined ones never took money).
    charges: HashMap<&'a str, Vec<&'a Charge>>,
    /// Every charge by order, declined ones too.
    every_charge: HashMap<&'a str, Vec<&'a Charge>>,
    /// Refunded cents by charge id.
    refunded: HashMap<&'a str, i64>,
    /// Event counts by order, then by event type.
    events: HashMap<&'a str, BTreeMap<&'a str, i64>>,
    /// Held units by (product, reservation status).
    held: HashMap<(&'a str, ReservationStatus), i64>,
}

impl<'a> Index<'a> {
    fn new(snapshot: &'a Snapshot) -> Index<'a> {
        let mut index = Index {
            orders: snapshot
                .orders
                .iter()
                .map(|o| (o.order_id.as_str(), o))
                .collect(),
            reservations: snapshot
                .reservations
                .iter()
                .map(|r| (r.order_id.as_str(), r))
                .collect(),
            payments: snapshot
                .payments
                .iter()
                .map(|p| (p.order_id.as_str(), p))
                .collect(),
            charges: HashMap::new(),
            every_charge: HashMap::new(),
            refunded: HashMap::new(),
            events: HashMap::new(),
            held: HashMap::new(),
        };
        for charge in &snapshot.charges {
            let Some(order_id) = &charge.order_id else {
                continue;
            };
            index.every_charge.entry(order_id).or_default().push(charge);
            if charge.status == "succeeded" {
                index.charges.entry(order_id).or_default().push(charge);
            }
        }
        for refund in &snapshot.refunds {
            *index.refunded.entry(&refund.charge).or_default() += refund.amount_cents;
        }
        for event in &snapshot.events {
            *index
                .events
                .entry(&event.order_id)
                .or_default()
                .entry(&event.event_type)
                .or_default() += event.count;
        }
        for held in &snapshot.held {
            *index
                .held
                .entry((&held.product_id, held.status))
                .or_default() += held.quantity;
        }
        index
    }

    fn charges_of(&self, order_id: &str) -> &[&'a Charge] {
        self.charges.get(order_id).map_or(&[], Vec::as_slice)
    }

    fn every_charge_of(&self, order_id: &str) -> &[&'a Charge] {
        self.every_charge.get(order_id).map_or(&[], Vec::as_slice)
    }

    fn refunded(&self, charge: &Charge) -> i64 {
        self.refunded.get(charge.id.as_str()).copied().unwrap_or(0)
    }

    /// What the order's succeeded charges still hold, refunds deducted.
    fn net_charged(&self, order_id: &str) -> i64 {
        self.charges_of(order_id)
            .iter()
            .map(|charge| charge.amount_cents - self.refunded(charge))
            .sum()
    }

    /// The order's succeeded charges as "ch_1 (2598 cents), ch_2 (2598 cents, refunded)", or "none".
    fn describe_charges(&self, order_id: &str) -> String {
        let charges = self.charges_of(order_id);
        if charges.is_empty() {
            return "none".to_owned();
        }
        charges
            .iter()
            .map(|charge| match self.refunded(charge) {
                0 => format!("{} ({} cents)", charge.id, charge.amount_cents),
                refunded if refunded == charge.amount_cents => {
                    format!("{} ({} cents, refunded)", charge.id, charge.amount_cents)
                }
                refunded => format!(
                    "{} ({} cents, {refunded} refunded)",
                    charge.id, charge.amount_cents
                ),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every violation in the snapshot: the system's quiet first, then orders (by id, each order's
/// together), then products.
fn check(snapshot: &Snapshot, allow_dead_letters: bool) -> Vec<Violation> {
    let index = Index::new(snapshot);
    let mut found = check_quiet(snapshot, allow_dead_letters);
    // Events and charges may name orders that order-service does not have; they are checked too.
    let order_ids: BTreeSet<&str> = index
        .orders
        .keys()
        .copied()
        .chain(index.events.keys().copied())
        .chain(index.charges.keys().copied())
        .collect();
    for order_id in order_ids {
        let mut violate = |rule: Rule, observed: String| {
            found.push(Violation {
                kind: Kind::Order,
                id: order_id.to_owned(),
                rule,
                observed,
            });
        };
        match index.orders.get(order_id) {
            Some(order) => match order.status {
                OrderStatus::Confirmed => check_confirmed(order, &index, &mut violate),
                OrderStatus::Cancelled => check_cancelled(order, &index, &mut violate),
                OrderStatus::Pending => violate(Rule::Settled, "still pending".to_owned()),
            },
            None => {
                let net = index.net_charged(order_id);
                if net != 0 {
                    violate(
                        Rule::ChargeHasOrder,
                        format!(
                            "order-service has no such order, yet the gateway holds {net} cents for it: {}",
                            index.describe_charges(order_id)
                        ),
                    );
                }
            }
        }
        check_events(order_id, &index, &mut violate);
        let charges = index.charges_of(order_id);
        if charges.len() > 1 {
            violate(
                Rule::ChargeOnce,
                format!(
                    "charged {} times: {}",
                    charges.len(),
                    index.describe_charges(order_id)
                ),
            );
        }
    }
    for product in &snapshot.products {
        check_product(product, &index, &mut |rule, observed| {
            found.push(Violation {
                kind: Kind::Product,
                id: product.product_id.clone(),
                rule,
                observed,
            });
        });
    }
    found
}

/// Is the system quiet, so that what follows judges finished sagas?
fn check_quiet(snapshot: &Snapshot, allow_dead_letters: bool) -> Vec<Violation> {
    let mut found = Vec::new();
    for (service, rows) in &snapshot.unpublished {
        if *rows > 0 {
            found.push(Violation {
                kind: Kind::Service,
                id: (*service).to_owned(),
                rule: Rule::Quiet,
                observed: format!(
                    "its outbox holds {} not yet published; is its relay running and NATS reachable?",
                    plural(usize::try_from(*rows).unwrap_or(usize::MAX), "event")
                ),
            });
        }
    }
    for consumer in &snapshot.consumers {
        let observed = match consumer.backlog {
            None => Some("it does not exist on the broker: its service never started, or it was deleted and not declared again".to_owned()),
            Some(Backlog { pending: 0, unacknowledged: 0 }) => None,
            Some(backlog) => Some(format!(
                "{} pending and {} unacknowledged; wait until the system is quiet",
                plural(usize::try_from(backlog.pending).unwrap_or(usize::MAX), "message"),
                backlog.unacknowledged
            )),
        };
        if let Some(observed) = observed {
            found.push(Violation {
                kind: Kind::Consumer,
                id: consumer.name.to_owned(),
                rule: Rule::Quiet,
                observed,
            });
        }
    }
    if !allow_dead_letters {
        for (consumer, letters) in &snapshot.dead_letters {
            found.push(Violation {
                kind: Kind::Consumer,
                id: (*consumer).to_owned(),
                rule: Rule::NoDeadLetters,
                observed: format!(
                    "{} in DLQ ({}); inspect them with `orderflow dlq list --consumer {consumer}`, \
                     or pass --allow-dead-letters",
                    plural(*letters, "dead letter"),
                    dead_letter_subject(consumer)
                ),
            });
        }
    }
    found
}

fn check_confirmed(order: &Order, index: &Index, violate: &mut impl FnMut(Rule, String)) {
    let id = order.order_id.as_str();
    let unrefunded: Vec<&Charge> = index
        .charges_of(id)
        .iter()
        .copied()
        .filter(|charge| index.refunded(charge) == 0)
        .collect();
    match order.total_cents {
        None => violate(
            Rule::ConfirmedCharged,
            "confirmed without a total".to_owned(),
        ),
        Some(total) => {
            if !matches!(unrefunded.as_slice(), [charge] if charge.amount_cents == total) {
                violate(
                    Rule::ConfirmedCharged,
                    format!(
                        "expected one succeeded, unrefunded charge of {total} cents; the gateway has {}",
                        index.describe_charges(id)
                    ),
                );
            }
        }
    }
    match index.reservations.get(id) {
        None => violate(
            Rule::ConfirmedStockSold,
            "inventory-service has no reservation for it".to_owned(),
        ),
        Some(reservation) if reservation.status != ReservationStatus::Committed => violate(
            Rule::ConfirmedStockSold,
            format!(
                "its reservation is '{}', expected 'committed'",
                reservation.status
            ),
        ),
        Some(reservation) if reservation.total_cents != order.total_cents => violate(
            Rule::ConfirmedStockSold,
            format!(
                "its reservation's total is {}, the order's {}",
                cents(reservation.total_cents),
                cents(order.total_cents)
            ),
        ),
        Some(_) => {}
    }
    match index.payments.get(id) {
        None => violate(
            Rule::ConfirmedPaid,
            "payment-service has no payment for it".to_owned(),
        ),
        Some(payment) if payment.status != PaymentStatus::Succeeded => violate(
            Rule::ConfirmedPaid,
            format!("its payment is '{}', expected 'succeeded'", payment.status),
        ),
        Some(payment) if payment.amount_cents != order.total_cents => violate(
            Rule::ConfirmedPaid,
            format!(
                "its payment's amount is {}, the order's total {}",
                cents(payment.amount_cents),
                cents(order.total_cents)
            ),
        ),
        Some(_) => {}
    }
}

fn check_cancelled(order: &Order, index: &Index, violate: &mut impl FnMut(Rule, String)) {
    let id = order.order_id.as_str();
    let cancelled_at_us = order.updated_at_us;
    for charge in index.every_charge_of(id) {
        let created_at_us = platform::db::to_us(charge.created_at);
        if created_at_us > cancelled_at_us {
            violate(
                Rule::ChargeBeforeCancel,
                format!(
                    "charge {} ({} cents, {}) was made at {}, after the order was cancelled at {}",
                    charge.id,
                    charge.amount_cents,
                    charge.status,
                    format_us(created_at_us),
                    format_us(cancelled_at_us)
                ),
            );
        }
    }
    let net = index.net_charged(id);
    if net != 0 {
        violate(
            Rule::CancelledNotCharged,
            format!(
                "net charge of {net} cents; the gateway has {}",
                index.describe_charges(id)
            ),
        );
    }
    if let Some(reservation) = index.reservations.get(id) {
        match reservation.status {
            ReservationStatus::Reserved => violate(
                Rule::CancelledStockReleased,
                "its reservation still holds stock ('reserved'), expected it released".to_owned(),
            ),
            ReservationStatus::Committed => violate(
                Rule::CancelledStockReleased,
                "its reservation is 'committed': stock was sold for a cancelled order".to_owned(),
            ),
            _ => {}
        }
    }
    if let Some(payment) = index.payments.get(id)
        && UNSETTLED_PAYMENT.contains(&payment.status)
    {
        violate(
            Rule::CancelledPaymentSettled,
            format!(
                "its payment is '{}', expected cancelled, declined, failed or refunded",
                payment.status
            ),
        );
    }
}

fn check_events(order_id: &str, index: &Index, violate: &mut impl FnMut(Rule, String)) {
    let Some(events) = index.events.get(order_id) else {
        return;
    };
    let count = |event_type: &str| events.get(event_type).copied().unwrap_or(0);
    for event_type in ONCE_PER_ORDER {
        let n = count(event_type);
        if n > 1 {
            violate(
                Rule::EventOnce,
                format!("{event_type} was emitted {n} times"),
            );
        }
    }
    for (one, other) in EXCLUSIVE_PER_ORDER {
        if count(one) > 0 && count(other) > 0 {
            violate(
                Rule::EventOnce,
                format!("both {one} and {other} were emitted"),
            );
        }
    }
}

fn check_product(product: &StockLedger, index: &Index, violate: &mut impl FnMut(Rule, String)) {
    let id = product.product_id.as_str();
    let total = product.available + product.reserved + product.sold;
    if total != product.baseline {
        violate(
            Rule::StockConserved,
            format!(
                "available {} + reserved {} + sold {} = {total}, but its starting stock is {}",
                product.available, product.reserved, product.sold, product.baseline
            ),
        );
    }
    let held = |status| index.held.get(&(id, status)).copied().unwrap_or(0);
    let reserved = held(ReservationStatus::Reserved);
    if product.reserved != reserved {
        violate(
            Rule::StockReserved,
            format!(
                "reserved is {}, but its reservations still hold {reserved}",
                product.reserved
            ),
        );
    }
    let committed = held(ReservationStatus::Committed);
    if product.sold != committed {
        violate(
            Rule::StockSold,
            format!(
                "sold is {}, but its committed reservations hold {committed}",
                product.sold
            ),
        );
    }
}

fn cents(value: Option<i64>) -> String {
    value.map_or_else(|| "none".to_owned(), |cents| format!("{cents} cents"))
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// One line per violation, then the summary.
fn report_text(snapshot: &Snapshot, violations: &[Violation]) -> Vec<String> {
    let mut lines: Vec<String> = violations
        .iter()
        .map(|v| {
            format!(
                "{} {} violates {}: {}",
                v.kind.as_str(),
                v.id,
                v.rule.as_str(),
                v.observed
            )
        })
        .collect();
    let checked = format!(
        "checked {}, {}",
        plural(snapshot.orders.len(), "order"),
        plural(snapshot.products.len(), "product")
    );
    lines.push(if violations.is_empty() {
        format!("{checked}: OK")
    } else {
        format!("{checked}: {}", plural(violations.len(), "violation"))
    });
    lines
}

fn report_json(snapshot: &Snapshot, violations: &[Violation]) -> serde_json::Value {
    json!({
        "ok": violations.is_empty(),
        "orders": snapshot.orders.len(),
        "products": snapshot.products.len(),
        "dead_letters": snapshot.dead_letters.iter().map(|(_, n)| n).sum::<usize>(),
        "violations": violations.iter().map(|v| json!({
            "kind": v.kind.as_str(),
            "id": v.id,
            "rule": v.rule.as_str(),
            "observed": v.observed,
        })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------------------
// Reading the data
// ---------------------------------------------------------------------------------------------------

/// Why nothing could be checked, and what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    what: String,
    cause: String,
    advice: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot read {}: {}", self.what, self.cause)?;
        if !self.advice.is_empty() {
            write!(f, "\n{}", self.advice)?;
        }
        Ok(())
    }
}

/// One service's database as verify needs to know it.
#[derive(Debug, Clone, Copy)]
struct Store {
    service: &'static str,
    /// The SQLite file stem under the data dir and the PostgreSQL schema.
    store: &'static str,
    /// The flag that names this database explicitly.
    flag: &'static str,
}

const ORDER_STORE: Store = Store {
    service: order_service::INFO.name,
    store: order_service::INFO.store,
    flag: "--order-db",
};
const INVENTORY_STORE: Store = Store {
    service: inventory_service::INFO.name,
    store: inventory_service::INFO.store,
    flag: "--inventory-db",
};
const PAYMENT_STORE: Store = Store {
    service: payment_service::INFO.name,
    store: payment_service::INFO.store,
    flag: "--payment-db",
};

impl Store {
    fn unreadable(&self, url: &str, cause: String) -> Unreadable {
        Unreadable {
            what: format!("{}'s database {}", self.service, redact(url)),
            cause,
            advice: format!(
                "Point {} (or --data-dir, or --database-url for PostgreSQL) at the database {} uses; \
                 its tables exist once {} of this version has started against it.",
                self.flag, self.service, self.service
            ),
        }
    }

    /// The service's database, read-only: on PostgreSQL in the service's schema, as the service's own
    /// connections, so the same unqualified SQL reads both backends.
    async fn open(&self, url: &str) -> Result<Db, Unreadable> {
        if let Some(path) = platform::db::sqlite_file(url)
            && !Path::new(path).exists()
        {
            // Said here, in the operator's words, before SQLite answers that it cannot open it.
            return Err(self.unreadable(url, format!("{path} does not exist")));
        }
        Db::open_read_only(url, self.store, CONNECT_TIMEOUT)
            .await
            .map_err(|error| self.unreadable(url, error_chain(&error)))
    }
}

/// Where the data comes from, decided from the flags before anything is read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sources {
    order_db: String,
    inventory_db: String,
    payment_db: String,
    gateway: String,
    nats: String,
    nats_auth: NatsAuth,
}

impl Sources {
    /// An explicit URL wins, then --database-url, then the SQLite file that `orderflow up` keeps in the
    /// data dir, opened read-only.
    fn from_args(args: &Args) -> Result<Sources, Unreadable> {
        let bad_flags = |cause: String| Unreadable {
            what: "the command line".to_owned(),
            cause,
            advice: "See `orderflow verify --help`.".to_owned(),
        };
        let ports =
            Ports::from_base(args.http_port_base).map_err(|e| bad_flags(format!("{e:#}")))?;
        let data_dir = args
            .data_dir
            .to_str()
            .filter(|dir| !dir.contains('?'))
            .ok_or_else(|| {
                bad_flags(format!(
                    "the data dir {} cannot be used in a database URL (it must be valid UTF-8 without '?')",
                    args.data_dir.display()
                ))
            })?;
        let url = |explicit: &Option<String>, store: Store| {
            explicit
                .clone()
                .or_else(|| args.database_url.clone())
                .unwrap_or_else(|| {
                    format!(
                        "sqlite://{}?mode=ro",
                        PathBuf::from(data_dir)
                            .join(format!("{}.db", store.store))
                            .display()
                    )
                })
        };
        Ok(Sources {
            order_db: url(&args.order_db, ORDER_STORE),
            inventory_db: url(&args.inventory_db, INVENTORY_STORE),
            payment_db: url(&args.payment_db, PAYMENT_STORE),
            gateway: match &args.gateway_url {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None => local_url(ports.gateway),
            },
            nats: args.nats_url.clone(),
            nats_auth: crate::admin::operator_nats_auth(&args.nats_auth, Some(&args.data_dir)),
        })
    }
}

async fn read_snapshot(sources: &Sources) -> Result<Snapshot, Unreadable> {
    let mut snapshot = Snapshot::default();

    let order = ORDER_STORE.open(&sources.order_db).await?;
    let read = read_orders(&order, &mut snapshot).await;
    order.close().await;
    read.map_err(|e| ORDER_STORE.unreadable(&sources.order_db, e.to_string()))?;

    let inventory = INVENTORY_STORE.open(&sources.inventory_db).await?;
    let read = read_inventory(&inventory, &mut snapshot).await;
    inventory.close().await;
    read.map_err(|e| INVENTORY_STORE.unreadable(&sources.inventory_db, e.to_string()))?;

    let payment = PAYMENT_STORE.open(&sources.payment_db).await?;
    let read = read_payments(&payment, &mut snapshot).await;
    payment.close().await;
    read.map_err(|e| PAYMENT_STORE.unreadable(&sources.payment_db, e.to_string()))?;

    read_ledger(&sources.gateway, &mut snapshot).await?;
    read_broker(&sources.nats, &sources.nats_auth, &mut snapshot).await?;
    Ok(snapshot)
}

/// How many events the service's outbox has not published yet.
async fn read_unpublished(
    db: &Db,
    service: &'static str,
    snapshot: &mut Snapshot,
) -> Result<(), SqlError> {
    let backlog = platform::outbox::backlog(db).await?;
    snapshot.unpublished.push((
        service,
        i64::try_from(backlog.unpublished).unwrap_or(i64::MAX),
    ));
    Ok(())
}

async fn read_orders(db: &Db, snapshot: &mut Snapshot) -> Result<(), SqlError> {
    snapshot.orders = order_service::storage::order_outcomes(db).await?;
    snapshot.events = order_service::storage::timeline_counts(db).await?;
    read_unpublished(db, ORDER_STORE.service, snapshot).await
}

async fn read_inventory(db: &Db, snapshot: &mut Snapshot) -> Result<(), SqlError> {
    snapshot.products = inventory_service::storage::stock_ledgers(db).await?;
    snapshot.reservations = inventory_service::storage::reservation_outcomes(db).await?;
    snapshot.held = inventory_service::storage::held_stock(db).await?;
    read_unpublished(db, INVENTORY_STORE.service, snapshot).await
}

async fn read_payments(db: &Db, snapshot: &mut Snapshot) -> Result<(), SqlError> {
    snapshot.payments = payment_service::storage::payment_outcomes(db).await?;
    read_unpublished(db, PAYMENT_STORE.service, snapshot).await
}

async fn read_ledger(gateway: &str, snapshot: &mut Snapshot) -> Result<(), Unreadable> {
    let client = http_client().map_err(|error| Unreadable {
        what: "the gateway ledger".to_owned(),
        cause: format!("{error:#}"),
        advice: String::new(),
    })?;
    snapshot.charges = fetch(&client, &format!("{gateway}/v1/charges")).await?;
    snapshot.refunds = fetch(&client, &format!("{gateway}/v1/refunds")).await?;
    Ok(())
}

/// Every consumer's backlog, and the dead letters by consumer.
async fn read_broker(
    url: &str,
    auth: &NatsAuth,
    snapshot: &mut Snapshot,
) -> Result<(), Unreadable> {
    let unreadable = |cause: String| Unreadable {
        what: format!("the broker at {}", redact(url)),
        cause,
        advice: "Point --nats-url at the NATS server the services use (`orderflow up` runs one on \
                 127.0.0.1:4223)."
            .to_owned(),
    };
    let client = auth
        .apply(async_nats::ConnectOptions::new())
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(platform::config::nats_servers(url))
        .await
        .map_err(|error| unreadable(error.to_string()))?;
    let js = async_nats::jetstream::new(client);
    for spec in ALL_CONSUMERS {
        let backlog = match js.get_stream(spec.stream).await {
            Ok(stream) => match stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(spec.name)
                .await
            {
                Ok(mut consumer) => {
                    let info = consumer
                        .info()
                        .await
                        .map_err(|error| unreadable(error_chain(&error)))?;
                    Some(Backlog {
                        pending: info.num_pending,
                        unacknowledged: info.num_ack_pending,
                    })
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        snapshot.consumers.push(ConsumerState {
            name: spec.name,
            backlog,
        });
    }
    if let Ok(dlq) = js.get_stream(DLQ.name).await {
        let mut subjects = dlq
            .info_with_subjects("dlq.>")
            .await
            .map_err(|error| unreadable(error_chain(&error)))?;
        let mut counts = BTreeMap::new();
        while let Some(subject) = subjects.next().await {
            let (subject, count) = subject.map_err(|error| unreadable(error_chain(&error)))?;
            counts.insert(subject, count);
        }
        for spec in ALL_CONSUMERS {
            if let Some(&count) = counts.get(&dead_letter_subject(spec.name))
                && count > 0
            {
                snapshot.dead_letters.push((spec.name, count));
            }
        }
    }
    Ok(())
}

async fn fetch<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Result<T, Unreadable> {
    let unreadable = |cause: String| Unreadable {
        what: format!("the gateway ledger at {url}"),
        cause,
        advice: "Start the gateway simulator (`orderflow up` runs it) or point --gateway-url \
                 (or --http-port-base) at it."
            .to_owned(),
    };
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|error| unreadable(error_chain(&error)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(unreadable(format!("answered {status}")));
    }
    response
        .json()
        .await
        .map_err(|error| unreadable(error_chain(&error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the test's orders ended; their charges are made a year before.
    const ENDED: time::OffsetDateTime = time::macros::datetime!(2031-01-01 00:00 UTC);
    const CHARGED: time::OffsetDateTime = time::macros::datetime!(2030-01-01 00:00 UTC);

    fn order(id: &str, status: &str, total: Option<i64>) -> Order {
        Order {
            order_id: id.into(),
            status: status.parse().unwrap(),
            total_cents: total,
            updated_at_us: platform::db::to_us(ENDED),
        }
    }

    fn reservation(id: &str, status: &str, total: Option<i64>) -> Reservation {
        Reservation {
            order_id: id.into(),
            status: status.parse().unwrap(),
            total_cents: total,
        }
    }

    fn payment(id: &str, status: &str, amount: Option<i64>) -> Payment {
        Payment {
            order_id: id.into(),
            status: status.parse().unwrap(),
            amount_cents: amount,
        }
    }

    fn charge(id: &str, order_id: &str, status: &str, amount: i64) -> Charge {
        Charge {
            id: id.into(),
            status: status.into(),
            amount_cents: amount,
            order_id: Some(order_id.into()),
            created_at: CHARGED,
        }
    }

    fn events(order_id: &str, types: &[&str]) -> Vec<TimelineCount> {
        types
            .iter()
            .map(|t| TimelineCount {
                order_id: order_id.into(),
                event_type: (*t).into(),
                count: 1,
            })
            .collect()
    }

    fn held(product: &str, status: &str, quantity: i64) -> HeldStock {
        HeldStock {
            product_id: product.into(),
            status: status.parse().unwrap(),
            quantity,
        }
    }

    /// What a quiet system holds after the demo's three orders: one confirmed (2 × sku at 1299), one
    /// cancelled for stock, one cancelled because the card was declined (after its stock was reserved).
    fn consistent() -> Snapshot {
        let mut all_events = Vec::new();
        all_events.extend(events(
            "o-ok",
            &[
                ORDER_CREATED,
                INVENTORY_RESERVED,
                PAYMENT_SUCCEEDED,
                ORDER_CONFIRMED,
            ],
        ));
        all_events.extend(events(
            "o-short",
            &[ORDER_CREATED, INVENTORY_REJECTED, ORDER_CANCELLED],
        ));
        all_events.extend(events(
            "o-declined",
            &[
                ORDER_CREATED,
                INVENTORY_RESERVED,
                PAYMENT_FAILED,
                ORDER_CANCELLED,
            ],
        ));
        Snapshot {
            unpublished: vec![
                ("order-service", 0),
                ("inventory-service", 0),
                ("payment-service", 0),
            ],
            consumers: ALL_CONSUMERS
                .iter()
                .map(|spec| ConsumerState {
                    name: spec.name,
                    backlog: Some(Backlog {
                        pending: 0,
                        unacknowledged: 0,
                    }),
                })
                .collect(),
            dead_letters: Vec::new(),
            orders: vec![
                order("o-ok", "confirmed", Some(2598)),
                order("o-short", "cancelled", None),
                order("o-declined", "cancelled", Some(1299)),
            ],
            reservations: vec![
                reservation("o-ok", "committed", Some(2598)),
                reservation("o-short", "rejected", None),
                reservation("o-declined", "released", Some(1299)),
            ],
            held: vec![held("sku", "committed", 2), held("sku", "released", 1)],
            products: vec![StockLedger {
                product_id: "sku".into(),
                available: 8,
                reserved: 0,
                sold: 2,
                baseline: 10,
            }],
            payments: vec![
                payment("o-ok", "succeeded", Some(2598)),
                payment("o-short", "cancelled", None),
                payment("o-declined", "declined", Some(1299)),
            ],
            charges: vec![
                charge("ch_ok", "o-ok", "succeeded", 2598),
                charge("ch_declined", "o-declined", "declined", 1299),
            ],
            refunds: Vec::new(),
            events: all_events,
        }
    }

    fn rules(snapshot: &Snapshot) -> Vec<(String, &'static str)> {
        check(snapshot, false)
            .into_iter()
            .map(|v| (v.id, v.rule.as_str()))
            .collect()
    }

    fn pairs(expected: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
        expected
            .iter()
            .map(|(id, rule)| ((*id).to_owned(), *rule))
            .collect()
    }

    fn set_order_status(snapshot: &mut Snapshot, id: &str, status: &str) {
        for o in snapshot.orders.iter_mut().filter(|o| o.order_id == id) {
            o.status = status.parse().unwrap();
        }
    }

    fn set_reservation_status(snapshot: &mut Snapshot, id: &str, status: &str) {
        for r in snapshot
            .reservations
            .iter_mut()
            .filter(|r| r.order_id == id)
        {
            r.status = status.parse().unwrap();
        }
    }

    fn set_payment_status(snapshot: &mut Snapshot, id: &str, status: &str) {
        for p in snapshot.payments.iter_mut().filter(|p| p.order_id == id) {
            p.status = status.parse().unwrap();
        }
    }

    #[test]
    fn a_system_still_at_work_is_not_quiet() {
        let mut snapshot = consistent();
        snapshot.unpublished[1].1 = 3;
        snapshot.consumers[0].backlog = Some(Backlog {
            pending: 7,
            unacknowledged: 2,
        });
        snapshot.consumers[1].backlog = None;
        let violations = check(&snapshot, false);
        let found: Vec<(Kind, &str, Rule)> = violations
            .iter()
            .map(|v| (v.kind, v.id.as_str(), v.rule))
            .collect();
        assert_eq!(
            found,
            [
                (Kind::Service, "inventory-service", Rule::Quiet),
                (Kind::Consumer, ALL_CONSUMERS[0].name, Rule::Quiet),
                (Kind::Consumer, ALL_CONSUMERS[1].name, Rule::Quiet),
            ]
        );
        assert!(
            violations[0].observed.contains("3 events"),
            "{violations:?}"
        );
        assert!(
            violations[1]
                .observed
                .contains("7 messages pending and 2 unacknowledged")
        );
        assert!(violations[2].observed.contains("does not exist"));
    }

    #[test]
    fn dead_letters_fail_the_run_unless_allowed() {
        let mut snapshot = consistent();
        snapshot.dead_letters = vec![("inventory-orders", 2)];
        let violations = check(&snapshot, false);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].rule, Rule::NoDeadLetters);
        assert_eq!(violations[0].id, "inventory-orders");
        assert!(
            violations[0]
                .observed
                .contains("2 dead letters in DLQ (dlq.inventory-orders)")
        );
        assert!(check(&snapshot, true).is_empty());
        let allowed = Verdict {
            violations: check(&snapshot, true),
            snapshot: snapshot.clone(),
        };
        assert!(allowed.is_consistent());
        assert_eq!(
            allowed.allowed_dead_letters().as_deref(),
            Some("note: 2 dead letters in DLQ, allowed by --allow-dead-letters")
        );
        let refused = Verdict {
            violations: check(&snapshot, false),
            snapshot,
        };
        assert_eq!(
            refused.allowed_dead_letters(),
            None,
            "reported as a violation instead"
        );
    }

    #[test]
    fn a_charge_made_after_its_order_was_cancelled_is_a_violation() {
        let mut snapshot = consistent();
        let mut late = charge("ch_late", "o-short", "succeeded", 500);
        late.created_at = ENDED + time::Duration::milliseconds(1);
        snapshot.charges.push(late);
        snapshot.refunds.push(Refund {
            charge: "ch_late".into(),
            amount_cents: 500,
        });
        // Refunded, so nothing is kept: still, the customer was charged after being told "cancelled".
        assert_eq!(
            rules(&snapshot),
            pairs(&[("o-short", "charge-before-cancel")])
        );
        let mut declined = consistent();
        let mut late = charge("ch_late", "o-short", "declined", 500);
        late.created_at = ENDED + time::Duration::seconds(5);
        declined.charges.push(late);
        assert_eq!(
            rules(&declined),
            pairs(&[("o-short", "charge-before-cancel")])
        );
    }

    #[test]
    fn a_consistent_system_has_no_violations() {
        let snapshot = consistent();
        assert_eq!(check(&snapshot, false), Vec::new());
        assert_eq!(
            report_text(&snapshot, &[]),
            ["checked 3 orders, 1 product: OK"]
        );
    }

    #[test]
    fn a_pending_order_is_not_settled() {
        let mut snapshot = consistent();
        snapshot.orders.push(order("o-new", "pending", None));
        let violations = check(&snapshot, false);
        assert_eq!(
            violations,
            [Violation {
                kind: Kind::Order,
                id: "o-new".into(),
                rule: Rule::Settled,
                observed: "still pending".into(),
            }]
        );
        assert_eq!(
            report_text(&snapshot, &violations),
            [
                "order o-new violates settled: still pending",
                "checked 4 orders, 1 product: 1 violation",
            ]
        );
    }

    #[test]
    fn a_confirmed_order_needs_exactly_one_unrefunded_charge_for_its_total() {
        let mut missing = consistent();
        missing.charges.retain(|c| c.id != "ch_ok");
        assert_eq!(rules(&missing), pairs(&[("o-ok", "confirmed-charged")]));

        let mut wrong_amount = consistent();
        wrong_amount.charges[0].amount_cents = 2597;
        assert_eq!(
            rules(&wrong_amount),
            pairs(&[("o-ok", "confirmed-charged")])
        );

        let mut refunded = consistent();
        refunded.refunds.push(Refund {
            charge: "ch_ok".into(),
            amount_cents: 2598,
        });
        let violations = check(&refunded, false);
        assert_eq!(violations.len(), 1);
        assert_eq!(
            violations[0].observed,
            "expected one succeeded, unrefunded charge of 2598 cents; the gateway has ch_ok (2598 cents, refunded)"
        );

        let mut twice = consistent();
        twice
            .charges
            .push(charge("ch_again", "o-ok", "succeeded", 2598));
        assert_eq!(
            rules(&twice),
            pairs(&[("o-ok", "confirmed-charged"), ("o-ok", "charge-once")])
        );
    }

    #[test]
    fn a_second_charge_refunded_still_counts_as_charging_twice() {
        let mut snapshot = consistent();
        snapshot
            .charges
            .push(charge("ch_again", "o-ok", "succeeded", 2598));
        snapshot.refunds.push(Refund {
            charge: "ch_again".into(),
            amount_cents: 2598,
        });
        assert_eq!(rules(&snapshot), pairs(&[("o-ok", "charge-once")]));
    }

    #[test]
    fn a_confirmed_order_has_its_stock_sold_and_its_payment_succeeded() {
        let mut snapshot = consistent();
        set_reservation_status(&mut snapshot, "o-ok", "reserved");
        set_payment_status(&mut snapshot, "o-ok", "refunded");
        assert_eq!(
            rules(&snapshot),
            pairs(&[("o-ok", "confirmed-stock-sold"), ("o-ok", "confirmed-paid")])
        );

        let mut absent = consistent();
        absent.reservations.retain(|r| r.order_id != "o-ok");
        absent.payments.retain(|p| p.order_id != "o-ok");
        assert_eq!(
            rules(&absent),
            pairs(&[("o-ok", "confirmed-stock-sold"), ("o-ok", "confirmed-paid")])
        );

        let mut amounts = consistent();
        amounts.reservations[0].total_cents = Some(1299);
        amounts.payments[0].amount_cents = Some(1299);
        assert_eq!(
            rules(&amounts),
            pairs(&[("o-ok", "confirmed-stock-sold"), ("o-ok", "confirmed-paid")])
        );
    }

    #[test]
    fn a_cancelled_order_keeps_no_money() {
        let mut charged = consistent();
        charged
            .charges
            .push(charge("ch_late", "o-declined", "succeeded", 1299));
        let violations = check(&charged, false);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].rule, Rule::CancelledNotCharged);
        assert_eq!(
            violations[0].observed,
            "net charge of 1299 cents; the gateway has ch_late (1299 cents)"
        );

        charged.refunds.push(Refund {
            charge: "ch_late".into(),
            amount_cents: 1299,
        });
        assert_eq!(check(&charged, false), Vec::new());
    }

    #[test]
    fn a_cancelled_order_holds_no_stock_and_no_payment_in_progress() {
        let mut snapshot = consistent();
        set_reservation_status(&mut snapshot, "o-declined", "reserved");
        set_reservation_status(&mut snapshot, "o-short", "committed");
        set_payment_status(&mut snapshot, "o-declined", "refunding");
        assert_eq!(
            rules(&snapshot),
            pairs(&[
                ("o-declined", "cancelled-stock-released"),
                ("o-declined", "cancelled-payment-settled"),
                ("o-short", "cancelled-stock-released"),
            ])
        );
    }

    #[test]
    fn no_unit_of_stock_appears_or_vanishes() {
        let mut snapshot = consistent();
        snapshot.products[0].sold += 1;
        let violations = check(&snapshot, false);
        assert_eq!(
            rules(&snapshot),
            pairs(&[("sku", "stock-conserved"), ("sku", "stock-sold")])
        );
        assert_eq!(
            report_text(&snapshot, &violations)[0],
            "product sku violates stock-conserved: available 8 + reserved 0 + sold 3 = 11, but its starting stock is 10"
        );
    }

    #[test]
    fn reserved_stock_matches_the_reservations_that_hold_it() {
        let mut snapshot = consistent();
        snapshot.products[0].available -= 1;
        snapshot.products[0].reserved += 1;
        assert_eq!(rules(&snapshot), pairs(&[("sku", "stock-reserved")]));

        snapshot.held.push(held("sku", "reserved", 1));
        snapshot.orders.push(order("o-open", "pending", None));
        assert_eq!(rules(&snapshot), pairs(&[("o-open", "settled")]));
    }

    #[test]
    fn an_event_emitted_twice_or_both_outcomes_is_a_violation() {
        let mut snapshot = consistent();
        snapshot.events.extend(events("o-ok", &[PAYMENT_SUCCEEDED]));
        snapshot.events.extend(events("o-ok", &[ORDER_CANCELLED]));
        snapshot
            .events
            .extend(events("o-short", &[INVENTORY_RESERVED]));
        let violations = check(&snapshot, false);
        let observed: Vec<&str> = violations.iter().map(|v| v.observed.as_str()).collect();
        assert_eq!(
            observed,
            [
                "payments.succeeded was emitted 2 times",
                "both orders.confirmed and orders.cancelled were emitted",
                "both inventory.reserved and inventory.rejected were emitted",
            ]
        );
        assert!(violations.iter().all(|v| v.rule == Rule::EventOnce));
    }

    #[test]
    fn money_held_for_an_unknown_order_is_a_violation() {
        let mut snapshot = consistent();
        snapshot
            .charges
            .push(charge("ch_stray", "o-ghost", "succeeded", 500));
        assert_eq!(rules(&snapshot), pairs(&[("o-ghost", "charge-has-order")]));
        snapshot.refunds.push(Refund {
            charge: "ch_stray".into(),
            amount_cents: 500,
        });
        assert_eq!(check(&snapshot, false), Vec::new());
    }

    #[test]
    fn the_json_report_lists_each_violation_with_its_rule() {
        let mut snapshot = consistent();
        set_order_status(&mut snapshot, "o-short", "pending");
        let violations = check(&snapshot, false);
        assert_eq!(
            report_json(&snapshot, &violations),
            json!({
                "ok": false,
                "orders": 3,
                "products": 1,
                "dead_letters": 0,
                "violations": [{
                    "kind": "order",
                    "id": "o-short",
                    "rule": "settled",
                    "observed": "still pending",
                }],
            })
        );
    }

    fn args(extra: &[&str]) -> Args {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let argv = std::iter::once("verify").chain(extra.iter().copied());
        Cli::try_parse_from(argv).expect("valid flags").args
    }

    #[test]
    fn sources_default_to_the_data_dir_and_the_gateway_port_of_up() {
        let sources =
            Sources::from_args(&args(&["--data-dir", "/data", "--http-port-base", "9000"]))
                .expect("sources");
        assert_eq!(
            sources,
            Sources {
                order_db: "sqlite:///data/order.db?mode=ro".into(),
                inventory_db: "sqlite:///data/inventory.db?mode=ro".into(),
                payment_db: "sqlite:///data/payment.db?mode=ro".into(),
                gateway: "http://127.0.0.1:9003".into(),
                nats: "nats://127.0.0.1:4223".into(),
                nats_auth: NatsAuth::default(),
            }
        );
    }

    #[test]
    fn explicit_urls_win_over_the_shared_database_url() {
        let sources = Sources::from_args(&args(&[
            "--database-url",
            "postgres://db/orderflow",
            "--payment-db",
            "postgres://other/payments",
            "--gateway-url",
            "http://gw:1/",
        ]))
        .expect("sources");
        assert_eq!(sources.order_db, "postgres://db/orderflow");
        assert_eq!(sources.inventory_db, "postgres://db/orderflow");
        assert_eq!(sources.payment_db, "postgres://other/payments");
        assert_eq!(sources.gateway, "http://gw:1");
    }

    #[test]
    fn a_data_dir_that_cannot_be_in_a_url_is_refused() {
        let error = Sources::from_args(&args(&["--data-dir", "/what?"])).unwrap_err();
        assert_eq!(error.what, "the command line");
    }
}
