//! The saga deadline: an order whose saga stalls is cancelled with reason `timeout`, its stock is
//! released and it is never charged — also when order-service was down at the deadline.

use crate::harness::{Options, System};
use serde_json::json;
use std::time::Duration;
use testkit::Backend;
use testkit::on_both_backends;

on_both_backends!(a_stalled_saga_is_cancelled_at_its_deadline);

const TIMEOUT: Duration = Duration::from_secs(2);

async fn a_stalled_saga_is_cancelled_at_its_deadline(backend: Backend) {
    let options = Options {
        order_args: vec![
            "--saga-timeout".into(),
            format!("{}ms", TIMEOUT.as_millis()),
            // payment-service is down on purpose, so admission control would rightly refuse the
            // second order (its saga could only time out; ADR 16): this test is about what becomes
            // of the orders that are taken.
            "--admission-max-wait".into(),
            "off".into(),
        ],
        // The saga timeout must exceed the ack wait (a shorter one is refused at start).
        service_args: vec!["--ack-wait".into(), "1s".into()],
        ..Options::default()
    };
    let Some(mut system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    // Without payment-service the saga stalls after the reservation.
    system.payment.kill();

    let stalled = system
        .place(json!([{"product_id": "sku-1", "quantity": 2}]), "tok_visa")
        .await;
    let order = system.wait_final(&stalled).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["cancel_reason"], "timeout");
    system.wait_stock("sku-1", 10, 0, 0).await;

    // A deadline that passes while order-service is down is honoured when it comes back.
    let missed = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    system.order.kill();
    // Waiting for wall-clock time itself: the deadline must pass while the service is down.
    tokio::time::sleep(TIMEOUT + Duration::from_millis(500)).await;
    system.order.restart();
    system.wait_ready(&system.order_url.clone()).await;
    let order = system.wait_final(&missed).await;
    assert_eq!(order["cancel_reason"], "timeout");
    system.wait_stock("sku-1", 10, 0, 0).await;

    // Payment-service, back late, learns of both orders and charges neither.
    system.payment.restart();
    system.wait_ready(&system.payment_url.clone()).await;
    system.wait_consumer_idle("ORDERS", "payment-orders").await;
    system
        .wait_consumer_idle("INVENTORY", "payment-inventory")
        .await;
    for id in [&stalled, &missed] {
        let charges = system.charges_for(id).await;
        assert!(
            charges
                .iter()
                .all(|c| c["refunded"] == true || c["status"] != "succeeded"),
            "{id} has a net charge: {charges:?}"
        );
        assert_eq!(system.order(id).await["status"], "cancelled");
    }
    assert_eq!(
        system.timeline_types(&stalled).await[..3],
        ["orders.created", "inventory.reserved", "orders.cancelled"]
    );
    // The deadline's cancellation joins the trace of the request that placed the order.
    crate::traces::one_trace(&system, &stalled).await;
    crate::traces::one_trace(&system, &missed).await;
}

on_both_backends!(
    a_charge_whose_answer_is_lost_is_found_by_lookup_and_refunded,
    a_gateway_down_past_the_deadline_never_charges_the_cancelled_order,
);

async fn a_charge_whose_answer_is_lost_is_found_by_lookup_and_refunded(backend: Backend) {
    // The gateway charges at once but answers only after 3 s; payment-service waits 1 s per call, so
    // it never hears whether the card was charged, and the saga ends (4 s) without an answer.
    let options = Options {
        order_args: vec!["--saga-timeout".into(), "4s".into()],
        payment_args: vec!["--gateway-timeout-ms".into(), "1000".into()],
        service_args: vec!["--ack-wait".into(), "1s".into()],
        ..Options::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    system
        .set_gateway_faults(&json!({"mode": "slow", "latency_ms": 3000}))
        .await;

    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 2}]), "tok_visa")
        .await;
    let order = system.wait_final(&id).await;
    assert_eq!(order["status"], "cancelled");
    assert!(
        ["timeout", "payment_unavailable"].contains(&order["cancel_reason"].as_str().unwrap_or("")),
        "{order}"
    );

    // Once the gateway answers again, the charge is found by its key and refunded; nothing is
    // charged again to find out.
    system.set_gateway_faults(&json!({"mode": "ok"})).await;
    let payment = testkit::wait_until(
        "the charge found by lookup to be refunded",
        crate::harness::SAGA_DEADLINE,
        || async {
            let (_, payment) = system.payment(&id).await;
            (payment["status"] == "refunded").then_some(payment)
        },
    )
    .await;
    assert_eq!(payment["amount_cents"], 2598);
    let charges = system.charges_for(&id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["refunded"], true);
    assert_eq!(system.order(&id).await["status"], "cancelled");
    system.wait_stock("sku-1", 10, 0, 0).await;
    testkit::wait_until(
        "payments.refunded in the order's timeline",
        crate::harness::SAGA_DEADLINE,
        || async {
            let types = system.timeline_types(&id).await;
            types
                .contains(&"payments.refunded".to_owned())
                .then_some(())
        },
    )
    .await;
    // The worker's refund, long after any request, is still a span of the order's trace.
    crate::traces::one_trace(&system, &id).await;
    system.verified().await;
}

async fn a_gateway_down_past_the_deadline_never_charges_the_cancelled_order(backend: Backend) {
    let options = Options {
        order_args: vec!["--saga-timeout".into(), "3s".into()],
        payment_args: vec!["--gateway-timeout-ms".into(), "500".into()],
        service_args: vec!["--ack-wait".into(), "1s".into()],
        ..Options::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    // Down from before the order until after the saga has ended.
    system.set_gateway_faults(&json!({"mode": "down"})).await;
    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    assert_eq!(system.wait_final(&id).await["status"], "cancelled");
    system.set_gateway_faults(&json!({"mode": "ok"})).await;

    // payment-service settles its unanswered calls by looking the charge up, and finds none.
    let payment = testkit::wait_until(
        "the unanswered payment to be settled",
        crate::harness::SAGA_DEADLINE,
        || async {
            let (_, payment) = system.payment(&id).await;
            (payment["status"] == "failed").then_some(payment)
        },
    )
    .await;
    assert!(payment["attempts"].as_i64().unwrap_or(0) >= 2, "{payment}");
    assert!(
        system.charges_for(&id).await.is_empty(),
        "a cancelled order was charged"
    );
    system.wait_stock("sku-1", 10, 0, 0).await;
    system.verified().await;
}
