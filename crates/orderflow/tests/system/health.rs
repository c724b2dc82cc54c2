//! Health and metrics endpoints, and riding out a broker outage without a restart.

use crate::harness::System;
use reqwest::StatusCode;
use serde_json::json;
use testkit::Backend;
use testkit::on_both_backends;

on_both_backends!(readiness_follows_nats_and_orders_wait_out_an_outage);

async fn readiness_follows_nats_and_orders_wait_out_an_outage(backend: Backend) {
    let Some(mut system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let urls = [
        system.order_url.clone(),
        system.inventory_url.clone(),
        system.payment_url.clone(),
    ];
    for url in &urls {
        let (status, body) = system.get_json(&format!("{url}/health/live")).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        assert_eq!(body["status"], "live", "{url}: {body}");
        let (status, body) = system.get_json(&format!("{url}/health/ready")).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        for check in ["database", "nats", "streams", "outbox", "outbox-relay"] {
            assert_eq!(body["checks"][check], "ok", "{url}: {check}: {body}");
        }
    }
    // Each serves the OpenAPI document that is checked in for it.
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (url, service) in urls
        .iter()
        .zip(["order-service", "inventory-service", "payment-service"])
    {
        let (status, served) = system.get_json(&format!("{url}/openapi.json")).await;
        assert_eq!(status, StatusCode::OK, "{url}: {served}");
        let file = repository.join(format!("schemas/openapi/{service}.json"));
        let checked_in: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            served,
            checked_in,
            "{service} serves another document than {}",
            file.display()
        );
    }

    system.nats.kill();
    for url in &urls {
        let ready = format!("{url}/health/ready");
        // The `streams` check (a request to the broker) may fail a moment before the client has
        // noticed the connection is gone: wait for the `nats` check itself.
        let body = testkit::wait_until(
            &format!("{ready} to report NATS down"),
            crate::harness::SAGA_DEADLINE,
            || async {
                let (status, body) = system.get_json(&ready).await;
                (status == StatusCode::SERVICE_UNAVAILABLE && body["checks"]["nats"] != "ok")
                    .then_some(body)
            },
        )
        .await;
        assert_ne!(body["checks"]["nats"], "ok", "{body}");
        assert_eq!(body["checks"]["database"], "ok", "{body}");
    }
    // Orders are still accepted while the broker is away; their events wait in the outbox.
    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;

    system.nats.restart().await;
    for url in &urls {
        system.wait_ready(url).await;
    }
    assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    // `orders.confirmed` is committed with the order and relayed a moment later:
    // the outbox figures below are the drained state, so wait for it.
    let status = format!("{}/status", system.order_url);
    testkit::wait_until(
        "order-service's outbox to drain",
        crate::harness::SAGA_DEADLINE,
        || async {
            let (_, body) = system.get_json(&status).await;
            (body["outbox"]["unpublished"] == 0).then_some(())
        },
    )
    .await;

    let metrics = reqwest::get(format!("{}/metrics", system.order_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("orderflow_http_requests_total") && metrics.contains("route=\"/orders\""),
        "{metrics}"
    );
    for expected in [
        "orderflow_events_published_total{subject=\"orders.created\",outcome=\"published\"}",
        "orderflow_events_consumed_total{consumer=\"order-payments\",outcome=\"applied\"}",
        "orderflow_event_handling_duration_seconds_bucket{consumer=\"order-payments\"",
        "orderflow_orders_accepted_total",
        "orderflow_orders_finished_total{status=\"confirmed\",reason=\"\"} 1",
        "orderflow_saga_duration_seconds_bucket{status=\"confirmed\"",
        "orderflow_outbox_unpublished_events 0",
        "orderflow_outbox_oldest_unpublished_age_seconds 0",
        "orderflow_consumer_pending_messages{consumer=\"order-inventory\"} 0",
        "orderflow_consumer_redelivered_messages{consumer=\"order-payments\"}",
        "orderflow_dead_letters{consumer=\"order-payments\"} 0",
        "orderflow_health_check_up{check=\"streams\"} 1",
    ] {
        assert!(metrics.contains(expected), "no {expected} in:\n{metrics}");
    }

    // `/status`: what an operator looks at when a saga is stuck, per service.
    let (_, order) = system
        .get_json(&format!("{}/status", system.order_url))
        .await;
    assert_eq!(order["service"], "order-service", "{order}");
    assert_eq!(order["ready"]["status"], "ready", "{order}");
    assert_eq!(order["outbox"]["unpublished"], 0, "{order}");
    let consumers: Vec<&str> = order["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["consumer"].as_str().unwrap())
        .collect();
    assert_eq!(
        consumers,
        [
            "order-inventory",
            "order-payments",
            "order-inventory-express",
            "order-payments-express"
        ],
        "{order}"
    );
    assert_eq!(
        order["details"]["orders_last_minute"]["confirmed"], 1,
        "{order}"
    );
    assert_eq!(
        order["details"]["orders_last_minute"]["accepted"], 1,
        "{order}"
    );
    let (_, payment) = system
        .get_json(&format!("{}/status", system.payment_url))
        .await;
    assert_eq!(payment["details"]["breaker"], "closed", "{payment}");
    let (_, inventory) = system
        .get_json(&format!("{}/status", system.inventory_url))
        .await;
    assert_eq!(inventory["details"]["stock"]["sold"], 1, "{inventory}");
    assert_eq!(inventory["details"]["stock"]["available"], 9, "{inventory}");
    let metrics = reqwest::get(format!("{}/metrics", system.inventory_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("orderflow_stock_units{state=\"sold\"} 1"),
        "{metrics}"
    );
}
