//! Chaos: the system under a load of 200 orders (good ones, out-of-stock ones, declined cards) while
//! something breaks — the broker, each service, the gateway — must end with every order final and
//! `orderflow verify` passing: nothing lost, nothing doubled, no stock invented or lost.

use crate::harness::{Options, SAGA_DEADLINE, System};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::ops::Range;
use std::time::{Duration, Instant};
use testkit::on_both_backends;
use testkit::{Backend, wait_until};

on_both_backends!(
    broker_killed_mid_load,
    each_service_killed_mid_load,
    gateway_outage_opens_and_closes_the_breaker,
    poison_message_is_set_aside_and_a_fixed_replay_applies_once,
    hanging_gateway_times_out_and_shutdown_completes,
);

pub(crate) const ORDERS: usize = 200;
/// Orders being placed at once, like a busy shop's web servers would.
const IN_FLIGHT: usize = 16;
/// Scarce stock: the orders for it compete for this many units.
const SCARCE_UNITS: usize = 10;

/// Short ack wait, so events held by a killed instance come back within seconds.
fn chaos_options() -> Options {
    Options {
        service_args: vec!["--ack-wait".into(), "3s".into()],
        ..Options::default()
    }
}

async fn start(backend: Backend) -> Option<System> {
    start_with(backend, chaos_options()).await
}

/// A system with the chaos catalog: plenty of one product, ten units of another.
pub(crate) async fn start_with(backend: Backend, options: Options) -> Option<System> {
    let system = System::start_with(backend, options).await?;
    system.put_product("chaos-plenty", 250, 10_000).await;
    system
        .put_product("chaos-scarce", 100, SCARCE_UNITS as i64)
        .await;
    Some(system)
}

/// What order `i` of a load is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// In stock, good card: it can be confirmed.
    Good,
    /// A good card, but the product's ten units go to the first ten such orders.
    Scarce,
    /// Declined card.
    Declined,
}

/// Seven in ten orders can succeed, two in ten compete for ten scarce units, one in ten is declined.
fn kind(i: usize) -> Kind {
    match i % 10 {
        0..=6 => Kind::Good,
        7 | 8 => Kind::Scarce,
        _ => Kind::Declined,
    }
}

/// How many of orders `0..n` could be confirmed at best: every good one, and as many scarce ones as
/// there are units.
fn could_succeed(n: usize) -> usize {
    let good = (0..n).filter(|&i| kind(i) == Kind::Good).count();
    let scarce = (0..n).filter(|&i| kind(i) == Kind::Scarce).count();
    good + scarce.min(SCARCE_UNITS)
}

fn order_body(i: usize) -> Value {
    let (product, method) = match kind(i) {
        Kind::Good => ("chaos-plenty", "tok_visa"),
        Kind::Scarce => ("chaos-scarce", "tok_visa"),
        Kind::Declined => ("chaos-plenty", "tok_chargeDeclined"),
    };
    json!({
        "customer_id": format!("chaos-{}", i % 7),
        "items": [{"product_id": product, "quantity": 1}],
        "payment_method": method,
    })
}

/// Places order `i`, retrying with the same Idempotency-Key while order-service is unreachable or
/// answers 503 (a client of a restarting service does exactly this), so a retry never creates a
/// second order. Gives up after `patience`.
pub(crate) async fn place(
    order_url: &str,
    http: &reqwest::Client,
    i: usize,
    patience: Duration,
) -> String {
    let key = format!("chaos-order-{i}");
    let deadline = Instant::now() + patience;
    loop {
        let response = http
            .post(format!("{order_url}/orders"))
            .header("Idempotency-Key", &key)
            .json(&order_body(i))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(response) = response
            && response.status() == StatusCode::ACCEPTED
            && let Ok(body) = response.json::<Value>().await
        {
            return body["order_id"].as_str().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "order {i} never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn place_batch(system: &System, range: Range<usize>) -> Vec<String> {
    place_patiently(system, range, SAGA_DEADLINE).await
}

/// Places orders `range` of the load, each retried until accepted or `patience` is up.
pub(crate) async fn place_patiently(
    system: &System,
    range: Range<usize>,
    patience: Duration,
) -> Vec<String> {
    let http = reqwest::Client::new();
    futures::stream::iter(range)
        .map(|i| {
            let http = http.clone();
            async move { place(&system.order_url, &http, i, patience).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// Whether the fault may legitimately hold sagas past their deadline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadlines {
    /// Nothing should stall a saga for long: a `timeout` cancellation means events got stuck.
    NeverMissed,
    /// The fault itself may outlast a saga (the gateway is down): `timeout` is a valid ending.
    MayPass,
}

/// Every order placed reaches a final state, at least 90 % of those that could be confirmed are
/// (a system that cancels everything keeps the invariants too, and must still fail here), and the
/// invariants hold across all services with nothing dead-lettered.
pub(crate) async fn assert_nothing_lost(system: &System, ids: &[String], deadlines: Deadlines) {
    assert_all_final(system, ids, deadlines).await;
    system.verified().await;
}

/// The first half of [`assert_nothing_lost`]: every order final, and enough of them confirmed.
pub(crate) async fn assert_all_final(system: &System, ids: &[String], deadlines: Deadlines) {
    assert_eq!(ids.len(), ORDERS);
    let mut confirmed = 0;
    for id in ids {
        let order = system.wait_final(id).await;
        if deadlines == Deadlines::NeverMissed {
            assert_ne!(order["cancel_reason"], "timeout", "a saga stalled: {order}");
        }
        if order["status"] == "confirmed" {
            confirmed += 1;
        }
    }
    let could = could_succeed(ORDERS);
    assert!(
        confirmed <= could,
        "{confirmed} confirmed, only {could} could be"
    );
    assert!(
        confirmed * 10 >= could * 9,
        "only {confirmed} of the {could} orders that could succeed were confirmed\n{}",
        system.logs()
    );
}

/// A value of the payment-service's Prometheus metric `name{labels}`, if exported.
async fn metric(system: &System, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", system.payment_url))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
}

const BREAKER_STATE: &str = "orderflow_circuit_breaker_state{breaker=\"gateway\"}";

async fn wait_breaker(system: &System, state: f64, what: &str) {
    wait_until(what, SAGA_DEADLINE, || async {
        (metric(system, BREAKER_STATE).await == Some(state)).then_some(())
    })
    .await;
}

async fn broker_killed_mid_load(backend: Backend) {
    let Some(mut system) = start(backend).await else {
        return;
    };
    let mut ids = place_batch(&system, 0..80).await;

    system.nats.kill();
    // Orders keep being accepted while the broker is down; their events wait in the outbox.
    ids.extend(place_batch(&system, 80..140).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    system.nats.restart().await;
    ids.extend(place_batch(&system, 140..ORDERS).await);

    assert_nothing_lost(&system, &ids, Deadlines::NeverMissed).await;
}

async fn each_service_killed_mid_load(backend: Backend) {
    let Some(mut system) = start(backend).await else {
        return;
    };
    let mut ids = place_batch(&system, 0..50).await;

    system.order.kill();
    system.order.restart();
    ids.extend(place_batch(&system, 50..100).await);

    system.inventory.kill();
    system.inventory.restart();
    ids.extend(place_batch(&system, 100..150).await);

    system.payment.kill();
    system.payment.restart();
    ids.extend(place_batch(&system, 150..ORDERS).await);

    assert_nothing_lost(&system, &ids, Deadlines::NeverMissed).await;
}

async fn gateway_outage_opens_and_closes_the_breaker(backend: Backend) {
    let Some(system) = start(backend).await else {
        return;
    };
    let mut ids = place_batch(&system, 0..80).await;

    system.set_gateway_faults(&json!({"mode": "down"})).await;
    let outage = Instant::now();
    ids.extend(place_batch(&system, 80..140).await);
    wait_breaker(&system, 1.0, "the breaker to open during the outage").await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(outage.elapsed())).await;
    system.set_gateway_faults(&json!({"mode": "ok"})).await;
    wait_breaker(&system, 0.0, "the breaker to close after the outage").await;
    ids.extend(place_batch(&system, 140..ORDERS).await);

    assert_nothing_lost(&system, &ids, Deadlines::MayPass).await;
    let opened = metric(
        &system,
        "orderflow_circuit_breaker_transitions_total{breaker=\"gateway\",to=\"open\"}",
    )
    .await;
    assert!(opened.is_some_and(|n| n >= 1.0), "{opened:?}");
}

async fn poison_message_is_set_aside_and_a_fixed_replay_applies_once(backend: Backend) {
    let Some(system) = start(backend).await else {
        return;
    };
    let mut ids = place_batch(&system, 0..100).await;

    // A broken copy of a real event: an `orders.created` whose version no consumer understands.
    let (_, original) = system
        .events_of("ORDERS", &ids[0])
        .await
        .into_iter()
        .find(|(subject, _)| subject == "orders.created")
        .expect("the first order's orders.created");
    let mut poison = original.clone();
    poison["version"] = json!("v9");
    let js = system.jetstream().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "chaos-poison");
    js.publish_with_headers(
        "orders.created",
        headers,
        serde_json::to_vec(&poison).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    ids.extend(place_batch(&system, 100..ORDERS).await);

    // The poison is set aside for both consumers of ORDERS, with its reason, and blocks nothing.
    assert_all_final(&system, &ids, Deadlines::NeverMissed).await;
    let letters = wait_until("the poison in the DLQ", SAGA_DEADLINE, || async {
        let letters = crate::dead_letters::dead_letters(&system, None);
        (letters.len() == 2).then_some(letters)
    })
    .await;
    for letter in &letters {
        assert!(
            letter["error"].as_str().unwrap_or_default().contains("v9"),
            "{letter}"
        );
    }

    // The fixed version replayed: the event is the original one, already applied, so its effects
    // must not happen a second time.
    let fixed = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(fixed.path(), serde_json::to_vec(&original).unwrap()).unwrap();
    for letter in &letters {
        let id = letter["id"].to_string();
        crate::dead_letters::dlq(
            &system,
            &[
                "replay",
                &id,
                "--payload",
                &fixed.path().display().to_string(),
            ],
        );
    }
    for (stream, consumer) in [("ORDERS", "inventory-orders"), ("ORDERS", "payment-orders")] {
        system.wait_consumer_idle(stream, consumer).await;
    }
    assert!(crate::dead_letters::dead_letters(&system, None).is_empty());
    system.verified().await;
}

async fn hanging_gateway_times_out_and_shutdown_completes(backend: Backend) {
    let Some(mut system) = start(backend).await else {
        return;
    };
    let mut ids = place_batch(&system, 0..100).await;

    system.set_gateway_faults(&json!({"mode": "hang"})).await;
    ids.extend(place_batch(&system, 100..ORDERS).await);
    // Every call now ends by its timeout; enough of them open the breaker.
    wait_breaker(&system, 1.0, "gateway timeouts to open the breaker").await;

    let stopping = Instant::now();
    let status = system.payment.terminate();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "payment-service took {:?} to stop with a hanging gateway ({status})",
        stopping.elapsed()
    );

    system.set_gateway_faults(&json!({"mode": "ok"})).await;
    system.payment.restart();
    system.wait_ready(&system.payment_url.clone()).await;
    assert_nothing_lost(&system, &ids, Deadlines::MayPass).await;
}
