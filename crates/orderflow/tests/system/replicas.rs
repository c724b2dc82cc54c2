//! Scale-out on one PostgreSQL database: two instances of each service share their durable consumers
//! and their tables. Work is split between them and nothing happens twice: no overselling, no outbox
//! row published twice or out of order, one saga deadline, one gateway call at a time per order.

use crate::harness::{Options, SAGA_DEADLINE, System};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use testkit::{Backend, wait_until};

const UNITS: usize = 50;
const ORDERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_each_service_share_the_work_and_do_nothing_twice() {
    let options = Options {
        replicas: 1,
        service_args: vec!["--ack-wait".into(), "2s".into()],
        order_args: vec!["--saga-timeout".into(), "6s".into()],
        // Per-event lines are at debug: they show which instance applied what.
        service_env: vec![("RUST_LOG".into(), "info,platform::consumer=debug".into())],
        ..Options::default()
    };
    let Some(system) = System::start_with(Backend::Postgres, options).await else {
        return;
    };
    system.put_product("sku-scarce", 100, UNITS as i64).await;
    system.put_product("sku-plenty", 100, 1000).await;
    let order_urls = order_urls(&system);

    // 200 orders at once for 50 units, through both order-service instances.
    let http = reqwest::Client::new();
    let placed: Vec<String> = futures::stream::iter(0..ORDERS)
        .map(|n| place(&http, &order_urls[n % 2], "sku-scarce", n))
        .buffer_unordered(ORDERS)
        .collect()
        .await;
    let mut ends = BTreeMap::new();
    for id in &placed {
        let order = system.wait_final(id).await;
        *ends
            .entry(format!("{} {}", order["status"], order["cancel_reason"]))
            .or_insert(0) += 1;
    }
    assert_eq!(
        ends,
        BTreeMap::from([
            (
                "\"cancelled\" \"insufficient_stock\"".to_owned(),
                ORDERS - UNITS
            ),
            ("\"confirmed\" null".to_owned(), UNITS),
        ])
    );
    system.wait_stock("sku-scarce", 0, 0, UNITS as i64).await;

    // Each instance of each service did part of the work.
    for process in std::iter::once(&system.order)
        .chain([&system.inventory, &system.payment])
        .chain(system.replicas.iter().map(|replica| &replica.process))
    {
        assert!(
            process.log().contains("\"event applied\""),
            "{} applied nothing\n{}",
            process.name(),
            system.logs()
        );
    }
    // One gateway call per payment: two workers never raced for one.
    let mut payments = system.connect_to("payment").await;
    let attempts: Vec<(String, i64)> =
        sqlx::query_as("SELECT order_id, attempts FROM payments WHERE status = 'succeeded'")
            .fetch_all(&mut payments)
            .await
            .unwrap();
    assert_eq!(attempts.len(), UNITS);
    assert!(
        attempts.iter().all(|(_, n)| *n == 1),
        "{attempts:?}\n{}",
        system.logs()
    );

    // With the gateway hanging, the saga deadline cancels each order, once.
    system.set_gateway_faults(&json!({"mode": "hang"})).await;
    let stuck: Vec<String> = futures::stream::iter(0..10)
        .map(|n| place(&http, &order_urls[n % 2], "sku-plenty", ORDERS + n))
        .buffer_unordered(10)
        .collect()
        .await;
    for id in &stuck {
        assert_eq!(system.wait_final(id).await["status"], "cancelled");
    }
    system.set_gateway_faults(&json!({"mode": "ok"})).await;
    let cancellations = |events: &[(String, Value)], id: &str| {
        events
            .iter()
            .filter(|(subject, event)| subject == "orders.cancelled" && event["order_id"] == id)
            .count()
    };

    // Every outbox row went out once, and each order's events in the order they were written.
    for (store, service) in [
        ("order", "order-service"),
        ("inventory", "inventory-service"),
        ("payment", "payment-service"),
    ] {
        let mut conn = system.connect_to(store).await;
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let urls = service_urls(&system, service);
        let published = wait_until(
            &format!("{service}'s outbox to be published"),
            SAGA_DEADLINE,
            || async {
                let sum = published_events(&urls).await;
                (sum >= rows).then_some(sum)
            },
        )
        .await;
        assert_eq!(
            published, rows,
            "{service}: {published} publishes of {rows} rows"
        );
    }
    let events = system.stream_events("ORDERS").await;
    for id in placed.iter().chain(&stuck) {
        let of_order: Vec<&str> = events
            .iter()
            .filter(|(_, event)| event["order_id"] == id.as_str())
            .map(|(subject, _)| subject.as_str())
            .collect();
        assert_eq!(
            of_order.first(),
            Some(&"orders.created"),
            "{id}: {of_order:?}"
        );
        assert_eq!(of_order.len(), 2, "{id}: {of_order:?}");
    }
    for id in &stuck {
        assert_eq!(cancellations(&events, id), 1, "{id}");
    }
    system.verified().await;
}

fn order_urls(system: &System) -> [String; 2] {
    [
        system.order_url.clone(),
        service_urls(system, "order-service")[1].clone(),
    ]
}

/// The base URLs of every instance of `service`.
fn service_urls(system: &System, service: &str) -> Vec<String> {
    let first = match service {
        "order-service" => &system.order_url,
        "inventory-service" => &system.inventory_url,
        _ => &system.payment_url,
    };
    std::iter::once(first.clone())
        .chain(
            system
                .replicas
                .iter()
                .filter(|replica| replica.service == service)
                .map(|replica| replica.url.clone()),
        )
        .collect()
}

async fn place(http: &reqwest::Client, order_url: &str, product: &str, n: usize) -> String {
    let response = http
        .post(format!("{order_url}/orders"))
        .header("Idempotency-Key", format!("replicas-{n}"))
        .json(&json!({
            "customer_id": format!("c-{}", n % 7),
            "items": [{"product_id": product, "quantity": 1}],
            "payment_method": "tok_visa",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    body["order_id"].as_str().unwrap().to_owned()
}

/// Outbox rows the instances at `urls` have published, by their metrics.
async fn published_events(urls: &[String]) -> i64 {
    let mut sum = 0.0;
    for url in urls {
        sum += crate::harness::counter_sum(
            url,
            "orderflow_events_published_total",
            "outcome=\"published\"",
        )
        .await;
    }
    sum as i64
}
