//! Schema evolution while running: `orders.created` goes from v1 to v2 in a rolling upgrade under load,
//! in the four steps of docs/evolving-events.md, and every order is processed exactly once with nothing
//! misread or dead-lettered.
//!
//! The consumers of an older build are this build told to read v1 only (`ORDERFLOW_READ_VERSIONS=v1`),
//! which decodes as that build did: a v2 message is one it does not know.

use crate::harness::{Options, System};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{Backend, on_both_backends, wait_until};

on_both_backends!(a_rolling_upgrade_to_v2_under_load_processes_every_order_once);

/// Orders placed by the load, by their id.
type Placed = Arc<Mutex<Vec<String>>>;

/// Places an order every few milliseconds until `stop` is set, keeping the ids of the accepted ones.
/// Requests that meet a restarting order-service fail and are not counted.
fn load(
    order_url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Placed, tokio::task::JoinHandle<()>) {
    let placed: Placed = Arc::default();
    let kept = placed.clone();
    let task = tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let body = json!({
                "customer_id": "c-load",
                "items": [{"product_id": "sku-1", "quantity": 1}],
                "payment_method": "tok_visa",
            });
            if let Ok(response) = http
                .post(format!("{order_url}/orders"))
                .json(&body)
                .send()
                .await
                && response.status() == StatusCode::ACCEPTED
                && let Ok(answer) = response.json::<Value>().await
                && let Some(id) = answer["order_id"].as_str()
            {
                kept.lock().unwrap().push(id.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
    (placed, task)
}

/// The counter of events a service's consumers handled with `outcome`, summed over its consumers.
async fn consumed(url: &str, outcome: &str) -> f64 {
    crate::harness::counter_sum(
        url,
        "orderflow_events_consumed_total",
        &format!("outcome=\"{outcome}\""),
    )
    .await
}

/// Waits until `placed` has grown by `more` orders from what it holds now.
async fn more_orders(placed: &Placed, more: usize) {
    let target = placed.lock().unwrap().len() + more;
    wait_until(
        "the load to place more orders",
        crate::harness::SAGA_DEADLINE,
        || async { (placed.lock().unwrap().len() >= target).then_some(()) },
    )
    .await;
}

/// The versions of `orders.created` the ORDERS stream holds, with how many messages of each.
async fn created_versions(system: &System) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for (subject, envelope) in system.stream_events("ORDERS").await {
        if subject != "orders.created" {
            continue;
        }
        let version = envelope["version"].as_str().unwrap_or("?").to_owned();
        match counts.iter_mut().find(|(seen, _)| *seen == version) {
            Some((_, count)) => *count += 1,
            None => counts.push((version, 1)),
        }
    }
    counts.sort();
    counts
}

fn env(key: &str, value: &str) -> Vec<(String, String)> {
    vec![(key.to_owned(), value.to_owned())]
}

async fn a_rolling_upgrade_to_v2_under_load_processes_every_order_once(backend: Backend) {
    // 1. Old consumers: every service reads v1 only, and order-service publishes v1.
    let options = Options {
        service_env: env("ORDERFLOW_READ_VERSIONS", "v1"),
        ..Options::default()
    };
    let Some(mut system) = System::start_with(backend, options).await else {
        return;
    };
    system.put_product("sku-1", 500, 1_000_000).await;
    let euro = json!({"customer_id": "c-eur", "currency": "EUR",
        "items": [{"product_id": "sku-1", "quantity": 2}], "payment_method": "tok_visa"});
    let (status, _, body) = system.post_order(&euro, &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "currency", "{body}");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (placed, load_task) = load(system.order_url.clone(), stop.clone());
    more_orders(&placed, 10).await;

    // 2. A dual-publishing producer: old consumers read the v1 copy and skip the v2 one.
    tokio::task::block_in_place(|| {
        system
            .order
            .restart_with_env(&env("ORDERFLOW_PUBLISH_VERSIONS", "v1,v2"))
    });
    system.wait_ready(&system.order_url).await;
    more_orders(&placed, 20).await;
    for url in [&system.inventory_url, &system.payment_url] {
        wait_until(
            "an old consumer to skip a v2 copy",
            crate::harness::SAGA_DEADLINE,
            || async { (consumed(url, "skipped").await > 0.0).then_some(()) },
        )
        .await;
    }
    let versions = created_versions(&system).await;
    assert!(
        versions.iter().any(|(version, _)| version == "v2"),
        "no v2 copy in the stream: {versions:?}"
    );

    // 3. New consumers: they read both copies and act once.
    for service in [&mut system.inventory, &mut system.payment] {
        tokio::task::block_in_place(|| {
            service.restart_with_env(&env("ORDERFLOW_READ_VERSIONS", "v1,v2"))
        });
    }
    system.wait_ready(&system.inventory_url).await;
    system.wait_ready(&system.payment_url).await;
    more_orders(&placed, 20).await;
    for url in [&system.inventory_url, &system.payment_url] {
        wait_until(
            "a new consumer to see a second copy as a duplicate",
            crate::harness::SAGA_DEADLINE,
            || async { (consumed(url, "duplicate").await > 0.0).then_some(()) },
        )
        .await;
    }

    // 4. v2 only, and an order in another currency, which only v2 carries.
    tokio::task::block_in_place(|| {
        system
            .order
            .restart_with_env(&env("ORDERFLOW_PUBLISH_VERSIONS", "v2"))
    });
    system.wait_ready(&system.order_url).await;
    more_orders(&placed, 20).await;
    let (status, _, body) = system.post_order(&euro, &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let euro_order = body["order_id"].as_str().unwrap().to_owned();

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load_task.await.unwrap();
    let placed: Vec<String> = placed.lock().unwrap().clone();
    assert!(placed.len() >= 70, "{} orders placed", placed.len());
    for id in placed.iter().chain([&euro_order]) {
        assert_eq!(
            system.wait_final(id).await["status"],
            "confirmed",
            "order {id}"
        );
    }
    // The currency reached the gateway: the one thing v2 carries that v1 could not.
    let charges = system.charges_for(&euro_order).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(charges[0]["currency"], "EUR", "{charges:?}");
    assert_eq!(system.charges_for(&placed[0]).await[0]["currency"], "USD");
    // Exactly once: every order's stock sold once and charged once, and no dead letter.
    let output = system.verified().await;
    assert!(output.status.success());
    let versions = created_versions(&system).await;
    assert_eq!(versions.len(), 2, "{versions:?}");
}
