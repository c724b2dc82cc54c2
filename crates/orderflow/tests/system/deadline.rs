//! The saga deadline: an order whose saga stalls is cancelled with reason `timeout`, its stock is
//! released and it is never charged — also when order-service was down at the deadline.

use crate::harness::{Options, System};
use crate::on_both_backends;
use serde_json::json;
use std::time::Duration;
use testkit::Backend;

on_both_backends!(a_stalled_saga_is_cancelled_at_its_deadline);

const TIMEOUT: Duration = Duration::from_secs(2);

async fn a_stalled_saga_is_cancelled_at_its_deadline(backend: Backend) {
    let options = Options {
        order_args: vec![
            "--saga-timeout".into(),
            format!("{}ms", TIMEOUT.as_millis()),
        ],
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
}

on_both_backends!(a_charge_that_lands_after_the_cancel_is_refunded);

async fn a_charge_that_lands_after_the_cancel_is_refunded(backend: Backend) {
    // The gateway takes 3 s to answer; the saga gives up after 1 s, while the charge is in flight.
    let options = Options {
        order_args: vec!["--saga-timeout".into(), "1s".into()],
        payment_args: vec!["--gateway-timeout-ms".into(), "10000".into()],
        ..Options::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let slow = reqwest::Client::new()
        .post(format!("{}/admin/faults", system.gateway_url))
        .json(&json!({"mode": "slow", "latency_ms": 3000}))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);

    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 2}]), "tok_visa")
        .await;
    let order = system.wait_final(&id).await;
    assert_eq!(order["cancel_reason"], "timeout");

    let payment = testkit::wait_until(
        "the late charge to be refunded",
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
    system.verified().await;
}
