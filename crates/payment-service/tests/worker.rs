//! The join, the charge worker and the HTTP view, driven step by step against the gateway simulator
//! running in process, each test with its own SQLite files. Events go in through the handler (as the
//! consumer runtime would call it) and come out of the outbox table.

use contracts::events::CancelReason;
use contracts::events::{
    InventoryReserved, OrderCancelled, OrderCreated, OrderLine, PaymentFailureReason,
};
use contracts::{
    CorrelationId, CustomerId, Envelope, Event, Money, OrderId, PaymentMethod, ProductId, Quantity,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use payment_service::breaker::{BreakerConfig, CircuitBreaker, ManualClock, State, SystemClock};
use payment_service::gateway::GatewayClient;
use payment_service::handlers::PaymentHandler;
use payment_service::worker::{ChargeWorker, WorkOutcome};
use platform::consumer::Handler;
use platform::db::{Db, query};
use platform::server::ServerArgs;
use platform::shutdown::ShutdownTrigger;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::sync::Notify;

const TIMEOUT: Duration = Duration::from_millis(300);

/// The admin token of the simulator each test starts.
const GATEWAY_ADMIN_TOKEN: &str = "worker-test-admin-token";

struct TestApp {
    db: Db,
    handler: PaymentHandler,
    /// Charges through the simulator.
    worker: ChargeWorker,
    /// Charges through an address where nothing listens: every call fails to connect.
    worker_unreachable: ChargeWorker,
    gateway_url: String,
    api_url: String,
    http: reqwest::Client,
    _gateway: ShutdownTrigger,
    _dir: TempDir,
}

impl TestApp {
    async fn spawn() -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let url = |name: &str| format!("sqlite://{}/{name}.db?mode=rwc", dir.path().display());
        let db = Db::connect(&url("payment"), "payment", payment_service::MIGRATIONS)
            .await
            .unwrap();

        let gateway_db = Db::connect(&url("gateway"), "gateway", gateway_sim::MIGRATIONS)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_url = format!("http://{}", listener.local_addr().unwrap());
        let (trigger, shutdown) = platform::shutdown::channel();
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        tokio::spawn(gateway_sim::serve(
            listener,
            gateway_db,
            metrics,
            Some(platform::access::AdminToken::parse(GATEWAY_ADMIN_TOKEN).unwrap()),
            ServerArgs::default(),
            shutdown.clone(),
        ));

        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", api.local_addr().unwrap());
        tokio::spawn(platform::server::serve(
            api,
            payment_service::api::router(db.clone()),
            ServerArgs::default(),
            shutdown.stopped(),
        ));

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let unreachable_url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);

        let work_due = Arc::new(Notify::new());
        let worker_for = |url: &str| worker(&db, url, default_breaker());
        TestApp {
            handler: PaymentHandler::new(work_due.clone(), Arc::new(Notify::new())),
            worker: worker_for(&gateway_url),
            worker_unreachable: worker_for(&unreachable_url),
            db,
            gateway_url,
            api_url,
            http: reqwest::Client::new(),
            _gateway: trigger,
            _dir: dir,
        }
    }

    /// Applies one event the way the consumer runtime does: handler inside a transaction, then commit.
    async fn deliver(&self, envelope: &Envelope) {
        let mut tx = self.db.begin().await.unwrap();
        self.handler.handle(&mut tx, envelope).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// Makes every waiting retry due now, instead of sleeping through its backoff.
    async fn skip_backoff(&self) {
        query("UPDATE payments SET next_attempt_at_us = 0")
            .execute(self.db.pool())
            .await
            .unwrap();
    }

    async fn status(&self, order_id: OrderId) -> (String, i64) {
        query("SELECT status, attempts FROM payments WHERE order_id = $1")
            .bind(order_id.to_string())
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    /// Every event the service emitted, in order.
    async fn emitted(&self) -> Vec<Envelope> {
        query("SELECT payload FROM outbox ORDER BY sequence")
            .fetch_all::<Vec<u8>>(self.db.pool())
            .await
            .unwrap()
            .iter()
            .map(|payload| Envelope::from_json(payload).unwrap())
            .collect()
    }

    async fn ledger(&self, what: &str) -> Vec<Value> {
        self.http
            .get(format!("{}/v1/{what}", self.gateway_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Switches the simulator's fault mode (`ok`, `down`, `slow`, `flaky`, `hang`).
    async fn gateway_faults(&self, mode: &str) {
        let response = self
            .http
            .post(format!("{}/admin/faults", self.gateway_url))
            .bearer_auth(GATEWAY_ADMIN_TOKEN)
            .json(&json!({ "mode": mode }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    /// How many `/v1` calls (charges, refunds, listings) have reached the simulator.
    async fn gateway_calls(&self) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/admin/stats", self.gateway_url))
            .bearer_auth(GATEWAY_ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["requests"].as_u64().unwrap()
    }

    async fn next_attempt_at_us(&self, order_id: OrderId) -> i64 {
        query("SELECT next_attempt_at_us FROM payments WHERE order_id = $1")
            .bind(order_id.to_string())
            .fetch_one(self.db.pool())
            .await
            .unwrap()
    }

    async fn api(&self, order_id: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/payments/{order_id}", self.api_url))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

fn worker(db: &Db, gateway_url: &str, breaker: Arc<CircuitBreaker>) -> ChargeWorker {
    ChargeWorker::new(
        db.clone(),
        GatewayClient::new(gateway_url, TIMEOUT).unwrap(),
        breaker,
        Arc::new(Notify::new()),
        TIMEOUT,
    )
}

/// The service's defaults: no test but the breaker's own gets anywhere near opening it.
fn default_breaker() -> Arc<CircuitBreaker> {
    let config = BreakerConfig::new(0.5, 5, 20, Duration::from_secs(5), 1).unwrap();
    Arc::new(CircuitBreaker::new(
        "gateway",
        config,
        Arc::new(SystemClock),
    ))
}

/// A breaker on a clock the test moves: opens after 2 failed calls out of 2, stays open `open_for`.
fn test_breaker(open_for: Duration) -> (Arc<CircuitBreaker>, ManualClock) {
    let clock = ManualClock::default();
    let config = BreakerConfig::new(0.5, 2, 4, open_for, 1).unwrap();
    let breaker = CircuitBreaker::new("gateway", config, Arc::new(clock.clone()));
    (Arc::new(breaker), clock)
}

fn created(order_id: OrderId, method: &str, deadline_in: time::Duration) -> Envelope {
    Envelope::first(
        order_id,
        CorrelationId::parse(&format!("corr-{order_id}")).unwrap(),
        Event::OrderCreated(OrderCreated {
            customer_id: CustomerId::parse("c-1").unwrap(),
            currency: contracts::Currency::legacy(),
            items: vec![OrderLine {
                product_id: ProductId::parse("sku-1").unwrap(),
                quantity: Quantity::new(1).unwrap(),
            }],
            payment_method: PaymentMethod::parse(method).unwrap(),
            deadline_at: OffsetDateTime::now_utc() + deadline_in,
        }),
    )
}

fn reserved(cause: &Envelope, cents: i64) -> Envelope {
    Envelope::caused_by(
        &cause.meta,
        Event::InventoryReserved(InventoryReserved {
            lines: vec![],
            total_cents: Money::from_cents(cents).unwrap(),
        }),
    )
}

fn cancelled(cause: &Envelope) -> Envelope {
    Envelope::caused_by(
        &cause.meta,
        Event::OrderCancelled(OrderCancelled {
            reason: CancelReason::Timeout,
        }),
    )
}

const LATER: time::Duration = time::Duration::minutes(5);

#[tokio::test]
async fn intent_then_amount_charges_once_and_reports_success() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    let amount = reserved(&intent, 2598);

    app.deliver(&intent).await;
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    assert_eq!(app.api(&order_id.to_string()).await.0, 404);
    app.deliver(&amount).await;
    assert_eq!(app.status(order_id).await, ("charging".into(), 0));
    assert_eq!(app.api(&order_id.to_string()).await.0, 404);

    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::Succeeded
    );
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    assert_eq!(app.status(order_id).await, ("succeeded".into(), 1));

    let events = app.emitted().await;
    assert_eq!(events.len(), 1);
    let Event::PaymentSucceeded(success) = &events[0].event else {
        panic!("expected payments.succeeded, got {:?}", events[0].event);
    };
    assert_eq!(success.amount_cents.cents(), 2598);
    // The event that completed the join is the cause; the saga's correlation id carries over.
    assert_eq!(events[0].meta.causation_id, Some(amount.meta.event_id));
    assert_eq!(events[0].meta.correlation_id, intent.meta.correlation_id);
    assert_eq!(events[0].meta.order_id, order_id);

    let charges = app.ledger("charges").await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["id"], success.charge_id.as_str());
    assert_eq!(charges[0]["idempotency_key"], order_id.to_string());

    let (status, body) = app.api(&order_id.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["amount_cents"], 2598);
    assert_eq!(body["attempts"], 1);
}

#[tokio::test]
async fn amount_then_intent_also_completes_the_join_and_a_decline_is_reported() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_chargeDeclined", LATER);
    app.deliver(&reserved(&intent, 500)).await;
    assert_eq!(app.status(order_id).await.0, "waiting");
    app.deliver(&intent).await;
    assert_eq!(app.status(order_id).await.0, "charging");

    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::Declined
    );
    let events = app.emitted().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].meta.causation_id, Some(intent.meta.event_id));
    let Event::PaymentFailed(failed) = &events[0].event else {
        panic!("expected payments.failed");
    };
    assert_eq!(failed.reason, PaymentFailureReason::PaymentDeclined);
    assert_eq!(app.api(&order_id.to_string()).await.1["status"], "declined");
}

#[tokio::test]
async fn a_cancellation_before_the_inputs_means_no_charge_ever() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    app.deliver(&cancelled(&intent)).await;
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 100)).await;
    assert_eq!(app.status(order_id).await, ("cancelled".into(), 0));
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    assert!(app.ledger("charges").await.is_empty());
    assert!(app.emitted().await.is_empty());
    assert_eq!(app.api(&order_id.to_string()).await.0, 404);
}

#[tokio::test]
async fn a_cancellation_before_the_first_call_never_charges() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 100)).await;
    app.deliver(&cancelled(&intent)).await;
    assert_eq!(app.status(order_id).await.0, "cancelled");
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    assert!(app.ledger("charges").await.is_empty());
}

#[tokio::test]
async fn a_cancellation_after_the_charge_refunds_it_once() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_amex", LATER);
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 1200)).await;
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::Succeeded
    );

    let cancel = cancelled(&intent);
    app.deliver(&cancel).await;
    assert_eq!(app.status(order_id).await.0, "refunding");
    assert_eq!(
        app.api(&order_id.to_string()).await.1["status"],
        "processing"
    );
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::Refunded
    );
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    // A redelivered cancellation changes nothing.
    app.deliver(&cancelled(&intent)).await;
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);

    let events = app.emitted().await;
    assert_eq!(events.len(), 2);
    let Event::PaymentRefunded(refund) = &events[1].event else {
        panic!("expected payments.refunded");
    };
    assert_eq!(refund.amount_cents.cents(), 1200);
    assert_eq!(events[1].meta.causation_id, Some(cancel.meta.event_id));
    assert_eq!(app.ledger("refunds").await.len(), 1);
    assert_eq!(app.ledger("charges").await[0]["refunded"], true);
    assert_eq!(app.api(&order_id.to_string()).await.1["status"], "refunded");
}

#[tokio::test]
async fn an_unreachable_gateway_is_retried_with_the_same_key() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 300)).await;

    assert_eq!(
        app.worker_unreachable.try_execute().await.unwrap(),
        WorkOutcome::RetryScheduled
    );
    // Backing off: not due yet.
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    let (status, body) = app.api(&order_id.to_string()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processing")));

    app.skip_backoff().await;
    assert_eq!(
        app.worker_unreachable.try_execute().await.unwrap(),
        WorkOutcome::RetryScheduled
    );
    app.skip_backoff().await;
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::Succeeded
    );
    assert_eq!(app.status(order_id).await, ("succeeded".into(), 3));
    assert_eq!(app.ledger("charges").await.len(), 1);
}

#[tokio::test]
async fn a_cancellation_after_a_failed_call_still_checks_for_a_charge_and_refunds_it() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 450)).await;

    // Charge through the gateway, then forget the answer: as if the call had timed out after the
    // gateway charged.
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::Succeeded
    );
    query("UPDATE payments SET status = 'charging', charge_id = NULL")
        .execute(app.db.pool())
        .await
        .unwrap();
    query("DELETE FROM outbox")
        .execute(app.db.pool())
        .await
        .unwrap();

    app.deliver(&cancelled(&intent)).await;
    assert_eq!(app.status(order_id).await.0, "refunding");
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::RefundDue
    );
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::Refunded
    );
    assert_eq!(
        app.ledger("charges").await.len(),
        1,
        "the lookup found the charge; nothing was charged again"
    );
    assert_eq!(app.ledger("refunds").await.len(), 1);
    let events = app.emitted().await;
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0].event, Event::PaymentRefunded(_)));
}

#[tokio::test]
async fn a_payment_past_its_deadline_is_given_up() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", time::Duration::seconds(-1));
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 300)).await;
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Failed);
    assert_eq!(app.status(order_id).await, ("failed".into(), 0));
    assert!(app.ledger("charges").await.is_empty());
    let events = app.emitted().await;
    let Event::PaymentFailed(failed) = &events[0].event else {
        panic!("expected payments.failed");
    };
    assert_eq!(failed.reason, PaymentFailureReason::PaymentUnavailable);
}

#[tokio::test]
async fn a_deadline_near_after_failed_calls_gives_up_and_settles_by_lookup_without_charging() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", time::Duration::milliseconds(700));
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 300)).await;
    assert_eq!(
        app.worker_unreachable.try_execute().await.unwrap(),
        WorkOutcome::RetryScheduled
    );
    // Within one call timeout of the deadline: no call could be answered in time any more.
    tokio::time::sleep(Duration::from_millis(450)).await;
    app.skip_backoff().await;

    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Failed);
    let events = app.emitted().await;
    assert!(
        matches!(&events[0].event, Event::PaymentFailed(f) if f.reason == PaymentFailureReason::PaymentUnavailable)
    );
    assert_eq!(app.status(order_id).await, ("refunding".into(), 1));
    // The earlier call's outcome is settled by asking the gateway, which holds nothing: no charge is
    // made to find out, and nothing needs refunding.
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::NothingCharged
    );
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    assert!(app.ledger("charges").await.is_empty(), "no charge was made");
    assert!(app.ledger("refunds").await.is_empty());
    assert_eq!(app.status(order_id).await.0, "failed");
    assert_eq!(app.emitted().await.len(), 1);
}

#[tokio::test]
async fn a_cancelled_order_is_never_charged_when_the_gateway_comes_back() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 900)).await;
    // The gateway is down from before the order until after it is cancelled.
    app.gateway_faults("down").await;
    for _ in 0..2 {
        assert_eq!(
            app.worker.try_execute().await.unwrap(),
            WorkOutcome::RetryScheduled
        );
        app.skip_backoff().await;
    }
    app.deliver(&cancelled(&intent)).await;
    assert_eq!(app.status(order_id).await.0, "refunding");

    app.gateway_faults("ok").await;
    app.skip_backoff().await;
    let calls = app.gateway_calls().await;
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::NothingCharged
    );
    assert_eq!(
        app.gateway_calls().await,
        calls + 1,
        "one lookup, no charge"
    );
    assert_eq!(app.worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    assert!(app.ledger("charges").await.is_empty());
    assert!(app.emitted().await.is_empty());
    assert_eq!(app.status(order_id).await.0, "failed");
}

#[tokio::test]
async fn a_refusal_after_a_call_of_unknown_outcome_is_settled_by_lookup_and_refunded() {
    let app = TestApp::spawn().await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 650)).await;

    // The gateway charges at once but answers after the call timeout: the outcome is unknown.
    let slow = app
        .http
        .post(format!("{}/admin/faults", app.gateway_url))
        .bearer_auth(GATEWAY_ADMIN_TOKEN)
        .json(&json!({"mode": "slow", "latency_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status().as_u16(), 200);
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::RetryScheduled
    );
    app.gateway_faults("ok").await;
    assert_eq!(
        app.ledger("charges").await.len(),
        1,
        "charged, unknown to us"
    );

    // The next call is refused for good (404: the gateway no longer knows the endpoint, as after a
    // misconfiguration). That says nothing about the first call, so the payment is not `failed`.
    app.skip_backoff().await;
    let refusing = worker(
        &app.db,
        &format!("{}/gone", app.gateway_url),
        default_breaker(),
    );
    assert_eq!(refusing.try_execute().await.unwrap(), WorkOutcome::Failed);
    assert_eq!(app.status(order_id).await, ("refunding".into(), 2));
    let events = app.emitted().await;
    assert!(
        matches!(&events[0].event, Event::PaymentFailed(f) if f.reason == PaymentFailureReason::PaymentUnavailable)
    );

    // The lookup finds the first call's charge, and it is refunded: the customer keeps nothing.
    app.skip_backoff().await;
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::RefundDue
    );
    assert_eq!(
        app.worker.try_execute().await.unwrap(),
        WorkOutcome::Refunded
    );
    let charges = app.ledger("charges").await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["refunded"], true);
    assert_eq!(app.status(order_id).await.0, "refunded");
}

#[tokio::test]
async fn a_hanging_gateway_costs_one_timeout_per_attempt() {
    let app = TestApp::spawn().await;
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let worker = worker(&app.db, &hanging_url, default_breaker());
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 300)).await;

    let started = std::time::Instant::now();
    assert_eq!(
        worker.try_execute().await.unwrap(),
        WorkOutcome::RetryScheduled
    );
    assert!(started.elapsed() < TIMEOUT * 3, "{:?}", started.elapsed());
    let error: Option<String> = query("SELECT last_error FROM payments")
        .fetch_one(app.db.pool())
        .await
        .unwrap();
    assert_eq!(error.as_deref(), Some("no answer within 300 ms"));
}

#[tokio::test]
async fn a_malformed_order_id_is_a_bad_request() {
    let app = TestApp::spawn().await;
    assert_eq!(app.api("not-a-uuid").await.0, 400);
    assert_eq!(app.api(&OrderId::new().to_string()).await.0, 404);
}

#[tokio::test]
async fn a_gateway_outage_opens_the_breaker_and_payments_wait_without_calling() {
    const OPEN_FOR: Duration = Duration::from_secs(5);
    let app = TestApp::spawn().await;
    let (breaker, clock) = test_breaker(OPEN_FOR);
    let worker = worker(&app.db, &app.gateway_url, breaker.clone());
    app.gateway_faults("down").await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", LATER);
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 700)).await;

    for attempts in 1..=2 {
        assert_eq!(
            worker.try_execute().await.unwrap(),
            WorkOutcome::RetryScheduled
        );
        assert_eq!(app.status(order_id).await, ("charging".into(), attempts));
        app.skip_backoff().await;
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(app.gateway_calls().await, 2);

    // Open: a step calls nothing and uses up no attempt; the payment waits out the open period.
    let before = platform::db::now_us();
    assert_eq!(
        worker.try_execute().await.unwrap(),
        WorkOutcome::BreakerOpen
    );
    let waits_until = app.next_attempt_at_us(order_id).await;
    let open_us = OPEN_FOR.as_micros() as i64;
    assert!(waits_until >= before + open_us, "{waits_until} vs {before}");
    assert!(waits_until <= platform::db::now_us() + open_us);
    assert_eq!(worker.try_execute().await.unwrap(), WorkOutcome::Idle);
    app.skip_backoff().await;
    assert_eq!(
        worker.try_execute().await.unwrap(),
        WorkOutcome::BreakerOpen
    );
    assert_eq!(app.status(order_id).await, ("charging".into(), 2));
    assert_eq!(app.gateway_calls().await, 2, "no call while open");
    assert_eq!(
        app.api(&order_id.to_string()).await.1["status"],
        "processing"
    );

    // The gateway is back, but calls wait for the breaker's time to be up; then one trial closes it.
    app.gateway_faults("ok").await;
    app.skip_backoff().await;
    assert_eq!(
        worker.try_execute().await.unwrap(),
        WorkOutcome::BreakerOpen
    );
    clock.advance(OPEN_FOR);
    assert_eq!(breaker.state(), State::HalfOpen);
    app.skip_backoff().await;
    assert_eq!(worker.try_execute().await.unwrap(), WorkOutcome::Succeeded);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(app.gateway_calls().await, 3);
    assert_eq!(app.status(order_id).await, ("succeeded".into(), 3));
    let charges = app.ledger("charges").await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["order_id"], order_id.to_string());
    let events = app.emitted().await;
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0].event, Event::PaymentSucceeded(_)));
}

#[tokio::test]
async fn a_deadline_passing_while_the_breaker_is_open_fails_the_payment_and_checks_for_a_charge() {
    let app = TestApp::spawn().await;
    // Open far longer than the deadline: only the deadline can end the wait.
    let (breaker, clock) = test_breaker(Duration::from_secs(600));
    let worker = worker(&app.db, &app.gateway_url, breaker.clone());
    app.gateway_faults("down").await;
    let order_id = OrderId::new();
    let intent = created(order_id, "tok_visa", time::Duration::seconds(1));
    app.deliver(&intent).await;
    app.deliver(&reserved(&intent, 300)).await;
    for _ in 0..2 {
        assert_eq!(
            worker.try_execute().await.unwrap(),
            WorkOutcome::RetryScheduled
        );
        app.skip_backoff().await;
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        worker.try_execute().await.unwrap(),
        WorkOutcome::BreakerOpen
    );

    // The wait ends before the deadline, not at the breaker's reopening: the order hears in time.
    let waited = std::time::Instant::now();
    let outcome = loop {
        match worker.try_execute().await.unwrap() {
            WorkOutcome::Idle => {
                assert!(waited.elapsed() < Duration::from_secs(5), "never given up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome => break outcome,
        }
    };
    assert_eq!(outcome, WorkOutcome::Failed);
    let events = app.emitted().await;
    assert_eq!(events.len(), 1);
    assert!(
        matches!(&events[0].event, Event::PaymentFailed(f) if f.reason == PaymentFailureReason::PaymentUnavailable)
    );
    // Two calls were made whose outcome the worker never learned: it must ask the gateway, and
    // that waits for the breaker too.
    assert_eq!(app.status(order_id).await, ("refunding".into(), 2));
    assert_eq!(
        worker.try_execute().await.unwrap(),
        WorkOutcome::BreakerOpen
    );
    assert_eq!(app.gateway_calls().await, 2);

    app.gateway_faults("ok").await;
    clock.advance(Duration::from_secs(600));
    app.skip_backoff().await;
    assert_eq!(
        worker.try_execute().await.unwrap(),
        WorkOutcome::NothingCharged
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(app.status(order_id).await.0, "failed");
    assert!(app.ledger("charges").await.is_empty(), "no charge was made");
    assert!(app.ledger("refunds").await.is_empty());
}

#[tokio::test]
async fn a_decline_is_a_gateway_answer_and_never_opens_the_breaker() {
    let app = TestApp::spawn().await;
    let (breaker, _) = test_breaker(Duration::from_secs(5));
    let worker = worker(&app.db, &app.gateway_url, breaker.clone());
    for _ in 0..3 {
        let order_id = OrderId::new();
        let intent = created(order_id, "tok_chargeDeclined", LATER);
        app.deliver(&intent).await;
        app.deliver(&reserved(&intent, 100)).await;
        assert_eq!(worker.try_execute().await.unwrap(), WorkOutcome::Declined);
        assert_eq!(app.status(order_id).await, ("declined".into(), 1));
    }
    assert_eq!(breaker.state(), State::Closed);
}
