//! The Grafana dashboard and the Prometheus alerts in deploy/, against a real Prometheus scraping a
//! system under load: promtool accepts the rules and their unit tests, every panel's query returns
//! data, and every alert's expression returns data once the system is in the trouble it is about
//! (a dead letter, the breaker open, the broker gone long enough for the outbox to grow and age,
//! for sagas to outlast their timeout and for new orders to be refused). The breaker alert also fires, through the minute in which
//! its gauge moves between open and half-open.

use crate::harness::{Options, System};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use testkit::{Backend, Prometheus, ScrapeTarget, wait_until};

/// Long enough for the slowest alert (an outbox row older than 30 s) with scrapes every second.
const DATA_DEADLINE: Duration = Duration::from_secs(90);
/// The breaker alert's `for: 1m`, with room for a slow machine.
const BREAKER_ALERT_DEADLINE: Duration = Duration::from_secs(150);

fn deploy() -> PathBuf {
    testkit::workspace_root().join("deploy")
}

/// Every query of every panel of the dashboard.
fn dashboard_queries() -> Vec<String> {
    let path = deploy().join("grafana/orderflow.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(queries.len() >= 15, "{queries:?}");
    queries
}

/// `(name, expression)` of every alert.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let rules: Value = serde_saphyr::from_str(&text).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
        .map(|rule| {
            (
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().trim().to_owned(),
            )
        })
        .collect()
}

fn promtool(prometheus: &Prometheus, args: &[&str]) {
    let output = Command::new(prometheus.promtool())
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn returns_data(prometheus: &Prometheus, what: &str, expr: &str) {
    wait_until(
        &format!("{what} to return data: {expr}"),
        DATA_DEADLINE,
        || async {
            let result = prometheus.query(expr).await;
            (!result.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_expression_returns_data() {
    if Prometheus::binary().is_none() {
        return;
    }
    let options = Options {
        order_args: vec!["--saga-timeout".into(), "3s".into()],
        // The saga timeout must exceed the ack wait.
        service_args: vec!["--ack-wait".into(), "1s".into()],
        // The breaker opens after two failed calls and never closes again (the gateway stays down),
        // but it is open for 2 s at a time: scrapes see it half-open in between, as in an outage.
        payment_args: vec![
            "--breaker-min-calls".into(),
            "2".into(),
            "--breaker-open-ms".into(),
            "2000".into(),
            "--gateway-timeout-ms".into(),
            "300".into(),
        ],
        ..Options::default()
    };
    // The metrics do not depend on the backend.
    let Some(mut system) = System::start_with(Backend::Sqlite, options).await else {
        return;
    };
    let alert_rules = deploy().join("prometheus/alerts.yml");
    let targets = [
        ScrapeTarget {
            service: "order-service",
            url: &system.order_url,
        },
        ScrapeTarget {
            service: "inventory-service",
            url: &system.inventory_url,
        },
        ScrapeTarget {
            service: "payment-service",
            url: &system.payment_url,
        },
        ScrapeTarget {
            service: "gateway-sim",
            url: &system.gateway_url,
        },
    ];
    let prometheus = Prometheus::start(&targets, &[&alert_rules])
        .await
        .expect("Prometheus was found a moment ago");
    promtool(&prometheus, &["check", "rules", "alerts.yml"]);
    promtool(&prometheus, &["test", "rules", "alerts.test.yml"]);
    promtool(&prometheus, &["check", "config", "prometheus.yml"]);

    // Orders of every kind.
    system.put_product("sku-1", 1299, 1000).await;
    system.put_product("sku-scarce", 500, 0).await;
    let mut ids = Vec::new();
    for n in 0..12 {
        let card = if n % 6 == 5 {
            "tok_chargeDeclined"
        } else {
            "tok_visa"
        };
        ids.push(
            system
                .place(json!([{"product_id": "sku-1", "quantity": 1}]), card)
                .await,
        );
    }
    ids.push(
        system
            .place(
                json!([{"product_id": "sku-scarce", "quantity": 1}]),
                "tok_visa",
            )
            .await,
    );
    for id in &ids {
        system.wait_final(id).await;
    }
    // A message no consumer can read: a dead letter.
    let js = system.jetstream().await;
    js.publish("orders.created", "not an event".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    // The gateway down: calls fail until the breaker opens (and it never closes again).
    system.set_gateway_faults(&json!({"mode": "down"})).await;
    for _ in 0..3 {
        system
            .place(json!([{"product_id": "sku-1", "quantity": 1}]), "tok_visa")
            .await;
    }

    for expr in dashboard_queries() {
        returns_data(&prometheus, "a dashboard panel", &expr).await;
    }

    // The broker gone: the outbox grows and ages, sagas end by their timeout, and once the oldest
    // waiting event is older than the admission limit new orders are refused (503).
    system.nats.kill();
    let alerts = alerts();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    let placing = async {
        loop {
            let order = json!({"customer_id": "c-1", "items": [{"product_id": "sku-1", "quantity": 1}],
                "payment_method": "tok_visa"});
            let (status, _, body) = system.post_order(&order, &[]).await;
            assert!(
                status == reqwest::StatusCode::ACCEPTED
                    || status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                "{status}: {body}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let checking = async {
        for (name, expr) in &alerts {
            returns_data(&prometheus, name, expr).await;
        }
        breaker_alert_fires(&prometheus).await;
    };
    tokio::select! {
        () = checking => {}
        () = placing => unreachable!("placing orders never ends"),
    }
    if !prometheus.log().is_empty() {
        eprintln!("Prometheus log:\n{}", prometheus.log());
    }
    system.nats.restart().await;
}

/// The breaker alert fires, and keeps firing through scrapes that see the gauge half-open (2): an
/// alert on "open" (1) alone would start its minute again at each such scrape and be only pending
/// for the minute after it. A trial call ends the half-open state within the gateway's timeout, so
/// the scrapes (once a second) may miss a few of them: the test waits for one that saw it.
async fn breaker_alert_fires(prometheus: &Prometheus) {
    let firing = r#"ALERTS{alertname="OrderflowBreakerOpen",alertstate="firing"}"#;
    wait_until(
        "the breaker alert to fire",
        BREAKER_ALERT_DEADLINE,
        || async { (!prometheus.query(firing).await.is_empty()).then_some(()) },
    )
    .await;
    let half_open = "max_over_time(orderflow_circuit_breaker_state[1m]) == 2";
    wait_until(
        "a scrape within the last minute to see the breaker half-open",
        BREAKER_ALERT_DEADLINE,
        || async { (!prometheus.query(half_open).await.is_empty()).then_some(()) },
    )
    .await;
    assert!(
        !prometheus.query(firing).await.is_empty(),
        "the alert stopped firing after the breaker was seen half-open: {:?}",
        prometheus
            .query("orderflow_circuit_breaker_state[1m]")
            .await
    );
}
