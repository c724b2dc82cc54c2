//! Admission control (ADR 16): while a new order's saga would take longer than
//! `ORDERFLOW_ADMISSION_MAX_WAIT`, `POST /orders` refuses it with 503 and `Retry-After`, creating
//! nothing; repeats of accepted orders, express orders and readiness are unaffected, and a client
//! that honours `Retry-After` (`orderflow loadgen --retry-shed`) gets its orders in once it passes. The flood at
//! five times capacity is measured alone, in `tests/overload.rs`.

use crate::harness::{Options, System, counter_sum};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use testkit::{Backend, on_both_backends};

on_both_backends!(a_stalled_saga_sheds_new_orders_and_changes_nothing);

fn order(priority: &str) -> Value {
    json!({
        "customer_id": "c-1",
        "items": [{"product_id": "sku-shed", "quantity": 1}],
        "payment_method": "tok_visa",
        "priority": priority,
    })
}

async fn orders_stored(system: &System) -> i64 {
    use sqlx::Row;
    let mut conn = system.connect_to("order").await;
    let row = sqlx::query("SELECT COUNT(*) AS n FROM orders")
        .fetch_one(&mut conn)
        .await
        .expect("count the orders");
    row.try_get::<i64, _>("n").expect("a count")
}

/// A system whose order-service runs with `order_args`, with `sku-shed` in stock.
async fn shedding_system(backend: Backend, order_args: &[&str]) -> Option<System> {
    let options = Options {
        order_args: order_args.iter().map(|arg| (*arg).into()).collect(),
        ..Options::default()
    };
    let system = System::start_with(backend, options).await?;
    system.put_product("sku-shed", 100, 1_000).await;
    Some(system)
}

/// Each of `ids` ends confirmed, and `orderflow verify` passes on the system.
async fn each_confirmed_and_verified(system: &System, ids: &[String]) {
    for id in ids {
        assert_eq!(system.wait_final(id).await["status"], "confirmed", "{id}");
    }
    let verdict = system.verified().await;
    assert!(
        verdict.status.success(),
        "{}",
        crate::harness::shown(&verdict)
    );
}

async fn a_stalled_saga_sheds_new_orders_and_changes_nothing(backend: Backend) {
    let Some(system) = shedding_system(backend, &["--admission-max-wait", "1s"]).await else {
        return;
    };
    let (status, _, first) = system
        .post_order(&order("normal"), &[("Idempotency-Key", "before-the-stall")])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let first_id = first["order_id"].as_str().expect("order_id").to_owned();
    assert_eq!(system.wait_final(&first_id).await["status"], "confirmed");

    // payment-service stops applying events (its database is held locked): every new order's
    // payment waits, and soon longer than the 1 s allowed.
    let block = system.block_consumers("payment").await;
    let mut accepted = vec![first_id.clone()];
    let refused = testkit::wait_until(
        "order-service to refuse a new order",
        Duration::from_secs(30),
        || async {
            let (status, headers, body) = system.post_order(&order("normal"), &[]).await;
            if status == StatusCode::ACCEPTED {
                return None;
            }
            Some((status, headers, body))
        },
    )
    .await;
    let (status, headers, body) = refused;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{headers:?}"
    );
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|kind| kind.ends_with("overloaded")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("ORDERFLOW_ADMISSION_MAX_WAIT")),
        "{body}"
    );
    let retry_after: u64 = headers["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(retry_after >= 1, "{headers:?}");

    // A refusal creates nothing, not even the claim on its Idempotency-Key.
    let stored = orders_stored(&system).await;
    let (status, _, body) = system
        .post_order(
            &order("normal"),
            &[("Idempotency-Key", "shed-then-retried")],
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(orders_stored(&system).await, stored);

    // A repeat of an accepted order still gets it.
    let (status, _, again) = system
        .post_order(&order("normal"), &[("Idempotency-Key", "before-the-stall")])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["order_id"], first_id.as_str());

    // The express lane has no backlog: its orders are still taken.
    let (status, _, express) = system.post_order(&order("express"), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{express}");
    accepted.push(express["order_id"].as_str().expect("order_id").to_owned());

    // Shedding is not a failure: the instance stays in the load balancer.
    let (status, ready) = system
        .get_json(&format!("{}/health/ready", system.order_url))
        .await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    let rejected = counter_sum(
        &system.order_url,
        "orderflow_admission_rejected_total",
        "priority=\"normal\"",
    )
    .await;
    assert!(rejected >= 2.0, "{rejected} refusals counted");

    // A load generator that honours Retry-After keeps its orders until they are taken: here, once
    // payment-service works again and the backlog has drained.
    let polite = system.loadgen(&[
        "--orders",
        "5",
        "--rate",
        "50",
        "--retry-shed",
        "--settle-timeout",
        "60s",
    ]);
    let release = async {
        testkit::wait_until(
            "the load generator's orders to be refused",
            Duration::from_secs(30),
            || async {
                let now = counter_sum(
                    &system.order_url,
                    "orderflow_admission_rejected_total",
                    "priority=\"normal\"",
                )
                .await;
                (now >= rejected + 5.0).then_some(())
            },
        )
        .await;
        block.release().await;
    };
    let (polite, ()) = tokio::join!(polite, release);
    let report: Value = serde_json::from_slice(&polite.stdout).expect("the report");
    assert!(
        polite.status.success(),
        "{}",
        crate::harness::shown(&polite)
    );
    assert_eq!(report["accepted"], 5, "{report}");
    assert_eq!(report["final_states"]["confirmed"], 5, "{report}");
    assert_eq!(report["shed_orders"], 0, "{report}");
    assert!(
        report["shed"].as_u64().is_some_and(|shed| shed >= 5),
        "{report}"
    );

    // The refused request, retried with its key, places its order.
    let retried = testkit::wait_until(
        "order-service to accept new orders again",
        Duration::from_secs(60),
        || async {
            let (status, _, body) = system
                .post_order(
                    &order("normal"),
                    &[("Idempotency-Key", "shed-then-retried")],
                )
                .await;
            (status == StatusCode::ACCEPTED).then_some(body)
        },
    )
    .await;
    accepted.push(retried["order_id"].as_str().expect("order_id").to_owned());
    each_confirmed_and_verified(&system, &accepted).await;

    // One line when shedding started and one when it stopped, however many were refused.
    let logs = system.logs();
    let lines = |message: &str| {
        logs.lines()
            .filter(|line| line.contains(message) && line.contains("\"priority\":\"normal\""))
            .count()
    };
    assert_eq!(lines("shedding started"), 1, "{logs}");
    assert_eq!(lines("shedding stopped"), 1, "{logs}");
}

on_both_backends!(a_full_outbox_sheds_new_orders_of_its_lane);

/// Orders accepted while their events cannot be published pile up in order-service's outbox, where
/// `/health/ready` would take the whole service out of its load balancer at
/// `ORDERFLOW_OUTBOX_READY_LIMIT`: the lane sheds at 80 % of it, long before its wait reaches
/// `ORDERFLOW_ADMISSION_MAX_WAIT`, and takes orders again once the outbox drains.
async fn a_full_outbox_sheds_new_orders_of_its_lane(backend: Backend) {
    let Some(mut system) = shedding_system(backend, &["--outbox-ready-limit", "10"]).await else {
        return;
    };
    system.nats.kill();
    let accepted = std::cell::RefCell::new(Vec::new());
    let (status, headers, body) = testkit::wait_until(
        "order-service to refuse a new order",
        Duration::from_secs(30),
        || async {
            let (status, headers, body) = system.post_order(&order("normal"), &[]).await;
            if status != StatusCode::ACCEPTED {
                return Some((status, headers, body));
            }
            let order_id = body["order_id"].as_str().expect("order_id").to_owned();
            accepted.borrow_mut().push(order_id);
            None
        },
    )
    .await;
    let mut accepted = accepted.into_inner();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    let detail = body["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("outbox") && detail.contains("ORDERFLOW_OUTBOX_READY_LIMIT"),
        "{body}"
    );
    // Shed at 8 waiting events: orders let in between two refreshes of the estimate count too, and
    // only those accepted while a refresh reads the outbox may be counted late.
    assert!(
        (8..=16).contains(&accepted.len()),
        "{} accepted",
        accepted.len()
    );
    // The next refresh of the estimate sees them and sheds.
    let status_url = format!("{}/status", system.order_url);
    let admission = testkit::wait_until(
        "/status to show the normal lane shedding",
        Duration::from_secs(10),
        || async {
            let (_, body) = system.get_json(&status_url).await;
            let admission = body["details"]["admission"].clone();
            (admission["normal"]["shedding"] == true).then_some(admission)
        },
    )
    .await;
    assert_eq!(admission["shed_at_outbox"], 8, "{admission}");
    assert_eq!(
        admission["normal"]["outbox_unpublished"],
        accepted.len(),
        "{admission}"
    );

    // The express lane's outbox is empty: its orders are still taken.
    let (status, _, express) = system.post_order(&order("express"), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{express}");
    accepted.push(express["order_id"].as_str().expect("order_id").to_owned());

    system.nats.restart().await;
    let again = testkit::wait_until(
        "order-service to accept new orders again",
        Duration::from_secs(60),
        || async {
            let (status, _, body) = system.post_order(&order("normal"), &[]).await;
            (status == StatusCode::ACCEPTED).then_some(body)
        },
    )
    .await;
    accepted.push(again["order_id"].as_str().expect("order_id").to_owned());
    each_confirmed_and_verified(&system, &accepted).await;
}

on_both_backends!(payments_the_gateway_cannot_take_wait_in_the_stream);

/// Payments waiting for payment-service's worker, from its database.
async fn payments_waiting(system: &System) -> i64 {
    use sqlx::Row;
    let mut conn = system.connect_to("payment").await;
    let row =
        sqlx::query("SELECT COUNT(*) AS n FROM payments WHERE status IN ('charging', 'refunding')")
            .fetch_one(&mut conn)
            .await
            .expect("count the payments");
    row.try_get::<i64, _>("n").expect("a count")
}

/// Messages waiting for payment-service's normal consumers, on the broker.
async fn payment_consumers_pending(system: &System) -> u64 {
    let js = system.jetstream().await;
    let mut pending = 0;
    for (stream, consumer) in [
        ("ORDERS", "payment-orders"),
        ("INVENTORY", "payment-inventory"),
    ] {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(stream)
            .await
            .expect("the stream")
            .get_consumer(consumer)
            .await
            .expect("the consumer");
        pending += consumer.info().await.expect("its state").num_pending;
    }
    pending
}

async fn payments_the_gateway_cannot_take_wait_in_the_stream(backend: Backend) {
    let Some(system) = System::start_with(
        backend,
        Options {
            payment_args: vec!["--charge-concurrency".into(), "1".into()],
            // With the payment consumers held back, admission control refuses new orders once
            // their oldest message has waited half the saga timeout, and placing 300 orders took
            // longer than 15 s on a busy CI machine: a long timeout lets all of them in (what this
            // test shows is where they wait), and gives the charges one at a time room after.
            order_args: vec!["--saga-timeout".into(), "3m".into()],
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    system.put_product("sku-shed", 100, 1_000).await;
    // The gateway is down: the breaker opens and every payment waits for it.
    system.set_gateway_faults(&json!({"mode": "down"})).await;
    let mut placed = Vec::new();
    for _ in 0..300 {
        let (status, _, body) = system.post_order(&order("normal"), &[]).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        placed.push(body["order_id"].as_str().expect("order_id").to_owned());
    }
    // payment-service stops taking events once 16 payments wait for its one gateway call (plus
    // what its two consumers had pulled already): the rest waits in the streams.
    testkit::wait_until(
        "the payment consumers to hold back",
        Duration::from_secs(60),
        || async { (payment_consumers_pending(&system).await >= 50).then_some(()) },
    )
    .await;
    let waiting = payments_waiting(&system).await;
    let bound = payment_service::handlers::WAITING_PER_CALL as i64 + 2 * 100;
    assert!(
        waiting <= bound,
        "{waiting} payments wait in payment-service's database, over {bound}"
    );
    // Once the gateway is back, every order goes through.
    system.set_gateway_faults(&json!({"mode": "ok"})).await;
    each_confirmed_and_verified(&system, &placed).await;
}
