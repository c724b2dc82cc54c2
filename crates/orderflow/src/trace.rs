//! `orderflow trace ORDER_ID`: one saga as a waterfall across the services. Each event of the order
//! (from order-service's timeline) with when it was made and when each consumer that receives it
//! handled it (from that service's inbox), the gap between the two, and, for an order still pending,
//! where it waits now: the event a consumer has not handled yet and that consumer's backlog on the
//! broker, or its producer's outbox when it may not have been published yet, a service that does not
//! answer, or the payment the charge worker is on.
//!
//! The timeline records when each event was made, not when it was published: an event can sit in its
//! producer's outbox (a relay that cannot reach NATS) while the timeline already lists it. So the
//! waterfall says "made", and an event is called published only when that is known: order-service
//! received it through the broker, or order-service made it and its outbox (written in the same
//! transaction as the timeline) holds nothing unpublished.

use crate::status::{Colour, SystemArgs, Targets, read_consumers, read_status, seconds};
use crate::up::http_client;
use contracts::Priority;
use contracts::topology::{ALL_CONSUMERS, ConsumerSpec, receives};
use platform::consumer::HandledEvent;
use platform::nats::ConsumerBacklog;
use platform::outbox::OutboxBacklog;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Columns of the waterfall's bar.
const BAR_WIDTH: usize = 32;

/// Show one order's saga as a waterfall: every event, when it was made and handled, and where the
/// order waits now if it is stuck.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 the order was found, 1 it was not (or order-service does not answer), 2 bad flags.")]
pub struct Args {
    /// The order's id (as `POST /orders` answered it).
    pub order_id: String,
    #[command(flatten)]
    pub system: SystemArgs,
    /// Print the waterfall as one JSON object instead.
    #[arg(long)]
    pub json: bool,
}

/// One order's saga.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Waterfall {
    pub order_id: String,
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    pub cancel_reason: Option<String>,
    pub trace_id: Option<String>,
    pub correlation_id: String,
    pub accepted_at: String,
    /// From acceptance to the end, for a final order.
    pub took_ms: Option<f64>,
    pub events: Vec<Hop>,
    /// For a pending order: where it waits now, most specific first.
    pub waiting: Vec<String>,
    /// What could not be read (a service that does not answer, the broker).
    pub unknown: Vec<String>,
}

/// One event of the saga.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hop {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The service that made it.
    pub source: String,
    /// When its producer made it (the timeline does not record when it was published).
    pub occurred_at: String,
    /// Milliseconds after the order was accepted.
    pub at_ms: f64,
    /// Each consumer that receives it.
    pub handled: Vec<Handling>,
}

/// One consumer's handling of one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Handling {
    pub consumer: &'static str,
    pub service: &'static str,
    /// When its effect committed; absent while it is not handled (or once its inbox forgot it).
    pub handled_at: Option<String>,
    pub at_ms: Option<f64>,
    /// From being made to being handled: it includes any time spent in the producer's outbox.
    pub gap_ms: Option<f64>,
}

/// `GET /orders/{id}` as far as trace needs it.
#[derive(Debug, Clone, Deserialize)]
struct OrderView {
    order_id: String,
    status: String,
    cancel_reason: Option<String>,
    correlation_id: String,
    trace_id: Option<String>,
    /// Its lane, whose consumers its events go to (absent from an order-service before lanes).
    #[serde(default)]
    priority: Priority,
    created_at: String,
    updated_at: String,
}

/// `GET /orders/{id}/events` entries.
#[derive(Debug, Clone, Deserialize)]
struct TimelineEntry {
    event_id: String,
    #[serde(rename = "type")]
    event_type: String,
    occurred_at: String,
    source: String,
}

/// Everything read for one order, before it is put together (kept apart so the assembly is tested
/// without a system).
#[derive(Debug, Clone)]
struct Observed {
    order: OrderView,
    timeline: Vec<TimelineEntry>,
    handled: Vec<HandledEvent>,
    /// `None` when the broker did not answer.
    consumers: Option<Vec<ConsumerBacklog>>,
    /// Each service's outbox backlog, from its `/status`; a service missing here did not say.
    outboxes: HashMap<&'static str, OutboxBacklog>,
    /// payment-service's view of the payment, when the order waits on it.
    payment: Option<serde_json::Value>,
    /// Services that did not answer, with why.
    unknown: Vec<String>,
}

/// Why no waterfall could be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    #[error("order-service knows no order {0}; check the id (and --http-port-base)")]
    NotFound(String),
    #[error("{0}")]
    Unreachable(String),
}

/// Reads the order's saga from the running system and lays it out.
pub async fn trace(args: &Args) -> Result<Waterfall, TraceError> {
    let targets = Targets::from_args(&args.system)
        .map_err(|error| TraceError::Unreachable(format!("{error:#}")))?;
    let client = http_client().map_err(|error| TraceError::Unreachable(format!("{error:#}")))?;
    let order_url = &targets.order;
    let id = &args.order_id;
    let order: OrderView = match get(&client, &format!("{order_url}/orders/{id}")).await {
        Ok(Some(order)) => order,
        Ok(None) => return Err(TraceError::NotFound(id.clone())),
        Err(error) => return Err(TraceError::Unreachable(error)),
    };
    let timeline: Vec<TimelineEntry> = get(&client, &format!("{order_url}/orders/{id}/events"))
        .await
        .map_err(TraceError::Unreachable)?
        .unwrap_or_default();

    let ids: Vec<&str> = timeline.iter().map(|e| e.event_id.as_str()).collect();
    let mut handled = Vec::new();
    let mut outboxes = HashMap::new();
    let mut unknown = Vec::new();
    let pending = order.status == "pending";
    for (service, base) in targets.services().into_iter().take(3) {
        let url = format!("{base}/inbox?event_ids={}", ids.join(","));
        match get::<Vec<HandledEvent>>(&client, &url).await {
            Ok(found) => handled.extend(found.unwrap_or_default()),
            Err(error) => {
                unknown.push(format!("{service}: {error}"));
                continue;
            }
        }
        // Only a stuck order may wait on an outbox.
        if pending {
            match read_status(&client, base).await {
                Ok(status) => outboxes.extend(status.outbox.map(|backlog| (service, backlog))),
                Err(error) => unknown.push(format!("{service}'s outbox: {error}")),
            }
        }
    }
    let consumers = match read_consumers(&targets.nats_url, &targets.nats_auth).await {
        Ok(consumers) => Some(consumers),
        Err(error) => {
            unknown.push(format!("the broker: {error}"));
            None
        }
    };
    let payment = if pending {
        get(&client, &format!("{}/payments/{id}", targets.payment))
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    Ok(assemble(Observed {
        order,
        timeline,
        handled,
        consumers,
        outboxes,
        payment,
        unknown,
    }))
}

/// `None` for a 404.
async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Result<Option<T>, String> {
    let response =
        client.get(url).send().await.map_err(|error| {
            format!("no answer from {url}: {}", crate::demo::root_cause(&error))
        })?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    response
        .json()
        .await
        .map(Some)
        .map_err(|error| format!("{url} answered something unexpected: {error}"))
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn from_us(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()
}

fn millis_between(from: OffsetDateTime, to: OffsetDateTime) -> f64 {
    (to - from).as_seconds_f64() * 1000.0
}

/// "3 unpublished, the oldest for 12.0 s".
fn backlog_text(backlog: &OutboxBacklog) -> String {
    match backlog.oldest_age_ms {
        Some(age) => format!(
            "{} unpublished, the oldest for {}",
            backlog.unpublished,
            seconds(age)
        ),
        None => format!("{} unpublished", backlog.unpublished),
    }
}

/// What is known of whether an event of order-service's timeline left its producer, made `age` ago:
/// the start of a waiting line.
fn publication_text(
    entry: &TimelineEntry,
    age: &str,
    outboxes: &HashMap<&'static str, OutboxBacklog>,
) -> String {
    let event = &entry.event_type;
    if entry.source != order_service::INFO.name {
        // order-service records another service's event when it handles it: it came through the
        // broker.
        return format!("{event} published (made {age})");
    }
    match outboxes.get(order_service::INFO.name) {
        Some(backlog) if backlog.unpublished == 0 => format!("{event} published (made {age})"),
        Some(backlog) => format!(
            "{event} made {age}, may still be in {}'s outbox ({})",
            entry.source,
            backlog_text(backlog)
        ),
        None => format!(
            "{event} made {age}, maybe not published yet ({}'s outbox is unknown)",
            entry.source
        ),
    }
}

fn assemble(observed: Observed) -> Waterfall {
    let Observed {
        order,
        mut timeline,
        handled,
        consumers,
        outboxes,
        payment,
        mut unknown,
    } = observed;
    let accepted = parse_time(&order.created_at);
    let now = OffsetDateTime::now_utc();
    let offset = |at: Option<OffsetDateTime>| match (accepted, at) {
        (Some(accepted), Some(at)) => Some(millis_between(accepted, at)),
        _ => None,
    };
    timeline.sort_by_key(|entry| parse_time(&entry.occurred_at));
    let by_key: HashMap<(&str, &str), &HandledEvent> = handled
        .iter()
        .map(|h| ((h.consumer.as_str(), h.event_id.as_str()), h))
        .collect();
    let backlog_of = |consumer: &str| {
        consumers
            .as_ref()
            .and_then(|all| all.iter().find(|c| c.consumer == consumer))
    };
    let pending = order.status == "pending";
    let mut waiting = Vec::new();
    let mut events = Vec::new();
    for entry in &timeline {
        let made = parse_time(&entry.occurred_at);
        let receivers: Vec<&ConsumerSpec> = ALL_CONSUMERS
            .iter()
            .filter(|spec| receives(spec, &order.priority.subject(&entry.event_type)))
            .collect();
        let mut hop_handled = Vec::new();
        for spec in receivers {
            let seen = by_key.get(&(spec.name, entry.event_id.as_str()));
            let handled_at = seen.and_then(|h| from_us(h.handled_at_us));
            if seen.is_none() && pending {
                let age = made
                    .map(|at| format!("{:.1} s ago", (now - at).as_seconds_f64()))
                    .unwrap_or_else(|| "at an unknown time".to_owned());
                let mut line = format!(
                    "{}, not handled yet by {} ({})",
                    publication_text(entry, &age, &outboxes),
                    spec.name,
                    spec.service
                );
                match backlog_of(spec.name) {
                    Some(backlog) => line.push_str(&format!(
                        ": {} has {} pending, {} unacknowledged, {} redelivered{}",
                        spec.name,
                        backlog.pending,
                        backlog.ack_pending,
                        backlog.redelivered,
                        if backlog.dead_letters > 0 {
                            format!(
                                ", {} dead letters (orderflow dlq list --consumer {})",
                                backlog.dead_letters, spec.name
                            )
                        } else {
                            String::new()
                        }
                    )),
                    None => line.push_str(": its backlog is unknown"),
                }
                waiting.push(line);
            }
            hop_handled.push(Handling {
                consumer: spec.name,
                service: spec.service,
                handled_at: handled_at.and_then(|at| at.format(&Rfc3339).ok()),
                at_ms: offset(handled_at),
                gap_ms: match (made, handled_at) {
                    (Some(made), Some(handled)) => Some(millis_between(made, handled)),
                    _ => None,
                },
            });
        }
        events.push(Hop {
            event_id: entry.event_id.clone(),
            event_type: entry.event_type.clone(),
            source: entry.source.clone(),
            occurred_at: entry.occurred_at.clone(),
            at_ms: offset(made).unwrap_or(0.0),
            handled: hop_handled,
        });
    }
    if pending && waiting.is_empty() {
        if let Some(payment) = &payment {
            waiting.push(format!(
                "payment-service: payment {} after {} gateway calls{}",
                payment["status"].as_str().unwrap_or("?"),
                payment["attempts"],
                payment["last_error"]
                    .as_str()
                    .map(|error| format!(", last error: {error}"))
                    .unwrap_or_default()
            ));
        }
        let busy: Vec<String> = consumers
            .iter()
            .flatten()
            .filter(|c| c.pending > 0 || c.ack_pending > 0)
            .map(|c| {
                format!(
                    "{} has {} pending, {} unacknowledged",
                    c.consumer, c.pending, c.ack_pending
                )
            })
            .collect();
        let mut unpublished: Vec<(&str, &OutboxBacklog)> = outboxes
            .iter()
            .filter(|(_, backlog)| backlog.unpublished > 0)
            .map(|(service, backlog)| (*service, backlog))
            .collect();
        unpublished.sort_by_key(|(service, _)| *service);
        if !unpublished.is_empty() {
            let outboxes: Vec<String> = unpublished
                .iter()
                .map(|(service, backlog)| format!("{service} has {}", backlog_text(backlog)))
                .collect();
            waiting.push(format!(
                "the next event may still be in an outbox: {}",
                outboxes.join("; ")
            ));
        }
        if !busy.is_empty() {
            waiting.push(format!(
                "the next event may wait in a backlog: {}",
                busy.join("; ")
            ));
        }
        if unpublished.is_empty() && busy.is_empty() {
            waiting.push(
                "every event order-service saw was handled; the next one has not been published \
                 yet (see each service's outbox in `orderflow status`)"
                    .to_owned(),
            );
        }
    }
    if consumers.is_none() && !pending {
        // The broker only matters for a stuck order.
        unknown.retain(|line| !line.starts_with("the broker"));
    }
    Waterfall {
        took_ms: (!pending)
            .then(|| offset(parse_time(&order.updated_at)))
            .flatten(),
        order_id: order.order_id,
        status: order.status,
        cancel_reason: order.cancel_reason,
        trace_id: order.trace_id,
        correlation_id: order.correlation_id,
        accepted_at: order.created_at,
        events,
        waiting,
        unknown,
    }
}

fn bar(at_ms: f64, span_ms: f64) -> String {
    let column = if span_ms > 0.0 {
        ((at_ms / span_ms) * (BAR_WIDTH - 1) as f64).round() as usize
    } else {
        0
    };
    let column = column.min(BAR_WIDTH - 1);
    format!(
        "|{}■{}|",
        " ".repeat(column),
        " ".repeat(BAR_WIDTH - 1 - column)
    )
}

fn millis(ms: f64) -> String {
    // An event made a moment before its order's row was written shows as 0, not -0.0.
    let ms = if ms.abs() < 0.05 { 0.0 } else { ms };
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

impl Waterfall {
    /// The waterfall as text: a header, one line per event and per handling, then where it waits.
    pub fn text_lines(&self, colour: Colour) -> Vec<String> {
        let ended = match (&self.status[..], &self.cancel_reason) {
            ("cancelled", Some(reason)) => format!("cancelled ({reason})"),
            (status, _) => status.to_owned(),
        };
        let took = self
            .took_ms
            .map(|ms| format!(" after {}", millis(ms)))
            .unwrap_or_default();
        let mut lines = vec![
            format!("order {} {ended}{took}", self.order_id),
            format!(
                "accepted {}, correlation id {}, trace id {}",
                self.accepted_at,
                self.correlation_id,
                self.trace_id.as_deref().unwrap_or("(none)")
            ),
            String::new(),
        ];
        let span = self
            .events
            .iter()
            .flat_map(|hop| {
                std::iter::once(hop.at_ms).chain(hop.handled.iter().filter_map(|h| h.at_ms))
            })
            .fold(0.0_f64, f64::max);
        lines.push(format!(
            "{:>10}  {:<24} {:<18} {:>10}  {}",
            "AT", "EVENT / HANDLED BY", "SERVICE", "GAP", "WATERFALL"
        ));
        for hop in &self.events {
            lines.push(format!(
                "{:>10}  {:<24} {:<18} {:>10}  {}",
                millis(hop.at_ms),
                hop.event_type,
                hop.source,
                "",
                bar(hop.at_ms, span)
            ));
            for handling in &hop.handled {
                let (at, gap, waterfall) = match (handling.at_ms, handling.gap_ms) {
                    (Some(at), Some(gap)) => (millis(at), millis(gap), bar(at, span)),
                    _ => (String::new(), String::new(), colour.warn("not handled")),
                };
                lines.push(format!(
                    "{at:>10}    └ {:<20} {:<18} {gap:>10}  {waterfall}",
                    handling.consumer, handling.service
                ));
            }
        }
        if !self.waiting.is_empty() {
            lines.push(String::new());
            lines.push("Waiting:".to_owned());
            for line in &self.waiting {
                lines.push(colour.warn(&format!("  {line}")));
            }
        }
        for line in &self.unknown {
            lines.push(format!("(unknown: {line})"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "0193a5c0-0000-7000-8000-000000000001";
    const CREATED: &str = "0193a5c0-0000-7000-8000-0000000000c1";
    const RESERVED: &str = "0193a5c0-0000-7000-8000-0000000000c2";

    fn us(text: &str) -> i64 {
        (parse_time(text).unwrap().unix_timestamp_nanos() / 1000) as i64
    }

    fn handled(consumer: &str, event_id: &str, at: &str) -> HandledEvent {
        HandledEvent {
            consumer: consumer.to_owned(),
            event_id: event_id.to_owned(),
            subject: String::new(),
            handled_at_us: us(at),
        }
    }

    fn stuck() -> Observed {
        Observed {
            order: OrderView {
                order_id: ORDER.to_owned(),
                status: "pending".to_owned(),
                cancel_reason: None,
                correlation_id: "corr-1".to_owned(),
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
                priority: Priority::Normal,
                created_at: "2026-12-06T03:00:00Z".to_owned(),
                updated_at: "2026-12-06T03:00:00Z".to_owned(),
            },
            timeline: vec![
                TimelineEntry {
                    event_id: RESERVED.to_owned(),
                    event_type: "inventory.reserved".to_owned(),
                    occurred_at: "2026-12-06T03:00:00.004Z".to_owned(),
                    source: "inventory-service".to_owned(),
                },
                TimelineEntry {
                    event_id: CREATED.to_owned(),
                    event_type: "orders.created".to_owned(),
                    occurred_at: "2026-12-06T03:00:00Z".to_owned(),
                    source: "order-service".to_owned(),
                },
            ],
            handled: vec![
                handled("inventory-orders", CREATED, "2026-12-06T03:00:00.003Z"),
                handled("payment-orders", CREATED, "2026-12-06T03:00:00.002Z"),
                handled("order-inventory", RESERVED, "2026-12-06T03:00:00.006Z"),
            ],
            consumers: Some(vec![ConsumerBacklog {
                consumer: "payment-inventory".to_owned(),
                stream: "INVENTORY".to_owned(),
                declared: true,
                pending: 340,
                ack_pending: 0,
                redelivered: 0,
                dead_letters: 0,
            }]),
            outboxes: HashMap::new(),
            payment: None,
            unknown: Vec::new(),
        }
    }

    /// An order whose orders.created nobody has handled: order-service's relay may be stuck.
    fn only_created(order_service_outbox: Option<OutboxBacklog>) -> Observed {
        let mut observed = stuck();
        observed.timeline.retain(|entry| entry.event_id == CREATED);
        observed.handled.clear();
        observed.consumers = Some(Vec::new());
        observed.outboxes = order_service_outbox
            .map(|backlog| (order_service::INFO.name, backlog))
            .into_iter()
            .collect();
        observed
    }

    #[test]
    fn every_event_has_the_time_it_was_made_and_each_consumers_handling() {
        let waterfall = assemble(stuck());
        let types: Vec<&str> = waterfall
            .events
            .iter()
            .map(|h| h.event_type.as_str())
            .collect();
        assert_eq!(
            types,
            ["orders.created", "inventory.reserved"],
            "in time order"
        );
        let created = &waterfall.events[0];
        let consumers: Vec<&str> = created.handled.iter().map(|h| h.consumer).collect();
        assert_eq!(consumers, ["inventory-orders", "payment-orders"]);
        assert_eq!(created.handled[0].gap_ms, Some(3.0));
        assert_eq!(created.handled[1].at_ms, Some(2.0));
        let reserved = &waterfall.events[1];
        assert_eq!(reserved.at_ms, 4.0);
        assert_eq!(reserved.handled[0].consumer, "payment-inventory");
        assert_eq!(reserved.handled[0].handled_at, None);
        assert_eq!(reserved.handled[1].gap_ms, Some(2.0));
        assert_eq!(waterfall.took_ms, None, "still pending");
    }

    #[test]
    fn a_stuck_order_says_which_consumer_it_waits_for_and_its_backlog() {
        let waterfall = assemble(stuck());
        assert_eq!(waterfall.waiting.len(), 1, "{:?}", waterfall.waiting);
        let line = &waterfall.waiting[0];
        assert!(line.starts_with("inventory.reserved published "), "{line}");
        assert!(
            line.ends_with(
                "not handled yet by payment-inventory (payment-service): payment-inventory has 340 pending, 0 unacknowledged, 0 redelivered"
            ),
            "{line}"
        );
        let text = waterfall.text_lines(Colour::Off).join("\n");
        assert!(
            text.contains("trace id 4bf92f3577b34da6a3ce929d0e0e4736"),
            "{text}"
        );
        assert!(text.contains("└ payment-inventory"), "{text}");
        assert!(text.contains("not handled"), "{text}");
        assert!(text.contains("Waiting:"), "{text}");
    }

    #[test]
    fn an_event_still_in_its_producers_outbox_is_not_called_published() {
        let waterfall = assemble(only_created(Some(OutboxBacklog {
            unpublished: 3,
            oldest_age_ms: Some(12_000),
        })));
        assert_eq!(waterfall.waiting.len(), 2, "{:?}", waterfall.waiting);
        for (line, consumer) in waterfall
            .waiting
            .iter()
            .zip(["inventory-orders", "payment-orders"])
        {
            assert!(line.starts_with("orders.created made "), "{line}");
            assert!(
                line.contains(
                    ", may still be in order-service's outbox (3 unpublished, the oldest for 12 s), \
                     not handled yet by "
                ),
                "{line}"
            );
            assert!(line.contains(consumer), "{line}");
            assert!(!line.contains(" published"), "{line}");
        }
        assert_eq!(waterfall.events[0].occurred_at, "2026-12-06T03:00:00Z");

        // Its outbox emptied since: it was published.
        let waterfall = assemble(only_created(Some(OutboxBacklog {
            unpublished: 0,
            oldest_age_ms: None,
        })));
        assert_eq!(waterfall.waiting.len(), 2, "{:?}", waterfall.waiting);
        for line in &waterfall.waiting {
            assert!(
                line.starts_with("orders.created published (made "),
                "{line}"
            );
        }
        // order-service did not say: neither claimed.
        let waterfall = assemble(only_created(None));
        assert_eq!(waterfall.waiting.len(), 2, "{:?}", waterfall.waiting);
        for line in &waterfall.waiting {
            assert!(
                line.starts_with("orders.created made ")
                    && line.contains("maybe not published yet (order-service's outbox is unknown)"),
                "{line}"
            );
        }
    }

    #[test]
    fn an_order_waiting_for_its_next_event_names_the_outboxes_that_hold_events() {
        let mut observed = stuck();
        observed.handled.push(handled(
            "payment-inventory",
            RESERVED,
            "2026-12-06T03:00:00.007Z",
        ));
        observed.consumers = Some(Vec::new());
        observed.outboxes = HashMap::from([
            (
                "payment-service",
                OutboxBacklog {
                    unpublished: 2,
                    oldest_age_ms: Some(3_000),
                },
            ),
            (
                order_service::INFO.name,
                OutboxBacklog {
                    unpublished: 0,
                    oldest_age_ms: None,
                },
            ),
        ]);
        let waterfall = assemble(observed);
        let expected = "the next event may still be in an outbox: payment-service has 2 \
                        unpublished, the oldest for 3.0 s";
        assert_eq!(waterfall.waiting, [expected]);
    }

    #[test]
    fn a_finished_order_says_how_long_it_took_and_waits_for_nothing() {
        let mut observed = stuck();
        observed.order.status = "confirmed".to_owned();
        observed.order.updated_at = "2026-12-06T03:00:00.014Z".to_owned();
        observed.consumers = None;
        observed
            .unknown
            .push("the broker: cannot reach NATS".to_owned());
        let waterfall = assemble(observed);
        assert_eq!(waterfall.took_ms, Some(14.0));
        assert!(waterfall.waiting.is_empty());
        assert!(
            waterfall.unknown.is_empty(),
            "the broker does not matter then"
        );
        let text = waterfall.text_lines(Colour::Off).join("\n");
        assert!(
            text.starts_with(&format!("order {ORDER} confirmed after 14.0 ms")),
            "{text}"
        );
    }

    #[test]
    fn the_bar_places_each_point_on_the_saga_span() {
        assert_eq!(bar(0.0, 10.0), format!("|■{}|", " ".repeat(BAR_WIDTH - 1)));
        assert_eq!(bar(10.0, 10.0), format!("|{}■|", " ".repeat(BAR_WIDTH - 1)));
        assert_eq!(bar(5.0, 0.0), bar(0.0, 10.0));
    }
}
