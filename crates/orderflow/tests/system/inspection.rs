//! `orderflow status` and `orderflow trace` against a running system: what an operator sees of a
//! healthy system, of one finished order, and of an order stuck because a service is down.

use crate::harness::{System, shown, text};
use serde_json::{Value, json};
use testkit::Backend;
use testkit::on_both_backends;

on_both_backends!(status_and_trace_show_a_finished_order_and_where_a_stuck_one_waits);

fn json_of(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", shown(output)))
}

async fn status_and_trace_show_a_finished_order_and_where_a_stuck_one_waits(backend: Backend) {
    let Some(mut system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let done = system
        .place(json!([{"product_id": "sku-1", "quantity": 2}]), "tok_visa")
        .await;
    assert_eq!(system.wait_final(&done).await["status"], "confirmed");

    let output = system.inspect(&["status", "--json"]);
    assert!(output.status.success(), "{}", shown(&output));
    let status = json_of(&output);
    assert_eq!(status["ok"], true, "{status}");
    let services: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"]["ready"]["status"].as_str().unwrap_or("down"))
        .collect();
    assert_eq!(services, ["ready"; 4], "{status}");
    let consumers = status["consumers"].as_array().unwrap();
    assert_eq!(
        consumers.len(),
        contracts::topology::ALL_CONSUMERS.len(),
        "{status}"
    );
    assert!(consumers.iter().all(|c| c["declared"] == true), "{status}");
    assert_eq!(status["dead_letters"], 0);
    let table = text(&system.inspect(&["status"]).stdout);
    assert!(table.contains("order-service"), "{table}");
    assert!(table.contains("payment-inventory"), "{table}");

    let output = system.inspect(&["trace", &done, "--json"]);
    assert!(output.status.success(), "{}", shown(&output));
    let waterfall = json_of(&output);
    assert_eq!(waterfall["status"], "confirmed", "{waterfall}");
    assert!(waterfall["took_ms"].as_f64().unwrap() > 0.0, "{waterfall}");
    assert_eq!(waterfall["trace_id"], system.order(&done).await["trace_id"]);
    let events = waterfall["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "orders.created",
            "inventory.reserved",
            "payments.succeeded",
            "orders.confirmed"
        ],
        "{waterfall}"
    );
    for event in events {
        for handling in event["handled"].as_array().unwrap() {
            assert!(
                handling["gap_ms"].as_f64().is_some_and(|gap| gap >= 0.0),
                "every consumer handled every event: {waterfall}"
            );
        }
    }
    assert!(
        waterfall["waiting"].as_array().unwrap().is_empty(),
        "{waterfall}"
    );

    // Payment-service down: the next order stops after its reservation, and both commands say where.
    system.payment.kill();
    let stuck = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    system.wait_stock("sku-1", 7, 1, 2).await;
    let waterfall = testkit::wait_until(
        "trace to see the reservation",
        crate::harness::SAGA_DEADLINE,
        || async {
            let waterfall = json_of(&system.inspect(&["trace", &stuck, "--json"]));
            let reserved = waterfall["events"]
                .as_array()?
                .iter()
                .any(|e| e["type"] == "inventory.reserved");
            reserved.then_some(waterfall)
        },
    )
    .await;
    assert_eq!(waterfall["status"], "pending", "{waterfall}");
    let waiting = waterfall["waiting"].as_array().unwrap();
    assert!(
        waiting.iter().any(|line| {
            let line = line.as_str().unwrap_or("");
            line.starts_with("inventory.reserved published")
                && line.contains("not handled yet by payment-inventory (payment-service)")
                && line.contains("payment-inventory has 1 pending")
        }),
        "{waterfall}"
    );
    let output = system.inspect(&["status", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    let status = json_of(&output);
    assert_eq!(status["ok"], false);
    assert_eq!(status["services"][2]["service"], "payment-service");
    assert!(
        status["services"][2]["error"]
            .as_str()
            .unwrap()
            .contains("not answering"),
        "{status}"
    );

    let output = system.inspect(&["trace", "0193a5c0-0000-7000-8000-000000000099"]);
    assert_eq!(output.status.code(), Some(1), "{}", shown(&output));
    assert!(
        text(&output.stderr).contains("knows no order"),
        "{}",
        shown(&output)
    );
}
