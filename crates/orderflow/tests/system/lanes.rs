//! Priority lanes (ADR 15): an express order's saga travels on subjects and consumers of its own.
//! What a flood of normal orders costs it is measured alone, in `tests/flood.rs`.

use crate::harness::System;
use async_nats::jetstream::consumer::PullConsumer;
use contracts::topology::{ALL_CONSUMERS, receives};
use reqwest::StatusCode;
use serde_json::json;
use testkit::{Backend, on_both_backends};

on_both_backends!(an_express_order_travels_in_its_own_lane_from_start_to_end);

async fn an_express_order_travels_in_its_own_lane_from_start_to_end(backend: Backend) {
    let Some(system) = System::start(backend).await else {
        return;
    };
    system.put_product("sku-lane", 500, 10).await;
    let place = |priority: &'static str, payment_method: &'static str| {
        let system = &system;
        async move {
            let (status, _, body) = system
                .post_order(
                    &json!({
                        "customer_id": "c-1",
                        "items": [{"product_id": "sku-lane", "quantity": 1}],
                        "payment_method": payment_method,
                        "priority": priority,
                    }),
                    &[],
                )
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            body["order_id"].as_str().expect("order_id").to_owned()
        }
    };
    let express = place("express", "tok_visa").await;
    let declined = place("express", "tok_chargeDeclined").await;
    let normal = place("normal", "tok_visa").await;
    assert_eq!(system.wait_final(&express).await["status"], "confirmed");
    assert_eq!(system.wait_final(&declined).await["status"], "cancelled");
    assert_eq!(system.wait_final(&normal).await["status"], "confirmed");
    assert_eq!(system.order(&express).await["priority"], "express");
    assert_eq!(system.order(&normal).await["priority"], "normal");

    // Every event of an express saga is on an express subject, with its type unchanged; the normal
    // order's never are.
    for stream in ["ORDERS", "INVENTORY", "PAYMENTS"] {
        for (order, lane) in [(&express, true), (&declined, true), (&normal, false)] {
            let events = system.events_of(stream, order).await;
            assert!(!events.is_empty(), "{stream} has no event of {order}");
            for (subject, envelope) in events {
                let event_type = envelope["type"].as_str().expect("type");
                let expected = if lane {
                    event_type.replacen('.', ".express.", 1)
                } else {
                    event_type.to_owned()
                };
                assert_eq!(subject, expected, "{stream}: {envelope}");
            }
        }
    }
    // Each consumer was delivered exactly the messages of its lane: the express consumers the
    // express orders' events, the normal ones the rest (nothing here is delivered twice).
    for spec in ALL_CONSUMERS {
        system.wait_consumer_idle(spec.stream, spec.name).await;
        let subjects: Vec<String> = system
            .stream_events(spec.stream)
            .await
            .into_iter()
            .map(|(subject, _)| subject)
            .collect();
        let expected = subjects
            .iter()
            .filter(|subject| receives(&spec, subject))
            .count() as u64;
        let js = system.jetstream().await;
        let mut consumer: PullConsumer = js
            .get_stream(spec.stream)
            .await
            .expect("stream")
            .get_consumer(spec.name)
            .await
            .expect("consumer");
        let info = consumer.info().await.expect("consumer info");
        assert!(expected > 0, "{}: no message of its lane", spec.name);
        assert_eq!(info.delivered.consumer_sequence, expected, "{}", spec.name);
    }
    // A priority that is not one is refused, naming the field, and creates nothing.
    let (status, _, body) = system
        .post_order(
            &json!({
                "customer_id": "c-1",
                "items": [{"product_id": "sku-lane", "quantity": 1}],
                "payment_method": "tok_visa",
                "priority": "urgent",
            }),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "priority", "{body}");
    system.verified().await;
}
