//! Delivery guarantees: a redelivered or re-published event has its effect once, and an event
//! committed but not yet published when its service dies is published after the restart.

use crate::harness::{Options, SAGA_DEADLINE, System};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashMap;
use testkit::on_both_backends;
use testkit::{Backend, wait_until};

on_both_backends!(
    a_republished_event_has_its_effect_once,
    a_committed_event_survives_a_crash_before_publishing,
    a_consumer_killed_on_an_events_last_allowed_delivery_loses_nothing,
);

const CONSUMERS: [(&str, &str); 5] = [
    ("ORDERS", "inventory-orders"),
    ("ORDERS", "payment-orders"),
    ("INVENTORY", "payment-inventory"),
    ("INVENTORY", "order-inventory"),
    ("PAYMENTS", "order-payments"),
];

async fn subject_counts(system: &System) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for stream in ["ORDERS", "INVENTORY", "PAYMENTS"] {
        for (subject, _) in system.stream_events(stream).await {
            *counts.entry(subject).or_default() += 1;
        }
    }
    counts
}

async fn wait_all_consumers_idle(system: &System) {
    for (stream, consumer) in CONSUMERS {
        system.wait_consumer_idle(stream, consumer).await;
    }
}

async fn a_republished_event_has_its_effect_once(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 2}]), "tok_visa")
        .await;
    assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    system.wait_stock("sku-1", 8, 0, 2).await;
    wait_all_consumers_idle(&system).await;
    let before = subject_counts(&system).await;
    let (_, payment_before) = system.payment(&id).await;

    // Publish every event of the saga again, byte for byte, under a fresh message id, so JetStream's
    // own de-duplication cannot catch it: only the consumers' inboxes stand in the way.
    let js = system.jetstream().await;
    let mut republished: HashMap<String, usize> = HashMap::new();
    for stream_name in ["ORDERS", "INVENTORY", "PAYMENTS"] {
        let stream = js.get_stream(stream_name).await.unwrap();
        let last = stream.get_info().await.unwrap().state.last_sequence;
        for sequence in 1..=last {
            let message = stream.get_raw_message(sequence).await.unwrap();
            let envelope: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            if envelope["order_id"] != id.as_str() {
                continue;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", uuid::Uuid::new_v4().to_string().as_str());
            js.publish_with_headers(
                message.subject.to_string(),
                headers,
                message.payload.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
            *republished.entry(message.subject.to_string()).or_default() += 1;
        }
    }
    assert_eq!(republished.len(), 4, "{republished:?}");
    wait_all_consumers_idle(&system).await;

    let after = subject_counts(&system).await;
    for (subject, count) in &after {
        let expected = before.get(subject).copied().unwrap_or(0)
            + republished.get(subject).copied().unwrap_or(0);
        assert_eq!(*count, expected, "services emitted extra {subject} events");
    }
    system.wait_stock("sku-1", 8, 0, 2).await;
    assert_eq!(system.charges_for(&id).await.len(), 1);
    let (status, payment_after) = system.payment(&id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(payment_after, payment_before);
    assert_eq!(system.order(&id).await["status"], "confirmed");
}

async fn a_committed_event_survives_a_crash_before_publishing(backend: Backend) {
    let Some(mut system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;

    // With the broker gone the order is still accepted and committed, with its event in the outbox;
    // then order-service dies before it could publish it.
    system.nats.kill();
    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    assert_eq!(system.order(&id).await["status"], "pending");
    system.order.kill();

    system.nats.restart().await;
    system.order.restart();
    system.wait_ready(&system.order_url.clone()).await;

    let order = system.wait_final(&id).await;
    assert_eq!(order["status"], "confirmed", "{order}");
    system.wait_stock("sku-1", 9, 0, 1).await;
    let subjects: Vec<String> = system
        .events_of("ORDERS", &id)
        .await
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    assert_eq!(subjects, ["orders.created", "orders.confirmed"]);
    assert_eq!(system.charges_for(&id).await.len(), 1);
}

/// With one delivery allowed, the first delivery is also the last. inventory-service is SIGKILLed
/// while it holds `orders.created` (its database keeps the event waiting); the broker must deliver the
/// event again after the restart, because only the runtime may give up on a message, and then it is
/// applied. With the broker's own limit at one delivery it would be gone for good.
async fn a_consumer_killed_on_an_events_last_allowed_delivery_loses_nothing(backend: Backend) {
    let options = Options {
        service_args: vec![
            "--max-deliver".into(),
            "1".into(),
            "--ack-wait".into(),
            "2s".into(),
        ],
        ..Options::default()
    };
    let Some(mut system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 1299, 10).await;
    let block = system.block_consumers("inventory").await;
    let id = system
        .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
        .await;
    let js = system.jetstream().await;
    wait_until(
        "inventory-orders to hold the event",
        SAGA_DEADLINE,
        || async {
            let stream = js.get_stream("ORDERS").await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("inventory-orders").await.ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_ack_pending >= 1).then_some(())
        },
    )
    .await;
    system.inventory.kill();
    block.release().await;
    system.inventory.restart();
    system.wait_ready(&system.inventory_url.clone()).await;

    assert_eq!(system.wait_final(&id).await["status"], "confirmed");
    system.wait_stock("sku-1", 9, 0, 1).await;
    system.verified().await;
}
