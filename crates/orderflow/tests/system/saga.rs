//! The saga's outcomes: confirmed, cancelled for stock, cancelled for payment, all-or-nothing
//! reservations, and no overselling under concurrency.

use crate::harness::System;
use reqwest::StatusCode;
use serde_json::json;
use testkit::Backend;
use testkit::on_both_backends;

on_both_backends!(
    happy_path_confirms_and_sells,
    missing_stock_cancels_without_charging,
    declined_card_cancels_and_releases_stock,
    reservation_is_all_or_nothing,
    concurrent_orders_never_oversell,
);

async fn happy_path_confirms_and_sells(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;

    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 2}]), "tok_visa")
        .await;
    let order = system.wait_final(&id).await;

    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["total_cents"], 2598);
    assert_eq!(order["cancel_reason"], serde_json::Value::Null);
    system.wait_stock("sku-1", 8, 0, 2).await;
    let (status, payment) = system.payment(&id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(payment["amount_cents"], 2598);
    assert_eq!(
        system.timeline_types(&id).await,
        [
            "orders.created",
            "inventory.reserved",
            "payments.succeeded",
            "orders.confirmed"
        ]
    );
    assert_eq!(system.charges_for(&id).await.len(), 1);
}

async fn missing_stock_cancels_without_charging(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-low", 500, 3).await;

    let short = system
        .place(
            json!([{"product_id": "sku-low", "quantity": 5}]),
            "tok_visa",
        )
        .await;
    let unknown = system
        .place(
            json!([{"product_id": "sku-nope", "quantity": 1}]),
            "tok_visa",
        )
        .await;

    let short_order = system.wait_final(&short).await;
    assert_eq!(short_order["status"], "cancelled");
    assert_eq!(short_order["cancel_reason"], "insufficient_stock");
    let unknown_order = system.wait_final(&unknown).await;
    assert_eq!(unknown_order["status"], "cancelled");
    assert_eq!(unknown_order["cancel_reason"], "unknown_product");

    system.wait_stock("sku-low", 3, 0, 0).await;
    for id in [&short, &unknown] {
        assert!(system.charges_for(id).await.is_empty(), "charged {id}");
        assert_eq!(system.payment(id).await.0, StatusCode::NOT_FOUND);
    }
}

async fn declined_card_cancels_and_releases_stock(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;

    let id = system
        .place(
            json!([{"product_id": "sku-1", "quantity": 3}]),
            "tok_chargeDeclined",
        )
        .await;
    let order = system.wait_final(&id).await;

    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["cancel_reason"], "payment_declined");
    system.wait_stock("sku-1", 10, 0, 0).await;
    let (_, payment) = system.payment(&id).await;
    assert_eq!(payment["status"], "declined");
    assert_eq!(
        system.timeline_types(&id).await,
        [
            "orders.created",
            "inventory.reserved",
            "payments.failed",
            "orders.cancelled"
        ]
    );
}

async fn reservation_is_all_or_nothing(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-a", 100, 5).await;
    system.put_product("sku-b", 100, 1).await;

    let id = system
        .place(
            json!([
                {"product_id": "sku-a", "quantity": 2},
                {"product_id": "sku-b", "quantity": 3}
            ]),
            "tok_visa",
        )
        .await;
    let order = system.wait_final(&id).await;

    assert_eq!(order["status"], "cancelled");
    assert_eq!(order["cancel_reason"], "insufficient_stock");
    let a = system.product("sku-a").await;
    let b = system.product("sku-b").await;
    assert_eq!(
        (a["available"].clone(), a["reserved"].clone()),
        (json!(5), json!(0))
    );
    assert_eq!(
        (b["available"].clone(), b["reserved"].clone()),
        (json!(1), json!(0))
    );
    let inventory_events = system.events_of("INVENTORY", &id).await;
    assert_eq!(inventory_events.len(), 1);
    assert_eq!(inventory_events[0].0, "inventory.rejected");
}

async fn concurrent_orders_never_oversell(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-hot", 1000, 20).await;

    let placed = futures::future::join_all((0..50).map(|_| {
        system.place(
            json!([{"product_id": "sku-hot", "quantity": 1}]),
            "tok_visa",
        )
    }))
    .await;
    let mut confirmed = 0;
    let mut out_of_stock = 0;
    for id in &placed {
        let order = system.wait_final(id).await;
        match (order["status"].as_str(), order["cancel_reason"].as_str()) {
            (Some("confirmed"), _) => confirmed += 1,
            (Some("cancelled"), Some("insufficient_stock")) => out_of_stock += 1,
            other => panic!("unexpected outcome {other:?} for {order}"),
        }
    }

    assert_eq!((confirmed, out_of_stock), (20, 30));
    system.wait_stock("sku-hot", 0, 0, 20).await;
}

on_both_backends!(replicated_inventory_never_oversells);

/// Two instances of each service share one database (one PostgreSQL database, or one SQLite file
/// opened by two processes in WAL mode with a busy timeout) and their durable consumers: the
/// conditional updates, not a single process, are what prevent overselling.
async fn replicated_inventory_never_oversells(backend: Backend) {
    let options = crate::harness::Options {
        replicas: 1,
        // Per-event lines are at debug: they show which instance applied what.
        service_env: vec![("RUST_LOG".into(), "info,platform::consumer=debug".into())],
        ..Default::default()
    };
    let Some(system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-hot", 1000, 20).await;
    system.put_product("sku-warm", 500, 30).await;

    let placed = futures::future::join_all((0..50).map(|i| {
        let items = if i % 2 == 0 {
            json!([{"product_id": "sku-hot", "quantity": 1}, {"product_id": "sku-warm", "quantity": 1}])
        } else {
            json!([{"product_id": "sku-warm", "quantity": 1}, {"product_id": "sku-hot", "quantity": 1}])
        };
        system.place(items, "tok_visa")
    }))
    .await;
    let mut confirmed = 0;
    for id in &placed {
        if system.wait_final(id).await["status"] == "confirmed" {
            confirmed += 1;
        }
    }

    assert_eq!(confirmed, 20);
    system.wait_stock("sku-hot", 0, 0, 20).await;
    system.wait_stock("sku-warm", 10, 0, 20).await;
    // Both instances did their share, so the conditional updates were really raced.
    let replicas = system
        .replicas
        .iter()
        .filter(|replica| replica.service == "inventory-service")
        .map(|replica| &replica.process);
    for instance in std::iter::once(&system.inventory).chain(replicas) {
        assert!(
            instance.log().contains("\"event applied\""),
            "{} applied nothing\n{}",
            instance.name(),
            system.logs()
        );
    }
    system.verified().await;
}
